"""Taking turns on one engine: the window's own chat and the API server's requests share one loaded model.

The engine child answers one request at a time, and its ``stop`` stops every request it has received so far. So
:class:`EngineTurns` sends the engine **one chat at a time**: a request submitted while another is answered waits in
a first-in, first-out queue here, in the parent. Then ``stop(request_id)`` is exact: a waiting request is just
taken out of the queue (its listener gets a ``reply_done`` with finish_reason "stopped"), the one being answered
is the only one the engine holds, so ``Engine.stop()`` stops that one and no other.

Wiring: every event the engine delivers goes through :meth:`EngineTurns.feed` first::

    turns = EngineTurns(engine)
    engine = Engine(on_event=lambda e: turns.feed(e) or window_handler(e))

``feed`` hands the events of a submitted request (``prompt_started``, ``token``, ``reply_done``, its ``error``)
to that request's listener and returns True; everything else (``loaded``, a crash, ``exited``) returns False for
the caller to handle. A crash or the engine's exit also ends every waiting request with that error. Listeners run
on the engine's reader thread; they must not block.
"""

from __future__ import annotations

import collections
import logging
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from desktop.chat.engine import Engine, EngineEvent, Sampling
from desktop.jobs import JobError

log = logging.getLogger(__name__)

Listener = Callable[[EngineEvent], None]

__all__ = ["EngineTurns", "Listener"]


@dataclass
class _Request:
    request_id: str
    listener: Listener
    owner: str
    messages: list[dict[str, Any]]
    sampling: dict[str, Any]
    prompt: str | None
    on_overflow: str
    sent: bool = field(default=False)


def stopped_metrics(n_ctx: int = 0) -> dict[str, Any]:
    """The ``reply_done`` metrics of a request stopped before the engine saw it."""
    return {
        "prompt_tokens": 0, "prompt_ms": 0.0, "prompt_tokens_per_s": 0.0, "generated_tokens": 0,
        "generation_ms": 0.0, "generation_tokens_per_s": 0.0, "ttft_s": None, "total_s": 0.0,
        "completion_tokens": 0, "prompt_tokens_total": 0, "context_used": 0, "n_ctx": n_ctx,
        "finish_reason": "stopped",
    }  # fmt: skip


class EngineTurns:
    """One request at a time on ``engine``; the others wait in order. Thread-safe."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._active: _Request | None = None
        self._waiting: collections.deque[_Request] = collections.deque()

    # -- requests

    def submit(
        self,
        messages: Sequence[Mapping[str, Any]] = (),
        sampling: Sampling | Mapping[str, Any] | None = None,
        *,
        listener: Listener,
        prompt: str | None = None,
        owner: str = "window",
        on_overflow: str = "error",
        request_id: str | None = None,
    ) -> str:
        """Queue a chat (``messages``) or a raw completion (``prompt``); returns its request id at once."""
        sampling_dict = sampling.as_dict() if isinstance(sampling, Sampling) else dict(sampling or {})
        request = _Request(
            request_id or uuid.uuid4().hex[:12],
            listener,
            owner,
            [{"role": m["role"], "content": m["content"]} for m in messages],
            sampling_dict,
            prompt,
            on_overflow,
        )
        with self._lock:
            self._waiting.append(request)
            to_send = self._next_locked()
        if to_send is not None:
            self._send(to_send)
        return request.request_id

    def stop(self, request_id: str) -> None:
        """Stop one request: the engine stops it within a token, or it leaves the queue before it started."""
        with self._lock:
            if self._active is not None and self._active.request_id == request_id:
                self.engine.stop()
                return
            found = next((r for r in self._waiting if r.request_id == request_id), None)
            if found is None:
                return
            self._waiting.remove(found)
        n_ctx = int(self.engine.loaded_metadata.get("n_ctx") or 0)
        self._tell(found, EngineEvent("reply_done", {"request_id": request_id, "text": "", "metrics": stopped_metrics(n_ctx)}))

    def waiting(self, owner: str | None = None) -> int:
        """How many requests wait for their turn (of ``owner`` only, when given)."""
        with self._lock:
            return sum(1 for r in self._waiting if owner is None or r.owner == owner)

    @property
    def active_owner(self) -> str | None:
        """Who the engine is answering now ("window", "api", ...), or None when it is free."""
        active = self._active
        return active.owner if active is not None else None

    # -- events

    def feed(self, event: EngineEvent) -> bool:
        """Route one engine event; True when it belonged to a submitted request (its listener got it)."""
        request_id = event.request_id
        with self._lock:
            active = self._active
            mine = active is not None and request_id is not None and request_id == active.request_id
            engine_gone = event.kind == "exited" or (
                event.kind == "error" and event.data.get("request") == "engine"
            )
            ends: list[_Request] = []
            if engine_gone:
                ends = ([active] if active is not None else []) + list(self._waiting)
                self._active = None
                self._waiting.clear()
            elif mine and event.kind in ("reply_done", "error"):
                self._active = None
            to_send = None if engine_gone else self._next_locked()
        if engine_gone:
            error = event.error or JobError(
                "engine_unavailable", "The chat engine stopped before it could answer.", "Load the model again."
            )
            for request in ends:
                payload = {"request_id": request.request_id, "request": "chat", "error": error.as_dict()}
                self._tell(request, EngineEvent("error", payload))
            return False
        if mine:
            assert active is not None
            self._tell(active, event)
        if to_send is not None:
            self._send(to_send)
        return mine

    # -- plumbing

    def _next_locked(self) -> _Request | None:
        if self._active is not None or not self._waiting:
            return None
        self._active = self._waiting.popleft()
        return self._active

    def _send(self, request: _Request) -> None:
        request.sent = True
        try:
            if not self.engine.alive:
                raise RuntimeError("the engine process is not running")
            self.engine.chat(
                request.messages,
                request.sampling,
                request_id=request.request_id,
                on_overflow=request.on_overflow,
                prompt=request.prompt,
            )
        except Exception as exc:  # noqa: BLE001 - the engine refused to take the request: end it, serve the next
            log.exception("the engine did not take request %s", request.request_id)
            error = JobError("engine_unavailable", "The chat engine is not running.", "Load the model again.", repr(exc))
            self.feed(EngineEvent("error", {"request_id": request.request_id, "request": "chat", "error": error.as_dict()}))

    @staticmethod
    def _tell(request: _Request, event: EngineEvent) -> None:
        try:
            request.listener(event)
        except Exception:  # noqa: BLE001 - one faulty listener must not stall the queue
            log.exception("a turn listener failed on %s", event.kind)
