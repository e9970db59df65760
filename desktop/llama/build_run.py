"""Running a build command: its own process group (cancel kills CMake, Ninja and every compiler under them), every
line to the log, and the fraction done from the build's own status lines."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from desktop.errors import Cancelled
from desktop.jobs import CancelledFn

_NINJA = re.compile(r"^\[(\d+)/(\d+)\]")
_MAKE = re.compile(r"^\[\s*(\d+)%\]")


def parse_progress(line: str) -> tuple[int, int] | None:
    """``(done, total)`` from a Ninja ``[12/345]`` or Make ``[ 45%]`` line, else None."""
    match = _NINJA.match(line)
    if match:
        return int(match.group(1)), int(match.group(2))
    match = _MAKE.match(line)
    if match:
        return int(match.group(1)), 100
    return None


class BuildProgress:
    """The build's fraction done from its own status lines. Ninja prints ``[done/total]``; the Vulkan shader
    generator is a nested build whose ``[1/2]`` lines come inside the outer build's output, so only lines with the
    outer (largest) total count, and the fraction never goes back."""

    def __init__(self) -> None:
        self.total = 0
        self.fraction = 0.0

    def feed(self, line: str) -> float | None:
        """The new fraction (0..1) when ``line`` moved it, else None."""
        found = parse_progress(line)
        if not found or found[1] <= 0 or found[1] < self.total:
            return None
        self.total = found[1]
        fraction = min(1.0, found[0] / found[1])
        if fraction <= self.fraction:
            return None
        self.fraction = fraction
        return fraction


def run_logged(
    argv: list[str],
    log: IO[str],
    cancelled: CancelledFn,
    on_line: Callable[[str], None] | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Run ``argv`` in its own process group, every output line to ``log`` (and ``on_line``). Cancel kills the
    whole group (CMake, Ninja and every compiler under them) and raises :class:`Cancelled`."""
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    kwargs: dict[str, Any] = {}
    if sys.platform == "win32":
        kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
    else:
        kwargs["start_new_session"] = True
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            text=True, errors="replace", bufsize=1, env=env, cwd=cwd, **kwargs)
    assert proc.stdout is not None
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.2):
            if cancelled():
                kill_tree(proc)
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        for line in proc.stdout:
            log.write(line)
            log.flush()  # the log is what a user (or the Hardware page) watches while it builds
            if on_line is not None:
                on_line(line.rstrip("\n"))
        code = proc.wait()
    finally:
        stop.set()
        watcher.join()
        if proc.poll() is None:
            kill_tree(proc)
    log.flush()
    if cancelled():
        raise Cancelled()
    return code


def kill_tree(proc: subprocess.Popen[str]) -> None:
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/T", "/F", "/PID", str(proc.pid)], capture_output=True)
    else:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(3)
                break
            except subprocess.TimeoutExpired:
                continue
    proc.wait()
