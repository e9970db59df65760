"""Quantize a GGUF to one or more types with llama.cpp's ``llama_model_quantize``, each in a child process.

Parent side (what the GUI and the CLI call):

* :func:`plan_quantization` checks everything that can be checked before work starts (the source, each type,
  whether it needs an importance matrix, requantizing, free disk space) and returns one
  :class:`QuantizeTask` per type with its output path and predicted size; it raises
  :class:`~desktop.errors.UserError` otherwise.
* :func:`quantize_many` runs the tasks one after another (a queue), reports progress and registers each finished
  file in the library. :func:`quantize_one` runs a single type.

Progress is data (:class:`desktop.jobs.Progress`): each type is a step (``step="Q4_K_M", index=0, count=2``) whose
``done``/``total`` count the source's tensor elements (tensors differ wildly in size, so elements track time), and
whose note names the tensor (``"[12/201] blk.3.ffn_down.weight → q4_K"``). Cancel kills the child
(``llama_model_quantize`` cannot be interrupted) and removes the partial file; finished outputs of earlier types
stay.

Child side: :mod:`desktop.quant.quantize_child` (:func:`run_job`, re-exported here with
:class:`TensorLineParser` and :func:`build_params`).
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from desktop.quant import types as quant_types
from desktop.quant import sizing
from desktop.errors import Cancelled, UserError
from desktop import naming
from desktop.fileio import free_path, partial_path, publish, remove_quietly
from desktop.naming import model_stem
from desktop.jobs import CancelledFn, ProgressFn, format_bytes, with_fields
from desktop.quant.quantize_child import TensorLineParser, build_params, run_job

log = logging.getLogger(__name__)

__all__ = [
    "REQUANTIZE_WARNING",
    "QuantizeOptions",
    "QuantizeResult",
    "QuantizeTask",
    "TensorLineParser",
    "build_params",
    "output_path",
    "plan_quantization",
    "quantize_many",
    "quantize_one",
    "run_job",
]

REQUANTIZE_WARNING = (
    "The source is already quantized: quantizing it again adds a second rounding error on top of the first, "
    "so the result is worse than quantizing the F16/BF16 original to the same type."
)
DISK_MARGIN = 1.02  # predicted sizes are within 2%


@dataclass(frozen=True)
class QuantizeOptions:
    """Advanced options, all optional.

    ``imatrix``: path of an importance matrix (GGUF or legacy .dat). ``output_type``/``embedding_type``: ggml type
    names ("Q8_0", "F16") forced on ``output.weight``/``token_embd.weight``. ``overrides``: (regex, ggml type)
    pairs for other tensors, first match wins (llama.cpp's ``--tensor-type``). ``pure``: no per-tensor mixture,
    every tensor gets the type's main ggml type. ``allow_requantize``: accept an already-quantized source (see
    :data:`REQUANTIZE_WARNING`). ``threads``: 0 for all cores.
    """

    imatrix: str | None = None
    output_type: str | None = None
    embedding_type: str | None = None
    overrides: tuple[tuple[str, str], ...] = ()
    pure: bool = False
    allow_requantize: bool = False
    threads: int = 0

    def sizing_options(self) -> dict[str, Any]:
        return {
            "output_type": self.output_type,
            "embedding_type": self.embedding_type,
            "pure": self.pure,
            "has_imatrix": self.imatrix is not None,
            "overrides": self.overrides,
        }

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["overrides"] = [list(p) for p in self.overrides]
        return data


@dataclass(frozen=True)
class QuantizeTask:
    """One planned output: ``predicted_bytes`` from :mod:`desktop.quant.sizing`."""

    source: Path
    quant: quant_types.QuantType
    output: Path
    predicted_bytes: int
    n_tensors: int
    n_elements: int = 0  # of the source's tensors: the unit of this task's progress


@dataclass(frozen=True)
class QuantizeResult:
    quant_type: str
    path: Path
    bytes: int
    predicted_bytes: int
    seconds: float
    imatrix: str | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)


def output_path(source: Path | str, type_name: str, out_dir: Path | str | None = None) -> Path:
    """Where a quant of ``source`` is named to be (:func:`desktop.naming.output_path`); planning takes the next free
    name when that one exists."""
    return naming.output_path(source, type_name, out_dir)


@functools.lru_cache(maxsize=8)
def _cached_tensors(path: str, mtime_ns: int, size: int) -> sizing.ModelTensors:
    return sizing.tensors_from_gguf(path)


def source_tensors(source: Path | str) -> sizing.ModelTensors:
    """The source's tensors, read once per file version (planning and progress both need them)."""
    stat = Path(source).stat()
    return _cached_tensors(str(source), stat.st_mtime_ns, stat.st_size)


