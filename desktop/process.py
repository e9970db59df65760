"""Run a job in a child process, so a native crash cannot close the window and cancel can always stop it.

The child's main is :mod:`desktop.process_child`, the per-job logs' upkeep :mod:`desktop.job_logs` (both re-exported
here); how children die with their parent is in :mod:`desktop.lifeline`.

Protocol (tuples over a duplex ``multiprocessing`` pipe, spawn start method on every platform):

child -> parent
    ``("progress", done, total, note, fields)``  how far the job is (:class:`desktop.jobs.Progress`; ``fields``
                                            the keyword fields the job passed, often empty)
    ``("event", payload)``                  a domain datum streamed before the result (a token, a log line)
    ``("result", value)``                   the job's return value; the last message of a successful job
    ``("error", JobError.as_dict())``       a failure the job caught; the last message
    ``("cancelled",)``                      the job saw the cancel request and cleaned up

parent -> child
    ``("cancel",)``                         please stop; the job's ``cancelled()`` returns True from now on

Every child starts with the selected llama.cpp engine's environment (``desktop.llama.engines.child_environment``:
``LLAMA_CPP_LIB_PATH`` and the library path), set for that child only; ``env`` overrides it (Retry on the CPU).

If the child dies without a last message (segfault, ``abort()``, out-of-memory kill) the parent reports a
``JobError`` of kind "crash" with the signal and the tail of the child's log. If it does not stop within the
grace period after a cancel it is killed; in both cases the parent removes the paths the caller named as
``cleanup`` (partial outputs), since a dead child cannot.

The target is named as ``"package.module:function"`` and called as ``fn(progress=..., cancelled=..., **kwargs)``,
plus ``emit=...`` when the function takes an ``emit`` parameter.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from desktop import lifeline
from desktop.errors import Cancelled
from desktop.fileio import instance_tag, remove_quietly
from desktop.job_logs import MAX_JOB_LOG_BYTES, MAX_JOB_LOGS, drop_empty, prune_job_logs
from desktop.jobs import CancelledFn, JobError, JobFailed, ProgressFn, with_fields
from desktop.process_child import child_main, setup_child_logging

log = logging.getLogger(__name__)

__all__ = ["MAX_JOB_LOGS", "MAX_JOB_LOG_BYTES", "ChildProcess", "describe_exit", "live_children", "prune_job_logs",
           "run_in_child", "setup_child_logging", "start_process", "terminate_all"]

_live: weakref.WeakSet[ChildProcess] = weakref.WeakSet()
_live_lock = threading.Lock()
_environ_lock = threading.Lock()

_WINDOWS_CRASHES = {
    0xC0000005: "an access violation",
    0xC0000409: "a stack buffer overrun",
    0xC00000FD: "a stack overflow",
    3: "abort()",
}


def describe_exit(exitcode: int | None) -> str:
    """A plain description of how a process ended without a last message."""
    if exitcode is None:
        return "it stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        plain = {
            "SIGSEGV": "a segmentation fault",
            "SIGABRT": "an abort",
            "SIGKILL": "being killed (often the system running out of memory)",
            "SIGBUS": "a bus error",
            "SIGILL": "an illegal instruction (the CPU lacks an instruction this build uses)",
            "SIGFPE": "an arithmetic fault",
        }.get(name, name)
        return f"{plain} ({name})"
    code = exitcode & 0xFFFFFFFF
    if code in _WINDOWS_CRASHES:
        return f"{_WINDOWS_CRASHES[code]} (exit code {code:#x})"
    return f"exit code {exitcode}"


def start_process(process: multiprocessing.process.BaseProcess, env: dict[str, str | None] | None = None) -> None:
    """Start a spawned ``process`` on the selected llama.cpp engine (or with ``env``'s changes; None removes a
    variable). A spawned child inherits this process's environment at exec time, so the changes are made for the
    moment of the start only and undone at once: the parent itself never runs on them."""
    if env is None:
        from desktop.llama.engines import child_environment

        env = child_environment()
    with _environ_lock:
        saved = {key: os.environ.get(key) for key in env}
        try:
            _set_environ(env)
            lifeline.start(process)  # it cannot outlive this process
        finally:
            _set_environ(saved)


def _set_environ(changes: dict[str, str | None]) -> None:
    for key, value in changes.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


class ChildProcess:
    """One job in one child process. Use :func:`run_in_child` unless you need the pieces."""

    def __init__(
        self,
        target: str | None,
        kwargs: dict[str, Any] | None = None,
        *,
        log_path: Path | None = None,
        preload: tuple[str, ...] = (),
        env: dict[str, str | None] | None = None,
    ) -> None:
        self.target = target
        self.env = env
        self.kwargs = kwargs or {}
        self.log_path = log_path
        instance_tag()  # set before the child is spawned, so its partial files carry this instance's tag
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe(duplex=True)
        self._child_conn: Connection | None = child_conn
        self.process = ctx.Process(
            target=child_main,
            args=(child_conn, target, self.kwargs, str(log_path) if log_path else None, preload),
            daemon=True,
            name=f"quantdesk-{(target or 'warm').rsplit(':', 1)[-1]}",
        )

    @classmethod
    def warm(cls, preload: tuple[str, ...], log_name: str = "job") -> ChildProcess:
        """Start a child now that imports ``preload`` and waits; give it its job with ``run_in_child(child=...)``.
        Close it if the job never comes."""
        from desktop import paths

        log_path = paths.logs_dir() / f"job-{log_name}-{os.getpid()}-{time.time_ns()}.log"
        child = cls(None, log_path=log_path, preload=preload)
        child.start()
        return child

    def assign(self, target: str, kwargs: dict[str, Any]) -> None:
        """Give a warm child its job."""
        self.target, self.kwargs = target, kwargs
        self._conn.send(("job", target, kwargs))

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def start(self) -> None:
        """Start the process; raises :class:`JobFailed` with the reason when it cannot start (its pipes closed)."""
        try:
            start_process(self.process, self.env)
        except Exception as exc:  # noqa: BLE001 - spawn, pickling, fork limits: one sentence, not an assertion
            self.close()
            detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            raise JobFailed(JobError("start_failed", f"QuantDesk could not start a background process ({exc}).",
                                     "Retry; if it fails again, the log has the details.", detail)) from exc
        if self._child_conn is not None:
            self._child_conn.close()
            self._child_conn = None
        with _live_lock:
            _live.add(self)

    def send_cancel(self) -> None:
        try:
            self._conn.send(("cancel",))
        except (OSError, EOFError, BrokenPipeError):
            pass

    def receive(self, timeout: float) -> tuple[Any, ...] | None:
        """The next message, or None if none came within ``timeout``. Raises EOFError when the child is gone."""
        try:
            if self._conn.poll(timeout):
                return self._conn.recv()  # type: ignore[no-any-return]
        except (ConnectionResetError, BrokenPipeError) as exc:  # it died mid-message: a crash, reported as one
            raise EOFError from exc
        if not self.process.is_alive() and not self._conn.poll(0):
            raise EOFError
        return None

    def kill(self, grace: float = 0.0) -> None:
        """Stop the process: terminate, wait up to ``grace``, then kill."""
        if self.process.pid is None:
            return  # never started: nothing to stop (join would assert)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(grace if grace > 0 else 0.5)
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)

    def close(self) -> None:
        try:
            self.kill()
        finally:
            self._conn.close()
            if getattr(self, "_child_conn", None) is not None:  # subclasses with pipes of their own have none
                self._child_conn.close()
                self._child_conn = None
            with _live_lock:
                _live.discard(self)

    def log_tail(self, max_chars: int = 4000) -> str:
        """The end of the child's log (read from the end: a log can be large)."""
        if not self.log_path:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - max_chars))
                data = f.read(max_chars)
        except OSError:
            return ""
        return data.decode("utf-8", "replace")


