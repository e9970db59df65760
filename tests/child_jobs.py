"""Job functions the process-runner tests start in child processes (importable by name in the child)."""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

from desktop.errors import Cancelled, UserError


def count(*, progress, cancelled, n: int) -> int:
    for i in range(1, n + 1):
        progress(i, n, f"step {i}")
    return n * 10


def write_until_cancelled(*, progress, cancelled, out: str, started: str) -> None:
    """Writes a partial file, signals that it started, then waits for cancel and removes its own partial file."""
    partial = Path(out + ".partial")
    partial.write_bytes(b"x" * 1000)
    Path(started).write_text("started")
    wait = threading.Event()
    while not cancelled():
        wait.wait(0.01)
    partial.unlink()
    raise Cancelled()


def ignore_cancel(*, progress, cancelled, out: str, started: str) -> None:
    """A stubborn native-like job: writes a partial file and never looks at cancel; it must be killed."""
    Path(out + ".partial").write_bytes(b"x" * 1000)
    Path(started).write_text("started")
    threading.Event().wait(600)


def fail_known(*, progress, cancelled) -> None:
    raise UserError("The model file is not a GGUF.", "Pick a .gguf file.", kind="bad_input")


def fail_bug(*, progress, cancelled) -> None:
    return {}["missing"]  # type: ignore[no-any-return]


def abort(*, progress, cancelled) -> None:
    progress(1, 2, "about to abort")
    os.abort()


def segfault(*, progress, cancelled) -> None:
    progress(1, 2, "about to crash")
    ctypes.string_at(0)


def events(*, progress, cancelled, emit) -> str:
    for word in ("one", "two", "three"):
        emit(word)
    return "done"



def die_with_unread_cancel(*, progress, cancelled) -> None:
    """Reports, lets the parent's cancel arrive unread, then dies: the kernel resets the connection."""
    progress(1, 2, "ready")
    threading.Event().wait(1.0)  # the cancel request arrives meanwhile and is never read
    os.kill(os.getpid(), 9)
