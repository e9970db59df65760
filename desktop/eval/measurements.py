"""Evaluation results kept in the app's SQLite database, so they come back when a model is reopened.

A result is keyed by the model file (resolved path, size and modification time: a file replaced under the same
name is a different model), the text's sha256, the context size and the base file. Tables are prefixed ``eval_``.
Each call opens its own connection, so any thread or process may use a :class:`MeasurementStore`.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from desktop import paths
from desktop.db import transaction
from desktop.eval.evaluate import EvalResult
from desktop.jobs import CancelledFn, ProgressFn

SCHEMA = """
CREATE TABLE IF NOT EXISTS eval_results (
    id INTEGER PRIMARY KEY,
    model_path TEXT NOT NULL,
    model_size INTEGER NOT NULL,
    model_mtime_ns INTEGER NOT NULL,
    text_sha256 TEXT NOT NULL,
    n_ctx INTEGER NOT NULL,
    base_path TEXT NOT NULL DEFAULT '',
    n_chunks INTEGER NOT NULL,
    measured_at REAL NOT NULL,
    result TEXT NOT NULL,
    UNIQUE (model_path, model_size, model_mtime_ns, text_sha256, n_ctx, base_path)
);
CREATE INDEX IF NOT EXISTS eval_results_by_model ON eval_results (model_path);
"""


def _file_key(path: Path | str) -> tuple[str, int, int] | None:
    p = Path(path)
    try:
        stat = p.stat()
    except OSError:
        return None
    return str(p.resolve()), stat.st_size, stat.st_mtime_ns


class MeasurementStore:
    def __init__(self, db_path: Path | None = None) -> None:
        self.db_path = db_path or paths.database_path()
        with self._connect() as db:
            db.executescript(SCHEMA)

    def _connect(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return transaction(self.db_path)

    def save(self, result: EvalResult) -> None:
        """Store ``result``, replacing an earlier one for the same file, text, context and base."""
        with self._connect() as db:
            db.execute(
                """INSERT INTO eval_results (model_path, model_size, model_mtime_ns, text_sha256, n_ctx, base_path,
                                             n_chunks, measured_at, result)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT (model_path, model_size, model_mtime_ns, text_sha256, n_ctx, base_path)
                   DO UPDATE SET n_chunks=excluded.n_chunks, measured_at=excluded.measured_at,
                                 result=excluded.result""",
                (result.model_path, result.model_size, result.model_mtime_ns, result.text_sha256, result.n_ctx,
                 result.base_path or "", result.n_chunks, result.measured_at, json.dumps(result.to_dict())),
            )

    def find(
        self,
        model_path: Path | str,
        *,
        text_sha256: str,
        n_ctx: int,
        base_path: Path | str | None = None,
        min_chunks: int = 0,
    ) -> EvalResult | None:
        """The result for this exact file (as it is now on disk), text, context and base, or None.

        ``min_chunks`` > 0 accepts only a result that scored at least that many chunks; 0 needs a result over the
        whole text (one measured with a chunk limit does not count)."""
        key = _file_key(model_path)
        if key is None:
            return None
        base = ""
        if base_path is not None:
            base_key = _file_key(base_path)
            if base_key is None:
                return None
            base = base_key[0]
        with self._connect() as db:
            row = db.execute(
                """SELECT result FROM eval_results WHERE model_path=? AND model_size=? AND model_mtime_ns=?
                   AND text_sha256=? AND n_ctx=? AND base_path=?""",
                (*key, text_sha256, n_ctx, base),
            ).fetchone()
        if row is None:
            return None
        result = EvalResult.from_dict(json.loads(row[0]))
        if base_path is not None and _file_key(base_path) != (result.base_path, result.base_size,
                                                              result.base_mtime_ns):
            return None  # the base was rewritten since: KLD against it is stale
        if result.max_chunks and not (min_chunks and result.n_chunks >= min_chunks):
            return None  # measured on part of the text only, and not enough of it
        return result

    def results_for(self, model_paths: list[Path | str] | None = None) -> list[EvalResult]:
        """Every stored result whose file is still on disk unchanged (for ``model_paths`` only, if given),
        newest first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT model_path, model_size, model_mtime_ns, result FROM eval_results ORDER BY measured_at DESC"
            ).fetchall()
        wanted = {str(Path(p).resolve()) for p in model_paths} if model_paths is not None else None
        out = []
        for path, size, mtime_ns, payload in rows:
            if wanted is not None and path not in wanted:
                continue
            if _file_key(path) != (path, size, mtime_ns):
                continue
            out.append(EvalResult.from_dict(json.loads(payload)))
        return out

    def forget(self, model_path: Path | str) -> int:
        """Drop every result for a file (any version); returns how many."""
        with self._connect() as db:
            cur = db.execute("DELETE FROM eval_results WHERE model_path=?", (str(Path(model_path).resolve()),))
            return cur.rowcount


def measure(
    model_path: Path | str,
    *,
    progress: ProgressFn = lambda done, total, message: None,
    cancelled: CancelledFn = lambda: False,
    force: bool = False,
    in_child: bool = True,
    **kwargs: Any,
) -> EvalResult:
    """The stored result for this model, text, context and base if there is one (and the file is unchanged),
    else a fresh measurement (in a child process unless ``in_child`` is False), stored before it is returned."""
    from desktop.eval import evaluate as ev  # looked up at call time, so a test may swap the child runner

    store = MeasurementStore()
    text = ev.load_text(kwargs.get("text_path"))
    if not force:
        found = store.find(model_path, text_sha256=text.sha256, n_ctx=kwargs.get("n_ctx", 512),
                           base_path=kwargs.get("base_path"), min_chunks=kwargs.get("max_chunks", 0))
        if found is not None:
            progress(1, 1, "already measured")
            return found
    runner = ev.evaluate_in_child if in_child else ev.evaluate
    result = runner(model_path, progress=progress, cancelled=cancelled, **kwargs)
    store.save(result)
    return result
