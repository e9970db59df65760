"""A mock Hugging Face Hub on 127.0.0.1: the HTTP API subset huggingface_hub uses, plus fault injection.

Routes (the same as huggingface.co; see shared/notes section 7):

* ``GET /api/models?search=&filter=&pipeline_tag=&limit=``          search
* ``GET /api/models/{repo}[/revision/{rev}]``                        repo info (``sha``, ``siblings``, ``gated``)
* ``GET /api/models/{repo}/tree/{rev}[/{path}]``                     file listing with sizes and LFS oids
* ``HEAD|GET /{repo}/resolve/{rev}/{path}``                           file metadata and content, ``Range`` -> 206

Errors carry ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo) as the Hub's do. Private
repos answer 401 without a valid token; gated repos list their files but answer 401 (no token) or 403 (a token
without access) to downloads; an unknown token gets 401 "Invalid credentials in Authorization header".

Faults, each for the next ``times`` matching requests: :meth:`MockHub.drop_after` (close the connection after N
body bytes), :meth:`MockHub.fail` (answer an HTTP status), :meth:`MockHub.throttle` (stream at a set rate until the
client goes away), :meth:`MockHub.hang` (answer nothing until released) and :meth:`MockHub.ignore_range` (answer 200
with the whole file, like a proxy that drops ``Range``). Every request is recorded, without
the token.

Also here: builders for real test files (safetensors written by hand, GGUF written with ``gguf.GGUFWriter``),
the ``mock_hub`` fixture (sets ``HF_ENDPOINT``) and the ``memory_keyring`` fixture (an in-memory keyring backend,
so no test touches the user's keyring).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

LFS_MIN_SIZE = 1024  # files at least this big are served as LFS objects (sha256 ETag), like weights on the Hub
_CHUNK = 1024 * 1024


@dataclass
class MockFile:
    """A file of a mock repo: bytes in memory, a file on disk, or ``virtual_size`` zero bytes never stored."""

    path: str
    data: bytes | None = None
    source: Path | None = None
    virtual_size: int | None = None
    _sha256: str | None = None
    _sha1: str | None = None

    @property
    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        if self.source is not None:
            return self.source.stat().st_size
        return int(self.virtual_size or 0)

    @property
    def is_lfs(self) -> bool:
        return self.size >= LFS_MIN_SIZE

    def _hash(self, algo: str) -> str:
        h = hashlib.new(algo)
        if algo == "sha1":  # git blob id
            h.update(f"blob {self.size}\0".encode())
        if self.virtual_size is not None:
            h.update(f"virtual:{self.path}:{self.virtual_size}".encode())
        else:
            for chunk in self.read(0, self.size):
                h.update(chunk)
        return h.hexdigest()

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = self._hash("sha256")
        return self._sha256

    @property
    def sha1(self) -> str:
        if self._sha1 is None:
            self._sha1 = self._hash("sha1")
        return self._sha1

    @property
    def etag(self) -> str:
        return self.sha256 if self.is_lfs else self.sha1

    def read(self, start: int, end: int) -> Iterator[bytes]:
        """The bytes ``[start, end)`` in chunks."""
        if self.data is not None:
            view = memoryview(self.data)
            for pos in range(start, end, _CHUNK):
                yield bytes(view[pos : min(end, pos + _CHUNK)])
        elif self.source is not None:
            with open(self.source, "rb") as f:
                f.seek(start)
                left = end - start
                while left > 0:
                    chunk = f.read(min(_CHUNK, left))
                    if not chunk:
                        return
                    left -= len(chunk)
                    yield chunk
        else:
            for pos in range(start, end, _CHUNK):
                yield bytes(min(end, pos + _CHUNK) - pos)


@dataclass
class MockRepo:
    repo_id: str
    files: dict[str, MockFile]
    gated: bool = False
    private: bool = False
    granted: set[str] | None = None  # tokens with access to a gated repo; None: every valid token
    tags: list[str] = field(default_factory=list)
    pipeline_tag: str | None = "text-generation"
    downloads: int = 0
    likes: int = 0
    branches: dict[str, str] = field(default_factory=dict)  # extra branch/tag name -> commit sha

    @property
    def sha(self) -> str:
        """The commit id: it changes whenever the content does (huggingface_hub caches listings per commit)."""
        h = hashlib.sha1(self.repo_id.encode())
        for path in sorted(self.files):
            h.update(f"{path}\0{self.files[path].etag}\0".encode())
        return h.hexdigest()

    def resolve(self, revision: str) -> str | None:
        if revision in ("main", self.sha):
            return self.sha
        return self.branches.get(revision)


@dataclass
class Request:
    method: str
    path: str  # the URL path, unquoted
    kind: str  # "search", "info", "tree", "resolve"
    repo_id: str
    filename: str
    range: str | None
    authorized: bool  # a valid token came with it (the token itself is never recorded)
    status: int = 0


@dataclass
class _Fault:
    kind: str  # "drop", "fail", "throttle", "hang", "ignore_range"
    repo_id: str | None
    filename: str | None
    method: str | None
    times: int
    arg: int = 0
    error_code: str | None = None
    route: str | None = None
    skip: int = 0  # let this many matching requests through first


class MockHub:
    """The state of the mock Hub; :meth:`start` serves it on 127.0.0.1 and returns the endpoint URL."""

    def __init__(self) -> None:
        self.repos: dict[str, MockRepo] = {}
        self.tokens: set[str] = set()
        self.requests: list[Request] = []
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._stopping = threading.Event()
        self.hung = threading.Event()  # set when a request starts hanging
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- content ------------------------------------------------------------------------------------------
    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes | str | Path | int],
        **options: Any,
    ) -> MockRepo:
        """Add (or replace) a repo. File values: bytes/str content, a Path to serve, or an int virtual size."""
        built: dict[str, MockFile] = {}
        for path, value in files.items():
            if isinstance(value, Path):
                built[path] = MockFile(path, source=value)
            elif isinstance(value, int):
                built[path] = MockFile(path, virtual_size=value)
            else:
                built[path] = MockFile(path, data=value.encode() if isinstance(value, str) else bytes(value))
        repo = MockRepo(repo_id, built, **options)
        with self._lock:
            self.repos[repo_id] = repo
        return repo

    def add_token(self, token: str) -> None:
        self.tokens.add(token)

    # -- faults -------------------------------------------------------------------------------------------
    def _add_fault(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def drop_after(self, repo_id: str, filename: str, nbytes: int, times: int = 1) -> None:
        """The next ``times`` GETs of the file send ``nbytes`` of body, then the connection is cut."""
        self._add_fault(_Fault("drop", repo_id, filename, "GET", times, nbytes))

    def fail(self, status: int, repo_id: str | None = None, filename: str | None = None, *, times: int = 1,
             method: str | None = None, error_code: str | None = None, route: str | None = None,
             skip: int = 0) -> None:
        """After ``skip`` matching requests, the next ``times`` answer ``status`` (``filename`` None: any request
        of the repo; ``route`` limits it to "info", "tree", "resolve" or "search")."""
        self._add_fault(_Fault("fail", repo_id, filename, method, times, status, error_code, route, skip))

    def throttle(self, repo_id: str, filename: str, bytes_per_second: int, times: int = 1) -> None:
        """The next ``times`` GETs of the file stream at about ``bytes_per_second`` until the client leaves."""
        self._add_fault(_Fault("throttle", repo_id, filename, "GET", times, bytes_per_second))

    def ignore_range(self, repo_id: str, filename: str, times: int = 1) -> None:
        """The next ``times`` GETs of the file answer 200 with the whole file, as a proxy that drops ``Range``."""
        self._add_fault(_Fault("ignore_range", repo_id, filename, "GET", times))

    def hang(self, route: str, times: int = 1) -> None:
        """The next ``times`` requests of ``route`` ("info", "tree", "resolve", "search") get no answer until
        :meth:`release` (or the server stops)."""
        self._add_fault(_Fault("hang", None, None, None, times, route=route))

    def release(self) -> None:
        self._release.set()

    def _take_fault(self, kind: str, route: str, method: str, repo_id: str, filename: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind != kind or fault.times <= 0:
                    continue
                if fault.route is not None and fault.route != route:
                    continue
                if fault.method is not None and fault.method != method:
                    continue
                if fault.repo_id is not None and fault.repo_id != repo_id:
                    continue
                if fault.filename is not None and fault.filename != filename:
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                fault.times -= 1
                return fault
        return None

    # -- observations -------------------------------------------------------------------------------------
    def count(self, method: str, filename: str | None = None, kind: str = "resolve") -> int:
        with self._lock:
            return sum(
                1 for r in self.requests
                if r.method == method and r.kind == kind and (filename is None or r.filename == filename)
            )

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    # -- server -------------------------------------------------------------------------------------------
    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            mock = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="mock-hub", daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        """Stop serving: from now on connections are refused, as when the network is gone."""
        self._stopping.set()
        self._release.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._lock:  # kept-alive connections go too
            connections, self._connections = list(self._connections), set()
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    mock: MockHub

    def setup(self) -> None:
        super().setup()
        # Small header and body writes must not wait for delayed ACKs (Nagle): the Hub answers promptly.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.mock._lock:
            self.mock._connections.add(self.connection)

    def finish(self) -> None:
        with self.mock._lock:
            self.mock._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # quiet: requests are recorded in MockHub.requests

    # -- helpers ------------------------------------------------------------------------------------------
    def _token_state(self) -> tuple[str | None, bool]:
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        return token, token is not None and token in self.mock.tokens

    def _send(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, value: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, json.dumps(value).encode(), headers)

    def _error(self, status: int, code: str | None = None, message: str | None = None,
               headers: Mapping[str, str] | None = None) -> None:
        extra = dict(headers or {})
        if code:
            extra["X-Error-Code"] = code
        if message:
            extra["X-Error-Message"] = message
        self._json({"error": message or code or f"HTTP {status}"}, status, extra)

    # -- routing ------------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch()

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch()

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        raw = [s for s in split.path.split("/") if s != ""]
        segments = [unquote(s) for s in raw]
        query = parse_qs(split.query)
        token, authorized = self._token_state()
        route, repo_id, rest = _route(segments)
        filename = "/".join(rest[1:]) if route == "resolve" else ""
        record = Request(self.command, unquote(split.path), route, repo_id, filename, self.headers.get("Range"),
                         authorized)
        self.mock._record(record)
        try:
            record.status = self._handle(route, repo_id, rest, query, token, authorized, filename)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True

    def _handle(self, route: str, repo_id: str, rest: list[str], query: dict[str, list[str]], token: str | None,
                authorized: bool, filename: str) -> int:
        mock = self.mock
        hang = mock._take_fault("hang", route, self.command, repo_id, filename)
        if hang is not None:
            mock.hung.set()
            mock._release.wait()
            self.close_connection = True
            return 0
        fail = mock._take_fault("fail", route, self.command, repo_id, filename)
        if fail is not None:
            self._error(fail.arg, fail.error_code, f"injected HTTP {fail.arg}")
            return fail.arg
        if token is not None and not authorized:
            self._error(401, None, "Invalid credentials in Authorization header")
            return 401
        if route == "search":
            return self._search(query)
        if route == "unknown":
            self._error(404, None, "Not found")
            return 404
        repo = mock.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
            return 404
        if repo.private and not authorized:
            self._error(401, "RepoNotFound", "Repository not found")
            return 401
        revision = rest[0] if rest else "main"
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return 404
        if route == "info":
            return self._info(repo, sha)
        if route == "tree":
            return self._tree(repo, "/".join(rest[1:]))
        return self._resolve(repo, sha, filename, token, authorized)

    def _search(self, query: dict[str, list[str]]) -> int:
        text = (query.get("search") or [""])[0].lower()
        filters = query.get("filter") or []
        pipeline = (query.get("pipeline_tag") or [None])[0]
        limit = int((query.get("limit") or ["1000"])[0])
        hits = []
        for repo in self.mock.repos.values():
            if repo.private or text not in repo.repo_id.lower():
                continue
            if any(f not in repo.tags for f in filters) or (pipeline and repo.pipeline_tag != pipeline):
                continue
            hits.append(repo)
        hits.sort(key=lambda r: -r.downloads)
        self._json([_model_summary(r) for r in hits[:limit]])
        return 200

    def _info(self, repo: MockRepo, sha: str) -> int:
        info = _model_summary(repo)
        info.update(
            sha=sha,
            siblings=[{"rfilename": p} for p in sorted(repo.files)],
            private=repo.private,
            gated="manual" if repo.gated else False,
            disabled=False,
            usedStorage=sum(f.size for f in repo.files.values()),
        )
        self._json(info)
        return 200

    def _tree(self, repo: MockRepo, under: str) -> int:
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        prefix = f"{under}/" if under else ""
        for path in sorted(repo.files):
            if not path.startswith(prefix):
                continue
            parts = path.split("/")
            for i in range(1, len(parts)):
                folders.add("/".join(parts[:i]))
            f = repo.files[path]
            entry: dict[str, Any] = {"type": "file", "oid": f.sha1, "size": f.size, "path": path}
            if f.is_lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
            entries.append(entry)
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(folders)
                    if d.startswith(prefix)]
        self._json(entries)
        return 200

    def _resolve(self, repo: MockRepo, sha: str, filename: str, token: str | None, authorized: bool) -> int:
        mock = self.mock
        f = repo.files.get(filename)
        if f is None:
            self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": sha})
            return 404
        if repo.gated and not authorized:
            self._error(401, "GatedRepo", "Access to model is restricted. You must be authenticated to access it.")
            return 401
        if repo.gated and repo.granted is not None and token not in repo.granted:
            self._error(403, "GatedRepo", "Access to model is restricted and you are not in the authorized list.")
            return 403
        size = f.size
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{f.etag}"',
            "Accept-Ranges": "bytes",
        }
        if f.is_lfs:
            headers["X-Linked-Size"] = str(size)
            headers["X-Linked-Etag"] = f'"{f.etag}"'
        start, end = 0, size
        status = 200
        range_header = self.headers.get("Range")
        if range_header and self.command == "GET" and mock._take_fault("ignore_range", "resolve", "GET",
                                                                         repo.repo_id, filename):
            range_header = None
        if range_header:
            parsed = _parse_range(range_header, size)
            if parsed is None:
                self._error(416, None, "Range Not Satisfiable", {"Content-Range": f"bytes */{size}"})
                return 416
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return status
        drop = mock._take_fault("drop", "resolve", "GET", repo.repo_id, filename)
        throttle = mock._take_fault("throttle", "resolve", "GET", repo.repo_id, filename)
        if drop is not None:
            self._send_body(f, start, min(end, start + drop.arg))
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
        elif throttle is not None:
            self._send_throttled(f, start, end, throttle.arg)
        else:
            self._send_body(f, start, end)
        return status

    def _send_body(self, f: MockFile, start: int, end: int) -> None:
        if f.source is not None and end > start:
            with open(f.source, "rb") as fh:
                self.connection.sendfile(fh, start, end - start)  # zero-copy: the bench needs a fast server
            return
        for chunk in f.read(start, end):
            self.wfile.write(chunk)

    def _send_throttled(self, f: MockFile, start: int, end: int, rate: int) -> None:
        tick = 0.02
        step = max(1, int(rate * tick))
        pos = start
        while pos < end and not self.mock._stopping.is_set():
            for chunk in f.read(pos, min(end, pos + step)):
                self.wfile.write(chunk)
            pos += step
            self.mock._stopping.wait(tick)  # pacing of a slow link, not test synchronisation
        if pos < end:
            self.close_connection = True


def _route(segments: list[str]) -> tuple[str, str, list[str]]:
    """(route, repo_id, rest) from the unquoted path segments."""
    if segments[:2] == ["api", "models"]:
        tail = segments[2:]
        if not tail:
            return "search", "", []
        for keyword, route in (("revision", "info"), ("tree", "tree")):
            if keyword in tail[1:]:
                i = tail.index(keyword, 1)
                return route, "/".join(tail[:i]), tail[i + 1 :]
        return "info", "/".join(tail), []
    if "resolve" in segments[1:]:
        i = segments.index("resolve", 1)
        return "resolve", "/".join(segments[:i]), segments[i + 1 :]
    return "unknown", "", []


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> [start, end); None when unsatisfiable."""
    if not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[6:].partition("-")
    if first == "":
        n = int(last)
        return (max(0, size - n), size) if n > 0 else None
    start = int(first)
    end = min(size, int(last) + 1) if last else size
    if start >= size or end <= start:
        return None
    return start, end


