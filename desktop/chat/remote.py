"""Chat with any OpenAI-compatible server (llama-server, vLLM, Ollama, QuantDesk's own), with the local engine's events.

:class:`RemoteEngine` has :class:`~desktop.chat.engine.Engine`'s methods and delivers the same events, so the Chat
page and ``quantdesk chat --server`` use it in place of the local engine:

* ``load(model)``: reads ``/v1/models``, then ``loaded {metadata: {name, remote, url, models, n_ctx?}, memory: {}}``
  (or ``error`` with request "load"). An empty model name picks the server's only model.
* ``chat(messages, sampling)``: a streaming ``/v1/chat/completions``; ``prompt_started`` when the server accepts
  it, a ``tokens {request_id, text, stamps}`` per streamed piece (``stamps``: its ``time.perf_counter()`` on
  arrival, one per piece: a server's chunk is about one token), then
  ``reply_done {request_id, text, metrics, timing_source, stream_timing, server_timings}``. ``metrics`` is a
  :class:`~desktop.chat.engine.ReplyMetrics`: token counts from the server's ``usage``, speeds from the server's
  own ``timings`` where it sends them (llama-server does; they fill ``llama_perf`` as llama.cpp's counters do
  locally), otherwise from the stream's arrival times.
* ``stop()``: closes the stream (finish_reason "stopped"); ``close()``: stops and ends with ``exited``.

Errors are one sentence (:class:`~desktop.jobs.JobError` in an ``error`` event): nothing listening, unknown host,
timeout, a refused key, the server's own error message (bounded). Everything the server sends is untrusted: lines,
replies and model lists are bounded, numbers checked. The API key is read from the keyring for this server's
address (:mod:`desktop.chat.api_keys`) and sent to that address only (redirects are not followed).
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from desktop.chat.engine import Engine, EngineEvent, LoadOptions, Sampling
from desktop.chat.remote_http import (
    FROM_KEYRING,
    as_dict,
    MAX_ERROR_BYTES,
    MAX_REPLY_CHARS,
    ServerAddress,
    key_for,
    list_models,
    network_error,
    number,
    one_line,
    request,
    sse_events,
    status_error,
)
from desktop.errors import UserError
from desktop.jobs import error_from_exception

log = logging.getLogger(__name__)

__all__ = ["FROM_KEYRING", "RemoteEngine", "ServerAddress", "list_models"]

EXTENSIONS = ("top_k", "min_p", "repeat_penalty", "timings_per_token")  # llama.cpp's fields beyond OpenAI's
MAX_TOKENS_PER_PIECE = 1 << 20


class RemoteEngine(Engine):
    """An :class:`Engine` whose model runs on an OpenAI-compatible server. Same methods, same events."""

    def __init__(
        self,
        url: str,
        on_event: Callable[[EngineEvent], None] | None = None,
        *,
        api_key: str | None = FROM_KEYRING,
        timeout_s: float = 60.0,
    ) -> None:
        super().__init__(on_event)
        self.address = ServerAddress.parse(url)
        self._api_key = api_key
        self.timeout_s = timeout_s
        self.model = ""
        self._started = False
        self._seqs = itertools.count(1)
        self._stop_upto = 0
        self._turn = threading.Lock()  # one reply at a time, as the local engine answers them
        self._conn_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return self.address.url

    @property
    def pid(self) -> int | None:
        return None

    @property
    def alive(self) -> bool:
        return self._started

    @property
    def log_path(self) -> Path | None:
        return None

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._deliver(EngineEvent("ready", {"pid": None, "url": self.url}))

    def close(self, timeout: float = 5.0) -> None:
        if not self._started:
            return
        self.stop()
        for thread in self._threads:
            thread.join(timeout)
        self._started = False
        self.state = "stopped"
        self._deliver(EngineEvent("exited", {"exitcode": 0}))

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        self._threads = [t for t in self._threads if t.is_alive()]
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _fail(self, request: str, exc: BaseException, request_id: str | None = None) -> None:
        error = error_from_exception(exc)
        if error.detail:
            log.error("remote %s failed: %s", request, error.detail)
        self._deliver(EngineEvent("error", {"request_id": request_id, "request": request, "error": error.as_dict()}))

    # -- load: pick a model the server offers

    def load(self, options: LoadOptions | str | Path = "", **overrides: Any) -> None:
        """Choose ``options`` (a model name) on the server; ``loaded`` follows once ``/v1/models`` answered."""
        name = options.path if isinstance(options, LoadOptions) else str(options)
        self.start()
        self.state = "loading"
        self._spawn(lambda: self._load(name), "remote-load")

    def _load(self, name: str) -> None:
        try:
            models = list_models(self.url, self._key(), timeout=min(self.timeout_s, 15.0))
            ids = [m["id"] for m in models]
            if not name and len(ids) == 1:
                name = ids[0]
            if not name:
                raise UserError(f"The server at {self.url} offers {len(ids)} models; choose one.",
                                f"Its models: {one_line(', '.join(ids[:20]), 200)}.", kind="choose_model")
            if ids and name not in ids:
                raise UserError(f"The server at {self.url} has no model named {one_line(name, 100)!r}.",
                                f"It offers: {one_line(', '.join(ids[:20]), 200)}.", kind="not_found")
        except BaseException as exc:  # noqa: BLE001 - crosses as an error event
            self._fail("load", exc)
            return
        self.model = name
        entry = next((m for m in models if m["id"] == name), {})
        meta = as_dict(entry.get("meta"))
        metadata: dict[str, Any] = {"name": name, "remote": True, "url": self.url, "models": ids}
        n_ctx = number(meta.get("n_ctx") or meta.get("n_ctx_train"))
        if n_ctx:
            metadata["n_ctx"] = int(n_ctx)
        self._deliver(EngineEvent("loaded", {"metadata": metadata, "memory": {}}))

    def unload(self) -> None:
        self.stop()
        self._deliver(EngineEvent("unloaded", {}))

    def retry_safe_mode(self) -> LoadOptions:
        raise UserError("A remote model has no safe mode.", "Reconnect to the server instead.")

    # -- chat

    def _key(self) -> str | None:
        return key_for(self.address, self._api_key)

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        sampling: Sampling | Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
        on_overflow: str = "error",
        prompt: str | None = None,
    ) -> str:
        if prompt is not None:
            raise UserError("A model on a server answers chats only here.", "Send messages instead of a prompt.")
        request_id = request_id or uuid.uuid4().hex[:12]
        sampling_dict = sampling.as_dict() if isinstance(sampling, Sampling) else dict(sampling or {})
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for name in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "max_tokens", "seed"):
            if sampling_dict.get(name) is not None:
                body[name] = sampling_dict[name]
        body["timings_per_token"] = True  # llama-server (and quantdesk serve): each piece says how many tokens
        if sampling_dict.get("stop"):
            body["stop"] = list(sampling_dict["stop"])
        self.start()
        self.current_request = request_id
        self.state = "generating"
        self._last_chat = (list(messages), sampling_dict, on_overflow)
        seq = next(self._seqs)
        self._spawn(lambda: self._stream(request_id, seq, body), "remote-chat")
        return request_id

    def stop(self) -> None:
        """Stop every reply asked for so far: close the stream now (the server sees the connection go)."""
        self._stop_upto = next(self._seqs)
        with self._conn_lock:
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _stream(self, request_id: str, seq: int, body: dict[str, Any]) -> None:
        with self._turn:
            if self._stop_upto >= seq:
                self._stopped_early(request_id)
                return
            try:
                self._stream_turn(request_id, seq, body)
            except _StoppedEarly:
                self._stopped_early(request_id)
            except BaseException as exc:  # noqa: BLE001 - crosses as an error event
                self._fail("chat", exc, request_id)
            finally:
                with self._conn_lock:
                    self._sock = None

    def _stopped_early(self, request_id: str) -> None:
        """A reply stopped before the server sent any of it: reply_done with nothing, as the local engine says it."""
        metrics = _Tally(time.perf_counter()).metrics("stopped", int(self.loaded_metadata.get("n_ctx") or 0), {}, {})
        self._deliver(EngineEvent("reply_done", {"request_id": request_id, "text": "", "metrics": metrics,
                                                 "timing_source": "stream"}))

    def _stream_turn(self, request_id: str, seq: int, body: dict[str, Any]) -> None:
        tally = _Tally(time.perf_counter())
        def keep(sock: socket.socket) -> None:
            with self._conn_lock:
                self._sock = sock
            if self._stop_upto >= seq:  # a stop that came while connecting: the answer must not be awaited
                sock.shutdown(socket.SHUT_RDWR)

        for attempt in (body, {k: v for k, v in body.items() if k not in EXTENSIONS}):
            try:
                conn, response = request(self.address, "POST", "/v1/chat/completions", self._key(), self.timeout_s,
                                         attempt, keep)
            except (OSError, http.client.HTTPException) as exc:
                if self._stop_upto >= seq:
                    raise _StoppedEarly() from None
                raise network_error(exc, self.address, self.timeout_s) from None
            try:
                if response.status != 200:
                    said = response.read(MAX_ERROR_BYTES)
                    if response.status == 400 and attempt is body and _names_an_extension(said):
                        continue  # a strict server (OpenAI's own) refuses llama.cpp's extra fields: ask without them
                    raise status_error(response.status, said, self.address, "chat")
                self._read_stream(request_id, seq, response, tally, body.get("max_tokens"))
                return
            finally:
                response.close()
                conn.close()

    def _read_stream(self, request_id: str, seq: int, response: http.client.HTTPResponse, tally: _Tally,
                     max_tokens: Any) -> None:
        if self._stop_upto >= seq:
            self.stop()
        self._deliver(EngineEvent("prompt_started", {"request_id": request_id, "prompt_tokens": 0,
                                                     "dropped_messages": 0}))
        finish, usage, timings = "", as_dict(None), as_dict(None)
        limit = int(number(max_tokens)) or MAX_TOKENS_PER_PIECE  # the most tokens a server may claim to have sent
        try:
            for data in sse_events(response):
                if data.strip() == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue
                if not isinstance(chunk, dict):
                    continue
                if chunk.get("error"):
                    raise status_error(500, json.dumps(chunk).encode(), self.address, "chat")
                usage = as_dict(chunk.get("usage")) or usage
                timings = as_dict(chunk.get("timings")) or timings
                choices = chunk.get("choices")
                choice = as_dict(choices[0] if isinstance(choices, list) and choices else None)
                text = as_dict(choice.get("delta")).get("content")
                if isinstance(text, str) and text:
                    so_far = min(int(number(as_dict(chunk.get("timings")).get("predicted_n"))), limit)
                    tally.token(text, so_far - tally.tokens if so_far > tally.tokens else 1)
                    if tally.chars > MAX_REPLY_CHARS:
                        raise UserError("The server's reply grew beyond 4 MiB of text.", "Lower max tokens.",
                                        kind="bad_response")
                    self._deliver(EngineEvent("tokens", {"request_id": request_id, "text": text,
                                                         "stamps": [tally.last] * tally.last_count}))
                if isinstance(choice.get("finish_reason"), str):
                    finish = choice["finish_reason"]
        except (OSError, http.client.HTTPException) as exc:
            if self._stop_upto < seq:
                raise network_error(exc, self.address, self.timeout_s) from None
        stopped = self._stop_upto >= seq and finish == ""
        reason = "stopped" if stopped else ("length" if finish == "length" else "stop")
        metrics = tally.metrics(reason, int(self.loaded_metadata.get("n_ctx") or 0), usage, timings)
        self._deliver(EngineEvent("reply_done", {
            "request_id": request_id, "text": "".join(tally.parts), "metrics": metrics,
            "timing_source": "server" if metrics["llama_perf"] else "stream",
            "stream_timing": tally.stream_timing(), "server_timings": dict(timings) if timings else None,
        }))


def _names_an_extension(error_body: bytes) -> bool:
    text = error_body.decode("utf-8", "replace")
    return any(name in text for name in EXTENSIONS)


class _StoppedEarly(Exception):
    """Stop closed the connection before the server answered."""


class _Tally:
    """Arrival times of one streamed reply, and its metrics (the server's own numbers where it sent them)."""

    def __init__(self, sent: float) -> None:
        self.sent = sent
        self.first: float | None = None
        self.last = sent
        self.parts: list[str] = []
        self.chars = 0
        self.tokens = 0  # tokens so far: a piece is one token unless the server said how many it held
        self.last_count = 0

    def token(self, text: str, count: int = 1) -> None:
        self.last = time.perf_counter()
        if self.first is None:
            self.first = self.last
        self.parts.append(text)
        self.chars += len(text)
        self.tokens += count
        self.last_count = count

    def stream_timing(self) -> dict[str, Any]:
        n, first = len(self.parts), self.first
        span = (self.last - first) if first is not None else 0.0
        return {
            "pieces": n,
            "tokens": self.tokens,
            "ttft_s": (first - self.sent) if first is not None else None,
            "generation_s": span,
            "pieces_per_s": (n - 1) / span if n > 1 and span > 0 else 0.0,
        }

    def metrics(self, finish: str, n_ctx: int, usage: Mapping[str, Any], timings: Mapping[str, Any]) -> dict[str, Any]:
        stream = self.stream_timing()
        prompt_total = int(number(usage.get("prompt_tokens")) or number(timings.get("prompt_n")))
        completion = int(number(usage.get("completion_tokens")) or self.tokens)
        ttft = stream["ttft_s"]
        perf: dict[str, float] = {}
        if number(timings.get("predicted_n")) and number(timings.get("predicted_ms")):
            perf = {"n_p_eval": number(timings.get("prompt_n")), "t_p_eval_ms": number(timings.get("prompt_ms")),
                    "n_eval": number(timings.get("predicted_n")), "t_eval_ms": number(timings.get("predicted_ms"))}
        prompt_n = int(perf.get("n_p_eval", prompt_total))
        prompt_ms = perf.get("t_p_eval_ms", (ttft or 0.0) * 1000)
        generated = int(perf.get("n_eval", max(0, self.tokens - 1)))
        generation_ms = perf.get("t_eval_ms", stream["generation_s"] * 1000)
        return {
            "prompt_tokens": prompt_n,
            "prompt_ms": prompt_ms,
            "prompt_tokens_per_s": number(timings.get("prompt_per_second")) or
            (prompt_n / prompt_ms * 1000 if prompt_ms > 0 else 0.0),
            "generated_tokens": generated,
            "generation_ms": generation_ms,
            "generation_tokens_per_s": number(timings.get("predicted_per_second")) or
            (generated / generation_ms * 1000 if generation_ms > 0 else 0.0),
            "ttft_s": ttft,
            "total_s": time.perf_counter() - self.sent,
            "completion_tokens": completion,
            "prompt_tokens_total": prompt_total,
            "context_used": prompt_total + completion,
            "n_ctx": n_ctx,
            "finish_reason": finish,
            "llama_perf": perf,
        }
