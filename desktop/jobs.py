"""The job contract every long operation follows, with no Qt in it.

A job is a plain function ``fn(*, progress, cancelled, **kwargs)``:

* ``progress(done, total, note, **fields)`` reports how far it is, as data (see :class:`Progress`): ``done`` and
  ``total`` count work in units roughly proportional to time (``total`` 0 means unknown), ``note`` says what is being
  worked on ("blk.3.ffn_down.weight → q4_K"), and the keyword fields say which ``step`` of how many
  (``index``/``count``) and whether the units are bytes (``unit="B"``). A job never writes speed, ETA or percentages
  into the note: :class:`ProgressTracker` makes them where they are shown (the status area, the CLI printer);
* ``cancelled()`` returns True once the user asked to stop; the job then cleans up and raises :class:`Cancelled`;
* it returns a picklable result, raises :class:`~desktop.errors.UserError` for failures it understands, and
  anything else is a bug.

Errors cross threads and processes as :class:`JobError` values, never as bare strings.
"""

from __future__ import annotations

import errno
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from desktop.errors import Cancelled, UserError

CancelledFn = Callable[[], bool]


class ProgressFn(Protocol):
    """``progress(done, total, note="", *, step="", index=0, count=1, unit="")``: the fields of :class:`Progress`.
    Callers pass the keyword fields only when they have them, so a plain ``(done, total, note)`` callable still
    receives every report of a one-step job."""

    def __call__(self, done: float, total: float, note: str = "", /, **fields: Any) -> None: ...


PROGRESS_FIELDS = ("step", "index", "count", "unit")


@dataclass(frozen=True)
class Progress:
    """One progress report, as data.

    ``done``/``total``: work of the current step, in units roughly proportional to time (bytes, tensor elements,
    chunks); ``total`` 0 means unknown. ``note``: what is being worked on, for people ("2 of 5 files",
    "[12/201] blk.3.ffn_down.weight → q4_K"), never speed or ETA. ``step``: the step's key ("convert", "imatrix",
    "Q4_K_M", ""); ``index``/``count``: which step of how many (the job's overall fraction is
    ``(index + done/total) / count``). ``unit``: "B" when ``done``/``total`` are bytes (a speed in MB/s is shown).
    """

    done: float = 0.0
    total: float = 0.0
    note: str = ""
    step: str = ""
    index: int = 0
    count: int = 1
    unit: str = ""

    @classmethod
    def of(cls, done: float, total: float, note: str = "", **fields: Any) -> Progress:
        unknown = set(fields) - set(PROGRESS_FIELDS)
        if unknown:
            raise TypeError(f"unknown progress fields: {sorted(unknown)}")
        return cls(float(done), float(total), str(note), **fields)

    def fields(self) -> dict[str, Any]:
        """The keyword fields that differ from the defaults (what to pass on to another ``progress``)."""
        default = _DEFAULT_PROGRESS
        return {name: getattr(self, name) for name in PROGRESS_FIELDS if getattr(self, name) != getattr(default, name)}

    def send(self, progress: ProgressFn) -> None:
        progress(self.done, self.total, self.note, **self.fields())

    @property
    def fraction(self) -> float | None:
        """How much of the whole job is done (0..1), or None while the step's total is unknown."""
        if self.total <= 0:
            return None
        count = max(1, self.count)
        return min(1.0, max(0.0, (self.index + min(1.0, self.done / self.total)) / count))


_DEFAULT_PROGRESS = Progress()


def with_fields(progress: Callable[..., None]) -> ProgressFn:
    """``progress`` itself if it takes the keyword fields, else a wrapper that drops them: a plain
    ``(done, total, note)`` callable (``lambda *a: None``) still works with a job that reports steps."""
    import inspect

    try:
        parameters = inspect.signature(progress).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: assume the plain form
        parameters = ()  # type: ignore[assignment]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return progress  # type: ignore[return-value]

    def plain(done: float, total: float, note: str = "", /, **_fields: Any) -> None:
        progress(done, total, note)

    return plain

__all__ = [
    "Cancelled",
    "CancelledFn",
    "JobError",
    "JobFailed",
    "Progress",
    "ProgressFn",
    "ProgressTracker",
    "ProgressPrinter",
    "RateMeter",
    "check_cancelled",
    "error_from_exception",
    "format_bytes",
    "format_duration",
    "with_fields",
]


@dataclass(frozen=True)
class JobError:
    """A failure as the GUI shows it: ``message`` is one sentence, ``next_step`` what to do.

    ``kind`` is "error" (known failure), "crash" (a child process died), "out_of_memory", "disk_full",
    "internal" (a bug) or a domain-specific word. ``detail`` (a traceback or log tail) goes to the log and
    behind a "Details" button, never into the sentence.
    """

    kind: str
    message: str
    next_step: str = ""
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> JobError:
        return cls(**data)

    def sentence(self) -> str:
        return f"{self.message} {self.next_step}".strip()


class JobFailed(Exception):
    """Raised by the runners when a job ended with a :class:`JobError`."""

    def __init__(self, error: JobError) -> None:
        super().__init__(error.sentence())
        self.error = error


