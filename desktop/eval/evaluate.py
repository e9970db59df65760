"""Measure a model on a text: perplexity, KL divergence and top-1 agreement against its F16/BF16 base, and
prompt-processing and generation speed on this machine.

Perplexity is computed as llama.cpp's ``llama-perplexity`` does: the whole text is tokenized once (BOS first when
the model adds one), cut into non-overlapping chunks of ``n_ctx`` tokens whose first token is replaced by BOS,
and only the second half of each chunk is scored (positions ``n_ctx/2 .. n_ctx-2`` predicting the next token),
so every scored token has at least ``n_ctx/2`` tokens of context. ``PPL = exp(mean NLL)`` with llama.cpp's
``±`` (``sqrt((mean(nll²) - mean²)/(n-1)) * PPL``).

KL divergence compares the model's next-token distribution with the base's on the same tokens, as
``llama-perplexity --kl-divergence`` does; the base's distributions are computed once per (base file, text,
context) and kept under ``<data dir>/eval-cache`` (format: :mod:`desktop.eval.metrics`). Top-1 agreement is the
share of scored tokens where both models' most likely next token is the same.

Speed: prompt processing is timed on the context half of every chunk (a batch of ``n_ctx/2`` tokens asking for
the last token's logits, exactly a prompt), as wall-clock time inside ``llama_decode``; generation runs chat's own
loop (:func:`desktop.llama.generate`, greedy) after the text's first tokens and is timed as a chat reply is, from
the first token to the last, so ``gen_tps`` is what Chat delivers on this machine with the stated threads.

Job contract: :func:`evaluate` runs in the calling process (``progress(done, total, message)`` once per chunk,
messages like ``"chunk 3/12, PPL so far 23.1"``; ``cancelled()`` checked between chunks and, through llama.cpp's
abort callback, during a decode). :func:`run_job` is the child-process entry
(``run_in_child("desktop.eval.evaluate:run_job", {...})``) and :func:`evaluate_in_child` the parent side.
:func:`measure` adds the measurement store: a result already measured for the same file, text and context comes
back without running anything. The text and the result types are in :mod:`desktop.eval.results` (re-exported
here).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from desktop.errors import Cancelled, UserError
from desktop.eval.results import EvalResult, EvalText, load_text
from desktop.jobs import CancelledFn, ProgressFn

log = logging.getLogger(__name__)

__all__ = ["EvalResult", "EvalText", "base_cache_path", "evaluate", "evaluate_in_child", "load_text",
           "run_job"]

DEFAULT_GEN_TOKENS = 32
GEN_PROMPT_TOKENS = 16  # the generation-speed run continues the text's first tokens


def _no_progress(done: float, total: float, message: str) -> None:
    return None


def _never() -> bool:
    return False


# --------------------------------------------------------------------------------------------------------------
# The base model's cache


def file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def base_cache_path(base_path: Path | str, text_sha256: str, n_ctx: int) -> Path:
    """Where the base's log-probabilities for this text and context live; the name changes when the file does."""
    from desktop import paths
    from desktop.eval.metrics import FORMAT_VERSION

    base = Path(base_path)
    resolved, size, mtime_ns = file_key(base)
    digest = hashlib.sha256(f"{resolved}|{size}|{mtime_ns}|{text_sha256}|{n_ctx}|{FORMAT_VERSION}".encode())
    return paths.data_dir() / "eval-cache" / f"{base.stem}-{digest.hexdigest()[:16]}.npz"


def _load_base_cache(path: Path, n_ctx: int, max_chunks: int) -> Any:
    """The cached base distributions if they cover the chunks this evaluation scores, else None."""
    from desktop.eval.metrics import BaseLogProbs

    if not path.exists():
        return None
    try:
        cached = BaseLogProbs.load(path)
        needed = chunk_count(len(cached.tokens), n_ctx, max_chunks)
    except (OSError, ValueError, KeyError, UserError) as exc:
        log.warning("ignoring unusable base cache %s (%s)", path, exc)
        return None
    return cached if len(cached.chunks) >= needed else None


# --------------------------------------------------------------------------------------------------------------
# One pass of one model over the text


def hardware_summary(threads: int, n_gpu_layers: int, cpu_repack: bool) -> str:
    from desktop.hardware.report import cpu_model_name

    where = f"{n_gpu_layers} layers on GPU" if n_gpu_layers else "CPU only"
    return f"{cpu_model_name()}, {threads} threads, {where}, CPU repack {'on' if cpu_repack else 'off'}"


def _quant_type(path: Path) -> str:
    from desktop.gguf.reader import read_gguf

    try:
        return read_gguf(path).quant_type
    except UserError:
        return "unknown"


@dataclass
class _Pass:
    label: str  # "" for the model, "base model: " for the base
    index: int  # 0 for the first pass
    passes: int  # both passes score the same chunks, so progress counts passes * n_chunks


