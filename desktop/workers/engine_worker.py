"""The Qt bridge to the chat engine: owns an :class:`~desktop.chat.engine.Engine` and turns its events into signals.

The engine's events arrive on its reader thread; the child already batches tokens (``tokens`` events with one
timestamp per token, taken in the child). Those batches are coalesced there and handed to the GUI thread at most
once per :data:`FLUSH_S` (plus a timer that flushes a quiet tail), never one signal per token, each with every
token's stamp for the live graph; every other event first flushes the tokens before it, so the GUI sees them in the
engine's order. All emissions go through one queued connection, so their order is the order they were posted in.

The window's chats go through :class:`~desktop.chat.turns.EngineTurns` (``self.turns``), so they take turns with
the requests of an API server sharing the same loaded model; events of requests that are not the window's go to
their own listeners and never reach these signals. ``engine`` may be any :class:`Engine` with the same events
(a :class:`~desktop.chat.remote.RemoteEngine` for a model on an OpenAI-compatible server).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from PySide6.QtCore import QObject, Qt, QTimer, Signal, Slot

from desktop.chat.engine import Engine, EngineEvent, LoadOptions, ReplyMetrics, Sampling
from desktop.chat.turns import EngineTurns
from desktop.jobs import JobError

log = logging.getLogger(__name__)

FLUSH_S = 0.05


class _Relay(QObject):
    """Lives in the GUI thread; the reader thread emits, Qt queues to the worker's slots."""

    batch = Signal(str, str, object)
    event = Signal(object)


