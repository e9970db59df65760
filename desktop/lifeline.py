"""Child processes never outlive QuantDesk: when the window's process dies (a crash, a kill, a power button), every
child it started exits too, instead of writing on (a quantization's partial file) or holding gigabytes (an engine).

Three guards, because each covers what another cannot:

* In the child, a thread waits on the parent's sentinel (``multiprocessing.parent_process().sentinel``, a pipe the
  parent holds open) and ends the process the moment it closes. It works everywhere, but only while the child runs
  Python; a child deep inside a native call (``llama_model_quantize``) still gets there, since the watcher is its
  own thread and ``os._exit`` needs no lock.
* On Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the child when its parent goes. The kernel ties
  this to the parent *thread* that started the child, so every child is started from one long-lived spawner thread
  (:func:`start`), never from a job thread that ends before its child does.
* On Windows, every child joins a Job Object created with ``JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE``: the system closes
  the job's handle when QuantDesk's process ends, and kills the job's processes with it.

A child whose pipe to the parent breaks (the parent is gone) exits at once too (:func:`parent_gone`): the progress
of a quantization is sent from a ctypes log callback, where an exception would only be printed and swallowed.
Partial files a killed child leaves are removed at the next start (:func:`desktop.fileio.sweep_stale_partials`).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import sys
import threading
from typing import Any, NoReturn

log = logging.getLogger(__name__)

EXIT_ORPHANED = 86
"""The exit code of a child that ended because its parent was gone."""

PR_SET_PDEATHSIG = 1


# ---- parent side


class _Spawner:
    """One daemon thread that starts every child (see the module docstring for why one thread)."""

    def __init__(self) -> None:
        self._requests: queue.Queue[tuple[Any, threading.Event, list[BaseException]]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self, process: multiprocessing.process.BaseProcess) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="quantdesk-spawner", daemon=True)
                self._thread.start()
        done, errors = threading.Event(), []
        self._requests.put((process, done, errors))
        done.wait()
        if errors:
            raise errors[0]

    def _serve(self) -> None:
        while True:
            process, done, errors = self._requests.get()
            try:
                process.start()
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
                errors.append(exc)
            finally:
                done.set()


_spawner = _Spawner()


def start(process: multiprocessing.process.BaseProcess) -> None:
    """Start ``process`` so that it cannot outlive this one (call with the environment the child should get)."""
    if sys.platform.startswith("linux"):
        _spawner.start(process)
    else:
        process.start()
    if sys.platform == "win32":
        _join_kill_on_close_job(process)


_win_job: Any = None


def _join_kill_on_close_job(process: multiprocessing.process.BaseProcess) -> None:  # pragma: no cover - Windows
    """Put the child in this process's kill-on-close Job Object (created once)."""
    global _win_job
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]

    class IoCounters(ctypes.Structure):
        _fields_ = [(name, ctypes.c_ulonglong) for name in (
            "ReadOperationCount", "WriteOperationCount", "OtherOperationCount",
            "ReadTransferCount", "WriteTransferCount", "OtherTransferCount")]

    class BasicLimits(ctypes.Structure):
        _fields_ = [("PerProcessUserTimeLimit", ctypes.c_int64), ("PerJobUserTimeLimit", ctypes.c_int64),
                    ("LimitFlags", wintypes.DWORD), ("MinimumWorkingSetSize", ctypes.c_size_t),
                    ("MaximumWorkingSetSize", ctypes.c_size_t), ("ActiveProcessLimit", wintypes.DWORD),
                    ("Affinity", ctypes.c_size_t), ("PriorityClass", wintypes.DWORD),
                    ("SchedulingClass", wintypes.DWORD)]

    class ExtendedLimits(ctypes.Structure):
        _fields_ = [("BasicLimitInformation", BasicLimits), ("IoInfo", IoCounters),
                    ("ProcessMemoryLimit", ctypes.c_size_t), ("JobMemoryLimit", ctypes.c_size_t),
                    ("PeakProcessMemoryUsed", ctypes.c_size_t), ("PeakJobMemoryUsed", ctypes.c_size_t)]

    job_object_extended_limit_information = 9
    job_object_limit_kill_on_job_close = 0x2000
    try:
        if _win_job is None:
            handle = kernel32.CreateJobObjectW(None, None)
            if not handle:
                raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
            limits = ExtendedLimits()
            limits.BasicLimitInformation.LimitFlags = job_object_limit_kill_on_job_close
            if not kernel32.SetInformationJobObject(handle, job_object_extended_limit_information,
                                                    ctypes.byref(limits), ctypes.sizeof(limits)):
                raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
            _win_job = handle  # never closed: the system closes it when this process ends, killing the children
        child_handle = getattr(getattr(process, "_popen", None), "_handle", None)
        if child_handle and not kernel32.AssignProcessToJobObject(_win_job, wintypes.HANDLE(int(child_handle))):
            raise ctypes.WinError(ctypes.get_last_error())  # type: ignore[attr-defined]
    except OSError:
        log.warning("could not tie child process %s to QuantDesk's lifetime", process.pid, exc_info=True)


# ---- child side


def parent_gone() -> NoReturn:
    """End this child now: its parent is gone, nobody reads its results, and its partial files are swept later."""
    os._exit(EXIT_ORPHANED)


def guard_child() -> None:
    """In a child process: exit as soon as the parent process is gone (see the module docstring)."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
                log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        except (OSError, AttributeError):
            log.warning("prctl is not available", exc_info=True)
        if parent.pid is not None and os.getppid() != parent.pid:
            parent_gone()  # it died before the guard was set
    sentinel = getattr(parent, "sentinel", None)
    if sentinel is None:
        return

    def watch() -> None:
        try:
            multiprocessing.connection.wait([sentinel])
        except OSError:
            pass
        parent_gone()

    threading.Thread(target=watch, name="quantdesk-parent-watch", daemon=True).start()