def run_in_child(
    target: str,
    kwargs: dict[str, Any] | None = None,
    *,
    progress: ProgressFn | None = None,
    cancelled: CancelledFn | None = None,
    on_event: Callable[[Any], None] | None = None,
    cleanup: Iterable[Path | str] = (),
    grace_s: float = 2.0,
    log_path: Path | None = None,
    crash_next_step: str = "",
    child: ChildProcess | None = None,
    env: dict[str, str | None] | None = None,
) -> Any:
    """Run ``target`` in a child process and return its result.

    Raises :class:`Cancelled` when the job was cancelled (the child stopped or was killed) and
    :class:`JobFailed` with a :class:`JobError` when it failed or crashed. ``cleanup`` paths are removed on
    every outcome but success. ``child``: a warm child from :meth:`ChildProcess.warm` to run the job in.
    ``env``: environment changes instead of the selected engine's (see :func:`start_process`).
    """
    if child is None:
        if log_path is None:
            from desktop import paths

            log_path = paths.logs_dir() / f"job-{target.rsplit(':', 1)[-1]}-{os.getpid()}-{time.time_ns()}.log"
        child = ChildProcess(target, kwargs, log_path=log_path, env=env)
    else:
        log_path = child.log_path
    succeeded = False
    cancel_deadline: float | None = None
    if progress is not None:
        progress = with_fields(progress)
    try:
        if cancelled is not None and cancelled():
            raise Cancelled()  # cancelled before it began: a quick job would otherwise finish before it saw the cancel
        if child.target is None and child.process.pid is not None:
            child.assign(target, kwargs or {})
        else:
            child.start()
        while True:
            if cancel_deadline is None and cancelled is not None and cancelled():
                child.send_cancel()
                cancel_deadline = time.monotonic() + grace_s
            if cancel_deadline is not None and time.monotonic() > cancel_deadline:
                log.info("job %s did not stop within %.1f s of cancel; killing it", target, grace_s)
                raise Cancelled()
            try:
                message = child.receive(0.05)
            except EOFError:
                break
            if message is None:
                continue
            kind = message[0]
            if kind == "progress" and progress is not None:
                progress(message[1], message[2], message[3], **message[4])
            elif kind == "event" and on_event is not None:
                on_event(message[1])
            elif kind == "result":
                succeeded = True
                return message[1]  # the job is done; close() ends the process without waiting for its teardown
            elif kind == "error":
                raise JobFailed(JobError.from_dict(message[1]))
            elif kind == "cancelled":
                raise Cancelled()
        child.process.join(5)
        if cancel_deadline is not None:
            raise Cancelled()
        how = describe_exit(child.process.exitcode)
        raise JobFailed(
            JobError(
                "crash",
                f"The background process crashed with {how}; QuantDesk itself is fine.",
                crash_next_step or "Retry; if it happens again, the log has the details.",
                child.log_tail(),
            )
        )
    finally:
        child.close()
        if not succeeded:
            for path in cleanup:
                remove_quietly(path)
        if succeeded and log_path is not None:
            drop_empty(log_path)
        if log_path is not None:
            prune_job_logs(log_path.parent)



def live_children() -> list[ChildProcess]:
    with _live_lock:
        return list(_live)


def terminate_all(grace_s: float = 2.0) -> None:
    """Stop every child process still running (used when the app closes)."""
    for child in live_children():
        child.send_cancel()
    deadline = time.monotonic() + grace_s
    for child in live_children():
        child.process.join(max(0.0, deadline - time.monotonic()))
        child.close()
