"""The app's SQLite database (library, measurements, conversations share one file in the data folder)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from desktop import paths


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


class Store:
    """Tables of the app's database (``schema``, created when the store is made); every call opens its own
    connection (:func:`transaction`), so any thread or process may use a store."""

    schema = ""

    def __init__(self, db_path: Path | None = None) -> None:
        self.db_path = db_path or paths.database_path()
        with self._connect() as db:
            db.executescript(self.schema)

    def _connect(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return transaction(self.db_path)