class EngineWorker(QObject):
    sig_load_progress = Signal(float, str)
    """(fraction 0..1, message) while a model loads."""
    sig_loaded = Signal(object, object)
    """(metadata, memory) of the ``loaded`` event: the model is ready."""
    sig_load_cancelled = Signal()
    """A stop arrived while the model was loading."""
    sig_prompt_started = Signal(str, int, int)
    """(request_id, prompt_tokens, dropped_messages): the prompt fits and prefill begins."""
    sig_tokens = Signal(str, str, object)
    """(request_id, text, stamps): a batch of streamed text; one ``perf_counter`` stamp per token (the engine's)."""
    sig_reply_done = Signal(str, str, object)
    """(request_id, full text, :class:`ReplyMetrics`) from llama.cpp's own counters."""
    sig_error = Signal(object, str, str)
    """(:class:`JobError`, request kind ("load", "chat", "engine", ...), request_id or "")."""
    sig_restarted = Signal(str, bool)
    """(request_id or "", reloading): the engine did not answer Stop in time and was restarted (reloading the
    model when one was loaded); the request's ``sig_error`` (kind "unresponsive") comes just before."""
    sig_exited = Signal()
    """The engine process ended (after a shutdown or a crash)."""

    def __init__(
        self,
        parent: QObject | None = None,
        *,
        log_path: str | None = None,
        engine: Callable[[Callable[[EngineEvent], None]], Engine] | None = None,
    ) -> None:
        super().__init__(parent)
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._stamps: list[float] = []
        self._pending_id = ""
        self._last_flush = 0.0
        self._closed = False
        self._relay = _Relay()
        self._relay.batch.connect(self._on_batch, Qt.ConnectionType.QueuedConnection)
        self._relay.event.connect(self._on_event, Qt.ConnectionType.QueuedConnection)
        self._flush_timer = QTimer(self)
        self._flush_timer.setInterval(int(FLUSH_S * 1000))
        self._flush_timer.timeout.connect(self._flush_from_timer)
        self.engine = engine(self._on_engine_event) if engine else Engine(self._on_engine_event, log_path=log_path)
        self.turns = EngineTurns(self.engine)
        self._window_request = ""

    # ---- state
    @property
    def pid(self) -> int | None:
        return self.engine.pid

    @property
    def state(self) -> str:
        return self.engine.state

    @property
    def last_load(self) -> LoadOptions | None:
        return self.engine.last_load

    def is_ready_with(self, options: LoadOptions) -> bool:
        return self.engine.alive and self.engine.state in ("ready", "generating") and self.engine.last_load == options

    # ---- requests (GUI thread; each only sends a message to the child process)
    def load(self, options: LoadOptions) -> None:
        self._closed = False
        self._flush_timer.start()
        self.engine.load(options)
        self.engine.last_load = options  # a remote engine's load does not keep it; is_ready_with compares it

    def chat(
        self, messages: Sequence[Mapping[str, Any]], sampling: Sampling, *, on_overflow: str = "error"
    ) -> str:
        self._window_request = self.turns.submit(
            messages, sampling, listener=self._on_window_event, owner="window", on_overflow=on_overflow
        )
        return self._window_request

    def stop(self) -> None:
        """Stop the window's reply (an API request being answered goes on), or a load."""
        if self.engine.state == "loading" or not self._window_request:
            self.engine.stop()
        else:
            self.turns.stop(self._window_request)

    def retry_safe_mode(self) -> LoadOptions:
        """A fresh engine process, loading the last model with CPU repacking off and half the GPU layers."""
        self._closed = False
        self._flush_timer.start()
        return self.engine.retry_safe_mode()

    @property
    def on_gpu_engine(self) -> bool:
        return bool(getattr(self.engine, "on_gpu_engine", False))

    def retry_on_cpu(self) -> LoadOptions:
        """After a crash on a GPU engine: a fresh engine process on the CPU build, the last model, no GPU layers."""
        self._closed = False
        self._flush_timer.start()
        return self.engine.retry_on_cpu()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop the engine process and wait for it (called when the window closes)."""
        self._closed = True
        self._flush_timer.stop()
        self.engine.close(timeout=timeout_s)

    def retire(self, timeout_s: float = 5.0) -> threading.Thread:
        """Like :meth:`shutdown` for a worker replaced while the window stays open, without waiting: the engine
        closes on a thread of its own (a remote engine waits up to ``timeout_s`` for a reply's stream to end,
        which the window's thread must not). Of its late events only ``exited`` still reaches the signals."""
        self._closed = True
        self._flush_timer.stop()
        closer = threading.Thread(target=self.engine.close, kwargs={"timeout": timeout_s}, name="engine-retire",
                                  daemon=True)
        closer.start()
        return closer

    # ---- reader thread
    def _on_engine_event(self, event: EngineEvent) -> None:
        if not self.turns.feed(event):  # a submitted request's events went to its listener
            self._handle(event)

    def _on_window_event(self, event: EngineEvent) -> None:
        if event.kind == "error" and event.error is not None and event.error.kind == "crash":
            return  # the engine's own crash event follows, once, for the window
        if event.kind in ("reply_done", "error"):
            self._window_request = ""
        self._handle(event)

    def _handle(self, event: EngineEvent) -> None:
        with self._lock:
            if event.kind == "tokens":
                request_id = event.request_id or ""
                if (self._pending or self._stamps) and request_id != self._pending_id:
                    self._flush_locked()
                self._pending_id = request_id
                self._pending.append(str(event.data.get("text", "")))
                self._stamps.extend(float(s) for s in event.data.get("stamps") or ())
                if time.perf_counter() - self._last_flush >= FLUSH_S:
                    self._flush_locked()
                return
            self._flush_locked()
            self._relay.event.emit(event)

    def _flush_locked(self) -> None:
        if not self._pending and not self._stamps:
            return
        text, stamps = "".join(self._pending), self._stamps
        self._pending, self._stamps = [], []
        self._last_flush = time.perf_counter()
        self._relay.batch.emit(self._pending_id, text, stamps)

    # ---- GUI thread
    @Slot()
    def _flush_from_timer(self) -> None:
        with self._lock:
            self._flush_locked()

    @Slot(str, str, object)
    def _on_batch(self, request_id: str, text: str, stamps: list) -> None:  # type: ignore[type-arg]
        if not self._closed:
            self.sig_tokens.emit(request_id, text, stamps)

    @Slot(object)
    def _on_event(self, event: EngineEvent) -> None:
        if self._closed and event.kind != "exited":
            return
        kind, data = event.kind, event.data
        if kind == "load_progress":
            self.sig_load_progress.emit(float(data.get("fraction", 0.0)), str(data.get("message", "")))
        elif kind == "loaded":
            self.sig_loaded.emit(dict(data.get("metadata") or {}), dict(data.get("memory") or {}))
        elif kind == "load_cancelled":
            self.sig_load_cancelled.emit()
        elif kind == "prompt_started":
            self.sig_prompt_started.emit(
                event.request_id or "", int(data.get("prompt_tokens", 0)), int(data.get("dropped_messages", 0))
            )
        elif kind == "reply_done":
            metrics = event.metrics
            assert isinstance(metrics, ReplyMetrics)
            self.sig_reply_done.emit(event.request_id or "", str(data.get("text", "")), metrics)
        elif kind == "error":
            error = event.error or JobError("internal", "The chat engine reported an unknown error.")
            self.sig_error.emit(error, str(data.get("request") or ""), event.request_id or "")
        elif kind == "restarted":
            self.sig_restarted.emit(event.request_id or "", bool(data.get("reloading")))
        elif kind == "exited":
            self._flush_timer.stop()
            self.sig_exited.emit()
