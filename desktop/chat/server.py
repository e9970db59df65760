"""An OpenAI-compatible HTTP server for the model the engine has loaded.

Endpoints: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (streaming as server-sent events, or not;
``usage``, ``finish_reason`` and llama-server's ``timings``), ``GET /v1/models``, ``GET /health``. The request and
response objects are :mod:`desktop.chat.openai_api`'s.

Built on the standard library's ``ThreadingHTTPServer``: no new dependency for a desktop app, a thread per
connection (a request mostly waits for the engine's child process, so threads cost nothing), streaming by plain
writes, and a clean ``shutdown()``. The model lives in the engine's child process, once; requests take turns on it
with the window's own chat through :class:`~desktop.chat.turns.EngineTurns`.

(About 480 lines: the handler and the server that owns its limits and events read best together; the wire
format is :mod:`desktop.chat.openai_api`'s.)

Safety: bound to 127.0.0.1 unless the caller chooses another address, which requires an API key (see
:mod:`desktop.chat.api_keys`); on loopback the ``Host`` header must name loopback too (no DNS rebinding from a web
page). The request body, ``max_tokens`` and the number of open connections are capped (:class:`ServeLimits`).
Every failure is answered with OpenAI's error object and a 4xx/5xx status, never a traceback.

Events: ``on_event`` gets a :class:`ServeEvent` per step of each API request, on the request's thread:
``request_started {request_id, endpoint, client, stream}``, ``token {request_id, text, at}`` (``at``:
``time.perf_counter()`` when it was written), ``request_done {request_id, endpoint, client, stream, status,
finish_reason, metrics}`` (``metrics``: :class:`~desktop.chat.engine.ReplyMetrics` as a dict, or None when the
request failed, then ``error`` holds the message). :func:`log_line` makes the request log's line of a
``request_done``.

From the window (the Chat page's Serve switch)::

    turns = EngineTurns(engine)        # the engine's on_event passes every event to turns.feed(event) first,
                                       # and the window's own chats go through turns.submit(..., owner="window")
    key = None if is_loopback(host) else api_keys.ensure_serve_key()   # (key, is_new): show it once if new
    server = ChatServer(turns, model_name=name, host=host, port=port, api_key=key, on_event=relay_to_qt)
    url = server.start()               # binds at once; a taken port raises UserError with a sentence
    server.close()                     # waits up to 5 s for requests in flight: call it off the GUI thread

The keyring may block (D-Bus), so read the key off the GUI thread too.
"""

from __future__ import annotations

import dataclasses
import errno
import hmac
import json
import logging
import queue
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from desktop.chat import openai_api as api
from desktop.chat.engine import EngineEvent, ReplyMetrics
from desktop.chat.turns import EngineTurns
from desktop.errors import UserError
from desktop.netloc import is_loopback

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ChatServer", "ServeEvent", "ServeLimits", "is_loopback", "log_line"]


@dataclass(frozen=True)
class ServeLimits:
    max_body_bytes: int = 4 * 1024 * 1024
    max_tokens: int = 4096  # a request's max_tokens is clamped to this; a missing one means this
    max_connections: int = 8  # open connections, waiting ones included; more are answered 503 at once
    socket_timeout_s: float = 30.0  # a client that sends nothing for this long is dropped


@dataclass(frozen=True)
class ServeEvent:
    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def request_id(self) -> str:
        return str(self.data.get("request_id", ""))


