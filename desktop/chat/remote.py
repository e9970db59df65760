"""Chat with any OpenAI-compatible server (llama-server, vLLM, Ollama, QuantDesk's own), with the local engine's events.

:class:`RemoteEngine` has :class:`~desktop.chat.engine.Engine`'s methods and delivers the same events, so the Chat
page and ``quantdesk chat --server`` use it in place of the local engine:

* ``load(model)``: reads ``/v1/models``, then ``loaded {metadata: {name, remote, url, models, n_ctx?}, memory: {}}``
  (or ``error`` with request "load"). An empty model name picks the server's only model.
* ``chat(messages, sampling)``: a streaming ``/v1/chat/completions``; ``prompt_started`` when the server accepts
  it, a ``token {request_id, text, at}`` per streamed piece (``at``: ``time.perf_counter()`` on arrival), then
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
import math
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from desktop import __version__
from desktop.chat import api_keys
from desktop.chat.engine import Engine, EngineEvent, LoadOptions, Sampling
from desktop.errors import UserError
from desktop.jobs import JobError, error_from_exception

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 1 << 20
MAX_REPLY_CHARS = 4 << 20
MAX_MODELS = 1000
MAX_ERROR_BYTES = 64 << 10
FROM_KEYRING = "keyring"

__all__ = ["FROM_KEYRING", "RemoteEngine", "ServerAddress", "list_models"]


@dataclass(frozen=True)
class ServerAddress:
    """A server's base address: ``http(s)://host[:port][/path]`` without the trailing ``/v1``."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> ServerAddress:
        text = url.strip()
        if "://" not in text:
            text = "http://" + text
        parts = urlsplit(text)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname or port == -1:
            raise UserError(f"{url[:200]!r} is not a server address.",
                            "Write it like http://127.0.0.1:8080 or https://example.org/v1.", kind="bad_url")
        scheme = parts.scheme.lower()
        path = parts.path.rstrip("/")
        if path.endswith("/v1"):
            path = path[:-3]
        return cls(scheme, parts.hostname, port or (443 if scheme == "https" else 80), path)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)


def _key_for(address: ServerAddress, api_key: str | None) -> str | None:
    return api_keys.get_remote_key(address.url) if api_key == FROM_KEYRING else api_key


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def network_error(exc: BaseException, address: ServerAddress, timeout: float) -> UserError:
    """One sentence for a failed connection."""
    url = address.url
    if isinstance(exc, ConnectionRefusedError):
        return UserError(f"Nothing answers at {url}: the connection was refused.",
                         "Start the server, or check the address and port.", kind="offline")
    if isinstance(exc, socket.gaierror):
        return UserError(f"The server name {address.host} could not be found.",
                         "Check the address and this machine's network connection.", kind="offline")
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return UserError(f"The server at {url} did not answer within {timeout:.0f} s.",
                         "Check that it is running and not overloaded.", kind="timeout")
    if isinstance(exc, ssl.SSLError):
        return UserError(f"A secure connection to {url} could not be made ({_one_line(exc.reason or exc, 120)}).",
                         "Check whether the server speaks http or https, and its certificate.", kind="tls")
    if isinstance(exc, (http.client.HTTPException, ConnectionError)):
        return UserError(f"The server at {url} closed the connection without a proper answer.",
                         "Check that the address is an OpenAI-compatible server.", kind="offline")
    if isinstance(exc, OSError):
        return UserError(f"The server at {url} cannot be reached ({_one_line(exc.strerror or exc, 120)}).",
                         "Check the address and this machine's network connection.", kind="offline")
    raise exc


def _status_error(status: int, body: bytes, address: ServerAddress, what: str) -> UserError:
    message = ""
    code = None
    try:
        data = json.loads(body.decode("utf-8", "replace"))
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            message, code = str(error.get("message") or ""), error.get("code")
        elif isinstance(error, str):
            message = error
        elif isinstance(data, dict) and "detail" in data:
            message = json.dumps(data["detail"])[:300] if not isinstance(data["detail"], str) else data["detail"]
    except ValueError:
        message = body.decode("utf-8", "replace")
    said = f": {_one_line(message)}" if message.strip() else "."
    if status in (401, 403):
        return UserError(f"The server at {address.url} refused the request (HTTP {status}){said}",
                         "Check its API key; QuantDesk keeps one per server in the system keyring.",
                         kind="unauthorized")
    if status == 404 and what == "models":
        return UserError(f"The server at {address.url} has no /v1/models endpoint.",
                         "Check that the address points at an OpenAI-compatible server.", kind="not_openai")
    kind = "context_full" if code == "context_length_exceeded" else ("bad_request" if status < 500 else "server_error")
    return UserError(f"The server at {address.url} answered HTTP {status}{said}",
                     "Check the model name and settings, or the server's log.", kind=kind)


