"""The Qt side of the job mechanism: signals in order, cancel, structured errors, crashes, shutdown."""

from __future__ import annotations

import threading
from pathlib import Path

import shiboken6
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QLabel, QWidget
from pytestqt.qtbot import QtBot

from desktop.jobs import JobError
from desktop.process import live_children, run_in_child
from desktop.workers import Job, JobManager, JobState


def test_progress_arrives_in_order_then_the_result(qtbot: QtBot) -> None:
    manager = JobManager()
    seen: list[tuple[float, str]] = []

    def work(progress, cancelled):  # type: ignore[no-untyped-def]
        for i in range(1, 51):
            progress(i, 50, f"step {i}")
        return "answer"

    job = Job("count", work)
    job.sig_progress.connect(lambda d, t, m: seen.append((d, m)))
    results: list[object] = []
    job.sig_result.connect(results.append)
    with qtbot.waitSignal(job.sig_finished, timeout=10_000):
        manager.start(job)
    assert results == ["answer"]
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert seen[-1] == (50.0, "step 50")
    assert job.state is JobState.DONE


def test_cancel_stops_the_job_and_no_late_result_arrives(qtbot: QtBot) -> None:
    manager = JobManager()
    started = threading.Event()

    def work(progress, cancelled):  # type: ignore[no-untyped-def]
        started.set()
        progress(1, 10, "working")
        while not cancelled():
            threading.Event().wait(0.005)
        return "too late"

    job = Job("long", work)
    results: list[object] = []
    job.sig_result.connect(results.append)
    manager.start(job)
    assert started.wait(10)
    with qtbot.waitSignals([job.sig_cancelled, job.sig_finished], timeout=10_000):
        job.cancel()
    assert results == [] and job.state is JobState.CANCELLED


def test_an_exception_becomes_a_structured_error(qtbot: QtBot) -> None:
    manager = JobManager()

    def work(progress, cancelled):  # type: ignore[no-untyped-def]
        raise ValueError("bad shape")

    job = Job("broken", work)
    errors: list[JobError] = []
    job.sig_error.connect(errors.append)
    with qtbot.waitSignal(job.sig_finished, timeout=10_000):
        manager.start(job)
    (error,) = errors
    assert error.kind == "internal" and "ValueError: bad shape" in error.message
    assert "Traceback" in error.detail and job.state is JobState.FAILED


def test_a_crashing_child_is_reported_and_the_window_stays(qtbot: QtBot) -> None:
    from PySide6.QtWidgets import QLabel

    window = QLabel("still here")
    qtbot.addWidget(window)
    window.show()
    manager = JobManager()
    job = Job("crash", lambda progress, cancelled: run_in_child("child_jobs:segfault", progress=progress))
    errors: list[JobError] = []
    job.sig_error.connect(errors.append)
    with qtbot.waitSignal(job.sig_finished, timeout=30_000):
        manager.start(job)
    assert errors[0].kind == "crash" and "SIGSEGV" in errors[0].message
    assert window.isVisible() and window.text() == "still here"


def test_stop_all_cancels_threads_and_kills_children(qtbot: QtBot, tmp_path: Path) -> None:
    manager = JobManager()
    started = tmp_path / "started"
    out = tmp_path / "model.gguf"
    job = Job(
        "stubborn child",
        lambda progress, cancelled: run_in_child(
            "child_jobs:ignore_cancel",
            {"out": str(out), "started": str(started)},
            cancelled=cancelled,
            cleanup=[tmp_path / "model.gguf.partial"],
            grace_s=0.5,
        ),
    )
    manager.start(job)
    qtbot.waitUntil(started.exists, timeout=30_000)
    pids = [c.pid for c in live_children()]
    assert pids
    with qtbot.waitSignal(job.sig_finished, timeout=15_000):
        assert manager.stop_all(timeout_s=10)
    assert live_children() == []
    assert job.state is JobState.CANCELLED
    assert not (tmp_path / "model.gguf.partial").exists()


def test_a_cancel_that_lands_after_the_job_finished_reports_the_result(qtbot: QtBot) -> None:
    """The work was done (files written): a cancel clicked while the result was on its way must not say
    "cancelled"."""
    manager = JobManager()
    job = Job("quick", lambda progress, cancelled: "made the file")
    results: list[object] = []
    job.sig_result.connect(results.append)
    with qtbot.waitSignal(job.sig_finished, timeout=10_000):
        manager.start(job)
        assert job.wait(10)  # the worker returned; its result is queued for this thread
        job.cancel()
    assert results == ["made the file"] and job.state is JobState.DONE


