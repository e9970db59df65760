"""The child-process runner: progress, results, structured errors, cancel with cleanup, crashes."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest

from desktop.errors import Cancelled
from desktop.jobs import JobFailed
from desktop.process import describe_exit, live_children, run_in_child


def test_progress_arrives_in_order_and_result_returns() -> None:
    seen: list[tuple[float, float, str]] = []
    result = run_in_child("child_jobs:count", {"n": 5}, progress=lambda d, t, m: seen.append((d, t, m)))
    assert result == 50
    assert seen == [(float(i), 5.0, f"step {i}") for i in range(1, 6)]
    assert live_children() == []


def test_events_stream_before_the_result() -> None:
    events: list[str] = []
    assert run_in_child("child_jobs:events", on_event=events.append) == "done"
    assert events == ["one", "two", "three"]


def test_known_failure_crosses_as_a_structured_error() -> None:
    with pytest.raises(JobFailed) as info:
        run_in_child("child_jobs:fail_known")
    error = info.value.error
    assert (error.kind, error.message, error.next_step) == ("bad_input", "The model file is not a GGUF.", "Pick a .gguf file.")
    assert error.detail == ""


def test_unexpected_exception_keeps_its_traceback_out_of_the_sentence() -> None:
    with pytest.raises(JobFailed) as info:
        run_in_child("child_jobs:fail_bug")
    error = info.value.error
    assert error.kind == "internal"
    assert "KeyError" in error.message and "Traceback" not in error.message
    assert "Traceback" in error.detail and "fail_bug" in error.detail


def test_cancel_stops_a_cooperative_job_which_cleans_up(tmp_path: Path) -> None:
    out, started = tmp_path / "model.gguf", tmp_path / "started"
    with pytest.raises(Cancelled):  # run_in_child polls cancelled(): the user cancels once the child has started
        run_in_child(
            "child_jobs:write_until_cancelled", {"out": str(out), "started": str(started)}, cancelled=started.exists
        )
    assert started.exists()
    assert list(tmp_path.iterdir()) == [started]
    assert live_children() == []


def test_cancel_kills_a_job_that_ignores_it_and_removes_its_partial_file(tmp_path: Path) -> None:
    out, started = tmp_path / "model.gguf", tmp_path / "started"
    with pytest.raises(Cancelled):
        run_in_child(
            "child_jobs:ignore_cancel",
            {"out": str(out), "started": str(started)},
            cancelled=started.exists,
            cleanup=[Path(str(out) + ".partial")],
            grace_s=0.5,
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["started"]
    assert live_children() == []


@pytest.mark.parametrize(
    ("target", "signal_name"),
    [("child_jobs:abort", "SIGABRT"), ("child_jobs:segfault", "SIGSEGV")],
)
def test_a_native_crash_is_reported_not_fatal(target: str, signal_name: str, tmp_path: Path) -> None:
    progress: list[str] = []
    with pytest.raises(JobFailed) as info:
        run_in_child(target, progress=lambda d, t, m: progress.append(m), log_path=tmp_path / "child.log")
    error = info.value.error
    assert error.kind == "crash"
    assert signal_name in error.message and "QuantDesk itself is fine" in error.message
    assert progress and progress[0].startswith("about to")
    if signal_name == "SIGSEGV":
        assert "Fatal Python error" in error.detail  # faulthandler's trace, from the child's log
    assert live_children() == []


def test_describe_exit_names_signals_and_windows_codes() -> None:
    assert describe_exit(-signal.SIGSEGV) == "a segmentation fault (SIGSEGV)"
    assert "SIGKILL" in describe_exit(-signal.SIGKILL)
    assert describe_exit(0xC0000005) == "an access violation (exit code 0xc0000005)"
    assert describe_exit(2) == "exit code 2"


def test_a_warm_child_runs_the_job_it_is_given_later() -> None:
    from desktop.process import ChildProcess

    warm = ChildProcess.warm(("json",))
    assert warm.process.is_alive() and warm.target is None
    seen: list[str] = []
    assert run_in_child("child_jobs:count", {"n": 3}, progress=lambda d, t, m: seen.append(m), child=warm) == 30
    assert seen == ["step 1", "step 2", "step 3"]
    assert live_children() == []


def test_a_warm_child_that_never_gets_a_job_is_closed() -> None:
    from desktop.process import ChildProcess

    warm = ChildProcess.warm(("json",))
    warm.close()
    assert not warm.process.is_alive() and live_children() == []


def test_a_child_outlives_the_thread_that_started_it() -> None:
    """PR_SET_PDEATHSIG fires when the parent *thread* ends: children are started from one long-lived thread, so an
    engine started from a job thread is not killed when that thread finishes."""
    from desktop.process import ChildProcess

    box: list[ChildProcess] = []
    starter = threading.Thread(target=lambda: box.append(ChildProcess.warm(("json",))))
    starter.start()
    starter.join()
    (child,) = box
    child.process.join(1.5)  # waits for an exit that must not come
    assert child.process.is_alive()
    assert run_in_child("child_jobs:count", {"n": 2}, child=child) == 20
    assert live_children() == []


def test_a_child_that_cannot_start_says_why_and_leaks_nothing(tmp_path: Path) -> None:
    """A start failure (here: arguments that cannot be sent to a child) is one sentence, not an AssertionError
    from closing a process that never ran, and its pipes are closed."""
    import os

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    run_in_child("child_jobs:count", {"n": 1})  # warm up what the first start opens once
    before = open_fds()
    for _ in range(3):
        with pytest.raises(JobFailed) as info:
            run_in_child("child_jobs:count", {"n": lambda: 1}, log_path=tmp_path / "x.log")
        assert info.value.error.kind == "start_failed"
        assert "could not start a background process" in info.value.error.message
    assert open_fds() <= before
    assert live_children() == []


def test_per_job_logs_are_pruned_to_the_newest(tmp_path: Path) -> None:
    """Every job left a log (kept when not empty), and the logs folder grew without limit."""
    import os

    from desktop import paths
    from desktop.process import MAX_JOB_LOGS

    logs = paths.logs_dir()
    for i in range(MAX_JOB_LOGS + 15):
        old = logs / f"job-old-{i}.log"
        old.write_text("a warning from an old job\n")
        os.utime(old, (1_000_000 + i, 1_000_000 + i))
    (logs / "quantdesk.log").write_text("the app's own log stays\n")
    run_in_child("child_jobs:count", {"n": 1})
    kept = sorted(p.name for p in logs.glob("job-*.log"))
    assert len(kept) <= MAX_JOB_LOGS
    assert "job-old-0.log" not in kept and f"job-old-{MAX_JOB_LOGS + 14}.log" in kept  # the oldest go first
    assert (logs / "quantdesk.log").exists()



def test_a_child_that_dies_with_unread_messages_is_not_an_internal_error(tmp_path: Path) -> None:
    """A child that dies with a message from the parent unread resets the connection; the parent reported
    "unexpected problem (ConnectionResetError)" instead of what happened (here: the cancelled job ended)."""
    seen: list[str] = []
    with pytest.raises(Cancelled):
        run_in_child("child_jobs:die_with_unread_cancel", progress=lambda d, t, m: seen.append(m),
                     cancelled=lambda: bool(seen), grace_s=30, log_path=tmp_path / "child.log")


def test_a_job_cancelled_before_it_starts_never_starts(tmp_path: Path) -> None:
    """A quick job started after the cancel would finish before it saw it (CI's fast machine quantized every type
    of a cancelled queue so): it is not started at all, and a warm child given to it is closed."""
    from desktop.process import ChildProcess

    marker = tmp_path / "ran"
    with pytest.raises(Cancelled):
        run_in_child("child_jobs:count", {"n": 3}, cancelled=lambda: True, cleanup=[marker])
    warm = ChildProcess.warm(("json",))
    with pytest.raises(Cancelled):
        run_in_child("child_jobs:count", {"n": 3}, cancelled=lambda: True, child=warm)
    assert not warm.process.is_alive() and live_children() == []