def log_line(event: ServeEvent) -> str:
    """One line of the request log for a ``request_done`` event."""
    data = event.data
    head = f"{data.get('client', '?')} {data.get('endpoint', '?')}{' stream' if data.get('stream') else ''} " \
           f"{data.get('status', '?')}"
    metrics = data.get("metrics")
    if not metrics:
        return f"{head}: {data.get('error', 'failed')}"
    ttft = metrics.get("ttft_s")
    return (
        f"{head}: {metrics['prompt_tokens_total']} prompt + {metrics['completion_tokens']} tokens, "
        f"{metrics['generation_tokens_per_s']:.1f} tok/s"
        + (f", first token {ttft:.2f} s" if ttft is not None else "")
        + f", {data.get('finish_reason')}"
    )


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], app: ChatServer) -> None:
        self.app = app
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.app._slots.acquire(blocking=False):
            _refuse_busy(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.app._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.app._slots.release()


def _refuse_busy(sock: socket.socket) -> None:
    body = json.dumps(api.error_body("The server has too many open connections; try again shortly.",
                                     "server_error", code="too_many_connections")).encode()
    head = f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n" \
           "Retry-After: 1\r\nConnection: close\r\n\r\n"
    try:
        sock.settimeout(1.0)
        sock.sendall(head.encode() + body)
    except OSError:
        pass


class ChatServer:
    """Serve one loaded model over HTTP. ``start()`` returns the base URL; ``close()`` stops and waits."""

    def __init__(
        self,
        turns: EngineTurns,
        *,
        model_name: str,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        api_key: str | None = None,
        limits: ServeLimits = ServeLimits(),
        on_event: Callable[[ServeEvent], None] | None = None,
    ) -> None:
        if not is_loopback(host) and not api_key:
            raise UserError(
                f"Listening on {host} lets other machines use this model, so it needs an API key.",
                "Create a key (QuantDesk keeps it in the system keyring), or listen on 127.0.0.1 only.",
                kind="key_required",
            )
        self.turns = turns
        self.model_name = model_name
        self.host = host
        self.port = port
        self.limits = limits
        self._api_key = api_key
        self._on_event = on_event
        self._slots = threading.BoundedSemaphore(limits.max_connections)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._requests: set[str] = set()
        self._requests_lock = threading.Condition()
        self.created = int(time.time())
        self.closing = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def loopback_only(self) -> bool:
        return is_loopback(self.host)

    def start(self) -> str:
        try:
            self._httpd = _HTTPServer((self.host, self.port), self)
        except OSError as exc:
            raise _bind_error(exc, self.host, self.port) from None
        self.port = int(self._httpd.server_address[1])
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="quantdesk-serve", daemon=True
        )
        self._thread.start()
        log.info("serving %s on %s", self.model_name, self.url)
        return self.url

    def close(self, timeout: float = 5.0) -> None:
        """Stop listening, stop the requests in flight (their clients get what was written so far), wait for them."""
        httpd = self._httpd
        if httpd is None:
            return
        self.closing = True
        httpd.shutdown()
        with self._requests_lock:
            for request_id in list(self._requests):
                self.turns.stop(request_id)
            self._requests_lock.wait_for(lambda: not self._requests, timeout)
        httpd.server_close()
        self._httpd = None

    def __enter__(self) -> ChatServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- used by the handler

    def authorized(self, header: str | None) -> bool:
        if not self._api_key:
            return True
        scheme, _, token = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._api_key.encode())

    def host_allowed(self, header: str | None) -> bool:
        """On loopback, a request must name a loopback host (a web page cannot rebind a domain to us)."""
        if not self.loopback_only or not header:
            return True
        hostname = urlsplit(f"//{header}").hostname or ""
        return is_loopback(hostname)

    def emit(self, kind: str, **data: Any) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(ServeEvent(kind, data))
        except Exception:  # noqa: BLE001 - a faulty listener must not break a request
            log.exception("serve event listener failed on %s", kind)

    def track(self, request_id: str, active: bool) -> None:
        with self._requests_lock:
            (self._requests.add if active else self._requests.discard)(request_id)
            self._requests_lock.notify_all()


def _bind_error(exc: OSError, host: str, port: int) -> UserError:
    if exc.errno == errno.EADDRINUSE:
        return UserError(f"Port {port} on {host} is already in use by another program.",
                         "Choose another port (--port).", kind="port_in_use")
    if exc.errno == errno.EACCES:
        return UserError(f"This user may not listen on port {port}.", "Choose a port above 1024.", kind="port_denied")
    return UserError(f"QuantDesk cannot listen on {host}:{port} ({exc.strerror or exc}).",
                     "Check the address: it must belong to this machine.", kind="bind_failed")


