"""``quantdesk serve`` with the demo model, driven by the official ``openai`` client over real HTTP on loopback."""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keyring
import openai
import pytest
from keyring.backends import fail

from desktop import cli, process
from desktop.chat import api_keys
from desktop.chat.engine import Engine, EngineEvent
from desktop.chat.server import ChatServer, ServeEvent, ServeLimits, log_line
from desktop.chat.turns import EngineTurns
from desktop.errors import UserError

from engine_helpers import demo_model_path  # noqa: E402 - tests/ is on sys.path under pytest
from serve_helpers import (COMPLETIONS, COUNTING, GREEDY, MAX_TOKENS, PROMPTS, LocalEngine, ServerProcess, quantdesk_serve,
                           user)

GREEDY_API = {"temperature": 0, "max_tokens": MAX_TOKENS}


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEngine]:
    engine = LocalEngine(tmp_path_factory.mktemp("engine") / "engine.log")
    engine.load(demo_model_path())
    yield engine
    engine.engine.close()


@pytest.fixture(scope="module")
def reference(local: LocalEngine) -> dict[str, str]:
    """The engine's own greedy replies, each prompt asked once: the chats, and the raw completions."""
    replies = {}
    for name, text in PROMPTS.items():
        replies[name] = local.ask(messages=user(text))[-1].data["text"]
    for name, text in COMPLETIONS.items():
        replies[name] = local.ask(prompt=text)[-1].data["text"]
    assert all(replies.values())
    return replies


@pytest.fixture(scope="module")
def served() -> Iterator[ServerProcess]:
    with quantdesk_serve(demo_model_path()) as server:
        yield server


def client(server: ServerProcess, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def test_chat_replies_equal_the_engines_greedy_reply_streaming_and_not(served: ServerProcess, reference: dict[str, str]) -> None:
    api = client(served)
    reply = api.chat.completions.create(model="any", messages=user(PROMPTS["chat"]), **GREEDY_API)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == reference["chat"]
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == MAX_TOKENS and reply.usage.prompt_tokens > 5
    assert reply.model == demo_model_path().stem

    chunks = list(api.chat.completions.create(model="any", messages=user(PROMPTS["chat_stream"]), stream=True,  # type: ignore[call-overload]
                                              stream_options={"include_usage": True}, **GREEDY_API))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reference["chat_stream"]
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finals] == ["length"]
    assert finals[0].model_extra["timings"]["predicted_n"] >= MAX_TOKENS - 1  # llama.cpp's counters, as llama-server
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == MAX_TOKENS


def test_completions_equal_the_engines_greedy_completion_streaming_and_not(served: ServerProcess,
                                                                          reference: dict[str, str]) -> None:
    api = client(served)
    reply = api.completions.create(model="any", prompt=COMPLETIONS["completion"], **GREEDY_API)  # type: ignore[arg-type]
    assert reply.choices[0].text == reference["completion"]
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == MAX_TOKENS  # type: ignore[union-attr]
    stream = api.completions.create(model="any", prompt=COMPLETIONS["completion_stream"], stream=True, **GREEDY_API)  # type: ignore[call-overload]
    assert "".join(c.choices[0].text for c in stream if c.choices) == reference["completion_stream"]


def test_models_and_health(served: ServerProcess) -> None:
    models = client(served).models.list()
    assert [m.id for m in models.data] == [demo_model_path().stem]
    assert models.data[0].model_extra["meta"]["n_ctx"] == 512
    status, body = raw_request(served.url, "GET", "/health")
    assert status == 200 and body["status"] == "ok"


