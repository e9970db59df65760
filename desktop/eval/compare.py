"""What the Compare page shows, and the jobs that compute it. No Qt here: the jobs are plain functions taking
``progress(done, total, message)`` and ``cancelled()``, so tests can call them without a display.

* :func:`family` / :func:`pick_base`: which library entries are quants of which base (same architecture and
  parameter count; the base is the highest-precision one).
* :func:`load_job`: the stored measurements of a base and its quants (nothing is measured).
* :func:`measure_job`: makes the missing quants, then measures the base and each quant through the store
  (:func:`desktop.eval.measurements.measure`, in a child process; a result already stored comes back as it is).
* :func:`speed_job`: times one measured row again (speeds are the median of several runs; a disturbed one shows).
* :func:`fits_text`: whether a row fits at a context on this machine (an estimate, :mod:`desktop.memory`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from desktop import memory, settings
from desktop.quant import sizing, types as quant_types
from desktop.errors import UserError
from desktop.eval.evaluate import EvalResult
from desktop.jobs import CancelledFn, Progress, ProgressFn, check_cancelled, format_bytes
from desktop.library import ModelEntry

if TYPE_CHECKING:
    from desktop.gguf.reader import GGUFInfo

LOADED_MESSAGE = "loaded stored results"
"""The load job's last progress message: it read the store and measured nothing."""


STATUS_CHARS = 90
"""Progress messages are cut to this: the status area shows them on one line and cannot elide."""


def one_line(progress: ProgressFn) -> ProgressFn:
    def relay(done: float, total: float, message: str) -> None:
        progress(done, total, message if len(message) <= STATUS_CHARS else message[: STATUS_CHARS - 1] + "…")

    return relay


def precision(entry: ModelEntry) -> float:
    """Nominal bits per weight of an entry's type (unknown types count as 0)."""
    try:
        return quant_types.by_name(entry.quant_type).bpw
    except (KeyError, UserError, ValueError):
        return 0.0


def family(entries: Sequence[ModelEntry], base: ModelEntry) -> list[ModelEntry]:
    """The quants of ``base``: the other entries with its architecture and parameter count and no more bits per
    weight than it has (an F16 is never listed as a quant of a Q4_K_M), largest first."""
    same = [e for e in entries if e.path != base.path and e.architecture == base.architecture
            and e.parameters == base.parameters and precision(e) <= precision(base)]
    return sorted(same, key=lambda e: (-precision(e), -e.size_bytes, e.name))


def distinct(entries: Sequence[ModelEntry]) -> list[ModelEntry]:
    """The entries with one row per file: a file listed under two names (a link and its target) counts once."""
    seen: set[Path] = set()
    out = []
    for e in entries:
        try:
            key = e.path.resolve()
        except OSError:
            key = e.path
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def entry_label(entry: ModelEntry, entries: Sequence[ModelEntry]) -> str:
    """How a model is named in a list: its file name, type and size, and its folder when another entry has the
    same file name (two Q4_K_M files of one model otherwise look the same)."""
    label = f"{entry.path.name} · {entry.quant_type} · {format_bytes(entry.size_bytes)}"
    if any(e.path != entry.path and e.path.name == entry.path.name for e in entries):
        label += f" · in {entry.path.parent.name or entry.path.parent}"
    return label


def pick_base(entries: Sequence[ModelEntry]) -> ModelEntry | None:
    """The default base: the highest-precision entry of the family that has the most members (ties: newest)."""
    if not entries:
        return None
    groups: dict[tuple[str, int], list[ModelEntry]] = {}
    for e in entries:
        groups.setdefault((e.architecture, e.parameters), []).append(e)
    best = max(groups.values(), key=lambda g: (len(g), max(e.added_at for e in g)))
    return max(best, key=lambda e: (precision(e), e.size_bytes))


def is_calibration_text(path: Path | str, *, read: bool = True) -> bool:
    """True when ``path`` is the bundled calibration text (or, with ``read``, a copy of it): measuring on the text
    the importance matrix was computed from flatters the quants that used it."""
    from desktop.quant.imatrix import default_calibration_text

    calibration = default_calibration_text()
    p = Path(path)
    try:
        if p.resolve() == calibration.resolve():
            return True
        return read and hashlib.sha256(p.read_bytes()).hexdigest() == hashlib.sha256(calibration.read_bytes()).hexdigest()
    except OSError:
        return False


