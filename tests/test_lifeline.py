"""Children never outlive the window (issue 13.2): a window-like process runs a real quantization through the app's
path and is killed with SIGKILL; its child must be gone at once (not writing on for seconds), and the next start
must remove the partial file it left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from desktop.fileio import INSTANCE_ENV, PARTIAL_SUFFIX
from tests.quant_helpers import write_tiny_llama

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def medium(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Big enough (about 130 MB of F16) that quantizing it takes seconds of CPU, so the kill lands mid-write."""
    return write_tiny_llama(tmp_path_factory.mktemp("lifeline") / "medium-F16.gguf", embd=1024, ff=4096, n_layer=4,
                            heads=8, kv_heads=4)


def children_of_instance(tag: str) -> list[psutil.Process]:
    """Every process started by the QuantDesk instance ``tag`` (they inherit its instance variable)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid != int(tag) and proc.environ().get(INSTANCE_ENV) == tag:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        psutil.wait_procs([], timeout=0.05)  # a short, interruptible pause between polls
    return predicate()


def test_killing_the_window_ends_its_children_and_the_next_start_sweeps(medium: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != INSTANCE_ENV}  # a fresh app instance, as a user starts it
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    parent = subprocess.Popen([sys.executable, str(ROOT / "tests" / "window_parent.py"), str(medium), str(out)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tag = str(parent.pid)
    try:
        def writing() -> bool:
            return out.is_dir() and any(p.name.endswith(PARTIAL_SUFFIX) and p.stat().st_size > 0
                                        for p in out.iterdir())

        assert wait_for(writing, 120), parent.stderr.read().decode() if parent.poll() is not None else "no partial"
        children = children_of_instance(tag)
        assert children, "the quantization runs in a child process"
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        # the child was mid-quantization (seconds of CPU left); it must end within a moment of its parent
        assert wait_for(lambda: not children_of_instance(tag), 5), [p.cmdline() for p in children_of_instance(tag)]
    finally:
        if parent.poll() is None:
            parent.kill()
        for proc in children_of_instance(tag):
            proc.kill()
    partials = [p for p in out.iterdir() if p.name.endswith(PARTIAL_SUFFIX)]
    assert partials and all(f".{tag}{PARTIAL_SUFFIX}" in p.name for p in partials)  # tagged with the dead window

    from desktop.app import housekeeping  # the next start's clean-up

    removed = housekeeping()
    assert sorted(removed) == sorted(str(p) for p in partials)
    assert not any(p.name.endswith(PARTIAL_SUFFIX) for p in out.iterdir())


def test_a_silent_child_ends_with_its_parent(tmp_path: Path) -> None:
    """A child that sends nothing (a long native call, an idle engine) learns of its parent's death from the
    lifeline alone: the sentinel watcher, and PR_SET_PDEATHSIG on Linux, even when a job thread started it."""
    started = tmp_path / "started"
    script = (
        "import threading\n"
        "from desktop.process import run_in_child\n"
        "t = threading.Thread(target=run_in_child, args=('child_jobs:ignore_cancel',),"
        f" kwargs={{'kwargs': {{'out': {str(tmp_path / 'x')!r}, 'started': {str(started)!r}}}}})\n"
        "t.start(); t.join()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != INSTANCE_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    parent = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    tag = str(parent.pid)
    try:
        assert wait_for(started.exists, 60), parent.stderr.read().decode() if parent.poll() is not None else ""
        assert children_of_instance(tag)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert wait_for(lambda: not children_of_instance(tag), 5)
    finally:
        if parent.poll() is None:
            parent.kill()
        for proc in children_of_instance(tag):
            proc.kill()