def _model_summary(repo: MockRepo) -> dict[str, Any]:
    return {
        "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "author": repo.repo_id.split("/")[0],
        "downloads": repo.downloads,
        "likes": repo.likes,
        "tags": list(repo.tags),
        "pipeline_tag": repo.pipeline_tag,
        "library_name": "gguf" if "gguf" in repo.tags else "transformers",
        "private": repo.private,
        "lastModified": "2025-01-01T00:00:00.000Z",
        "createdAt": "2024-12-01T00:00:00.000Z",
    }


# ---------------------------------------------------------------------------------------------------------------
# Real files for the repos

SAFETENSORS_DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "I32": 4, "I8": 1, "U8": 1}


def safetensors_bytes(tensors: Mapping[str, tuple[str, tuple[int, ...]]], metadata: Mapping[str, str] | None = None,
                      fill: int = 0) -> bytes:
    """A valid safetensors file: the JSON header by hand, then each tensor's bytes (all ``fill``)."""
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        n = SAFETENSORS_DTYPES[dtype]
        for dim in shape:
            n *= dim
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes([fill]) * offset


def llama_tensors(n_layers: int, hidden: int, heads: int, kv_heads: int, inter: int, vocab: int,
                  dtype: str = "BF16", tied: bool = False) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The tensor names and shapes of a Hugging Face LlamaForCausalLM checkpoint."""
    head_dim = hidden // heads
    t: dict[str, tuple[str, tuple[int, ...]]] = {"model.embed_tokens.weight": (dtype, (vocab, hidden))}
    for i in range(n_layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (dtype, (hidden,))
        t[p + "self_attn.q_proj.weight"] = (dtype, (heads * head_dim, hidden))
        t[p + "self_attn.k_proj.weight"] = (dtype, (kv_heads * head_dim, hidden))
        t[p + "self_attn.v_proj.weight"] = (dtype, (kv_heads * head_dim, hidden))
        t[p + "self_attn.o_proj.weight"] = (dtype, (hidden, heads * head_dim))
        t[p + "post_attention_layernorm.weight"] = (dtype, (hidden,))
        t[p + "mlp.gate_proj.weight"] = (dtype, (inter, hidden))
        t[p + "mlp.up_proj.weight"] = (dtype, (inter, hidden))
        t[p + "mlp.down_proj.weight"] = (dtype, (hidden, inter))
    t["model.norm.weight"] = (dtype, (hidden,))
    if not tied:
        t["lm_head.weight"] = (dtype, (vocab, hidden))
    return t


def llama_config(n_layers: int, hidden: int, heads: int, kv_heads: int, inter: int, vocab: int,
                 **extra: Any) -> dict[str, Any]:
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": n_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "vocab_size": vocab,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "torch_dtype": "bfloat16",
        "tie_word_embeddings": False,
    }
    config.update(extra)
    return config


TOKENIZER_CONFIG = {"bos_token": "<s>", "eos_token": "</s>",
                    "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}


def checkpoint_files(n_layers: int = 4, hidden: int = 256, heads: int = 8, kv_heads: int = 2, inter: int = 512,
                     vocab: int = 1024, shards: int = 2, dtype: str = "BF16", **config_extra: Any
                     ) -> dict[str, bytes | str]:
    """A complete small Llama checkpoint repo, sharded, plus files conversion does not need."""
    tensors = llama_tensors(n_layers, hidden, heads, kv_heads, inter, vocab, dtype)
    names = list(tensors)
    files: dict[str, bytes | str] = {
        "config.json": json.dumps(llama_config(n_layers, hidden, heads, kv_heads, inter, vocab, **config_extra)),
        "generation_config.json": json.dumps({"bos_token_id": 1, "eos_token_id": 2}),
        "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}),
        "tokenizer_config.json": json.dumps(TOKENIZER_CONFIG),
        "special_tokens_map.json": json.dumps({"bos_token": "<s>"}),
        "README.md": "# tiny llama\n",
        ".gitattributes": "*.safetensors filter=lfs\n",
        "original/consolidated.pth": b"\x80\x02pickle" * 200,
    }
    if shards == 1:
        files["model.safetensors"] = safetensors_bytes(tensors, fill=1)
        return files
    per = -(-len(names) // shards)
    weight_map = {}
    total = 0
    for i in range(shards):
        part = {n: tensors[n] for n in names[i * per : (i + 1) * per]}
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        files[name] = safetensors_bytes(part, fill=i + 1)
        weight_map.update({n: name for n in part})
        total += len(files[name])
    files["model.safetensors.index.json"] = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    return files


def gguf_files(tmp: Path, stem: str, file_type: str = "Q4_K_M", *, shards: int = 1, arch: str = "llama",
               n_layers: int = 4, hidden: int = 256, heads: int = 8, kv_heads: int = 2, vocab: int = 512,
               pad_bytes: int = 0) -> dict[str, Path]:
    """A small GGUF model written with ``gguf.GGUFWriter``: real header and hparams, F32 tensors, optionally
    split into ``shards`` files named like ``{stem}-00001-of-00002.gguf``. ``pad_bytes`` adds a filler tensor."""
    import gguf
    import numpy as np

    out = tmp / f"gguf-{stem}"
    out.mkdir(parents=True, exist_ok=True)
    names = [f"blk.{i}.attn_q.weight" for i in range(n_layers)] + ["token_embd.weight", "output_norm.weight"]
    per_shard = -(-len(names) // shards) if shards > 1 else 0
    writer = gguf.GGUFWriter(out / f"{stem}.gguf", arch, split_max_tensors=per_shard)
    writer.add_name(stem)
    writer.add_block_count(n_layers)
    writer.add_context_length(4096)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(hidden * 2)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_file_type(gguf.LlamaFileType[f"MOSTLY_{file_type}"] if file_type not in ("F32",) else
                         gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"tok{i}" for i in range(vocab)])
    for name in names:
        shape = (vocab, hidden) if name == "token_embd.weight" else (hidden,) if "norm" in name else (hidden, hidden)
        writer.add_tensor(name, np.zeros(shape, dtype=np.float32))
    if pad_bytes:
        writer.add_tensor("blk.0.filler.weight", np.ones((pad_bytes // 4,), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return {p.name: p for p in sorted(out.glob("*.gguf"))}


# ---------------------------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def mock_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[MockHub]:
    """A running mock Hub, reached through ``HF_ENDPOINT``."""
    hub = MockHub()
    url = hub.start()
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def memory_keyring() -> Iterator[Any]:
    """An in-memory keyring backend for the test; the user's own keyring is never touched."""
    import keyring
    from keyring.backend import KeyringBackend
    from keyring.errors import PasswordDeleteError

    class MemoryKeyring(KeyringBackend):
        priority = 1  # type: ignore[assignment]

        def __init__(self) -> None:
            super().__init__()
            self.store: dict[tuple[str, str], str] = {}

        def get_password(self, service: str, username: str) -> str | None:
            return self.store.get((service, username))

        def set_password(self, service: str, username: str, password: str) -> None:
            self.store[(service, username)] = password

        def delete_password(self, service: str, username: str) -> None:
            if self.store.pop((service, username), None) is None:
                raise PasswordDeleteError("not stored")

    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(previous)


def files_under(root: Path | str) -> list[Path]:
    """Every file below ``root`` (for asserting what a download left behind)."""
    root = Path(root)
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()) if root.exists() else []


def hf_cache_dir() -> Path:
    return Path(os.environ["HF_HUB_CACHE"])