def _read_source(source: Path) -> sizing.ModelTensors:
    if not source.is_file():
        raise UserError(f"The source model {source} does not exist.")
    with open(source, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UserError(
                f"{source.name} is not a GGUF file.",
                "Convert the model to GGUF first (the Quantize page accepts a Hugging Face folder too).",
            )
    return source_tensors(source)


def plan_quantization(
    source: Path | str,
    types: Sequence[str],
    out_dir: Path | str | None = None,
    options: QuantizeOptions | None = None,
    *,
    check_disk: bool = True,
) -> list[QuantizeTask]:
    """Validate a quantization before any work starts and return one task per type (in the order given)."""
    options = options or QuantizeOptions()
    source = Path(source)
    if not types:
        raise UserError("Choose at least one type to quantize to.")
    quants = []
    for name in types:
        quant = quant_types.by_name(name)
        if quant not in quants:
            quants.append(quant)
    for name in (options.output_type, options.embedding_type, *(t for _, t in options.overrides)):
        if name:
            quant_types.ggml_type_by_name(name)
    for pattern, _ in options.overrides:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise UserError(f"The tensor pattern '{pattern}' is not a valid regular expression ({exc}).") from exc
    tensors = _read_source(source)
    if options.imatrix is not None:
        from desktop.quant.imatrix import load_imatrix

        matrix = load_imatrix(options.imatrix)
        names = {t.name for t in tensors}
        if not names.intersection(matrix.sums):
            raise UserError(
                f"The importance matrix {Path(options.imatrix).name} was made for another model: none of its "
                "entries matches this model's tensors.",
                "Compute one for this model.",
            )
    quantized_src = sorted({t.source_type for t in tensors if len(t.shape) >= 2 and _is_quantized(t.source_type)})
    tasks = []
    taken: set[Path] = set()
    for quant in quants:
        if options.imatrix is None:
            needing = sizing.tensors_needing_imatrix(tensors, quant.name, **_plain(options))
            if quant.needs_imatrix or needing:
                raise UserError(
                    f"{quant.name} needs an importance matrix: llama.cpp refuses to make it without one, because "
                    "the result would be garbage.",
                    "Add a calibration text (the bundled sample works) or choose another type.",
                    kind="needs_imatrix",
                )
        if quantized_src and not options.allow_requantize and not quant.is_float:
            raise UserError(
                f"{source.name} is already quantized ({', '.join(quantized_src)}), and quantizing it again "
                "compounds the error.",
                "Use the F16/BF16 original, or tick 'allow requantize' if you have nothing better.",
                kind="requantize",
            )
        if quantized_src and not options.allow_requantize and quant.is_float:
            raise UserError(
                f"{source.name} is quantized ({', '.join(quantized_src)}); turning it back into {quant.name} "
                "needs 'allow requantize'.",
                "Tick 'allow requantize'; the result is as good as the quantized file, no better.",
                kind="requantize",
            )
        # Never an existing file (the source, another model's quant, a link into the Hugging Face cache): the next
        # free name instead. Never resolved: the path of a link is the link's, not its target's.
        target = free_path(output_path(source, quant.name, out_dir), taken)
        taken.add(target)
        predicted = sizing.predict_size(tensors, quant.name, **options.sizing_options())
        tasks.append(QuantizeTask(source, quant, target, predicted, len(tensors),
                                  sum(t.n_elements for t in tensors)))
    if check_disk:
        _check_free_space(tasks)
    return tasks


def _plain(options: QuantizeOptions) -> dict[str, Any]:
    opts = options.sizing_options()
    opts.pop("has_imatrix")
    return opts


def _is_quantized(ggml_type: str) -> bool:
    return ggml_type not in ("F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64")


def _check_free_space(tasks: Sequence[QuantizeTask]) -> None:
    by_folder: dict[Path, int] = {}
    for task in tasks:
        folder = task.output.parent
        folder.mkdir(parents=True, exist_ok=True)
        by_folder[folder] = by_folder.get(folder, 0) + task.predicted_bytes
    for folder, needed in by_folder.items():
        free = shutil.disk_usage(folder).free
        if needed * DISK_MARGIN > free:
            raise UserError(
                f"These quants need about {format_bytes(needed)} but {folder} has only {format_bytes(free)} free.",
                "Free some space, pick fewer types, or choose another output folder.",
                kind="disk_full",
            )


# --------------------------------------------------------------------------------------------------------------
# Parent side: run the queue


def quantize_one(
    task: QuantizeTask,
    options: QuantizeOptions | None = None,
    *,
    progress: ProgressFn,
    cancelled: CancelledFn,
    grace_s: float = 0.5,
    child: Any = None,
) -> QuantizeResult:
    """Run one task in a child process (``child``: a warm one to use); returns its result once the output has its
    final name."""
    from desktop.process import run_in_child

    options = options or QuantizeOptions()
    partial = partial_path(task.output)
    remove_quietly(partial)
    started = time.monotonic()
    try:
        summary = run_in_child(
            "desktop.quant.quantize_child:run_job",
            {
                "source": str(task.source),
                "out_path": str(partial),
                "type_name": task.quant.name,
                "options": options.as_dict(),
                "n_elements": task.n_elements,
            },
            progress=progress,
            cancelled=cancelled,
            cleanup=[partial],
            grace_s=grace_s,
            crash_next_step="Retry; if it crashes again, the log has the details.",
            child=child,
        )
    except BaseException:
        remove_quietly(partial)
        raise
    path = publish(partial, task.output)  # synced, never replacing a file; the partial goes if this fails
    return QuantizeResult(
        quant_type=task.quant.name,
        path=path,
        bytes=path.stat().st_size,
        predicted_bytes=task.predicted_bytes,
        seconds=time.monotonic() - started,
        imatrix=options.imatrix,
        warnings=tuple(summary.get("warnings", ())),
    )


def quantize_many(
    source: Path | str,
    types: Sequence[str],
    out_dir: Path | str | None = None,
    options: QuantizeOptions | None = None,
    *,
    progress: ProgressFn,
    cancelled: CancelledFn,
    on_result: Callable[[QuantizeResult], None] | None = None,
    register: bool = True,
    skip: Callable[[str], bool] | None = None,
) -> list[QuantizeResult]:
    """Quantize ``source`` to each of ``types`` in turn (checked up front by :func:`plan_quantization`).

    Each finished file is reported through ``on_result`` and registered in the library (when the library module
    is available). Raises :class:`~desktop.errors.Cancelled` on cancel (files already finished stay) and
    :class:`~desktop.jobs.JobFailed` when llama.cpp fails. ``skip(type_name)`` True cancels one item of the queue:
    a waiting type never starts, a running one is stopped (its partial file removed), and the queue goes on.
    """
    options = options or QuantizeOptions()
    progress = with_fields(progress)
    from desktop.process import ChildProcess

    # The first child starts now and imports llama.cpp while the plan reads the source's header.
    warm = ChildProcess.warm(("llama_cpp", "desktop.quant.quantize_child"), log_name="quantize")
    try:
        tasks = plan_quantization(source, types, out_dir, options)
    except BaseException:
        warm.close()
        raise
    results: list[QuantizeResult] = []
    count = len(tasks)
    unused: Any = warm  # the warm child runs the first task that runs; closed here if none does
    try:
        for index, task in enumerate(tasks):
            if cancelled():
                raise Cancelled()  # the types after a cancel never start, however quick they would be
            name = task.quant.name
            if skip is not None and skip(name):
                continue
            step = {"step": name, "index": index, "count": count}

            def relay(done: float, total: float, note: str = "", /, *, _step: dict[str, Any] = step,
                      **_fields: Any) -> None:
                progress(done, total, note, **_step)

            def stop_item(_name: str = name) -> bool:
                return cancelled() or (skip is not None and skip(_name))

            progress(0, task.n_elements or task.n_tensors, "starting", **step)
            child, unused = unused, None
            try:
                result = quantize_one(task, options, progress=relay, cancelled=stop_item, child=child)
            except Cancelled:
                if cancelled() or skip is None or not skip(name):
                    raise
                continue  # only this item was cancelled: the queue goes on
            results.append(result)
            if register:
                _register(result, task.source)
            if on_result is not None:
                on_result(result)
    finally:
        if unused is not None:
            unused.close()
    return results


def _register(result: QuantizeResult, source: Path) -> None:
    from desktop.library import register

    register(result.path, source=str(source), quant_type=result.quant_type, imatrix=result.imatrix)