def test_two_clients_at_once_are_served_in_turn(served: ServerProcess, reference: dict[str, str]) -> None:
    arrivals: dict[int, list[float]] = {0: [], 1: []}
    texts: dict[int, str] = {}
    start = threading.Barrier(2)

    def ask(n: int) -> None:
        api = client(served)
        start.wait()
        parts = []
        prompt = user(PROMPTS[("client_a", "client_b")[n]])
        for chunk in api.chat.completions.create(model="any", messages=prompt, stream=True, **GREEDY_API):  # type: ignore[call-overload]
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals[n].append(time.perf_counter())
                parts.append(chunk.choices[0].delta.content)
        texts[n] = "".join(parts)

    threads = [threading.Thread(target=ask, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert texts == {0: reference["client_a"], 1: reference["client_b"]}
    first, second = sorted(arrivals.values(), key=lambda times: times[0])
    assert first[-1] < second[0]  # one reply at a time: the second began after the first ended
    done_lines = [line for line in served.lines if "chat stream 200" in line]
    assert len(done_lines) >= 2 and "tok/s" in done_lines[-1]  # the request log, one line per request


def raw_request(url: str, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


BAD_REQUESTS = [
    ("POST", "/v1/chat/completions", b"{not json", {}, 400, "invalid_json"),
    ("POST", "/v1/chat/completions", b"[1, 2]", {}, 400, "invalid_json"),
    ("POST", "/v1/chat/completions", b'{"model": "m"}', {}, 400, "invalid_value"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', {},
     400, "invalid_type"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "n": 2}', {}, 400,
     "unsupported_value"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "hi"}]}', {}, 400, "invalid_value"),
    ("POST", "/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}', {}, 400,
     "unsupported_content"),
    ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}', {}, 400,
     "invalid_value"),
    ("POST", "/v1/completions", b'{"prompt": 42}', {}, 400, "invalid_type"),
    ("POST", "/v1/chat/completions", b"{}", {"Content-Length": str(64 << 20)}, 413, "body_too_large"),
    ("GET", "/v1/chat/completions", None, {}, 405, "method_not_allowed"),
    ("GET", "/v1/nothing", None, {}, 404, "unknown_url"),
    ("GET", "/v1/models", None, {"Host": "attacker.example:8080"}, 403, "host_not_allowed"),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status", "code"), BAD_REQUESTS)
def test_bad_requests_get_4xx_json_errors(served: ServerProcess, method: str, path: str, body: bytes | None,
                                          headers: dict[str, str], status: int, code: str) -> None:
    got, answer = raw_request(served.url, method, path, body, {"Content-Type": "application/json", **headers})
    assert (got, answer["error"]["code"]) == (status, code)
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["message"].endswith(".") and "Traceback" not in answer["error"]["message"]


def test_a_garbled_request_line_gets_a_json_error(served: ServerProcess) -> None:
    host, port = served.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"\x16\x03\x01 garbage\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and json.loads(body)["error"]["type"] == "invalid_request_error"


def test_the_openai_client_sees_a_bad_request_as_a_400(served: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client(served).chat.completions.create(model="any", messages=[], max_tokens=4)
    assert caught.value.status_code == 400 and "messages" in str(caught.value)


def test_a_non_loopback_bind_without_a_key_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserError, match="needs an API key"):
        ChatServer(EngineTurns(Engine()), model_name="m", host="0.0.0.0", port=0)
    children = len(process.live_children())
    keyring.set_keyring(fail.Keyring())  # a system without a usable keyring: no key can be kept, so no listening
    assert cli.main(["serve", str(demo_model_path()), "--host", "0.0.0.0", "--port", "0"]) == 1
    assert "no keyring" in capsys.readouterr().err
    assert len(process.live_children()) == children  # refused before any engine was started


def test_with_a_key_only_its_holder_is_served(memory_keyring: object) -> None:
    key, is_new = api_keys.ensure_serve_key()
    assert is_new and api_keys.ensure_serve_key() == (key, False)  # generated once, then read from the keyring
    turns = EngineTurns(Engine())  # no engine process: a request that gets past the key is answered 503
    with ChatServer(turns, model_name="m", host="0.0.0.0", port=0, api_key=key) as server:
        url = f"http://127.0.0.1:{server.port}/v1"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        api = openai.OpenAI(base_url=url, api_key=key, max_retries=0)
        assert [m.id for m in api.models.list().data] == ["m"]
        with pytest.raises(openai.InternalServerError, match="engine is not running"):
            api.chat.completions.create(model="m", messages=COUNTING, max_tokens=2)


