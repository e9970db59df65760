"""The Chat page with the real demo model (Gemma 3 270M) in a real engine process, driven like a user would."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from desktop import paths
from desktop.hardware import report as hardware
from desktop.chat.conversations import ConversationStore
from desktop.chat_model import CHAT_SOURCE
from desktop.demo_model import DEMO_SOURCE
from desktop.chat.engine import ReplyMetrics
from desktop.library import Library
from desktop.process import live_children
from desktop.ui.chat.page import ChatPage
from desktop.workers import JobManager

from engine_helpers import demo_model_path  # noqa: E402 - tests/ is on sys.path under pytest

LONG = 120_000


def cpu_only_report() -> hardware.HardwareReport:
    return hardware.HardwareReport(
        "test", hardware.collect_cpu(), hardware.collect_memory(), [], hardware.LlamaBuild(available=True), []
    )


def open_page(qtbot: QtBot, model: Path, source: str, jobs: JobManager) -> ChatPage:
    """A Chat page on ``model``, small and greedy: the machine's two cores are shared."""
    library = Library()
    library.add_file(model, source=source)
    chat = ChatPage(jobs)
    qtbot.addWidget(chat)
    chat.resize(1100, 760)
    chat.show()
    chat.set_models(library.models())
    chat.set_hardware_report(cpu_only_report())
    chat.offload.context.setValue(1024)
    chat.offload.threads.setValue(1)
    chat.settings.temperature.setValue(0.0)
    chat.settings.top_k.setValue(1)
    chat.settings.repeat_penalty.setValue(1.0)
    chat.settings.max_tokens.setValue(24)
    qtbot.waitUntil(lambda: chat.offload.plan is not None, timeout=30_000)
    return chat


@pytest.fixture
def page(qtbot: QtBot) -> Iterator[ChatPage]:
    jobs = JobManager()
    chat = open_page(qtbot, demo_model_path(), DEMO_SOURCE, jobs)
    yield chat
    chat.shutdown()
    jobs.stop_all(timeout_s=5.0)


def _record(signal_) -> list[tuple]:  # type: ignore[no-untyped-def,type-arg]
    seen: list[tuple] = []  # type: ignore[type-arg]
    signal_.connect(lambda *args: seen.append(args))
    return seen


def _stored(page: ChatPage) -> list[tuple[str, str, dict | None]]:  # type: ignore[type-arg]
    assert page.conversation.id is not None
    with ConversationStore(paths.database_path()) as store:
        return [(m.role, m.content, m.metrics) for m in store.messages(page.conversation.id)]


