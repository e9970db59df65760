"""The job contract every long operation follows, with no Qt in it.

A job is a plain function ``fn(*, progress, cancelled, **kwargs)``:

* ``progress(done, total, message)`` reports how far it is (any units; ``total`` 0 means unknown);
* ``cancelled()`` returns True once the user asked to stop; the job then cleans up and raises :class:`Cancelled`;
* it returns a picklable result, raises :class:`~desktop.errors.UserError` for failures it understands, and
  anything else is a bug.

Errors cross threads and processes as :class:`JobError` values, never as bare strings.
"""

from __future__ import annotations

import errno
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from desktop.errors import Cancelled, UserError

ProgressFn = Callable[[float, float, str], None]
CancelledFn = Callable[[], bool]

__all__ = [
    "Cancelled",
    "CancelledFn",
    "JobError",
    "JobFailed",
    "ProgressFn",
    "RateMeter",
    "check_cancelled",
    "error_from_exception",
    "format_bytes",
    "format_duration",
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
    """Speed and ETA over a sliding window, for progress lines such as "12.3 MB/s, 40 s left"."""

    def __init__(self, window_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window_s
        self._clock = clock
        self._samples: list[tuple[float, float]] = []

    def add(self, done: float) -> None:
        now = self._clock()
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > self._window:
            self._samples.pop(0)

    def rate(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    def eta(self, total: float) -> float | None:
        rate = self.rate()
        if rate <= 0 or not self._samples or total <= 0:
            return None
        return max(0.0, (total - self._samples[-1][1]) / rate)


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


def call_job(fn: Callable[..., Any], progress: ProgressFn, cancelled: CancelledFn, **kwargs: Any) -> Any:
    """Run a job function in this thread (the CLI and tests use this)."""
    return fn(progress=progress, cancelled=cancelled, **kwargs)