def test_connections_over_the_cap_are_answered_503_at_once() -> None:
    limits = ServeLimits(max_connections=1, socket_timeout_s=30)
    with ChatServer(EngineTurns(Engine()), model_name="m", port=0, limits=limits) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30):  # holds the only slot
            status, body = raw_request(server.url, "GET", "/v1/models")
    assert (status, body["error"]["code"]) == (503, "too_many_connections")


def test_api_requests_and_the_windows_chat_take_turns_and_report_events(local: LocalEngine) -> None:
    events: list[ServeEvent] = []
    assert local.turns is not None
    with ChatServer(local.turns, model_name="demo", port=0, on_event=events.append) as server:
        api = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
        done: dict[str, float] = {}

        def api_request() -> None:
            for _ in api.chat.completions.create(model="demo", messages=COUNTING, stream=True, **GREEDY_API):  # type: ignore[call-overload]
                pass
            done["api"] = time.perf_counter()

        thread = threading.Thread(target=api_request)
        thread.start()
        while thread.is_alive() and not any(e.kind == "token" for e in events):  # the API request holds the engine
            thread.join(0.05)
        window = local.ask(messages=user("Say hello in French:"))  # the window's own chat waits for its turn
        done["window"] = time.perf_counter()
        thread.join(240)
    assert window[-1].kind == "reply_done" and window[-1].data["metrics"]["completion_tokens"] == MAX_TOKENS
    assert done["api"] < done["window"]
    kinds = [e.kind for e in events]
    assert kinds[0] == "request_started" and kinds[-1] == "request_done"
    tokens = [e for e in events if e.kind == "token"]
    assert len(tokens) == MAX_TOKENS and all(a.data["at"] <= b.data["at"] for a, b in zip(tokens, tokens[1:]))
    line = log_line(events[-1])
    assert line.startswith("127.0.0.1 chat stream 200:") and f"+ {MAX_TOKENS} tokens" in line and "length" in line


def long_stream_at_first_token(api: openai.OpenAI) -> Any:
    """A streaming request for up to 400 tokens, read up to its first token."""
    stream = api.chat.completions.create(model="demo", messages=COUNTING, stream=True, max_tokens=400, temperature=0)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            return stream
    raise AssertionError("the stream ended before its first token")


def test_a_client_that_goes_away_is_stopped_and_the_next_is_served(local: LocalEngine) -> None:
    events: list[ServeEvent] = []
    assert local.turns is not None
    with ChatServer(local.turns, model_name="demo", port=0, on_event=events.append) as server:
        api = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
        stream = long_stream_at_first_token(api)
        stream.close()  # the client hangs up after its first token
        reply = api.chat.completions.create(model="demo", messages=user("Say goodbye in Spanish:"), **GREEDY_API)  # type: ignore[arg-type]
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == MAX_TOKENS  # type: ignore[union-attr]
    first_done = next(e for e in events if e.kind == "request_done")
    assert first_done.data["status"] == 499 and first_done.data["metrics"]["completion_tokens"] < 400


def test_max_tokens_is_capped_by_the_server(local: LocalEngine) -> None:
    assert local.turns is not None
    with ChatServer(local.turns, model_name="demo", port=0, limits=ServeLimits(max_tokens=3)) as server:
        api = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
        asked = api.chat.completions.create(model="demo", messages=user("Name five animals:"), max_tokens=50,
                                            temperature=0)
        unasked = api.completions.create(model="demo", prompt="Once upon a time", temperature=0)
    assert asked.usage is not None and asked.usage.completion_tokens == 3
    assert asked.choices[0].finish_reason == "length"
    assert unasked.usage is not None and unasked.usage.completion_tokens == 3


