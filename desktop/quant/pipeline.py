"""What the Quantize page runs, with no Qt in it: read a source, predict sizes, and the pipeline
[convert a Hugging Face checkpoint] → [compute an importance matrix] → quantize to each target type.

Everything here is a plain job function (``progress``/``cancelled``, see :mod:`desktop.jobs`) plus an ``emit``
callable for structured events the page shows in its queue and log (:class:`StepEvent`, :class:`LogEvent`).
It lives next to the page because the page is its only user so far; it imports no Qt, so it can move to
``desktop/`` (and back a ``quantdesk`` verb) unchanged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from desktop.quant import types as quant_types
from desktop.quant import sizing
from desktop.errors import Cancelled, UserError
from desktop.jobs import CancelledFn, ProgressFn, format_bytes, with_fields

log = logging.getLogger(__name__)

GGUF, CHECKPOINT = "gguf", "checkpoint"
CONVERT_TYPES = ("F16", "BF16", "F32", "Q8_0")
CONVERT_STEP, IMATRIX_STEP = "convert", "imatrix"
IMATRIX_CHUNK_TOKENS = 512


@dataclass(frozen=True)
class Source:
    """What to quantize: a GGUF file or a Hugging Face checkpoint folder (config.json + safetensors)."""

    path: Path
    kind: str
    label: str = ""

    @property
    def is_checkpoint(self) -> bool:
        return self.kind == CHECKPOINT

    def display(self) -> str:
        return self.label or self.path.name


@dataclass(frozen=True)
class SourceInfo:
    """A source as read for prediction: its tensors under GGUF names and a line describing it."""

    source: Source
    tensors: sizing.ModelTensors
    summary: str
    quantized_types: tuple[str, ...] = ()  # ggml types of already-quantized weights (a requantize warning)
    architecture: str = ""


@dataclass(frozen=True)
class StepEvent:
    """A step of the queue changed: ``key`` is "convert", "imatrix" or a type name; ``state`` is "running" or
    "done"; ``detail`` the per-tensor line or the outcome; ``bytes``/``predicted`` sizes once a file is done."""

    key: str
    state: str
    detail: str = ""
    path: Path | None = None
    bytes: int = 0
    predicted: int = 0


@dataclass(frozen=True)
class LogEvent:
    text: str


Emit = Callable[[object], None]


# ---------------------------------------------------------------------------------------------------------------
# Sources


def source_for_path(path: Path | str) -> Source:
    """A :class:`Source` for a path the user chose; raises a UserError for anything that is neither."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path.name} is not a Hugging Face model folder (it has no config.json).",
                            "Choose the folder that holds config.json and the *.safetensors weights.",
                            kind="unsupported_source")
        return Source(path, CHECKPOINT, f"{path.name} (Hugging Face folder)")
    if path.suffix.lower() == ".gguf" and path.is_file():
        return Source(path, GGUF, path.name)
    raise UserError(f"{path.name} is neither a GGUF file nor a Hugging Face model folder.",
                    "Choose a .gguf file or a folder with config.json and safetensors weights.",
                    kind="unsupported_source")


def library_checkpoints(progress: ProgressFn, cancelled: CancelledFn) -> list[Source]:
    """The checkpoints to offer as sources: the library's list (cached snapshots and imported folders), the one
    list the Models page shows too."""
    from desktop.library import Library

    return [Source(e.path, CHECKPOINT, f"{e.name} (Hugging Face checkpoint)") for e in Library().checkpoints()
            if e.exists]


