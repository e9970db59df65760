"""The app's SQLite database (library, measurements, conversations share one file in the data folder)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def transaction(db_path: Path | str) -> Iterator[sqlite3.Connection]:
    """One connection and one transaction: committed if the block succeeds, rolled back if it raises, then closed.
    A connection per call lets any worker thread use the stores."""
    db = sqlite3.connect(db_path, timeout=10)
    try:
        db.execute("PRAGMA foreign_keys = ON")
        with db:
            yield db
    finally:
        db.close()