def test_a_waiting_request_can_be_stopped_before_its_turn(local: LocalEngine) -> None:
    assert local.turns is not None
    first: queue.Queue[EngineEvent] = queue.Queue()
    second: queue.Queue[EngineEvent] = queue.Queue()
    first_id = local.turns.submit(user("Name three cities:"), GREEDY, listener=first.put, owner="api")
    second_id = local.turns.submit(user("Name three rivers:"), GREEDY, listener=second.put, owner="window")
    assert local.turns.waiting() == 1 and local.turns.waiting("window") == 1
    local.turns.stop(second_id)
    stopped = second.get(timeout=5)
    assert (stopped.kind, stopped.request_id, stopped.data["metrics"]["finish_reason"]) == ("reply_done", second_id,
                                                                                          "stopped")
    while (event := first.get(timeout=240)).kind != "reply_done":
        pass
    assert event.request_id == first_id and event.data["metrics"]["completion_tokens"] == MAX_TOKENS
    assert local.turns.waiting() == 0 and local.turns.active_owner is None


def test_an_engine_crash_is_a_sentence_for_the_answered_and_the_waiting_client(tmp_path: Path) -> None:
    crashing = LocalEngine(tmp_path / "engine.log")
    crashing.load(demo_model_path())
    assert crashing.turns is not None
    try:
        with ChatServer(crashing.turns, model_name="demo", port=0) as server:
            api = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
            stream = long_stream_at_first_token(api)
            waiting: dict[str, Exception] = {}

            def wait_for_turn() -> None:
                try:
                    api.chat.completions.create(model="demo", messages=user("Hello"), max_tokens=4)
                except Exception as exc:  # noqa: BLE001 - the test looks at what the client raised
                    waiting["error"] = exc

            thread = threading.Thread(target=wait_for_turn)
            thread.start()
            while thread.is_alive() and crashing.turns.waiting("api") == 0:
                thread.join(0.05)
            assert crashing.engine.pid is not None
            os.kill(crashing.engine.pid, signal.SIGKILL)
            with pytest.raises(openai.APIError, match="crashed"):
                for _ in stream:
                    pass
            thread.join(60)
    finally:
        crashing.engine.close()
    error = waiting["error"]
    assert isinstance(error, openai.InternalServerError) and error.status_code == 503
    assert "The chat engine crashed" in str(error) and "Traceback" not in str(error)


def test_a_taken_port_is_a_sentence_before_any_model_is_loaded(capsys: pytest.CaptureFixture[str]) -> None:
    children = len(process.live_children())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve", str(demo_model_path()), "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"Port {port} on 127.0.0.1 is already in use" in err and "--port" in err
    assert len(process.live_children()) == children


def test_a_new_serve_key_is_shown_once_and_then_kept_in_the_keyring(memory_keyring: object,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:  # the server stops at the taken port, after the key step and before any load
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        args = ["serve", str(demo_model_path()), "--require-key", "--port", str(taken.getsockname()[1])]
        assert cli.main(args) == 1
        first = capsys.readouterr().out
        assert cli.main(args) == 1
        second = capsys.readouterr().out
    key = api_keys.get_serve_key()
    assert key and f"API key (shown this once; QuantDesk keeps it in the system keyring): {key}" in first
    assert key not in second and "Clients need the API key kept in the system keyring" in second


def test_stopping_quantdesk_serve_leaves_no_engine_process_behind() -> None:
    import psutil

    with quantdesk_serve(demo_model_path()) as server:
        children = psutil.Process(server.process.pid).children(recursive=True)
        assert children  # the engine's child process holds the model
        status, _ = raw_request(server.url, "GET", "/health")
        assert status == 200
    assert server.process.returncode == 130 and "Stopped." in server.output()  # SIGTERM ends it like Ctrl+C
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive
