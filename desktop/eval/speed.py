"""Prompt and generation speed on this machine, measured several times so one disturbed run cannot pass for the
model's speed: the median is the number shown, the spread says how steady the runs were.

One untimed warm-up pass comes first (it pages the weights in from the file); then each of ``runs`` passes times a
prompt (a batch of ``n_ctx/2`` tokens asking for the last token's logits, as :mod:`desktop.eval.evaluate` times
it) and ``gen_tokens`` single-token decodes from an empty cache (as generation does), on the evaluation text's own
tokens. ``spread`` is (slowest - fastest) / median; over :data:`UNSTEADY_SPREAD` the runs disagree enough that
the median deserves a second measurement (another program was busy, the machine throttled).

Job contract: :func:`time_speeds` runs in the calling process; :func:`run_job` is the child entry and
:func:`time_speeds_in_child` the parent side (a crash or cancel cannot take the caller down)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from desktop.errors import Cancelled
from desktop.jobs import CancelledFn, ProgressFn

SPEED_RUNS = 5
UNSTEADY_SPREAD = 0.10


def median(runs: Sequence[float]) -> float | None:
    return float(statistics.median(runs)) if runs else None


def spread(runs: Sequence[float]) -> float | None:
    """(max - min) / median of the runs; None for fewer than two."""
    if len(runs) < 2:
        return None
    mid = statistics.median(runs)
    return float((max(runs) - min(runs)) / mid) if mid > 0 else None


def unsteady(runs: Sequence[float]) -> bool:
    value = spread(runs)
    return value is not None and value > UNSTEADY_SPREAD


def describe(runs: Sequence[float], what: str) -> str:
    """One sentence for a tooltip: median, spread and every run."""
    if not runs:
        return f"{what}: not measured."
    each = ", ".join(f"{r:.1f}" for r in runs)
    value = spread(runs)
    if value is None:
        return f"{what}: {runs[0]:.1f} tok/s, one run."
    warning = (f" The runs disagree by more than {UNSTEADY_SPREAD:.0%}: another program may have been busy; "
               "measure this row again.") if unsteady(runs) else ""
    return f"{what}: median {median(runs):.1f} tok/s of {len(runs)} runs ({each}), spread {value:.0%}.{warning}"


@dataclass(frozen=True)
class SpeedRuns:
    prompt_tps: tuple[float, ...]
    prompt_batch: int
    gen_tps: tuple[float, ...]
    gen_tokens: int
    threads: int


def time_speeds(
    model_path: Path | str,
    *,
    text_path: Path | str | None = None,
    n_ctx: int = 512,
    runs: int = SPEED_RUNS,
    gen_tokens: int = 32,
    threads: int = 0,
    n_gpu_layers: int = 0,
    progress: ProgressFn = lambda done, total, message: None,
    cancelled: CancelledFn = lambda: False,
) -> SpeedRuns:
    from desktop.eval.evaluate import chunk_count, load_text
    from desktop.eval.llama_eval import LlamaSession
    from desktop.settings import load_settings

    text = load_text(text_path)
    with LlamaSession(Path(model_path), n_ctx, threads=threads, n_gpu_layers=n_gpu_layers,
                      cpu_repack=load_settings().cpu_repack, cancelled=cancelled) as session:
        tokens = np.asarray(session.tokenize(text.content), dtype=np.int32)
        chunk_count(len(tokens), n_ctx)  # the same "text too short" sentence as the quality pass
        chunk = tokens[:n_ctx].copy()
        if session.add_bos:
            chunk[0] = session.bos
        generated = [int(t) for t in tokens[:gen_tokens]]
        prompt, gen = [], []
        for i in range(runs + 1):  # pass 0 is the warm-up
            if cancelled():
                raise Cancelled()
            label = "warming up" if i == 0 else f"run {i}/{runs}"
            progress(i, runs + 1, f"timing speed, {label}: prompt of {n_ctx // 2} tokens")
            _, timing = session.decode_chunk(chunk)
            progress(i + 0.5, runs + 1, f"timing speed, {label}: {len(generated)} generated tokens")
            decoded = session.time_generation(generated)
            if i:
                prompt.append(timing.tokens_per_second)
                gen.append(decoded.tokens_per_second)
        progress(runs + 1, runs + 1, f"timed {runs} runs")
        return SpeedRuns(tuple(prompt), n_ctx // 2, tuple(gen), len(generated), session.threads)


def run_job(*, progress: ProgressFn, cancelled: CancelledFn, model_path: str, **kwargs: Any) -> SpeedRuns:
    """Child-process entry: ``run_in_child("desktop.eval.speed:run_job", {"model_path": ..., ...})``."""
    return time_speeds(model_path, progress=progress, cancelled=cancelled, **kwargs)


def time_speeds_in_child(model_path: Path | str, *, progress: ProgressFn, cancelled: CancelledFn,
                         **kwargs: Any) -> SpeedRuns:
    from desktop.eval.evaluate import evaluate_in_child

    result: SpeedRuns = evaluate_in_child(model_path, target="desktop.eval.speed:run_job", progress=progress,
                                          cancelled=cancelled, **kwargs)
    return result