def test_a_reply_streams_in_and_the_page_shows_llama_cpps_counters(qtbot: QtBot, page: ChatPage) -> None:
    assert page.model_combo.currentText().startswith("Gemma 3 270m")  # the demo model, preselected
    progress = _record(page.worker.sig_load_progress)
    done = _record(page.worker.sig_reply_done)
    curves = (page.graph.raw_curve, page.graph.smooth_curve)

    page.input.setFocus()
    qtbot.keyClicks(page.input, "Count from 1 to 50:")
    qtbot.keyClick(page.input, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(page.input, "1, 2, 3,")
    assert page.input.toPlainText() == "Count from 1 to 50:\n1, 2, 3,"  # Shift+Enter: a new line, not sent
    qtbot.keyClick(page.input, Qt.Key.Key_Return)
    assert page.input.toPlainText() == "" and page.turns[0].content == "Count from 1 to 50:\n1, 2, 3,"

    # streaming: text is in the bubble while the reply is still being written
    qtbot.waitUntil(lambda: page.reply is not None and page.reply.bubble.text != "", timeout=LONG)
    assert page.stop_button.isEnabled() and not page.send_button.isEnabled()
    qtbot.waitUntil(lambda: bool(done) and page.reply is None, timeout=LONG)

    fractions = [p[0] for p in progress]
    assert len(fractions) >= 2 and fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert "Loaded Gemma 3 270m" in page.status.text() and "1,024-token context" in page.status.text()
    assert "chosen by architecture" in page.offload.template_note.text()
    # predicted against actual: llama.cpp's KV cache is the planner's to the byte
    kv = next(r for r in page.offload.actual_rows if r["device"] == "CPU" and r["part"] == "kv_cache")
    assert kv["actual"] == kv["predicted"] > 0

    request_id, text, m = done[-1]
    assert isinstance(m, ReplyMetrics) and m.finish_reason == "length" and m.completion_tokens == 24
    assert page.turns[-1].bubble.text == text == page.turns[-1].content and text.strip()
    # the figures shown are llama.cpp's own counters for this reply
    perf = m.llama_perf
    assert m.generation_tokens_per_s == pytest.approx(perf["n_eval"] / perf["t_eval_ms"] * 1000)
    assert m.prompt_tokens_per_s == pytest.approx(perf["n_p_eval"] / perf["t_p_eval_ms"] * 1000)
    assert page.stats.value("Generation") == f"{m.generation_tokens_per_s:.1f} tok/s"
    assert page.stats.value("Prompt") == f"{m.prompt_tokens_per_s:.1f} tok/s"
    assert f"{perf['n_p_eval']} prompt tokens in {perf['t_p_eval_ms']:.0f} ms" in page.stats._values["Prompt"].toolTip()
    assert page.stats.value("First token") == f"{m.ttft_s:.2f} s"
    assert page.stats.value("Reply") == f"24 tokens in {m.total_s:.2f} s"
    assert page.stats.value("Context") == f"{m.context_used:,} of 1,024"
    assert page.turns[-1].bubble.footer.text().startswith(f"24 tokens · {m.generation_tokens_per_s:.1f} tok/s")

    # the graph: the same curves, fed from the token stamps; TTFT marked; this reply in the history
    assert (page.graph.raw_curve, page.graph.smooth_curve) == curves
    xs, ys = page.graph.smooth_curve.getData()
    assert xs is not None and len(xs) >= 10 and min(ys) > 0
    assert page.graph.ttft_line.value() == pytest.approx(m.ttft_s)
    assert page.graph.history_values() == [m.generation_tokens_per_s]
    assert page.graph.redraws < 24 + 5  # drawn from the timer, not per token

    # saved: the conversation is listed, with both messages and the reply's metrics
    qtbot.waitUntil(lambda: page.store.idle() and page.conversations.list.count() == 1, timeout=10_000)
    assert page.conversations.titles() == ["Count from 1 to 50: 1, 2, 3,"]
    stored = _stored(page)
    assert [(r, c) for r, c, _ in stored] == [("user", "Count from 1 to 50:\n1, 2, 3,"), ("assistant", text)]
    assert stored[1][2] == dataclasses.asdict(m)


def test_esc_stops_mid_reply_and_regenerate_uses_a_new_template(qtbot: QtBot, page: ChatPage) -> None:
    page.settings.max_tokens.setValue(400)
    finished = _record(page.sig_reply_finished)
    page.input.setFocus()
    qtbot.keyClicks(page.input, "Count from 1 to 500, separated by commas: 1, 2, 3,")
    qtbot.keyClick(page.input, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: page.reply is not None and len(page.reply.stamps) >= 3, timeout=LONG)
    qtbot.keyClick(page.input, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: bool(finished), timeout=30_000)
    text, m = finished[-1]
    assert m.finish_reason == "stopped" and 3 <= m.completion_tokens < 60
    assert page.turns[-1].bubble.footer.text().endswith("stopped")
    assert page.send_button.isEnabled() and not page.stop_button.isEnabled()

    # another template: the next reply reloads the model with it (Ctrl+R regenerates the last reply)
    page.settings.max_tokens.setValue(8)
    page.offload.template.setCurrentIndex(page.offload.template.findData("chatml"))
    assert page.load_button.text() == "Reload"
    qtbot.keyClick(page.input, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: len(finished) == 2, timeout=LONG)
    assert page.loaded_metadata["template"] == "chatml"
    assert "ChatML" in page.offload.template_note.text()
    assert [t.role for t in page.turns] == ["user", "assistant"] and len(page.transcript.bubbles) == 2
    assert finished[-1][1].completion_tokens <= 8
    qtbot.waitUntil(page.store.idle, timeout=10_000)
    assert [r for r, _, _ in _stored(page)] == ["user", "assistant"]
    assert _stored(page)[1][1] == finished[-1][0]


def test_killing_the_engine_mid_reply_is_survived_and_retried_in_safe_mode(qtbot: QtBot, page: ChatPage) -> None:
    page.settings.max_tokens.setValue(300)
    finished = _record(page.sig_reply_finished)
    page.send("Count from 1 to 500, separated by commas: 1, 2, 3,")
    qtbot.waitUntil(lambda: page.reply is not None and len(page.reply.stamps) >= 2, timeout=LONG)
    pid = page.worker.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    qtbot.waitUntil(lambda: page.notice.isVisible() and page.notice.kind == "crash", timeout=30_000)
    sentence = page.notice.label.text()
    assert sentence.startswith("The chat engine crashed with") and "being killed" in sentence
    assert sentence.endswith("while writing a reply; QuantDesk itself is fine.")
    assert page.notice.primary.text() == "Retry in safe mode" and page.notice.primary.isVisible()
    assert page.isVisible() and page.reply is None and not finished
    assert page.turns[-1].role == "user"
    assert "Interrupted" in page.transcript.bubbles[-1].footer.text()

    page.settings.max_tokens.setValue(8)
    qtbot.mouseClick(page.notice.primary, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(finished), timeout=LONG)
    assert not page.notice.isVisible()
    assert page.worker.pid not in (None, pid) and page.worker.last_load is not None
    assert page.worker.last_load.cpu_repack is False
    assert "safe mode" in page.status.text()
    assert [t.role for t in page.turns] == ["user", "assistant"] and len(page.transcript.bubbles) == 2


def test_an_engine_that_hangs_is_restarted_and_the_page_shows_the_model_coming_back(qtbot: QtBot,
                                                                                     page: ChatPage) -> None:
    """Stop on an engine that cannot answer (SIGSTOP): the page says so, shows the reload as work in progress, and
    the model is ready again on a fresh engine without the user doing anything."""
    page.settings.max_tokens.setValue(300)
    statuses: list[str] = []
    show_status = page.set_status
    page.set_status = lambda text: (statuses.append(text), show_status(text))  # type: ignore[method-assign]
    page.send("Count from 1 to 500, separated by commas: 1, 2, 3,")
    qtbot.waitUntil(lambda: page.reply is not None and len(page.reply.stamps) >= 2, timeout=LONG)
    stuck = page.worker.pid
    assert stuck is not None
    os.kill(stuck, signal.SIGSTOP)
    restarted = _record(page.worker.sig_restarted)
    qtbot.mouseClick(page.stop_button, Qt.MouseButton.LeftButton)

    qtbot.waitUntil(lambda: bool(restarted), timeout=60_000)
    assert restarted[0][1] is True  # reloading the model
    assert page.notice.isVisible() and "did not answer Stop" in page.notice.label.text()
    assert any(t == "Restarted the chat engine; loading gemma-3-270m-q4_k_m.gguf again…" for t in statuses), statuses
    qtbot.waitUntil(lambda: page.load_button.text() == "Loaded" and not page.is_running(), timeout=LONG)
    assert page.worker.pid not in (None, stuck) and statuses[-1].startswith("Loaded ")
    assert page.send_button.isEnabled() and not page.stop_button.isEnabled()


def test_a_conversation_that_outgrows_the_context_asks_before_dropping_turns(qtbot: QtBot, page: ChatPage) -> None:
    page.offload.context.setValue(256)
    page.settings.max_tokens.setValue(16)
    finished = _record(page.sig_reply_finished)
    turn = " ".join(["apple banana cherry"] * 40)
    assert page.send(f"one {turn}")
    qtbot.waitUntil(lambda: len(finished) == 1, timeout=LONG)
    assert page.send(f"two {turn}")
    qtbot.waitUntil(lambda: page.notice.isVisible(), timeout=LONG)
    assert page.notice.kind == "context_full"
    assert "no longer fits the context of 256 tokens" in page.notice.label.text()
    assert page.notice.primary.text() == "Drop oldest turns"
    assert page.reply is None and page.turns[-1].role == "user"

    qtbot.mouseClick(page.notice.primary, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: len(finished) == 2, timeout=LONG)
    m = finished[-1][1]
    assert m.dropped_messages == 2 and m.prompt_tokens_total + 16 <= 256
    assert "2 oldest messages were left out" in page.notice.label.text()
    assert "2 oldest messages left out" in page.turns[-1].bubble.footer.text()


def test_the_window_preselects_the_chat_model_and_closing_it_stops_the_engine(qtbot: QtBot) -> None:
    from desktop.ui.main_window import PAGES, MainWindow

    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    window.show_page(PAGES.index("Chat"))
    page = window.chat_page
    qtbot.waitUntil(lambda: page.current_entry() is not None, timeout=LONG)
    assert page.current_entry().source == CHAT_SOURCE  # type: ignore[union-attr]
    qtbot.waitUntil(lambda: page.offload.plan is not None, timeout=LONG)  # the hardware report arrived
    assert page.offload.verdict.text().startswith("✔ Fits")
    page.offload.context.setValue(1024)
    page.offload.threads.setValue(1)
    page.settings.max_tokens.setValue(6)
    finished = _record(page.sig_reply_finished)
    page.send("Hello")
    qtbot.waitUntil(lambda: bool(finished), timeout=LONG)
    engine = page.worker.engine
    assert engine.alive
    window.close()
    assert not engine.alive and live_children() == []


def _gpu_named_engine_on_this_cpu() -> str:
    """A "Vulkan" engine as the engine builder installs one (manifest, smoke test passed, selected), whose library
    folder links to pip's CPU build: no GPU exists here, so the GPU build is imitated by the same files under the
    GPU engine's name. The chat child really runs from that folder (LLAMA_CPP_LIB_PATH) and really crashes."""
    import json

    from desktop.llama import engines

    folder = engines.engines_dir() / f"vulkan-{engines.library_version()}"
    (folder / "lib").mkdir(parents=True)
    for item in engines.pip_library_dir().iterdir():
        os.symlink(item, folder / "lib" / item.name)
    (folder / engines.MANIFEST).write_text(json.dumps({"backend": "vulkan",
                                                       "llama_cpp_python": engines.library_version()}))
    engine = engines.load_engine(folder)
    assert engine is not None
    engines.save_smoke(engine, engines.SmokeResult(True, "Passed: all layers on the imitated GPU.", 1, 1, [], True))
    return engines.select_engine(engine.name).name


def test_a_crash_on_a_gpu_engine_offers_retry_on_the_cpu(qtbot: QtBot, page: ChatPage) -> None:
    gpu_engine = _gpu_named_engine_on_this_cpu()
    page.settings.max_tokens.setValue(300)
    finished = _record(page.sig_reply_finished)
    page.send("Count from 1 to 500, separated by commas: 1, 2, 3,")
    qtbot.waitUntil(lambda: page.reply is not None and len(page.reply.stamps) >= 2, timeout=LONG)
    assert page.worker.engine.engine_name == gpu_engine and page.worker.on_gpu_engine
    pid = page.worker.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    qtbot.waitUntil(lambda: page.notice.isVisible() and page.notice.kind == "crash", timeout=30_000)
    assert page.notice.primary.text() == "Retry on the CPU"
    page.settings.max_tokens.setValue(8)
    qtbot.mouseClick(page.notice.primary, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: bool(finished), timeout=LONG)
    assert page.worker.engine.engine_name == "cpu" and not page.worker.on_gpu_engine
    assert page.worker.pid not in (None, pid) and page.worker.last_load.n_gpu_layers == 0  # type: ignore[union-attr]
    assert "on the CPU" in page.status.text() and page.offload.n_gpu_layers() == 0
    assert [t.role for t in page.turns] == ["user", "assistant"] and len(page.transcript.bubbles) == 2
