"""Find my quant: given the memory to stay within and the quality loss acceptable, pick the smallest (or fastest)
quant that meets both, from measurements, and say why, with the runners-up.

* :func:`select` is the pure decision over measured candidates (tests call it with made-up numbers).
* :func:`find_quant` is the job: it predicts each type's size, skips the ones that cannot fit, makes the quants
  that do not exist yet (:mod:`desktop.quant.quantize`), measures each against the base (:func:`desktop.eval.measurements.measure`,
  in a child process, stored), then calls :func:`select`.

Memory needed at a context is the memory planner's estimate (:func:`desktop.memory.memory_needed`: weights, KV
cache, compute buffers and GPU overhead on this machine's plan, or on the CPU) and is labelled so; quality and speed
are measured.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from desktop.errors import UserError
from desktop.eval import speed
from desktop.eval.evaluate import EvalResult
from desktop.jobs import CancelledFn, Progress, ProgressFn, check_cancelled, format_bytes

log = logging.getLogger(__name__)

DEFAULT_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")
PREFERENCES = ("smallest", "fastest")


@dataclass(frozen=True)
class Limits:
    """``max_memory_bytes``: memory the model may use at context ``n_ctx`` (None: no limit). ``max_kld``: largest
    mean KL divergence against the base. ``max_ppl_increase_pct``: largest perplexity increase over the base's,
    in percent. ``prefer``: "smallest" file or "fastest" generation among those that pass."""

    max_memory_bytes: int | None = None
    max_kld: float | None = None
    max_ppl_increase_pct: float | None = None
    n_ctx: int = 4096
    prefer: str = "smallest"

    def describe(self) -> str:
        parts = []
        if self.max_memory_bytes is not None:
            parts.append(f"memory ≤ {format_bytes(self.max_memory_bytes)} at context {self.n_ctx}")
        if self.max_kld is not None:
            parts.append(f"KLD ≤ {self.max_kld:g}")
        if self.max_ppl_increase_pct is not None:
            parts.append(f"perplexity ≤ +{self.max_ppl_increase_pct:g}%")
        return ", ".join(parts) or "no limits"


@dataclass(frozen=True)
class Candidate:
    quant_type: str
    path: str
    size_bytes: int
    memory_bytes: int  # estimate at Limits.n_ctx: weights + KV cache + compute buffer
    result: EvalResult | None  # None when it was not measured (skipped on its predicted size)


@dataclass(frozen=True)
class Recommendation:
    limits: Limits
    chosen: Candidate | None
    why: str
    runners_up: tuple[Candidate, ...] = ()
    rejected: tuple[tuple[Candidate, str], ...] = field(default_factory=tuple)

    def lines(self) -> list[str]:
        out = [self.why]
        for c in self.runners_up:
            out.append(f"  runner-up: {_summary(c)}")
        for c, reason in self.rejected:
            out.append(f"  rejected {c.quant_type}: {reason}")
        return out


def _summary(c: Candidate) -> str:
    r = c.result
    text = f"{c.quant_type}, {format_bytes(c.size_bytes)} file, ~{format_bytes(c.memory_bytes)} memory (estimate)"
    if r is not None:
        if r.kld_mean is not None:
            text += f", KLD {r.kld_mean:.4f}"
        if r.ppl_increase_pct is not None:
            text += f", PPL {r.ppl:.2f} ({r.ppl_increase_pct:+.1f}%)"
        if r.gen_tps:
            text += f", {r.gen_tps:.1f} tok/s generation"
            if speed.unsteady(r.gen_tps_runs):  # a disturbed measurement is not quoted as the model's speed
                text += f" (unsteady: runs {min(r.gen_tps_runs):.1f} to {max(r.gen_tps_runs):.1f}; measure again)"
    return text


def failures(c: Candidate, limits: Limits) -> list[str]:
    """Why a candidate misses the limits (empty when it meets them)."""
    reasons = []
    if limits.max_memory_bytes is not None and c.memory_bytes > limits.max_memory_bytes:
        reasons.append(f"needs ~{format_bytes(c.memory_bytes)} (estimate), "
                       f"over {format_bytes(limits.max_memory_bytes)}")
    r = c.result
    if r is None:
        if limits.max_kld is not None or limits.max_ppl_increase_pct is not None:
            reasons.append("not measured")
        return reasons
    if limits.max_kld is not None and (r.kld_mean is None or r.kld_mean > limits.max_kld):
        reasons.append("KLD unknown (no base)" if r.kld_mean is None
                       else f"KLD {r.kld_mean:.4f} is over {limits.max_kld:g}")
    increase = r.ppl_increase_pct
    if limits.max_ppl_increase_pct is not None and (increase is None or increase > limits.max_ppl_increase_pct):
        reasons.append("perplexity increase unknown (no base)" if increase is None
                       else f"perplexity +{increase:.1f}% is over +{limits.max_ppl_increase_pct:g}%")
    return reasons


def select(candidates: Sequence[Candidate], limits: Limits) -> Recommendation:
    """The smallest (or fastest) candidate within the limits; ties go to the lower KLD."""
    if limits.prefer not in PREFERENCES:
        raise UserError(f"Unknown preference '{limits.prefer}'.", f"Choose one of: {', '.join(PREFERENCES)}.")
    passing, rejected = [], []
    for c in candidates:
        reasons = failures(c, limits)
        if reasons:
            rejected.append((c, "; ".join(reasons)))
        else:
            passing.append(c)

    def quality(c: Candidate) -> float:
        return c.result.kld_mean if c.result is not None and c.result.kld_mean is not None else float("inf")

    if limits.prefer == "fastest":
        passing.sort(key=lambda c: (-(c.result.gen_tps or 0.0) if c.result else 0.0, c.size_bytes, quality(c)))
    else:
        passing.sort(key=lambda c: (c.size_bytes, quality(c)))
    if not passing:
        closest = min(candidates, key=lambda c: len(failures(c, limits)), default=None)
        hint = f" The closest is {closest.quant_type}." if closest is not None else ""
        return Recommendation(limits, None, f"No quant meets {limits.describe()}.{hint} Relax a limit, or try "
                              "types with more bits.", (), tuple(rejected))
    chosen = passing[0]
    adjective = "fastest" if limits.prefer == "fastest" else "smallest"
    why = f"{chosen.quant_type} is the {adjective} quant that meets {limits.describe()}: {_summary(chosen)}."
    if chosen.result is not None:
        why += f" Quality and speed {chosen.result.provenance()}."
    return Recommendation(limits, chosen, why, tuple(passing[1:4]), tuple(rejected))


def memory_estimate(path: Path | str, n_ctx: int, size_bytes: int | None = None, machine: Any = None) -> int:
    """Bytes needed to run a GGUF at ``n_ctx`` (weights of ``size_bytes`` when given): the memory planner's
    estimate on ``machine`` (a :class:`desktop.memory.Machine`), or on the CPU alone."""
    from desktop import memory
    from desktop.gguf.reader import read_gguf

    shape = memory.shape_from_gguf(read_gguf(path))
    if size_bytes is not None:
        shape = shape.with_weights(size_bytes)
    return memory.memory_needed(shape, n_ctx, machine)


def find_quant(
    base_path: Path | str,
    limits: Limits,
    *,
    types: Sequence[str] = DEFAULT_TYPES,
    text_path: Path | str | None = None,
    eval_ctx: int = 512,
    max_chunks: int = 0,
    out_dir: Path | str | None = None,
    machine: Any = None,
    progress: ProgressFn,
    cancelled: CancelledFn,
) -> Recommendation:
    """Make the quants of ``base_path`` that can fit, measure them against it, and recommend one.

    Memory is planned on ``machine`` (a :class:`desktop.memory.Machine`; None: the CPU alone)."""
    from desktop.quant import quantize
    from desktop.quant import sizing
    from desktop.eval.measurements import measure

    from desktop import memory
    from desktop.gguf.reader import read_gguf

    base = Path(base_path)
    tensors = sizing.tensors_from_gguf(base)
    shape = memory.shape_from_gguf(read_gguf(base))

    def needed(size: int) -> int:  # the planner's estimate for the base's shape holding ``size`` bytes
        return memory.memory_needed(shape.with_weights(size), limits.n_ctx, machine)

    wanted, skipped = [], []
    for name in types:
        target = quantize.output_path(base, name, out_dir)
        predicted = target.stat().st_size if target.exists() else sizing.predict_size(tensors, name)
        candidate = Candidate(name, str(target), predicted, needed(predicted), None)
        if limits.max_memory_bytes is not None and candidate.memory_bytes > limits.max_memory_bytes:
            skipped.append(candidate)  # cannot fit whatever its quality: not made, not measured
        else:
            wanted.append(candidate)
    missing = [c.quant_type for c in wanted if not Path(c.path).exists()]
    steps = len(missing) + len(wanted) + 1
    step = 0
    if missing:
        def relay(done: float, total: float, message: str = "", /, **fields: Any) -> None:
            fraction = Progress.of(done, total, message, **fields).fraction or 0.0  # over the whole queue
            progress(step + fraction * len(missing), steps, f"making quants: {fields.get('step', '')} {message}")

        quantize.quantize_many(base, missing, out_dir, quantize.QuantizeOptions(allow_requantize=False),
                               progress=relay, cancelled=cancelled)
        step += len(missing)
    measured = []
    progress(step, steps, "measuring the base")
    measure(base, base_path=base, text_path=text_path, n_ctx=eval_ctx, max_chunks=max_chunks,
            cancelled=cancelled)
    for c in wanted:
        check_cancelled(cancelled)
        label = f"measuring {c.quant_type} ({wanted.index(c) + 1}/{len(wanted)})"

        def relay_eval(done: float, total: float, message: str, label: str = label) -> None:
            progress(step + (done / total if total else 0), steps, f"{label}: {message}")

        result = measure(c.path, base_path=base, text_path=text_path, n_ctx=eval_ctx, max_chunks=max_chunks,
                         progress=relay_eval, cancelled=cancelled)
        size = Path(c.path).stat().st_size
        measured.append(Candidate(c.quant_type, c.path, size, needed(size), result))
        step += 1
    recommendation = select(measured + skipped, limits)
    progress(steps, steps, recommendation.why)
    return recommendation
