"""The HTTP side of the remote client: a server's address, its requests, its errors in one sentence, its model
list and its server-sent events. Everything the server sends is untrusted, so every read here is bounded.

The API key is passed in by the caller (read from the keyring for this address by :mod:`desktop.chat.remote`) and
sent to that address only: redirects are not followed.
"""

from __future__ import annotations

import http.client
import json
import math
import socket
import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from desktop import __version__
from desktop.chat import api_keys
from desktop.errors import UserError

MAX_LINE_BYTES = 1 << 20
MAX_REPLY_CHARS = 4 << 20
MAX_MODELS = 1000
MAX_ERROR_BYTES = 64 << 10
FROM_KEYRING = "keyring"  # api_key value: read the key kept for this server's address

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


def key_for(address: ServerAddress, api_key: str | None) -> str | None:
    return api_keys.get_remote_key(address.url) if api_key == FROM_KEYRING else api_key


def one_line(text: str, limit: int = 300) -> str:
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
        return UserError(f"A secure connection to {url} could not be made ({one_line(str(exc.reason or exc), 120)}).",
                         "Check whether the server speaks http or https, and its certificate.", kind="tls")
    if isinstance(exc, (http.client.HTTPException, ConnectionError)):
        return UserError(f"The server at {url} closed the connection without a proper answer.",
                         "Check that the address is an OpenAI-compatible server.", kind="offline")
    if isinstance(exc, OSError):
        return UserError(f"The server at {url} cannot be reached ({one_line(str(exc.strerror or exc), 120)}).",
                         "Check the address and this machine's network connection.", kind="offline")
    raise exc


def status_error(status: int, body: bytes, address: ServerAddress, what: str) -> UserError:
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
    said = f": {one_line(message)}" if message.strip() else "."
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


def request(address: ServerAddress, method: str, path: str, api_key: str | None, timeout: float,
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
        conn, response = request(address, "GET", "/v1/models", key_for(address, api_key), timeout)
        try:
            body = response.read(MAX_LINE_BYTES * 4 + 1)
        finally:
            conn.close()
    except OSError as exc:
        raise network_error(exc, address, timeout) from None
    except http.client.HTTPException as exc:
        raise network_error(exc, address, timeout) from None
    if response.status != 200:
        raise status_error(response.status, body[:MAX_ERROR_BYTES], address, "models")
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


def sse_events(response: http.client.HTTPResponse) -> Iterator[str]:
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


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` when the server sent an object there, else an empty one."""
    return value if isinstance(value, dict) else {}


def number(value: Any) -> float:
    """A count or time from the server, or 0 when it is missing or nonsense."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        return 0.0
    return float(min(value, 1e12))
