"""One generic worker mechanism for every feature.

A :class:`Job` wraps a Qt-free callable ``fn(progress, cancelled)`` (see :mod:`desktop.jobs`); the
:class:`JobManager` runs it on a thread pool and tracks it for the status area. Native work goes through
:func:`desktop.process.run_in_child` inside ``fn``, so the same mechanism also covers child processes::

    job = Job("Quantize to Q4_K_M", lambda progress, cancelled: run_in_child(
        "desktop.quant.quantize_child:run_job", {...}, progress=progress, cancelled=cancelled))
    job.sig_result.connect(self._on_quantized)
    manager.start(job)

Progress arrives as :class:`~desktop.jobs.Progress` data; each job's :class:`~desktop.jobs.ProgressTracker` turns it
into the fraction, speed, ETA and line every page shows (:meth:`Job.status_text`).

Signals cross to the GUI thread queued. After :meth:`Job.cancel`, no late progress reaches the receivers, and a
job that stops for the cancel ends as cancelled; a job that had already finished when the cancel came ends as it
finished (its files exist). :attr:`Job.sig_finished` is always the last signal, on every outcome. The manager
keeps a finished job listed until the next one finishes and then drops it, so finished jobs are freed.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import shiboken6
from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

from desktop import process
from desktop.errors import Cancelled
from desktop.jobs import JobError, Progress, ProgressTracker, error_from_exception

log = logging.getLogger(__name__)

JobFn = Callable[..., Any]
"""Called as ``fn(progress=..., cancelled=...)``, the contract of :mod:`desktop.jobs`."""


class JobState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class _Relay(QObject):
    """Lives in the GUI thread; the worker thread emits these, Qt queues them to the Job."""

    progress = Signal(object)  # a Progress
    done = Signal(str, object)  # outcome ("result" | "error" | "cancelled"), payload


class Job(QObject):
    sig_progress = Signal(float, float, str)
    """(done, total, note) of the current step, throttled: only when the rounded per-mille, the step or the note
    changes. The whole report is :attr:`progress`; the line to show, :meth:`status_text`."""
    sig_result = Signal(object)
    """The job's return value, on success."""
    sig_error = Signal(object)
    """A :class:`~desktop.jobs.JobError`, on failure or crash."""
    sig_cancelled = Signal()
    """The job stopped because it was cancelled (and has cleaned up)."""
    sig_finished = Signal()
    """Always emitted last, whatever the outcome."""
    sig_state_changed = Signal()
    """State, progress text or speed changed; for the status area."""

    def __init__(self, title: str, fn: JobFn, parent: QObject | None = None, *, visible: bool = True) -> None:
        super().__init__(parent)
        self.title = title
        self.visible = visible  # quick housekeeping jobs (reading the library) stay out of the status area
        self._fn = fn
        self.state = JobState.QUEUED
        self.done = 0.0
        self.total = 0.0
        self.message = ""
        self.error: JobError | None = None
        self.started_at: float | None = None
        self.progress = Progress()
        self._tracker = ProgressTracker()
        self._cancel = threading.Event()
        self._finished = threading.Event()
        self._relay = _Relay()
        self._relay.progress.connect(self._on_progress)
        self._relay.done.connect(self._on_done)
        self._last_key: tuple[str, int, int, str] | None = None
        self._manager: QObject | None = None  # set by JobManager.start; the window that owns the manager owns us

    def _orphaned(self) -> bool:
        """The manager (and so the window whose widgets the receivers touch) was deleted while this job ran."""
        return self._manager is not None and not shiboken6.isValid(self._manager)

    # ---- called from the GUI thread
    def cancel(self) -> None:
        if self.state in (JobState.QUEUED, JobState.RUNNING):
            self._cancel.set()
            self.message = "Cancelling…"
            self.sig_state_changed.emit()

    def is_cancelled(self) -> bool:
        return self._cancel.is_set()

    def is_active(self) -> bool:
        return self.state in (JobState.QUEUED, JobState.RUNNING)

    def wait(self, timeout_s: float) -> bool:
        """Block until the worker thread is done (used at shutdown, never in normal GUI code)."""
        return self._finished.wait(timeout_s)

    def rate(self) -> float:
        """Bytes per second of the current step (0 when the work is not bytes or not measured yet)."""
        return self._tracker.speed() or 0.0

    def eta(self) -> float | None:
        """Seconds left for the whole job, once its speed is known; None before."""
        return self._tracker.eta()

    def fraction(self) -> float | None:
        """How much of the whole job is done, or None while unknown."""
        return self._tracker.fraction

    def status_text(self, *, with_eta: bool = True) -> str:
        """The progress line: step, note, bytes, speed and ETA, in the wording every page and the CLI share."""
        return self._tracker.line(with_eta=with_eta)

    # ---- called from the worker thread
    def _run(self) -> None:
        self.started_at = time.monotonic()
        try:
            if self._cancel.is_set():
                raise Cancelled()
            result = self._fn(progress=self._report_progress, cancelled=self._cancel.is_set)
        except Cancelled:
            self._send(self._relay.done, "cancelled", None)
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a value
            error = error_from_exception(exc)
            if error.kind == "internal":
                log.error("job %r failed:\n%s", self.title, error.detail)
            self._send(self._relay.done, "error", error)
        else:
            if self._cancel.is_set():  # it saw the cancel and stopped early: its result is not the whole work
                self._send(self._relay.done, "cancelled", None)
            else:  # it had finished; a cancel landing from now on comes too late to stop anything
                self._send(self._relay.done, "result", result)
        finally:
            self._finished.set()

    def _send(self, signal: Any, *args: object) -> None:
        """Emit from the worker thread. A job that outlived its window (it ignored cancel past the quit deadline)
        finds its relay deleted: there is nobody left to tell, which is not an error."""
        try:
            signal.emit(*args)
        except RuntimeError:
            log.info("job %r reported after its window was gone", self.title)

    def _report_progress(self, done: float, total: float, note: str = "", /, **fields: object) -> None:
        report = Progress.of(done, total, note, **fields)
        permille = int(1000 * done / total) if total else -1
        key = (report.step, report.index, permille, note)
        if key == self._last_key:
            return
        self._last_key = key
        self._send(self._relay.progress, report)

    # ---- slots, in the GUI thread
    @Slot(object)
    def _on_progress(self, report: Progress) -> None:
        if self._cancel.is_set() or not self.is_active() or self._orphaned():
            return  # late progress from a cancelled job never reaches the page
        if self.state is JobState.QUEUED:
            self.state = JobState.RUNNING
        self.progress = report
        self.done, self.total, self.message = report.done, report.total, report.note
        self._tracker.update(report)
        self.sig_progress.emit(report.done, report.total, report.note)
        self.sig_state_changed.emit()

    @Slot(str, object)
    def _on_done(self, outcome: str, payload: object) -> None:
        if self._orphaned():
            # Its window is gone: the slots connected to it (often lambdas, which Qt cannot disconnect when their
            # widgets die) would touch deleted widgets. Nobody is left to tell.
            self.state = JobState.CANCELLED
            log.info("job %r finished after its window was gone", self.title)
            return
        if outcome == "result":
            self.state = JobState.DONE
            self.sig_result.emit(payload)
        elif outcome == "error" and not self._cancel.is_set():
            self.state = JobState.FAILED
            assert isinstance(payload, JobError)
            self.error = payload
            self.sig_error.emit(payload)
        else:
            self.state = JobState.CANCELLED
            self.sig_cancelled.emit()
        self.sig_state_changed.emit()
        self.sig_finished.emit()


