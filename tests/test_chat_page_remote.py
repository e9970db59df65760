"""The Chat page on an OpenAI-compatible server (issue 14): servers QuantDesk did not write (llama-cpp-python's own
``llama_cpp.server``) and ``quantdesk serve``, each started on 127.0.0.1 with the instruct fixture model: a reply
streams in, Stop works, the graph gets points, the conversation is kept; memory controls hidden; a server that is
not there is one sentence."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable

import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from desktop import paths
from desktop.chat.conversations import ConversationStore
from desktop.ui.chat.page import ChatPage
from desktop.ui.chat.remote import REMOTE_LABEL

from serve_helpers import ServerProcess, free_port, instruct_model_path, llama_cpp_server, quantdesk_serve  # noqa: E402
from test_chat_page import LONG  # noqa: E402
from test_chat_page_serve import page  # noqa: E402,F401 - the page on the instruct model


def _pick_server(qtbot: QtBot, page: ChatPage, url: str) -> None:
    page.model_combo.setCurrentIndex(page.model_combo.findText(REMOTE_LABEL))
    assert page.remote_bar.isVisible() and not page.tabs.isTabVisible(0)  # no offload or memory controls
    assert not page.tabs.isTabEnabled(page.tabs.count() - 1)  # a server's model is not served again from here
    assert not page.send_button.isEnabled()
    qtbot.keyClicks(page.remote_bar.url, url)
    qtbot.mouseClick(page.remote_bar.connect_button, Qt.MouseButton.LeftButton)


SERVERS: dict[str, Callable[[], AbstractContextManager[ServerProcess]]] = {
    "llama_cpp.server": lambda: llama_cpp_server(instruct_model_path()),
    "quantdesk serve": lambda: quantdesk_serve(instruct_model_path()),
}


@pytest.mark.parametrize("server_name", list(SERVERS))
def test_a_reply_streams_from_a_server_and_stop_works(qtbot: QtBot, page: ChatPage, server_name: str) -> None:
    with SERVERS[server_name]() as server:
        _pick_server(qtbot, page, server.url)
        qtbot.waitUntil(lambda: page.remote_bar.models.count() >= 1, timeout=30_000)
        assert page.send_button.isEnabled()
        finished: list[tuple] = []  # type: ignore[type-arg]
        page.sig_reply_finished.connect(lambda *args: finished.append(args))
        streamed: list[str] = []
        page.worker.sig_tokens.connect(lambda rid, text, stamps: streamed.append(text))

        page.settings.max_tokens.setValue(24)
        assert page.send("What is the capital of France?")
        qtbot.waitUntil(lambda: len(finished) == 1, timeout=LONG)
        text, metrics = finished[0]
        assert text.strip() and len(streamed) >= 2 and "".join(streamed) == text  # streamed in pieces
        assert "Connected:" in page.status.text() and metrics.completion_tokens > 0
        assert page.turns[-1].bubble.text == text
        xs, ys = page.graph.smooth_curve.getData()
        assert xs is not None and len(xs) >= 2 and min(ys) > 0  # the graph from the stream's own timing
        assert page.graph.history_values()[-1] == pytest.approx(metrics.generation_tokens_per_s)

        page.settings.max_tokens.setValue(400)
        assert page.send("Count from 1 to 300, separated by commas: 1, 2, 3,")
        qtbot.waitUntil(lambda: page.reply is not None and len(page.reply.stamps) >= 3, timeout=LONG)
        qtbot.keyClick(page.input, Qt.Key.Key_Escape)
        qtbot.waitUntil(lambda: len(finished) == 2, timeout=30_000)
        assert finished[1][1].finish_reason == "stopped" and finished[1][1].completion_tokens < 300
        assert page.send_button.isEnabled() and not page.stop_button.isEnabled()

        qtbot.waitUntil(page.store.idle, timeout=10_000)  # kept as a local model's conversation is
        with ConversationStore(paths.database_path()) as store:
            roles = [m.role for m in store.messages(page.conversation.id)]  # type: ignore[arg-type]
        assert roles == ["user", "assistant", "user", "assistant"]

        model, conversation_id = page.remote_bar.model_name(), page.conversation.id
        page.new_conversation()
        page.model_combo.setCurrentIndex(0)  # a local model again, and the server's address forgotten
        page.remote_bar.url.clear()
        page.conversations.sig_open.emit(conversation_id)  # reopened: the same server and model again
        qtbot.waitUntil(lambda: len(page.transcript.bubbles) == 4 and page.remote_bar.model_name() == model,
                        timeout=30_000)
        assert page.is_remote() and page.remote_bar.url.text() == server.url
        assert page.load_options().path == model  # type: ignore[union-attr]


def test_a_server_that_is_not_there_is_one_sentence(qtbot: QtBot, page: ChatPage) -> None:
    _pick_server(qtbot, page, f"http://127.0.0.1:{free_port()}")
    qtbot.waitUntil(lambda: page.remote_bar.connect_button.isEnabled() and "…" not in page.remote_bar.note.text(),
                    timeout=30_000)
    sentence = page.remote_bar.note.text()
    assert "127.0.0.1" in sentence and "\n" not in sentence and "Traceback" not in sentence
    assert page.remote_bar.models.count() == 0 and not page.send_button.isEnabled()
    page.model_combo.setCurrentIndex(0)  # back to the local model: its memory controls again
    assert not page.remote_bar.isVisible() and page.tabs.isTabVisible(0) and page.send_button.isEnabled()


def test_another_server_replaces_the_old_one_without_waiting_on_the_window(qtbot: QtBot, page: ChatPage) -> None:
    """Connecting to another address retires the old remote engine: it closes (and waits for its streams) on a
    thread of its own, never on the window's, and its late events do not reach the page."""
    import threading

    with quantdesk_serve(instruct_model_path()) as server:
        _pick_server(qtbot, page, server.url)
        qtbot.waitUntil(lambda: page.remote_bar.models.count() >= 1, timeout=30_000)
        old = page.worker
        closed_on: list[threading.Thread] = []
        close = old.engine.close

        def recording_close(timeout: float = 5.0) -> None:
            closed_on.append(threading.current_thread())
            close(timeout=timeout)

        old.engine.close = recording_close  # type: ignore[method-assign]
        page.remote_bar.url.clear()
        qtbot.keyClicks(page.remote_bar.url, server.url.replace("127.0.0.1", "localhost"))
        qtbot.mouseClick(page.remote_bar.connect_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: page.worker is not old and page.remote_bar.models.count() >= 1, timeout=30_000)
        qtbot.waitUntil(lambda: old.engine.state == "stopped", timeout=10_000)
        assert closed_on and closed_on[0] is not threading.main_thread()
        assert page.send_button.isEnabled() and "Connected to" in page.status.text()
