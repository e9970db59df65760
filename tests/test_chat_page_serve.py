"""The Chat page's Serve switch (issue 14): the model the window loaded, served OpenAI-compatibly over real HTTP on
loopback; API requests take turns with the window's chat, show on the live graph and in the request log; other
interfaces only with an API key, shown once and kept in the keyring."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from desktop.chat import api_keys
from desktop.chat_model import CHAT_SOURCE
from desktop.ui.chat.page import ChatPage
from desktop.workers import JobManager

from serve_helpers import free_port, instruct_model_path  # noqa: E402 - tests/ is on sys.path under pytest
from test_chat_page import LONG, open_page  # noqa: E402


@pytest.fixture
def page(qtbot: QtBot) -> Iterator[ChatPage]:
    jobs = JobManager()
    chat = open_page(qtbot, instruct_model_path(), CHAT_SOURCE, jobs)
    chat.settings.max_tokens.setValue(8)
    yield chat
    chat.shutdown()
    jobs.stop_all(timeout_s=5.0)


def _post(url: str, body: dict[str, Any], key: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(f"{url}/chat/completions", json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            raw = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    if body.get("stream"):
        chunks = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
        return status, chunks
    return status, json.loads(raw)


def _in_thread(fn, *args):  # type: ignore[no-untyped-def]
    """Run a blocking HTTP call off the GUI thread (the page must keep running to answer it)."""
    out: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: out.setdefault("result", fn(*args)), daemon=True)
    thread.start()
    return out


def _load(qtbot: QtBot, page: ChatPage) -> None:
    assert not page.serve.switch.isEnabled()  # nothing to serve before a model is loaded
    page.load_model()
    qtbot.waitUntil(lambda: page.load_button.text() == "Loaded", timeout=LONG)
    assert page.serve.switch.isEnabled()
    page.tabs.setCurrentIndex(page.tabs.count() - 1)
    assert page.tabs.tabText(page.tabs.currentIndex()) == "Serve"


def test_serve_shares_the_loaded_model_with_the_window(qtbot: QtBot, page: ChatPage) -> None:
    _load(qtbot, page)
    engine_pid = page.worker.pid
    page.serve.port.setValue(free_port())
    qtbot.mouseClick(page.serve.switch, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: page.serve.serving, timeout=10_000)
    url = page.serve.url.text()
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1") and page.serve.key_widget.isHidden()

    history = len(page.graph.history_values())
    body = {"model": "any", "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 12, "temperature": 0, "stream": True}
    streamed = _in_thread(_post, url, body)
    finished: list[tuple] = []  # type: ignore[type-arg]
    page.sig_reply_finished.connect(lambda *args: finished.append(args))
    page.send("Say hello.")  # the window asks while the API request is answered: they take turns
    qtbot.waitUntil(lambda: "result" in streamed and bool(finished), timeout=LONG)
    status, chunks = streamed["result"]
    assert status == 200 and "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert finished[0][0].strip() and page.worker.pid == engine_pid  # one engine, one copy of the model

    qtbot.waitUntil(lambda: bool(page.serve.log.toPlainText().strip()), timeout=10_000)
    line = page.serve.log.toPlainText().splitlines()[0]
    assert "127.0.0.1 chat stream 200: " in line and "12 tokens" in line
    assert len(page.graph.history_values()) >= history + 2  # the API request's speed and the window's reply

    alone = _in_thread(_post, url, {**body, "stream": False, "max_tokens": 6})
    qtbot.waitUntil(lambda: "result" in alone, timeout=LONG)
    status, reply = alone["result"]
    assert status == 200 and reply["usage"]["completion_tokens"] <= 6
    qtbot.waitUntil(lambda: len(page.serve.log.toPlainText().splitlines()) == 2, timeout=10_000)
    xs, _ = page.graph.smooth_curve.getData()
    assert xs is not None and len(xs) >= 1  # the last API request's tokens on the live graph

    qtbot.mouseClick(page.serve.switch, Qt.MouseButton.LeftButton)  # off: the port is closed
    qtbot.waitUntil(lambda: not page.serve.serving and page.serve.where.isEnabled(), timeout=10_000)
    refused = _in_thread(lambda: _safe_post(url, body))
    qtbot.waitUntil(lambda: "result" in refused, timeout=10_000)
    assert refused["result"] == "refused"


def _safe_post(url: str, body: dict[str, Any]) -> str:
    try:
        _post(url, body)
    except (urllib.error.URLError, ConnectionError):
        return "refused"
    return "answered"


def test_other_interfaces_need_the_key_shown_once(qtbot: QtBot, page: ChatPage) -> None:
    _load(qtbot, page)
    page.serve.where.setCurrentIndex(page.serve.where.findData("0.0.0.0"))
    port = free_port()
    page.serve.port.setValue(port)
    page.serve.switch.setChecked(True)
    qtbot.waitUntil(lambda: page.serve.serving, timeout=10_000)
    key = page.serve.key.text()
    assert key and key == api_keys.get_serve_key() and page.serve.key_widget.isVisible()  # in the keyring
    url = f"http://127.0.0.1:{port}/v1"
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    without = _in_thread(_post, url, body)
    qtbot.waitUntil(lambda: "result" in without, timeout=LONG)
    assert without["result"][0] == 401 and "error" in without["result"][1]
    with_key = _in_thread(_post, url, body, key)
    qtbot.waitUntil(lambda: "result" in with_key, timeout=LONG)
    assert with_key["result"][0] == 200

    page.serve.switch.setChecked(False)
    qtbot.waitUntil(lambda: page.serve.where.isEnabled(), timeout=10_000)
    page.serve.switch.setChecked(True)  # the second time: the same key, not shown again
    qtbot.waitUntil(lambda: page.serve.serving, timeout=10_000)
    assert page.serve.key.text() == "" and api_keys.get_serve_key() == key

    qtbot.mouseClick(page.serve.new_key_button, Qt.MouseButton.LeftButton)  # a lost key is replaced
    qtbot.waitUntil(lambda: page.serve.serving and page.serve.key.text() not in ("", key), timeout=10_000)
    new_key = page.serve.key.text()
    assert api_keys.get_serve_key() == new_key
    old, new = _in_thread(_post, url, body, key), _in_thread(_post, url, body, new_key)
    qtbot.waitUntil(lambda: "result" in old and "result" in new, timeout=LONG)
    assert old["result"][0] == 401 and new["result"][0] == 200
    page.serve.switch.setChecked(False)