def error_from_exception(exc: BaseException) -> JobError:
    """Turn an exception into the value that crosses the thread or process boundary."""
    if isinstance(exc, JobFailed):
        return exc.error
    if isinstance(exc, UserError):
        return JobError(exc.kind, exc.message, exc.next_step)
    if isinstance(exc, MemoryError):
        return JobError(
            "out_of_memory",
            "The job ran out of memory.",
            "Close other programs, or pick a smaller model or a shorter context.",
            traceback.format_exc(),
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return JobError(
            "disk_full",
            f"The disk is full{f' while writing {exc.filename}' if exc.filename else ''}.",
            "Free some space, or choose another folder in Settings, then retry.",
        )
    detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return JobError(
        "internal",
        f"QuantDesk hit an unexpected problem ({type(exc).__name__}: {exc}).",
        "The full report is in the log; please include it in a bug report.",
        detail,
    )


def check_cancelled(cancelled: CancelledFn) -> None:
    if cancelled():
        raise Cancelled()


class RateMeter:
    """Speed over a sliding window of (time, amount done) samples.

    An ETA is given only once the samples span ``warmup_s`` seconds: the first reports of a run (a child process
    importing llama.cpp, a tiny first tensor) say nothing about its speed, and an 8-second run must not start with
    "3 min 38 s left"."""

    def __init__(self, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic,
                 warmup_s: float = 2.0) -> None:
        self._window = window_s
        self._warmup = warmup_s
        self._clock = clock
        self._samples: list[tuple[float, float]] = []
        self._first: float | None = None

    def reset(self) -> None:
        self._samples.clear()
        self._first = None

    def add(self, done: float) -> None:
        now = self._clock()
        if self._first is None:
            self._first = now
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > self._window:
            self._samples.pop(0)

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    def warmed_up(self) -> bool:
        return self._first is not None and bool(self._samples) and self._samples[-1][0] - self._first >= self._warmup

    def eta(self, total: float) -> float | None:
        rate = self.rate()
        if rate <= 0 or not self._samples or total <= 0 or not self.warmed_up():
            return None
        return max(0.0, (total - self._samples[-1][1]) / rate)


class ProgressTracker:
    """Turns a job's :class:`Progress` reports into what people read: the fraction for a bar, the speed (for
    bytes), the ETA of the whole job, and one line of text. The status area, the pages and the CLI printer all use
    it, so a job's progress reads the same everywhere."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, warmup_s: float = 2.0) -> None:
        self.last = Progress()
        self._overall = RateMeter(clock=clock, warmup_s=warmup_s)  # on the whole job's fraction: the ETA
        self._step = RateMeter(clock=clock, warmup_s=0.5)  # on the step's bytes: the speed
        self._step_key: tuple[str, int] | None = None

    def update(self, report: Progress) -> None:
        key = (report.step, report.index)
        if key != self._step_key:
            self._step_key = key
            self._step.reset()
        self.last = report
        self._step.add(report.done)
        fraction = report.fraction
        if fraction is not None:
            self._overall.add(fraction)

    @property
    def fraction(self) -> float | None:
        return self.last.fraction

    def speed(self) -> float | None:
        """Bytes per second of the current step, for byte-counted work once it is measurable."""
        if self.last.unit != "B":
            return None
        rate = self._step.rate()
        return rate if rate > 0 and self._step.warmed_up() else None

    def eta(self) -> float | None:
        fraction = self.fraction
        if fraction is None or fraction >= 1.0:
            return None
        return self._overall.eta(1.0)

    def line(self, *, with_eta: bool = True, with_percent: bool = False) -> str:
        """"Q4_K_M (2/3) · [12/201] blk.3.ffn_down.weight → q4_K · 120.0 MB of 512.0 MB · 45.2 MB/s · 8 s left"."""
        p = self.last
        parts = []
        if p.step and p.count > 1:
            parts.append(f"{p.step} ({p.index + 1}/{p.count})")
        elif p.step:
            parts.append(p.step)
        if with_percent and self.fraction is not None:
            parts.append(f"{int(100 * self.fraction)}%")
        if p.note:
            parts.append(p.note)
        if p.unit == "B" and p.total > 0:
            parts.append(f"{format_bytes(p.done)} of {format_bytes(p.total)}")
        speed = self.speed()
        if speed is not None:
            parts.append(f"{format_bytes(speed)}/s")
        eta = self.eta() if with_eta else None
        if eta is not None:
            parts.append(f"{format_duration(eta)} left")
        return " · ".join(parts)


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressPrinter:
    """The one progress printer of the command line: a ``progress`` callable for any job.

    On a terminal it redraws one line (at most ten times a second); otherwise (a log, a pipe) it prints a line when
    the step or the tenth of the job changes, so logs stay short. Call :meth:`end` when the job is over."""

    def __init__(self, stream: Any = None, *, quiet: bool = False, prefix: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.prefix = prefix
        self.tracker = ProgressTracker(clock=clock)
        self._clock = clock
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_draw = -1.0
        self._last_key: tuple[str, int, int | str] | None = None
        self._drawn = False

    def __call__(self, done: float, total: float, note: str = "", /, **fields: Any) -> None:
        report = Progress.of(done, total, note, **fields)
        self.tracker.update(report)
        if self.quiet:
            return
        line = self.prefix + self.tracker.line(with_percent=True)
        if self._tty:
            now = self._clock()
            finished = report.fraction is not None and report.fraction >= 1.0
            if now - self._last_draw >= 0.1 or finished:
                self._last_draw = now
                self.stream.write(f"\r\033[K{line[:200]}")
                self.stream.flush()
                self._drawn = True
            return
        tenth = int(10 * min(1.0, report.done / report.total)) if report.total > 0 else report.note  # of the step
        key = (report.step, report.index, tenth)
        if key != self._last_key:
            self._last_key = key
            self.stream.write(line + "\n")
            self.stream.flush()

    def end(self) -> None:
        """Finish the redrawn line (a terminal) so the next output starts on its own line."""
        if self._tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