class _Released(QObject):
    """Lives on the GUI thread: a worker says here that it holds no reference to its job any more."""

    sig_released = Signal(object)


class _Runnable(QRunnable):
    """Runs a job on a pool thread. The manager keeps the job alive until this has let go of it, so the last
    reference to a job (a QObject, and whatever its function holds: pages, workers) is never dropped on the pool
    thread, where Qt must not delete it."""

    def __init__(self, job: Job, released: _Released) -> None:
        super().__init__()
        self.job: Job | None = job
        self.key = id(job)
        self.released = released
        self.setAutoDelete(True)

    def run(self) -> None:
        job, self.job = self.job, None
        try:
            if job is not None:
                job._run()
        finally:
            del job
            try:
                self.released.sig_released.emit(self.key)
            except RuntimeError:  # the manager (and its window) is gone: nobody holds the job any more
                pass


class JobManager(QObject):
    """Runs jobs on its own thread pool and keeps the list the status area shows."""

    sig_jobs_changed = Signal()
    """A job was added, changed state or progressed."""

    def __init__(self, parent: QObject | None = None, max_threads: int = 4) -> None:
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(max_threads)
        self._jobs: list[Job] = []
        self._in_pool: dict[int, Job] = {}  # held until the pool thread has let go (see _Runnable)
        self._released = _Released(self)
        self._released.sig_released.connect(self._on_released)

    def start(self, job: Job) -> Job:
        # Not parented to the manager: a parent would keep every finished job (and its payload) alive for the
        # whole session. The list below holds a job while it runs and while it is shown as finished.
        self._jobs.append(job)
        job._manager = self
        job.sig_state_changed.connect(self.sig_jobs_changed)
        job.sig_finished.connect(self._on_job_finished)  # not a lambda holding the job: it would never be freed
        job.state = JobState.RUNNING
        self._in_pool[id(job)] = job
        self._pool.start(_Runnable(job, self._released))
        self.sig_jobs_changed.emit()
        return job

    def run(self, title: str, fn: JobFn) -> Job:
        return self.start(Job(title, fn))

    def jobs(self) -> list[Job]:
        return list(self._jobs)

    def active_jobs(self) -> list[Job]:
        return [j for j in self._jobs if j.is_active()]

    @Slot(object)
    def _on_released(self, key: int) -> None:
        self._in_pool.pop(key, None)  # on the GUI thread: if this was the last reference, the job is freed here

    @Slot()
    def _on_job_finished(self) -> None:
        job = self.sender()
        if isinstance(job, Job):
            self._forget_later(job)

    def _forget_later(self, job: Job) -> None:
        # Finished jobs stay listed (so the user sees "done" or the error) until the next one finishes.
        self._jobs = [j for j in self._jobs if j.is_active() or j is job]
        self.sig_jobs_changed.emit()

    def stop_all(self, timeout_s: float = 5.0) -> bool:
        """Cancel every job, wait for the workers, then stop any child process still alive. True if all stopped."""
        for job in self._jobs:
            job.cancel()
        deadline = time.monotonic() + timeout_s
        stopped = all(job.wait(max(0.0, deadline - time.monotonic())) for job in self._jobs)
        process.terminate_all(grace_s=1.0)
        self._pool.waitForDone(int(max(0.0, deadline - time.monotonic()) * 1000))
        return stopped