def test_finished_jobs_are_freed(qtbot: QtBot) -> None:
    import gc
    import weakref

    manager = JobManager()
    first = Job("first", lambda progress, cancelled: b"x" * 1_000_000)
    ref = weakref.ref(first)
    with qtbot.waitSignal(first.sig_finished, timeout=10_000):
        manager.start(first)
    second = Job("second", lambda progress, cancelled: None)
    with qtbot.waitSignal(second.sig_finished, timeout=10_000):
        manager.start(second)
    del first
    qtbot.waitUntil(lambda: gc.collect() >= 0 and ref() is None, timeout=5_000)  # once its pool thread let go
    assert manager.jobs() == [second]


def test_a_job_is_freed_on_the_gui_thread_even_when_its_pool_thread_lets_go_last(
    qtbot: QtBot, monkeypatch  # type: ignore[no-untyped-def]
) -> None:
    """A pool thread that is slow to return after the job finished must not drop the last reference: Qt objects
    (the job, and what its function holds) may only be deleted on their own thread."""
    run_job = Job._run
    let_go = threading.Event()

    def slow_to_let_go(self: Job) -> None:
        run_job(self)  # the job has finished and said so
        let_go.wait(timeout=10)  # but its pool thread holds on until the GUI has forgotten the job

    monkeypatch.setattr(Job, "_run", slow_to_let_go)
    manager = JobManager()
    destroyed_on: list[str] = []
    first = Job("first", lambda progress, cancelled: None)
    first.destroyed.connect(lambda: destroyed_on.append(threading.current_thread().name),
                            Qt.ConnectionType.DirectConnection)
    with qtbot.waitSignal(first.sig_finished, timeout=10_000):
        manager.start(first)
    second = Job("second", lambda progress, cancelled: None)
    with qtbot.waitSignal(second.sig_finished, timeout=10_000):
        manager.start(second)  # its end makes the manager forget the first
    del first
    let_go.set()
    qtbot.waitUntil(lambda: bool(destroyed_on), timeout=5_000)
    assert destroyed_on == [threading.main_thread().name]


def test_a_job_reports_steps_with_one_eta_and_line(qtbot: QtBot) -> None:
    manager = JobManager()
    lines: list[str] = []

    def work(progress, cancelled):  # type: ignore[no-untyped-def]
        for index, step in enumerate(("Q8_0", "Q4_K_M")):
            for done in range(0, 11):
                progress(done, 10, f"tensor {done}", step=step, index=index, count=2)

    job = Job("two steps", work)
    job.sig_progress.connect(lambda d, t, m: lines.append(job.status_text()))
    with qtbot.waitSignal(job.sig_finished, timeout=10_000):
        manager.start(job)
    assert lines[0].startswith("Q8_0 (1/2) · tensor 0") and lines[-1].startswith("Q4_K_M (2/2) · tensor 10")
    assert job.fraction() == 1.0 and job.progress.step == "Q4_K_M"


def test_a_job_that_outlives_its_window_reports_to_nobody(qtbot: QtBot) -> None:
    """A window deleted while its job runs (a test fixture, a crash path) must not get the job's late signals: their
    slots are often lambdas touching the window's widgets, which Qt cannot disconnect; reaching them crashed a run."""
    window = QWidget()
    label = QLabel(window)
    manager = JobManager(window)
    release = threading.Event()
    reached: list[object] = []

    def work(progress, cancelled):  # type: ignore[no-untyped-def]
        release.wait(10)
        progress(1, 1, "late")
        return "late result"

    job = Job("outlives its window", work)
    job.sig_progress.connect(lambda d, t, m: reached.append(m))
    job.sig_result.connect(lambda r: (reached.append(r), label.setText(str(r))))
    job.sig_finished.connect(lambda: reached.append("finished"))
    manager.start(job)
    release.set()
    shiboken6.delete(window)  # at once: the manager's pool waits for the worker, whose signals are still queued
    assert not shiboken6.isValid(manager) and job.wait(10)
    for _ in range(5):
        QApplication.processEvents()
    assert reached == []
    assert job.state is JobState.CANCELLED
