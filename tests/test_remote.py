"""The remote client (``RemoteEngine``, ``quantdesk chat --server``) against real OpenAI-compatible servers on
127.0.0.1: llama-cpp-python's own ``llama_cpp.server``, which QuantDesk did not write, and ``quantdesk serve``."""

from __future__ import annotations

import io
import json
import queue
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from desktop import cli
from desktop.chat import api_keys
from desktop.chat.engine import Engine, EngineEvent
from desktop.chat.remote import RemoteEngine, list_models
from desktop.chat.server import ChatServer
from desktop.chat.turns import EngineTurns
from desktop.errors import UserError
from desktop.jobs import JobFailed

from engine_helpers import demo_model_path  # noqa: E402 - tests/ is on sys.path under pytest
from serve_helpers import (GREEDY, MAX_TOKENS, PROMPTS, ServerProcess, fast_model_path, free_port, instruct_model_path,
                           llama_cpp_server, quantdesk_serve, user)

GREEDY_CLI = ["--temperature", "0", "--repeat-penalty", "1.0", "--max-tokens", str(MAX_TOKENS), "--json"]


@pytest.fixture(scope="module")
def llama_server() -> Iterator[ServerProcess]:
    with llama_cpp_server(instruct_model_path()) as server:
        yield server


@pytest.fixture(scope="module")
def served() -> Iterator[ServerProcess]:
    with quantdesk_serve(demo_model_path()) as server:
        yield server


def connect(url: str, model: str = "") -> RemoteEngine:
    remote = RemoteEngine(url)
    remote.load_and_wait(model, timeout=60)
    return remote


def collect(remote: RemoteEngine, request_id: str) -> list[EngineEvent]:
    events: list[EngineEvent] = []
    remote.wait_for("reply_done", timeout=240, on_event=events.append)
    return [e for e in events if e.request_id == request_id]


def test_a_reply_streams_from_llama_cpp_server_with_timing_from_the_stream(llama_server: ServerProcess) -> None:
    remote = connect(llama_server.url)
    try:
        assert remote.loaded_metadata["name"] == "demo" and remote.loaded_metadata["remote"] is True
        request_id = remote.chat(user(PROMPTS["remote"]), GREEDY)
        events: list[EngineEvent] = []
        done = remote.wait_for("reply_done", timeout=240, on_event=events.append)
    finally:
        remote.close()
    tokens = [e for e in events if e.kind == "tokens" and e.request_id == request_id]
    assert [e.kind for e in events][0] == "prompt_started"
    assert len(tokens) >= 3 and "".join(e.data["text"] for e in tokens) == done.data["text"] != ""
    stamps = [at for e in tokens for at in e.data["stamps"]]
    assert stamps == sorted(stamps)  # one arrival time per streamed piece: the live graph's points
    metrics = done.metrics
    assert metrics is not None and metrics.finish_reason == "length"
    assert done.data["timing_source"] == "stream" and metrics.llama_perf == {}  # llama_cpp.server sends no timings
    assert metrics.ttft_s is not None and metrics.ttft_s > 0 and metrics.generation_tokens_per_s > 0
    assert done.data["stream_timing"]["pieces"] == len(tokens)


def test_stop_closes_the_stream_and_the_server_answers_the_next_request(llama_server: ServerProcess) -> None:
    remote = connect(llama_server.url, "demo")
    try:
        request_id = remote.chat(user("Count from 1 to 1000, separated by commas: 1, 2, 3,"),
                                 {"temperature": 0, "max_tokens": 400})
        remote.wait_for("tokens", timeout=240)
        remote.stop()
        stopped = [e for e in collect(remote, request_id) if e.kind == "reply_done"][-1]
        assert stopped.metrics is not None and stopped.metrics.finish_reason == "stopped"
        assert stopped.metrics.completion_tokens < 400
        again = remote.ask(user("Say hello:"), {"temperature": 0, "max_tokens": 4})
        assert again.metrics.finish_reason in ("length", "stop")
    finally:
        remote.close()


