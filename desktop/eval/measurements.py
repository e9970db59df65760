"""Evaluation results kept in the app's SQLite database, so they come back when a model is reopened.

A result is keyed by the model file (resolved path, size and modification time: a file replaced under the same
name is a different model), the text's sha256, the context size and the base file. Tables are prefixed ``eval_``.
Each call opens its own connection, so any thread or process may use a :class:`MeasurementStore`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from desktop.db import Store
from desktop.eval import speed
from desktop.eval.evaluate import EvalResult
from desktop.eval.speed import SPEED_RUNS
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


class MeasurementStore(Store):
    schema = SCHEMA

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


QUALITY_SHARE = 0.75
"""Of one model's measurement, the share of the progress bar the quality pass takes; the speed runs take the rest."""


def _scaled(progress: ProgressFn, start: float, share: float) -> ProgressFn:
    def relay(done: float, total: float, message: str = "", /, **_fields: Any) -> None:
        progress(start + share * (done / total if total else 0.0), 1.0, message)

    return relay


def measure(
    model_path: Path | str,
    *,
    progress: ProgressFn = lambda done, total, message: None,
    cancelled: CancelledFn = lambda: False,
    force: bool = False,
    in_child: bool = True,
    speed_runs: int = SPEED_RUNS,
    **kwargs: Any,
) -> EvalResult:
    """The stored result for this model, text, context and base if there is one (and the file is unchanged),
    else a fresh measurement (in one child process unless ``in_child`` is False), stored before it is returned.

    Quality comes from :func:`desktop.eval.evaluate.evaluate`, speed from ``speed_runs`` timed runs
    (:mod:`desktop.eval.speed`): ``prompt_tps``/``gen_tps`` are their medians. A stored result from a version
    that timed speed once keeps its quality and gets its speed measured now."""
    from desktop.eval import evaluate as ev  # looked up at call time, so a test may swap the child runner

    store = MeasurementStore()
    text = ev.load_text(kwargs.get("text_path"))
    found = None
    if not force:
        found = store.find(model_path, text_sha256=text.sha256, n_ctx=kwargs.get("n_ctx", 512),
                           base_path=kwargs.get("base_path"), min_chunks=kwargs.get("max_chunks", 0))
        if found is not None and found.gen_tps_runs:
            progress(1, 1, "already measured")
            return found
    job = {"quality": found, "speed_runs": speed_runs, **kwargs}
    if in_child:
        result: EvalResult = ev.evaluate_in_child(model_path, target="desktop.eval.measurements:run_job",
                                                  progress=progress, cancelled=cancelled, **job)
    else:
        result = run_job(progress=progress, cancelled=cancelled, model_path=str(model_path), **job)
    store.save(result)
    return result


def run_job(*, progress: ProgressFn, cancelled: CancelledFn, model_path: str, quality: EvalResult | None,
            speed_runs: int, **kwargs: Any) -> EvalResult:
    """One model's measurement in one process (the child's entry): the quality pass unless ``quality`` is given,
    then the timed speed runs. Progress runs 0..1 over both."""
    from desktop.eval import evaluate as ev

    start = 0.0
    if quality is None:
        quality = ev.evaluate(model_path, progress=_scaled(progress, 0.0, QUALITY_SHARE), cancelled=cancelled,
                              gen_tokens=0, **kwargs)
        start = QUALITY_SHARE
    timed = speed.time_speeds(model_path, progress=_scaled(progress, start, 1 - start), cancelled=cancelled,
                              n_ctx=quality.n_ctx, runs=speed_runs, text_path=kwargs.get("text_path"),
                              threads=kwargs.get("threads", 0), n_gpu_layers=kwargs.get("n_gpu_layers", 0))
    return with_speeds(quality, timed)


def with_speeds(result: EvalResult, timed: speed.SpeedRuns) -> EvalResult:
    """``result`` with its speeds replaced by the medians of ``timed`` (and the runs kept)."""
    return dataclasses.replace(
        result,
        prompt_tps=speed.median(timed.prompt_tps), prompt_batch=timed.prompt_batch, prompt_tps_runs=timed.prompt_tps,
        gen_tps=speed.median(timed.gen_tps), gen_tokens=timed.gen_tokens, gen_tps_runs=timed.gen_tps,
        threads=timed.threads,
    )


def measure_speed(result: EvalResult, *, progress: ProgressFn = lambda done, total, message: None,
                  cancelled: CancelledFn = lambda: False, in_child: bool = True, runs: int = SPEED_RUNS,
                  **kwargs: Any) -> EvalResult:
    """Time ``result``'s model again (``runs`` runs at its context) and store the result with the new speeds
    (its quality numbers are kept: they do not change from run to run)."""
    timer = speed.time_speeds_in_child if in_child else speed.time_speeds
    timed = timer(result.model_path, progress=progress, cancelled=cancelled, n_ctx=result.n_ctx, runs=runs,
                  **kwargs)
    updated = with_speeds(result, timed)
    MeasurementStore().save(updated)
    return updated