CALIBRATION_REFUSAL = ("That is the calibration text (used to compute importance matrices); measuring on it would "
                       "flatter the quants made with it. Choose another text, or use the bundled evaluation text.")


@dataclass(frozen=True)
class Row:
    """One model in the table: a measured result (None until measured) and what the fit estimate needs."""

    path: str
    quant_type: str
    size_bytes: int
    parameters: int
    is_base: bool
    result: EvalResult | None
    shape: memory.ModelShape | None

    @property
    def bits_per_weight(self) -> float | None:
        return sizing.bits_per_weight(self.size_bytes, self.parameters)


@dataclass(frozen=True)
class Request:
    base: Path
    quants: tuple[Path, ...]  # existing files, ticked
    make: tuple[str, ...]  # types to make now
    text_path: Path | None  # None: the bundled evaluation text
    n_ctx: int
    max_chunks: int
    out_dir: Path | None = None  # None: QuantDesk's models folder, read (and made) by the job
    n_gpu_layers: int | None = None  # None: as many of the base's layers as fit on the selected engine's GPUs


def _shape(info: GGUFInfo) -> memory.ModelShape | None:
    try:
        return memory.shape_from_gguf(info)
    except (UserError, OSError, KeyError, ValueError):
        return None


def _row(path: Path, parameters: int, base: Path, result: EvalResult | None) -> Row:
    from desktop.gguf.reader import read_gguf

    info = read_gguf(path)  # read once: the row and its memory shape both come from this header
    return Row(str(path), result.quant_type if result else info.quant_type, path.stat().st_size,
               parameters or info.parameter_count, path.resolve() == base.resolve(), result, _shape(info))


def load_job(base: Path, quants: Sequence[Path], parameters: int, *, progress: ProgressFn,
             cancelled: CancelledFn) -> list[Row]:
    """Rows for the base and its quants from the store: the newest measurement against this base, all taken on
    the same text and context as the newest one (so the rows compare). Measures nothing."""
    from desktop.eval.measurements import MeasurementStore

    files = [base, *quants]
    progress(0, 1, "reading stored results")
    resolved = str(base.resolve())
    stored = [r for r in MeasurementStore().results_for(files) if r.base_path == resolved]
    newest: dict[str, EvalResult] = {}
    if stored:
        key = (stored[0].text_sha256, stored[0].n_ctx)  # results_for is newest first
        for r in stored:
            if (r.text_sha256, r.n_ctx) == key:
                newest.setdefault(r.model_path, r)
    rows = []
    for path in files:
        check_cancelled(cancelled)
        result = newest.get(str(path.resolve()))
        if result is not None:
            rows.append(_row(path, parameters, base, result))
    progress(1, 1, LOADED_MESSAGE)
    return rows


def measure_job(request: Request, parameters: int, *, progress: ProgressFn, cancelled: CancelledFn) -> list[Row]:
    """Make the missing quants (one queue), then measure the base and each quant against it, through the store."""
    from desktop.quant import quantize
    from desktop.eval.measurements import measure

    progress = one_line(progress)
    if request.text_path is not None and is_calibration_text(request.text_path):
        raise UserError(CALIBRATION_REFUSAL, kind="calibration_text")
    made: list[Path] = []
    steps = len(request.quants) + len(request.make) + 1 + (1 if request.make else 0)
    step = 0
    if request.make:
        def relay(done: float, total: float, message: str = "", /, **fields: Any) -> None:
            fraction = Progress.of(done, total, message, **fields).fraction or 0.0  # over the whole queue
            progress(step + fraction, steps, f"making quants: {fields.get('step', '')} {message}")

        out_dir = request.out_dir if request.out_dir is not None else settings.models_dir()
        results = quantize.quantize_many(request.base, request.make, out_dir,
                                         quantize.QuantizeOptions(), progress=relay, cancelled=cancelled)
        made = [r.path for r in results]
        step += 1
    models = [request.base, *request.quants, *made]
    rows = []
    gpu_layers = request.n_gpu_layers
    if gpu_layers is None:  # the base is the largest model: what fits for it fits for every quant
        from desktop.llama.gpu_layers import planned_gpu_layers

        gpu_layers = planned_gpu_layers(request.base, request.n_ctx)
    common: dict[str, Any] = {"base_path": request.base, "text_path": request.text_path, "n_ctx": request.n_ctx,
                              "max_chunks": request.max_chunks, "n_gpu_layers": gpu_layers}
    for index, path in enumerate(models):
        check_cancelled(cancelled)
        label = "the base" if index == 0 else _type_label(Path(path))
        label = f"measuring {label} ({index + 1}/{len(models)})"

        def relay_eval(done: float, total: float, message: str, label: str = label, at: int = step) -> None:
            progress(at + (done / total if total else 0), steps, f"{label}: {message}")

        result = measure(path, progress=relay_eval, cancelled=cancelled, **common)
        rows.append(_row(Path(path), parameters, request.base, result))
        step += 1
    progress(steps, steps, f"measured {len(models)} models")
    return rows