def test_chat_cli_with_server_against_llama_cpp_server(llama_server: ServerProcess,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert [m["id"] for m in list_models(llama_server.url)] == ["demo"]
    code = cli.main(["chat", "--server", llama_server.url + "/v1", "--model", "demo", "--prompt", "Say hi:",
                     *GREEDY_CLI])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["reply"] and data["model"]["name"] == "demo" and data["model"]["url"] == llama_server.url
    assert data["metrics"]["finish_reason"] in ("length", "stop") and data["metrics"]["completion_tokens"] >= 1


def test_chat_cli_with_server_equals_the_local_engines_greedy_reply(served: ServerProcess,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    prompt = ["--prompt", PROMPTS["remote_stream"]]
    assert cli.main(["chat", str(demo_model_path()), *prompt, *GREEDY_CLI, "--ctx", "512", "--threads", "1"]) == 0
    local = json.loads(capsys.readouterr().out)
    assert cli.main(["chat", "--server", served.url, *prompt, *GREEDY_CLI]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert remote["reply"] == local["reply"] != ""
    assert remote["model"]["name"] == demo_model_path().stem
    # quantdesk serve sends llama.cpp's counters as llama-server's `timings`: the same numbers as a local reply
    assert remote["metrics"]["llama_perf"]["n_eval"] == local["metrics"]["llama_perf"]["n_eval"] == MAX_TOKENS - 1
    assert remote["metrics"]["completion_tokens"] == local["metrics"]["completion_tokens"] == MAX_TOKENS
    assert remote["metrics"]["generation_tokens_per_s"] > 0


def test_remote_engine_with_quantdesk_serve_reports_the_servers_timings(served: ServerProcess) -> None:
    remote = connect(served.url)
    try:
        reply_id = remote.chat(user("Name three fruits:"), GREEDY)
        done = [e for e in collect(remote, reply_id) if e.kind == "reply_done"][-1]
    finally:
        remote.close()
    assert done.data["timing_source"] == "server" and done.data["server_timings"]["predicted_n"] == MAX_TOKENS - 1
    assert done.metrics is not None and done.metrics.prompt_tokens_total > 5 and done.metrics.n_ctx == 512


def test_an_offline_server_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UserError, match="connection was refused") as caught:
        list_models(url)
    assert caught.value.kind == "offline" and "Start the server" in caught.value.next_step
    remote = RemoteEngine(url)
    with pytest.raises(JobFailed, match=r"^Nothing answers at http://127\.0\.0\.1:\d+: the connection was refused\."):
        remote.load_and_wait("any", timeout=30)
    assert cli.main(["chat", "--server", url, "--prompt", "hi"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "connection was refused" in err and "Traceback" not in err
    with pytest.raises(UserError, match="not a server address"):
        RemoteEngine("ftp://example.org")


class _Recorder(BaseHTTPRequestHandler):
    """A stand-in server that answers /v1/models and remembers each request's Authorization header."""

    seen: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802
        type(self).seen.append(self.headers.get("Authorization"))
        body = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_key_is_kept_per_server_and_sent_only_to_that_server(memory_keyring: object) -> None:
    turns = EngineTurns(Engine())  # /v1/models needs no model
    with ChatServer(turns, model_name="m", port=0, api_key="secret-key-1") as keyed:
        with pytest.raises(UserError, match="refused the request") as caught:
            list_models(keyed.url)
        assert caught.value.kind == "unauthorized"
        api_keys.save_remote_key(keyed.url + "/v1/", "secret-key-1")  # one account per address, with or without /v1
        assert [m["id"] for m in list_models(keyed.url)] == ["m"]
        other = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        threading.Thread(target=other.serve_forever, daemon=True).start()
        try:
            assert [m["id"] for m in list_models(f"http://127.0.0.1:{other.server_address[1]}")] == ["m"]
        finally:
            other.shutdown()
            other.server_close()
    assert _Recorder.seen == [None]  # the other server never saw the key
    with pytest.raises(UserError, match="API key"):
        api_keys.save_remote_key(keyed.url, "two words")


class _Misbehaving(BaseHTTPRequestHandler):
    """A server that answers with whatever the test sets: bad JSON, endless lines, nonsense numbers."""

    status = 200
    content_type = "text/event-stream"
    body = b""

    def _answer(self) -> None:
        if self.command == "POST":
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
        cls = type(self)
        self.send_response(cls.status)
        self.send_header("Content-Type", cls.content_type)
        self.send_header("Content-Length", str(len(cls.body)))
        self.end_headers()
        self.wfile.write(cls.body)

    do_GET = do_POST = _answer  # noqa: N815

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def misbehaving() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _chat_outcome(url: str) -> EngineEvent:
    """Ask the server for a reply (without reading its model list first); the reply_done or error that ends it."""
    events: queue.Queue[EngineEvent] = queue.Queue()
    remote = RemoteEngine(url, events.put)
    remote.start()
    remote.model = "m"
    try:
        remote.chat(user("hi"), GREEDY)
        while (event := events.get(timeout=60)).kind not in ("reply_done", "error"):
            pass
        return event
    finally:
        remote.close()


def test_what_a_server_sends_is_bounded_and_checked(misbehaving: str) -> None:
    _Misbehaving.status, _Misbehaving.content_type, _Misbehaving.body = 200, "application/json", b"<html>hello"
    with pytest.raises(UserError, match="model list QuantDesk cannot read"):
        list_models(misbehaving)

    _Misbehaving.status, _Misbehaving.body = 500, json.dumps({"error": {"message": "x" * 100_000}}).encode()
    with pytest.raises(UserError, match="answered HTTP 500") as caught:
        list_models(misbehaving)
    assert len(str(caught.value)) < 500

    _Misbehaving.status, _Misbehaving.content_type = 200, "text/event-stream"
    _Misbehaving.body = b"data: " + b"a" * (2 << 20) + b"\n\n"
    outcome = _chat_outcome(misbehaving)
    assert outcome.error is not None and "longer than 1 MiB" in outcome.error.message

    chunk = {"choices": [{"delta": {"content": "ok"}, "finish_reason": "stop"}],
             "usage": {"prompt_tokens": -3, "completion_tokens": "many"},
             "timings": {"predicted_n": 1e300, "predicted_ms": -1, "predicted_per_second": float("nan")}}
    _Misbehaving.body = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
    outcome = _chat_outcome(misbehaving)
    assert outcome.kind == "reply_done" and outcome.data["text"] == "ok"
    metrics = outcome.metrics
    assert metrics is not None and metrics.prompt_tokens_total == 0
    assert 1 <= metrics.completion_tokens <= GREEDY.max_tokens  # a claimed 1e300 tokens is held to what was asked
    assert metrics.generation_tokens_per_s == 0.0 and metrics.generated_tokens <= 1e12


def test_chat_cli_set_key_keeps_the_key_for_that_server(memory_keyring: object, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    turns = EngineTurns(Engine())  # no engine process: a chat that gets past the key is answered 503
    with ChatServer(turns, model_name="m", port=0, api_key="the-servers-key") as keyed:
        assert cli.main(["chat", "--server", keyed.url, "--prompt", "hi"]) == 1
        assert "refused the request (HTTP 401)" in capsys.readouterr().err
        monkeypatch.setattr("sys.stdin", io.StringIO("the-servers-key\n"))
        assert cli.main(["chat", "--server", keyed.url, "--set-key", "--prompt", "hi"]) == 1
        captured = capsys.readouterr()
    assert "answered HTTP 503" in captured.err and "engine is not running" in captured.err  # past the key
    assert "the-servers-key" not in captured.out + captured.err
    assert api_keys.get_remote_key(keyed.url + "/v1") == "the-servers-key"


def test_stop_before_the_server_answers_ends_the_reply_at_once() -> None:
    with socket.socket() as silent:  # accepts the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        events: queue.Queue[EngineEvent] = queue.Queue()
        remote = RemoteEngine(f"http://127.0.0.1:{silent.getsockname()[1]}", events.put, timeout_s=600)
        remote.start()
        request_id = remote.chat(user("hi"), GREEDY)
        connection, _ = silent.accept()
        with connection:
            remote.stop()
            while (event := events.get(timeout=30)).kind not in ("reply_done", "error"):
                pass
        remote.close()
    assert (event.kind, event.request_id) == ("reply_done", request_id)
    assert event.metrics is not None and event.metrics.finish_reason == "stopped"


def test_each_token_of_a_batched_piece_gets_its_point_on_the_graph() -> None:
    """quantdesk serve streams the engine's batches (several tokens a piece on a fast model); the client asks for
    llama-server's timings_per_token, so every token still gets its arrival stamp."""
    with quantdesk_serve(fast_model_path()) as server:
        remote = connect(server.url)
        try:
            request_id = remote.chat(user("hi"), {"temperature": 0, "max_tokens": 200})
            events = collect(remote, request_id)
        finally:
            remote.close()
    pieces = [e for e in events if e.kind == "tokens"]
    done = events[-1]
    assert done.kind == "reply_done" and done.metrics is not None and done.metrics.completion_tokens == 200
    assert sum(len(e.data["stamps"]) for e in pieces) == 200
    assert done.data["stream_timing"]["tokens"] == 200


class _Strict(BaseHTTPRequestHandler):
    """Like OpenAI's own API: a field it does not know is a 400."""

    bodies: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        unknown = sorted(set(body) - {"model", "messages", "stream", "stream_options", "temperature", "top_p",
                                      "max_tokens", "seed", "stop"})
        if unknown:
            answer = json.dumps({"error": {"message": f"Unrecognized request argument supplied: {unknown[0]}",
                                           "type": "invalid_request_error", "param": None, "code": None}}).encode()
            self.send_response(400)
        else:
            chunk = {"choices": [{"delta": {"content": "fine"}, "finish_reason": "stop"}]}
            answer = f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode()
            self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_strict_server_is_asked_again_without_llama_cpps_extra_fields() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Strict)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        outcome = _chat_outcome(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    assert outcome.kind == "reply_done" and outcome.data["text"] == "fine"
    assert "top_k" in _Strict.bodies[0] and "top_k" not in _Strict.bodies[1] and len(_Strict.bodies) == 2