def _request(address: ServerAddress, method: str, path: str, api_key: str | None, timeout: float,
             body: Mapping[str, Any] | None = None,
             on_socket: Callable[[socket.socket], None] | None = None,
             ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Send one request; ``on_socket`` gets the socket before the answer is awaited (so Stop can shut it)."""
    conn = address.connect(timeout)
    headers = {"User-Agent": f"QuantDesk/{__version__}", "Accept": "application/json, text/event-stream"}
    data = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        conn.request(method, address.path + path, body=data, headers=headers)
        if on_socket is not None and conn.sock is not None:
            on_socket(conn.sock)  # the response keeps reading from it after http.client lets go of conn.sock
        return conn, conn.getresponse()
    except BaseException:
        conn.close()
        raise


def list_models(url: str, api_key: str | None = FROM_KEYRING, *, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The server's models from ``/v1/models``: dicts with at least ``id``. Raises UserError in one sentence."""
    address = ServerAddress.parse(url)
    try:
        conn, response = _request(address, "GET", "/v1/models", _key_for(address, api_key), timeout)
        try:
            body = response.read(MAX_LINE_BYTES * 4 + 1)
        finally:
            conn.close()
    except OSError as exc:
        raise network_error(exc, address, timeout) from None
    except http.client.HTTPException as exc:
        raise network_error(exc, address, timeout) from None
    if response.status != 200:
        raise _status_error(response.status, body[:MAX_ERROR_BYTES], address, "models")
    try:
        data = json.loads(body.decode("utf-8"))
        entries = data["data"] if isinstance(data, dict) else data
        models = [dict(m) for m in entries[:MAX_MODELS] if isinstance(m, dict) and isinstance(m.get("id"), str)]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"The server at {address.url} sent a model list QuantDesk cannot read.",
                        "Check that the address points at an OpenAI-compatible server.", kind="not_openai") from None
    for m in models:
        m["id"] = m["id"][:300]
    return models


def _sse_events(response: http.client.HTTPResponse) -> Iterator[str]:
    """The ``data`` of each server-sent event (lines bounded; comments and other fields skipped)."""
    data: list[str] = []
    while True:
        line = response.readline(MAX_LINE_BYTES + 1)
        if len(line) > MAX_LINE_BYTES:
            raise UserError("The server sent a line longer than 1 MiB.", "Check the server.", kind="bad_response")
        if not line:
            if data:
                yield "\n".join(data)
            return
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if not text:
            if data:
                yield "\n".join(data)
                data = []
        elif text.startswith("data:"):
            data.append(text[5:].lstrip(" "))


