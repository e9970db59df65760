"""llama.cpp's log, captured once per process.

llama.cpp has one process-wide log callback (``llama_log_set`` also sets ggml's). :data:`llama_log` installs it once
and fans each message out: lines at or above an echo level go to stderr (the child's log file), and while a
:meth:`LlamaLog.capture` or :meth:`LlamaLog.listen` is active, callers see the text too (the engine reads the buffer
sizes a load reports, quantize reads its per-tensor lines, everyone keeps the last errors for their sentence).

llama-cpp-python installs its own callback at import and maps levels wrongly (see the shared notes), so every child
that loads llama.cpp calls :meth:`LlamaLog.install` first.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

# ggml_log_level (ggml.h)
DEBUG, INFO, WARN, ERROR, CONT = 1, 2, 3, 4, 5

Listener = Callable[[int, str], None]


class LlamaLog:
    """The process's llama.cpp log callback; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._callback: Any = None  # the ctypes callback: C keeps only its pointer, so it must stay referenced
        self._last_level = INFO
        self.echo_level = ERROR
        self.errors: collections.deque[str] = collections.deque(maxlen=20)

    @property
    def installed(self) -> bool:
        return self._callback is not None

    def install(self, *, echo_level: int = ERROR) -> None:
        """Route llama.cpp's log through this object (idempotent); lines at ``echo_level`` or above go to stderr."""
        import llama_cpp

        self.echo_level = echo_level
        if self._callback is None:
            self._callback = llama_cpp.llama_log_callback(self._on_log)
            llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    def _on_log(self, level: int, text: bytes | None, _user_data: Any) -> None:
        try:
            if not text:
                return
            if level == CONT:  # the rest of the previous message
                level = self._last_level
            self._last_level = level
            line = text.decode("utf-8", errors="replace")
            if level >= self.echo_level:
                sys.stderr.write(line)
            if level >= ERROR:
                stripped = line.strip(" =\n")
                if stripped:
                    self.errors.append(stripped)
            with self._lock:
                listeners = list(self._listeners)
            for listener in listeners:
                listener(level, line)
        except Exception:  # noqa: BLE001 - an exception must never cross into C
            pass

    @contextlib.contextmanager
    def listen(self, listener: Listener) -> Iterator[None]:
        """Call ``listener(level, text)`` for every message while the block runs (text may be part of a line)."""
        with self._lock:
            self._listeners.append(listener)
        try:
            yield
        finally:
            with self._lock:
                self._listeners.remove(listener)

    @contextlib.contextmanager
    def capture(self, min_level: int = DEBUG) -> Iterator[list[str]]:
        """Collect the text logged while the block runs (at ``min_level`` or above) into the list it yields."""
        captured: list[str] = []

        def keep(level: int, text: str) -> None:
            if level >= min_level:
                captured.append(text)

        with self.listen(keep):
            yield captured

    def last_error(self, default: str = "") -> str:
        return self.errors[-1] if self.errors else default


llama_log = LlamaLog()