def _run_pass(  # noqa: C901 - one loop with its bookkeeping
    path: Path,
    text: EvalText,
    *,
    n_ctx: int,
    max_chunks: int,
    threads: int,
    n_gpu_layers: int,
    cpu_repack: bool,
    base: Any,
    encode: bool,
    gen_tokens: int,
    step: _Pass,
    progress: ProgressFn,
    cancelled: CancelledFn,
) -> dict[str, Any]:
    from desktop.eval.llama_eval import EvalSession
    from desktop.eval.metrics import BaseLogProbs, RunningTotals, encode_rows, kld_rows, log_softmax_stats

    with EvalSession(path, n_ctx, threads=threads, n_gpu_layers=n_gpu_layers, cpu_repack=cpu_repack,
                      cancelled=cancelled) as session:
        tokens = np.asarray(session.tokenize(text.content), dtype=np.int32)
        n_chunks = chunk_count(len(tokens), n_ctx, max_chunks)
        if base is not None:
            used = n_chunks * n_ctx
            if session.n_vocab != base.n_vocab or not np.array_equal(tokens[:used], base.tokens[:used]):
                raise UserError(
                    f"{path.name} and the base model tokenize the text differently, so they cannot be compared.",
                    "Choose the F16/BF16 file this quant was made from as the base.",
                    kind="different_tokenizer",
                )
        first = n_ctx // 2
        totals = RunningTotals()
        encoded = []
        prompt_tokens, prompt_seconds = 0, 0.0
        for i in range(n_chunks):
            if cancelled():
                raise Cancelled()
            chunk = tokens[i * n_ctx : (i + 1) * n_ctx].copy()
            if session.add_bos:
                chunk[0] = session.bos
            rows, timing = session.decode_chunk(chunk)
            prompt_tokens += timing.tokens
            prompt_seconds += timing.seconds
            scored = rows[:-1]  # the last position predicts a token outside the chunk
            targets = chunk[first + 1 :]
            row_max, lse = log_softmax_stats(scored)
            nll = (row_max + lse) - scored[np.arange(len(targets)), targets]
            totals.nll.append(nll)
            if encode:
                encoded.append(encode_rows(scored, targets))
            reference = base.chunks[i] if base is not None else (encoded[-1] if encode else None)
            if reference is not None:
                totals.kld.append(kld_rows(scored, reference, row_max, lse))
                totals.same_top += int((scored.argmax(axis=1) == reference.argmax).sum())
                totals.base_nll.append(-reference.target_log_p.astype(np.float64))
            message = f"{step.label}chunk {i + 1}/{n_chunks}, PPL so far {totals.ppl():.4g}"
            if reference is not None and base is not None:
                message += f", KLD so far {totals.kld_values().mean():.4g}"
            progress(step.index * n_chunks + i + 1, step.passes * n_chunks, message)
        gen = session.time_generation([int(t) for t in tokens[:GEN_PROMPT_TOKENS]], gen_tokens) if gen_tokens > 0 else None
        threads_used = session.threads
    out: dict[str, Any] = {
        "totals": totals,
        "n_chunks": n_chunks,
        "threads": threads_used,
        "prompt_tps": prompt_tokens / prompt_seconds if prompt_seconds > 0 else None,
        "prompt_batch": first,
        "gen_tps": gen.tokens_per_second if gen else None,
        "gen_tokens": gen.tokens if gen else 0,
    }
    if encode:
        out["base"] = BaseLogProbs(tokens=tokens, n_ctx=n_ctx, n_vocab=session.n_vocab, chunks=encoded,
                                   meta={"model": str(path), "text_sha256": text.sha256})
    return out


def chunk_count(n_tokens: int, n_ctx: int, max_chunks: int = 0) -> int:
    """How many chunks llama-perplexity would score; UserError when the text is shorter than two contexts."""
    if n_ctx < 16 or n_ctx % 2:
        raise UserError(f"A context of {n_ctx} tokens is too small for an evaluation.", "Use 128 or more.")
    if n_tokens < 2 * n_ctx:
        raise UserError(
            f"The text is {n_tokens} tokens long; an evaluation at context {n_ctx} needs at least {2 * n_ctx}.",
            "Use a longer text or a smaller context.",
            kind="text_too_short",
        )
    n = n_tokens // n_ctx
    return min(n, max_chunks) if max_chunks > 0 else n


