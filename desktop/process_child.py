"""The child's side of :mod:`desktop.process`: its logging set-up and the main that runs one job and answers in
the protocol described there."""

from __future__ import annotations

import faulthandler
import importlib
import inspect
import logging
import os
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from desktop import lifeline
from desktop.errors import Cancelled
from desktop.jobs import error_from_exception

__all__ = ["child_main", "setup_child_logging"]


def _resolve(target: str) -> Callable[..., Any]:
    module_name, _, func_name = target.partition(":")
    return getattr(importlib.import_module(module_name), func_name)  # type: ignore[no-any-return]


def setup_child_logging(log_path: str | None) -> None:
    """In a child process (every child's main calls it first): exit when the parent dies (:mod:`desktop.lifeline`),
    send fd 2 (where native libraries write) and Python's crash traces to the per-job log the parent reads after a
    crash, and route Python logging there too."""
    lifeline.guard_child()
    if log_path:
        log_file = open(log_path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the process
        os.dup2(log_file.fileno(), 2)
        sys.stderr = open(2, "w", closefd=False, buffering=1)  # noqa: SIM115
        faulthandler.enable(file=log_file, all_threads=True)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")


def child_main(
    conn: Connection, target: str | None, kwargs: dict[str, Any], log_path: str | None, preload: tuple[str, ...] = ()
) -> None:
    """Entry point of the child process. A warm child (``target`` None) imports ``preload`` first and then waits
    for its job, ``("job", target, kwargs)``, so its start-up overlaps the parent's own preparations."""
    setup_child_logging(log_path)
    if target is None:
        for module in preload:
            try:
                importlib.import_module(module)
            except Exception:  # noqa: BLE001 - the job itself will import it again and report properly
                logging.getLogger(__name__).exception("preloading %s failed", module)
        try:
            message = conn.recv()
        except EOFError:
            return  # the parent gave up on this child before assigning a job
        if message[0] != "job":
            return
        target, kwargs = message[1], message[2]
        assert target is not None

    send_lock = threading.Lock()
    cancel_seen = threading.Event()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            try:
                conn.send(message)
            except (BrokenPipeError, ConnectionResetError, EOFError):
                lifeline.parent_gone()  # also from ctypes callbacks, where a raised error would be swallowed

    def cancelled() -> bool:
        if not cancel_seen.is_set():
            with send_lock:  # poll/recv share the pipe's read end; serialise with senders for safety
                while conn.poll():
                    if conn.recv()[0] == "cancel":
                        cancel_seen.set()
        return cancel_seen.is_set()

    def progress(done: float, total: float, note: str = "", /, **fields: Any) -> None:
        send(("progress", float(done), float(total), note, fields))

    def emit(payload: Any) -> None:
        send(("event", payload))

    try:
        fn = _resolve(target)
        extra: dict[str, Any] = {}
        if "emit" in inspect.signature(fn).parameters:
            extra["emit"] = emit
        result = fn(progress=progress, cancelled=cancelled, **extra, **kwargs)
    except Cancelled:
        send(("cancelled",))
    except BaseException as exc:  # noqa: BLE001 - everything must cross as a value
        error = error_from_exception(exc)
        if error.detail:
            print(error.detail, file=sys.stderr, flush=True)
        send(("error", error.as_dict()))
    else:
        send(("result", result))
    finally:
        conn.close()