def _number(value: Any) -> float:
    """A count or time from the server, or 0 when it is missing or nonsense."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return 0.0
    return float(min(value, 1e12))


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
                                f"Its models: {_one_line(', '.join(ids[:20]), 200)}.", kind="choose_model")
            if ids and name not in ids:
                raise UserError(f"The server at {self.url} has no model named {_one_line(name, 100)!r}.",
                                f"It offers: {_one_line(', '.join(ids[:20]), 200)}.", kind="not_found")
        except BaseException as exc:  # noqa: BLE001 - crosses as an error event
            self._fail("load", exc)
            return
        self.model = name
        entry = next((m for m in models if m["id"] == name), {})
        meta = entry.get("meta") if isinstance(entry.get("meta"), dict) else {}
        metadata: dict[str, Any] = {"name": name, "remote": True, "url": self.url, "models": ids}
        n_ctx = _number(meta.get("n_ctx") or meta.get("n_ctx_train"))
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
        return _key_for(self.address, self._api_key)

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        sampling: Sampling | Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
        on_overflow: str = "error",
        prompt: str | None = None,
    ) -> str:
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
                self._deliver(EngineEvent("reply_done", {"request_id": request_id, "text": "",
                                                         "metrics": _Tally(time.perf_counter()).metrics(
                                                             "stopped", 0, {}, {}), "timing_source": "stream"}))
                return
            try:
                self._stream_turn(request_id, seq, body)
            except BaseException as exc:  # noqa: BLE001 - crosses as an error event
                self._fail("chat", exc, request_id)
            finally:
                with self._conn_lock:
                    self._sock = None

    def _stream_turn(self, request_id: str, seq: int, body: dict[str, Any]) -> None:
        tally = _Tally(time.perf_counter())
        def keep(sock: socket.socket) -> None:
            with self._conn_lock:
                self._sock = sock

        try:
            conn, response = _request(self.address, "POST", "/v1/chat/completions", self._key(), self.timeout_s,
                                      body, keep)
        except (OSError, http.client.HTTPException) as exc:
            if self._stop_upto >= seq:
                raise UserError("Stopped before the server answered.", kind="stopped") from None
            raise network_error(exc, self.address, self.timeout_s) from None
        try:
            self._read_stream(request_id, seq, response, tally)
        finally:
            response.close()
            conn.close()

    def _read_stream(self, request_id: str, seq: int, response: http.client.HTTPResponse, tally: _Tally) -> None:
        if self._stop_upto >= seq:
            self.stop()
        if response.status != 200:
            raise _status_error(response.status, response.read(MAX_ERROR_BYTES), self.address, "chat")
        self._deliver(EngineEvent("prompt_started", {"request_id": request_id, "prompt_tokens": 0,
                                                     "dropped_messages": 0}))
        finish, usage, timings = "", {}, {}
        try:
            for data in _sse_events(response):
                if data.strip() == "[DONE]":
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    continue
                if not isinstance(chunk, dict):
                    continue
                if chunk.get("error"):
                    raise _status_error(500, json.dumps(chunk).encode(), self.address, "chat")
                usage = chunk.get("usage") if isinstance(chunk.get("usage"), dict) else usage
                timings = chunk.get("timings") if isinstance(chunk.get("timings"), dict) else timings
                choices = chunk.get("choices")
                choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
                delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
                text = delta.get("content")
                if isinstance(text, str) and text:
                    tally.token(text)
                    if tally.chars > MAX_REPLY_CHARS:
                        raise UserError("The server's reply grew beyond 4 MiB of text.", "Lower max tokens.",
                                        kind="bad_response")
                    self._deliver(EngineEvent("token", {"request_id": request_id, "text": text, "at": tally.last}))
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


class _Tally:
    """Arrival times of one streamed reply, and its metrics (the server's own numbers where it sent them)."""

    def __init__(self, sent: float) -> None:
        self.sent = sent
        self.first: float | None = None
        self.last = sent
        self.parts: list[str] = []
        self.chars = 0

    def token(self, text: str) -> None:
        self.last = time.perf_counter()
        if self.first is None:
            self.first = self.last
        self.parts.append(text)
        self.chars += len(text)

    def stream_timing(self) -> dict[str, Any]:
        n, first = len(self.parts), self.first
        span = (self.last - first) if first is not None else 0.0
        return {
            "pieces": n,
            "ttft_s": (first - self.sent) if first is not None else None,
            "generation_s": span,
            "pieces_per_s": (n - 1) / span if n > 1 and span > 0 else 0.0,
        }

    def metrics(self, finish: str, n_ctx: int, usage: Mapping[str, Any], timings: Mapping[str, Any]) -> dict[str, Any]:
        stream = self.stream_timing()
        prompt_total = int(_number(usage.get("prompt_tokens")) or _number(timings.get("prompt_n")))
        completion = int(_number(usage.get("completion_tokens")) or len(self.parts))
        ttft = stream["ttft_s"]
        perf: dict[str, float] = {}
        if _number(timings.get("predicted_n")):
            perf = {"n_p_eval": _number(timings.get("prompt_n")), "t_p_eval_ms": _number(timings.get("prompt_ms")),
                    "n_eval": _number(timings.get("predicted_n")), "t_eval_ms": _number(timings.get("predicted_ms"))}
        prompt_n = int(perf.get("n_p_eval", prompt_total))
        prompt_ms = perf.get("t_p_eval_ms", (ttft or 0.0) * 1000)
        generated = int(perf.get("n_eval", max(0, len(self.parts) - 1)))
        generation_ms = perf.get("t_eval_ms", stream["generation_s"] * 1000)
        return {
            "prompt_tokens": prompt_n,
            "prompt_ms": prompt_ms,
            "prompt_tokens_per_s": _number(timings.get("prompt_per_second")) or
            (prompt_n / prompt_ms * 1000 if prompt_ms > 0 else 0.0),
            "generated_tokens": generated,
            "generation_ms": generation_ms,
            "generation_tokens_per_s": _number(timings.get("predicted_per_second")) or
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