def speed_job(row: Row, base: Path, parameters: int, *, progress: ProgressFn, cancelled: CancelledFn) -> Row:
    """Time one measured row's speed again (its quality numbers are kept: they do not vary) and store it."""
    from desktop.eval.measurements import measure_speed

    if row.result is None:
        raise UserError("This model has not been measured yet.", "Press Measure first.")
    progress = one_line(progress)
    label = "the base" if row.is_base else row.quant_type

    def relay(done: float, total: float, message: str = "", /, **_fields: Any) -> None:
        progress(done, total, f"measuring the speed of {label} again: {message}")

    result = measure_speed(row.result, progress=relay, cancelled=cancelled)
    return _row(Path(row.path), parameters, base, result)


def _type_label(path: Path) -> str:
    from desktop.quant.quantize import model_stem

    tag = path.stem[len(model_stem(path)):].lstrip("-_.")
    return tag or path.name


def fits_text(shape: memory.ModelShape | None, n_ctx: int, report: Any | None) -> tuple[str, str]:
    """(short verdict, sentence) for running the model at ``n_ctx`` on this machine: the memory planner's."""
    if shape is None:
        return "?", "The file's shape could not be read, so there is no estimate."
    if report is not None:
        machine = memory.machine_from_report(report)
    else:
        import psutil

        ram = psutil.virtual_memory()
        machine = memory.Machine((), memory.HostBudget(int(ram.available), int(ram.total)))
    verdict = memory.fit(shape, machine, memory.PlanOptions(n_ctx=n_ctx))
    plan = verdict.plan
    devices = [f"{d.name}: {'fits' if d.fits else 'does not fit'}, needs {format_bytes(d.need_bytes)} of "
               f"{format_bytes(d.budget_bytes)}" for d in (*plan.gpus, plan.host)]
    return verdict.short(), f"Estimate at context {n_ctx}. {plan.message}\n" + "\n".join(devices)


def provenance(result: EvalResult) -> str:
    """The tooltip of every measured number: text, hardware and date."""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(result.measured_at))
    return f"{result.provenance()}, {when}"


def find_job(base: Path, parameters: int, known: Sequence[Path] = (), *, progress: ProgressFn, cancelled: CancelledFn,
             **kwargs: Any) -> tuple[Any, list[Row]]:
    """:func:`desktop.eval.recommend.find_quant`, then the rows of what it measured (from the store) for the table."""
    from desktop.eval.recommend import find_quant

    if kwargs.get("out_dir") is None:  # quants it makes go to QuantDesk's models folder, read here, off the GUI
        kwargs["out_dir"] = settings.models_dir()
    # its last message is the whole recommendation: the page shows it in full, the status area one line of it
    rec = find_quant(base, progress=one_line(progress), cancelled=cancelled, **kwargs)
    candidates = [rec.chosen, *rec.runners_up, *(c for c, _ in rec.rejected)]
    measured = [Path(c.path) for c in candidates if c is not None and c.result is not None]
    known = [p for p in known if p.resolve() not in {m.resolve() for m in measured}]
    rows = load_job(base, [*known, *measured], parameters, progress=lambda *a: None, cancelled=cancelled)
    return rec, rows