_ERROR_STATUS = {
    "context_full": (400, "invalid_request_error", "context_length_exceeded"),
    "not_loaded": (503, "server_error", "model_not_loaded"),
    "crash": (503, "server_error", "engine_crashed"),
    "engine_unavailable": (503, "server_error", "engine_unavailable"),
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # so even a garbled request line gets a status line with its JSON error
    server_version = "QuantDesk"
    sys_version = ""
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.app.limits.socket_timeout_s)
        self._sent_headers = False

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        log.debug("%s %s", self.client_address[0], format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The base class's errors (bad request line, header too long, unknown method) as OpenAI error objects."""
        self.close_connection = True
        text = message or self.responses.get(code, ("Error",))[0]
        self._json(code, api.error_body(f"{text}.", "invalid_request_error", code="bad_request"))

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    do_DELETE = do_PATCH = do_HEAD = do_PUT  # noqa: N815

    # -- routing

    def _serve(self, method: str) -> None:
        self.close_connection = True  # one request per connection: a pooled idle client never holds a slot
        app = self.server.app
        try:
            route = urlsplit(self.path).path.rstrip("/") or "/"
            if not app.host_allowed(self.headers.get("Host")):
                raise api.ApiError(403, "This server only answers requests addressed to localhost.",
                                   code="host_not_allowed")
            allowed = {"/health": "GET", "/v1/health": "GET", "/v1/models": "GET", "/models": "GET",
                       "/v1/chat/completions": "POST", "/chat/completions": "POST",
                       "/v1/completions": "POST", "/completions": "POST"}
            if route not in allowed:
                raise api.ApiError(404, f"Unknown endpoint {route[:100]}.", code="unknown_url")
            if method != allowed[route]:
                raise api.ApiError(405, f"{route} takes {allowed[route]} requests.", code="method_not_allowed")
            if route.endswith("health"):
                self._json(200, {"status": "ok", "model": app.model_name})
                return
            if not app.authorized(self.headers.get("Authorization")):
                raise api.ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
            if route.endswith("models"):
                self._json(200, api.models_response(app.model_name, app.created, self._model_meta()))
            elif route.endswith("chat/completions"):
                self._complete(api.parse_chat(self._body(), app.limits.max_tokens))
            else:
                self._complete(api.parse_completion(self._body(), app.limits.max_tokens))
        except api.ApiError as exc:
            self._fail(exc)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            log.info("client %s went away", self.client_address[0])
        except Exception as exc:  # noqa: BLE001 - a bug answers 500 with a sentence; the traceback goes to the log
            log.exception("serve request failed")
            self._fail(api.ApiError(500, f"The server hit an unexpected problem ({type(exc).__name__}).",
                                    type="server_error", code="internal_error"))

    def _model_meta(self) -> dict[str, Any]:
        metadata = self.server.app.turns.engine.loaded_metadata
        keys = ("architecture", "n_ctx", "n_ctx_train", "n_params", "size", "template")
        return {k: metadata[k] for k in keys if k in metadata and isinstance(metadata[k], (int, float, str))}

    def _body(self) -> Any:
        limit = self.server.app.limits.max_body_bytes
        if self.headers.get("Transfer-Encoding"):
            raise api.ApiError(411, "Send the request body with a Content-Length.", code="length_required")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise api.ApiError(411, "Send the request body with a Content-Length.", code="length_required") from None
        if length < 0 or length > limit:
            raise api.ApiError(413, f"The request body is larger than {limit // 1024} KiB.", code="body_too_large")
        raw = self.rfile.read(length)
        if len(raw) < length:
            raise api.ApiError(400, "The request body ended early.", code="invalid_json")
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise api.ApiError(400, "The request body is not valid JSON.", code="invalid_json") from None

    # -- answers

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self._sent_headers = True

    def _fail(self, exc: api.ApiError) -> None:
        try:
            if self._sent_headers:
                self._sse(exc.body())
            else:
                self._json(exc.status, exc.body())
        except OSError:
            pass

    def _start_stream(self, opening: dict[str, Any] | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self._sent_headers = True
        if opening is not None:
            self._sse(opening)

    def _sse(self, data: Any) -> None:
        self.wfile.write(b"data: " + (data if isinstance(data, bytes) else json.dumps(data).encode()) + b"\n\n")

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _complete(self, request: api.ParsedRequest) -> None:
        app = self.server.app
        events: queue.Queue[EngineEvent] = queue.Queue()
        client = self.client_address[0]
        info = {"endpoint": request.endpoint, "client": client, "stream": request.stream}
        if app.closing:
            raise api.ApiError(503, "The server is shutting down.", type="server_error", code="shutting_down")
        request_id = app.turns.submit(request.messages, request.sampling, prompt=request.prompt, owner="api",
                                      listener=events.put)
        app.track(request_id, True)
        app.emit("request_started", request_id=request_id, **info)
        try:
            self._answer(request, request_id, events, info)
        finally:
            app.track(request_id, False)

    def _answer(self, request: api.ParsedRequest, request_id: str, events: queue.Queue[EngineEvent],
                info: dict[str, Any]) -> None:
        app = self.server.app
        response_id, created, model = api.new_id(request.endpoint), int(time.time()), app.model_name
        writing = True
        produced = 0  # tokens streamed so far
        while True:
            try:
                event = events.get(timeout=1.0)
            except queue.Empty:
                if writing and self._client_gone():
                    writing = False
                    app.turns.stop(request_id)
                continue
            if event.kind == "prompt_started" and request.stream and writing:
                opening = api.stream_chunk(request.endpoint, response_id, model, created, first=True)
                writing = self._write_or_stop(request_id, lambda: self._start_stream(opening))
            elif event.kind == "tokens":  # the engine's batch: its text and one stamp per token
                text = str(event.data.get("text", ""))
                stamps = list(event.data.get("stamps") or ())
                for i, at in enumerate(stamps):  # one serve event per token; the batch's text on its last
                    app.emit("token", request_id=request_id, text=text if i == len(stamps) - 1 else "", at=at)
                produced += len(stamps)
                if request.stream and writing:
                    chunk = api.stream_chunk(request.endpoint, response_id, model, created, text,
                                             tokens_so_far=produced if request.timings_per_token else None)
                    writing = self._write_or_stop(request_id, lambda: self._sse(chunk))
            elif event.kind == "reply_done":
                metrics = event.metrics
                assert metrics is not None
                finish = api.FINISH_REASONS[metrics.finish_reason]
                if writing:
                    self._write_or_stop(request_id, lambda: self._finish(request, response_id, created,
                                                                         str(event.data.get("text", "")), metrics))
                status = 200 if writing else 499
                app.emit("request_done", request_id=request_id, status=status, finish_reason=finish,
                         metrics=dataclasses.asdict(metrics), **info)
                return
            elif event.kind == "error":
                error = event.error
                assert error is not None
                status, kind, code = _ERROR_STATUS.get(error.kind, (500, "server_error", error.kind))
                if writing:
                    self._fail(api.ApiError(status, error.sentence(), type=kind, code=code))
                app.emit("request_done", request_id=request_id, status=status, finish_reason=None, metrics=None,
                         error=error.sentence(), **info)
                return

    def _write_or_stop(self, request_id: str, write: Callable[[], Any]) -> bool:
        """Write; when the client has gone, stop its request (the engine moves on to the next) and write no more."""
        try:
            write()
            return True
        except OSError:
            log.info("client of %s went away; stopping its reply", request_id)
            self.server.app.turns.stop(request_id)
            return False

    def _finish(self, request: api.ParsedRequest, response_id: str, created: int, text: str,
                metrics: ReplyMetrics) -> None:
        model = self.server.app.model_name
        finish = api.FINISH_REASONS[metrics.finish_reason]
        if not request.stream:
            build = api.chat_response if request.endpoint == "chat" else api.completion_response
            self._json(200, build(response_id, model, text, metrics))
            return
        if not self._sent_headers:  # stopped before the prompt started: still a well-formed stream
            self._start_stream()
        self._sse(api.stream_chunk(request.endpoint, response_id, model, created, finish=finish, metrics=metrics))
        if request.include_usage:
            self._sse(api.usage_chunk(response_id, model, created, request.endpoint, metrics))
        self._sse(b"[DONE]")