def read_source(source: Source) -> SourceInfo:
    """The source's tensors (from the GGUF header, or the checkpoint's safetensors headers under the names the
    converter gives them), for predicting sizes. Raises UserError for a source QuantDesk cannot use."""
    if source.is_checkpoint:
        return _read_checkpoint(source)
    if not source.path.is_file():
        raise UserError(f"The source model {source.path} does not exist.", "Choose another source.",
                        kind="unsupported_source")
    with open(source.path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise UserError(f"{source.path.name} is not a GGUF file.", "Choose a .gguf file or a Hugging Face folder.",
                            kind="unsupported_source")
    tensors = sizing.tensors_from_gguf(source.path)
    weights = [t for t in tensors if len(t.shape) >= 2]
    main_types = sorted({t.source_type for t in weights})
    quantized = tuple(t for t in main_types if t not in ("F32", "F16", "BF16"))
    n_params = sum(t.n_elements for t in tensors)
    summary = (f"GGUF · {tensors.arch or 'unknown architecture'} · {_params(n_params)} parameters · "
               f"{len(tensors)} tensors · {', '.join(main_types) or 'no weights'} · "
               f"{format_bytes(source.path.stat().st_size)}")
    return SourceInfo(source, tensors, summary, quantized, tensors.arch or "")


def _read_checkpoint(source: Source) -> SourceInfo:
    import gguf

    from desktop.convert import inspect_checkpoint, output_tensors
    from desktop.convert.architectures import GGUF_ARCH

    ckpt = inspect_checkpoint(source.path)
    arch = gguf.MODEL_ARCH_NAMES[GGUF_ARCH[ckpt.architecture]]
    n_layer = int(ckpt.hparams.get("num_hidden_layers") or 0)
    # The tensors of the F16 GGUF the converter writes (names, shapes, what stays F32), as the converter says.
    specs = [sizing.TensorSpec(o.name, o.shape, o.ggml_type) for o in output_tensors(ckpt, "f16")]
    tensors = sizing.ModelTensors(specs, arch=arch, hparams={"n_layer": n_layer})
    dtypes = sorted({r.dtype for r in ckpt.tensors.values()})
    n_params = sum(s.n_elements for s in specs)
    summary = (f"Hugging Face checkpoint · {ckpt.display_name} ({ckpt.architecture}) · {_params(n_params)} parameters"
               f" · {len(ckpt.tensors)} tensors · {', '.join(dtypes)}: converted to GGUF first")
    return SourceInfo(source, tensors, summary, (), arch)


def _params(n: int) -> str:
    from desktop.gguf.reader import format_parameters

    return format_parameters(n)


def predict_sizes(info: SourceInfo, options: Any, *, has_imatrix: bool,
                  convert_type: str = "F16") -> dict[str, int | str]:
    """Predicted output size per type name for this source and options; a sentence instead where none can be
    made. For a checkpoint, the key "convert" holds the size of the converted GGUF."""
    opts = {**options.sizing_options(), "has_imatrix": has_imatrix}
    sizes: dict[str, int | str] = {}
    for quant in quant_types.QUANT_TYPES:
        try:
            sizes[quant.name] = sizing.predict_size(info.tensors, quant.name, **opts)
        except (UserError, KeyError, ValueError, re.error) as exc:
            sizes[quant.name] = str(exc)
    if info.source.is_checkpoint:
        from desktop.convert import predict_size as converted_size

        sizes[CONVERT_STEP] = converted_size(info.source.path, convert_type.lower())
    return sizes


def prediction_job(info_or_source: Source | SourceInfo, options: Any, has_imatrix: bool,
                   convert_type: str) -> Callable[..., tuple[SourceInfo, dict[str, int | str]]]:
    """A job reading the source (when not read yet) and predicting every type's size."""

    def run(progress: ProgressFn, cancelled: CancelledFn) -> tuple[SourceInfo, dict[str, int | str]]:
        info = info_or_source if isinstance(info_or_source, SourceInfo) else read_source(info_or_source)
        return info, predict_sizes(info, options, has_imatrix=has_imatrix, convert_type=convert_type)

    return run


def parse_overrides(text: str) -> tuple[tuple[str, str], ...]:
    """``regex=type`` lines (blank lines and ``#`` comments ignored) as (regex, ggml type) pairs."""
    pairs = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pattern, sep, type_name = line.rpartition("=")
        if not sep or not pattern.strip() or not type_name.strip():
            raise UserError(f"Override line {number} (“{line}”) is not regex=type.",
                            "Write one per line, for example ffn_down=Q6_K.", kind="bad_override")
        try:
            re.compile(pattern.strip())
        except re.error as exc:
            raise UserError(f"Override line {number}: “{pattern.strip()}” is not a valid regular expression ({exc}).",
                            "Fix the pattern.", kind="bad_override") from exc
        pairs.append((pattern.strip(), quant_types.ggml_type_by_name(type_name)))
    return tuple(pairs)


# ---------------------------------------------------------------------------------------------------------------
# The pipeline


@dataclass(frozen=True)
class PipelineRequest:
    source: Source
    types: tuple[str, ...]
    out_dir: Path
    options: Any  # desktop.quant.quantize.QuantizeOptions, without an imatrix (the pipeline computes one)
    calibration: Path | None = None  # a text: compute an importance matrix and use it for every type
    convert_type: str = "F16"
    imatrix_max_chunks: int | None = None


@dataclass
class PipelineOutcome:
    results: list[Any] = field(default_factory=list)  # desktop.quant.quantize.QuantizeResult, in queue order
    converted: Path | None = None
    imatrix: Path | None = None
    out_dir: Path | None = None


def planned_steps(request: PipelineRequest) -> list[str]:
    steps = [CONVERT_STEP] if request.source.is_checkpoint else []
    if request.calibration is not None and request.types:
        steps.append(IMATRIX_STEP)
    return steps + [quant_types.by_name(t).name for t in request.types]


class _Steps:
    """Addresses each stage's progress as its step of the whole run (``step``, ``index``/``count``), so the status
    area shows one bar and one ETA, and turns it into the queue's running line: data in, data out, no parsing."""

    def __init__(self, progress: ProgressFn, emit: Emit, keys: list[str]) -> None:
        self.progress, self.emit, self.keys = progress, emit, keys

    def relay(self, key: str) -> ProgressFn:
        index = self.keys.index(key)

        def report(done: float, total: float, note: str = "", /, **fields: Any) -> None:
            # a quantize queue reports its own type as the step: find that type's place in the whole run
            step = str(fields.get("step") or key)
            at = self.keys.index(step) if step in self.keys else index
            self.progress(done, total, note, step=step, index=at, count=len(self.keys))
            if note:
                self.emit(StepEvent(step, "running", note))

        return report


def run_pipeline(request: PipelineRequest, *, progress: ProgressFn, cancelled: CancelledFn,
                 emit: Emit, skip: Callable[[str], bool] | None = None) -> PipelineOutcome:
    """[convert] → [imatrix] → quantize every type, as one job. Finished files stay (and are in the library) when
    a later step fails or is cancelled; partial files never do. ``skip(type_name)`` True cancels that type alone
    (see :func:`desktop.quant.quantize.quantize_many`)."""
    from desktop.fileio import free_path
    from desktop.naming import model_name
    from desktop.quant.quantize import QuantizeOptions, plan_quantization, quantize_many

    outcome = PipelineOutcome(out_dir=request.out_dir)
    progress = with_fields(progress)
    steps = _Steps(progress, emit, planned_steps(request))
    options: QuantizeOptions = request.options
    source_path = request.source.path
    if request.source.is_checkpoint:
        source_path = _convert(request, steps.relay(CONVERT_STEP), cancelled, emit)
        outcome.converted = source_path
    if not request.types:
        progress(1, 1, "converted", step=CONVERT_STEP)
        return outcome
    if request.calibration is not None:
        _precheck(plan_quantization, source_path, request, options)
        imatrix_path = free_path(request.out_dir / f"{model_name(source_path)}.imatrix.gguf")
        _imatrix(source_path, request, imatrix_path, steps.relay(IMATRIX_STEP), cancelled, emit)
        outcome.imatrix = imatrix_path
        options = replace(options, imatrix=str(imatrix_path))

    def finished(result: Any) -> None:
        outcome.results.append(result)
        emit(StepEvent(result.quant_type, "done", f"{format_bytes(result.bytes)} (predicted "
                       f"{format_bytes(result.predicted_bytes)}) in {result.seconds:.1f} s",
                       result.path, result.bytes, result.predicted_bytes))
        emit(LogEvent(f"{result.quant_type}: wrote {result.path} ({format_bytes(result.bytes)})"))

    emit(LogEvent(f"Quantizing {source_path.name} to {', '.join(request.types)} in {request.out_dir}"))
    first_type = quant_types.by_name(request.types[0]).name
    quantize_many(source_path, list(request.types), request.out_dir, options, progress=steps.relay(first_type),
                  cancelled=cancelled, on_result=finished, skip=skip)
    return outcome


def _precheck(plan: Callable[..., Any], source: Path, request: PipelineRequest, options: Any) -> None:
    """Refuse before the (slow) importance matrix what the quantization would refuse anyway (requantize, disk)."""
    plain = [t for t in request.types if not quant_types.by_name(t).needs_imatrix]
    if not plain:
        return
    try:
        plan(source, plain, request.out_dir, options)
    except UserError as exc:
        if exc.kind != "needs_imatrix":  # an override may need one; the matrix is coming
            raise


def _convert(request: PipelineRequest, progress: ProgressFn, cancelled: CancelledFn, emit: Emit) -> Path:
    from desktop.convert import inspect_checkpoint
    from desktop.convert.job import cleanup_paths
    from desktop.library import register
    from desktop.process import run_in_child

    src = request.source.path
    from desktop.naming import free_output_path

    inspect_checkpoint(src)  # every refusal in one sentence, before a child process starts
    out = free_output_path(src, request.convert_type, request.out_dir)  # the repo's or folder's name, never taken
    emit(StepEvent(CONVERT_STEP, "running", "starting"))
    emit(LogEvent(f"Converting {src} to {out.name} ({request.convert_type})"))

    def relay(done: float, total: float, note: str = "", /, **_fields: Any) -> None:
        progress(done, total, f"[{int(done)}/{int(total)}] {note}" if total else note)

    result = run_in_child("desktop.convert.job:run",
                          {"src_dir": str(src), "out_path": str(out), "outtype": request.convert_type.lower()},
                          progress=relay, cancelled=cancelled, cleanup=cleanup_paths(out),
                          crash_next_step="Retry; if it crashes again, the log has the details.")
    path = Path(result["path"])
    register(path, source=f"converted from {src}")
    emit(StepEvent(CONVERT_STEP, "done", f"{path.name}, {format_bytes(result['size'])} in {result['seconds']:.1f} s",
                   path, int(result["size"])))
    emit(LogEvent(f"Converted: {path} ({format_bytes(result['size'])}, {result['tensors']} tensors)"))
    return path


def _imatrix(model: Path, request: PipelineRequest, out: Path, progress: ProgressFn, cancelled: CancelledFn,
             emit: Emit) -> None:
    from desktop.quant.imatrix import compute_imatrix

    assert request.calibration is not None
    emit(StepEvent(IMATRIX_STEP, "running", "starting"))
    emit(LogEvent(f"Computing an importance matrix from {request.calibration.name}"))

    if cancelled():
        raise Cancelled()
    compute_imatrix(model, request.calibration, out, progress=progress, cancelled=cancelled,
                    n_ctx=IMATRIX_CHUNK_TOKENS, max_chunks=request.imatrix_max_chunks)
    emit(StepEvent(IMATRIX_STEP, "done", f"saved as {out.name}", out, out.stat().st_size))
    emit(LogEvent(f"Importance matrix saved: {out}"))


def describe_types(types: Sequence[str]) -> str:
    return ", ".join(types) if len(types) <= 3 else f"{', '.join(types[:3])} and {len(types) - 3} more"