def evaluate(
    model_path: Path | str,
    *,
    base_path: Path | str | None = None,
    text_path: Path | str | None = None,
    n_ctx: int = 512,
    max_chunks: int = 0,
    threads: int = 0,
    n_gpu_layers: int = 0,
    gen_tokens: int = DEFAULT_GEN_TOKENS,
    progress: ProgressFn = _no_progress,
    cancelled: CancelledFn = _never,
) -> EvalResult:
    """Measure ``model_path`` (in this process; the app uses :func:`evaluate_in_child`).

    With ``base_path`` (the F16/BF16 the quant was made from) KLD and top-1 agreement are measured too; the
    base's distributions are computed first if they are not cached yet (progress then counts both passes).
    ``max_chunks`` limits the chunks scored (0: all, as llama-perplexity's ``--chunks``).
    """
    from desktop.settings import load_settings

    started = time.monotonic()
    model = Path(model_path)
    if not model.is_file():
        raise UserError(f"The model {model} does not exist.")
    text = load_text(text_path)
    cpu_repack = load_settings().cpu_repack
    common = {"n_ctx": n_ctx, "max_chunks": max_chunks, "threads": threads, "n_gpu_layers": n_gpu_layers,
              "cpu_repack": cpu_repack}
    base_file = Path(base_path) if base_path is not None else None
    if base_file is not None and not base_file.is_file():
        raise UserError(f"The base model {base_file} does not exist.")
    same = base_file is not None and base_file.resolve() == model.resolve()
    cache = base_cache_path(base_file, text.sha256, n_ctx) if base_file is not None else None
    base = _load_base_cache(cache, n_ctx, max_chunks) if cache is not None and not same else None
    passes = 2 if (base_file is not None and not same and base is None) else 1
    if passes == 2:
        assert base_file is not None and cache is not None
        out = _run_pass(base_file, text, **common, base=None, encode=True, gen_tokens=0,
                        step=_Pass("base model: ", 0, 2), progress=progress, cancelled=cancelled)
        base = out["base"]
        base.save(cache)
    out = _run_pass(model, text, **common, base=base, encode=same, gen_tokens=gen_tokens,
                    step=_Pass("", passes - 1, passes), progress=progress, cancelled=cancelled)
    if same and cache is not None:
        out["base"].save(cache)
    totals = out["totals"]
    kld = totals.kld_values() if base_file is not None else None
    size, mtime_ns = model.stat().st_size, model.stat().st_mtime_ns
    return EvalResult(
        model_path=str(model.resolve()),
        model_size=size,
        model_mtime_ns=mtime_ns,
        quant_type=_quant_type(model),
        ppl=totals.ppl(),
        ppl_stderr=totals.ppl_stderr(),
        n_tokens=totals.count,
        n_chunks=out["n_chunks"],
        n_ctx=n_ctx,
        text_name=text.name,
        text_sha256=text.sha256,
        hardware=hardware_summary(out["threads"], n_gpu_layers, cpu_repack),
        threads=out["threads"],
        measured_at=time.time(),
        seconds=time.monotonic() - started,
        prompt_tps=out["prompt_tps"],
        prompt_batch=out["prompt_batch"],
        gen_tps=out["gen_tps"],
        gen_tokens=out["gen_tokens"],
        max_chunks=max_chunks,
        base_path=str(base_file.resolve()) if base_file is not None else None,
        base_size=base_file.stat().st_size if base_file is not None else None,
        base_mtime_ns=base_file.stat().st_mtime_ns if base_file is not None else None,
        base_quant_type=_quant_type(base_file) if base_file is not None else None,
        base_ppl=float(np.exp(np.concatenate(totals.base_nll).mean())) if totals.base_nll else None,
        kld_mean=float(kld.mean()) if kld is not None and kld.size else None,
        kld_stderr=float(kld.std(ddof=1) / np.sqrt(kld.size)) if kld is not None and kld.size > 1 else None,
        kld_p99=float(np.percentile(kld, 99)) if kld is not None and kld.size else None,
        kld_max=float(kld.max()) if kld is not None and kld.size else None,
        top1_agreement=totals.same_top / totals.count if kld is not None and totals.count else None,
    )


# --------------------------------------------------------------------------------------------------------------
# Child process and store


def run_job(*, progress: ProgressFn, cancelled: CancelledFn, model_path: str, **kwargs: Any) -> EvalResult:
    """Child-process entry: ``run_in_child("desktop.eval.evaluate:run_job", {"model_path": ..., "base_path": ...})``;
    the other keys are :func:`evaluate`'s keyword arguments."""
    return evaluate(model_path, progress=progress, cancelled=cancelled, **kwargs)


def evaluate_in_child(model_path: Path | str, *, progress: ProgressFn, cancelled: CancelledFn,
                      target: str = "desktop.eval.evaluate:run_job", **kwargs: Any) -> Any:
    """Run :func:`evaluate` in a child process (a crash or cancel cannot take the caller down); ``target``: another
    measurement of a model with the same contract (:func:`desktop.eval.speed.run_job`)."""
    from desktop.process import run_in_child

    clean = {k: (str(v) if isinstance(v, Path) else v) for k, v in kwargs.items()}
    result = run_in_child(
        target,
        {"model_path": str(model_path), **clean},
        progress=progress,
        cancelled=cancelled,
        crash_next_step="Retry; if it crashes again, turn off 'CPU repack' in Settings, or see the log.",
    )
    return result
