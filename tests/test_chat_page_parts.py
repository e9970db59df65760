"""Chat page parts that need no engine: Markdown and code blocks, the timer-driven graph, token batching,
the offload panel with a synthetic GPU, and saved conversations (list, open, rename, export, delete)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from pytestqt.qtbot import QtBot

from desktop import paths
from desktop.hardware import report as hardware
from desktop.chat.conversations import ConversationStore
from desktop.demo_model import DEMO_SOURCE
from desktop.chat.engine import EngineEvent
from desktop.library import Library
from desktop.ui.chat.graph import SpeedGraph, token_rates
from desktop.ui.chat.page import ChatPage
from desktop.ui.chat.transcript import MessageBubble, Segment, split_markdown
from desktop.workers import JobManager
from desktop.workers.engine_worker import EngineWorker

from engine_helpers import demo_model_path  # noqa: E402 - tests/ is on sys.path under pytest

REPLY = "Here you go:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\nIt **adds**."
METRICS = {
    "prompt_tokens": 12, "prompt_ms": 40.0, "prompt_tokens_per_s": 300.0, "generated_tokens": 9,
    "generation_ms": 300.0, "generation_tokens_per_s": 30.0, "ttft_s": 0.05, "total_s": 0.4,
    "completion_tokens": 10, "prompt_tokens_total": 12, "context_used": 22, "n_ctx": 1024, "finish_reason": "stop",
    "dropped_messages": 0, "llama_perf": {"n_eval": 9, "t_eval_ms": 300.0, "n_p_eval": 12, "t_p_eval_ms": 40.0},
}


def test_markdown_is_split_into_prose_and_code_blocks() -> None:
    assert split_markdown(REPLY) == [
        Segment("text", "Here you go:"),
        Segment("code", "def add(a, b):\n    return a + b", "python"),
        Segment("text", "It **adds**."),
    ]
    # mid-stream: an unclosed fence is code up to the end
    assert split_markdown("Try:\n```sh\nls -l") == [Segment("text", "Try:"), Segment("code", "ls -l", "sh")]
    assert split_markdown("") == [Segment("text", "")]


def test_bubbles_render_markdown_and_copy_code_and_messages(qtbot: QtBot) -> None:
    bubble = MessageBubble("assistant")
    qtbot.addWidget(bubble)
    bubble.resize(500, 300)
    bubble.show()
    for end in range(10, len(REPLY) + 1, 7):  # streamed: the same bubble re-rendered as the text grows
        bubble.set_text(REPLY[:end])
    bubble.set_text(REPLY)
    code = bubble.code_blocks()
    assert len(code) == 1 and code[0].language.text() == "python"
    qtbot.mouseClick(code[0].copy_button, Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text() == "def add(a, b):\n    return a + b"
    assert code[0].copy_button.text() == "Copied"
    qtbot.mouseClick(bubble.copy_button, Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text() == REPLY
    prose = [w for s, w in bubble._segments if s.kind == "text"]
    assert "<b>adds</b>" in prose[-1].toHtml() or "font-weight:700" in prose[-1].toHtml()


def test_the_graph_draws_only_from_its_timer(qtbot: QtBot) -> None:
    graph = SpeedGraph()
    qtbot.addWidget(graph)
    graph.begin_reply(100.0)
    before = graph.redraws
    for i in range(200):
        graph.add_tokens([100.2 + i * 0.02])
    assert graph.redraws == before  # tokens only fill the buffer
    qtbot.waitUntil(lambda: graph.redraws > before, timeout=2_000)
    x, y = graph.smooth_curve.getData()
    assert len(x) == 199 and y[-1] == pytest.approx(50.0)
    assert graph.ttft_line.value() == pytest.approx(0.2)
    xs, raw, smooth = token_rates([0.0, 0.1, 0.2, 0.4])
    assert list(raw) == pytest.approx([10.0, 10.0, 5.0]) and smooth[-1] == pytest.approx(3 / 0.4)


def test_tokens_reach_the_gui_in_batches_and_in_order(qtbot: QtBot) -> None:
    worker = EngineWorker()
    batches: list[tuple[str, str, int]] = []
    order: list[str] = []
    stamps_seen: list[float] = []
    worker.sig_tokens.connect(lambda rid, text, stamps: (batches.append((rid, text, len(stamps))), order.append("t"),
                                                         stamps_seen.extend(stamps)))
    worker.sig_reply_done.connect(lambda rid, text, metrics: order.append("done"))
    pieces = [f"{i}," for i in range(300)]

    def reader_thread() -> None:  # what the engine's reader thread does with the child's batches of 3 tokens
        for i in range(0, len(pieces), 3):
            stamps = [1000.0 + k / 100 for k in range(i, i + 3)]
            worker._on_engine_event(EngineEvent("tokens", {"request_id": "r1", "text": "".join(pieces[i : i + 3]), "stamps": stamps}))
        worker._on_engine_event(EngineEvent("reply_done", {"request_id": "r1", "text": "".join(pieces), "metrics": METRICS}))

    thread = threading.Thread(target=reader_thread)
    thread.start()
    thread.join()
    qtbot.waitUntil(lambda: "done" in order, timeout=5_000)
    assert "".join(text for _, text, _ in batches) == "".join(pieces)
    assert sum(n for _, _, n in batches) == 300 and len(batches) < 30
    assert stamps_seen == [1000.0 + k / 100 for k in range(300)]  # every token keeps the engine's own stamp
    assert order[-1] == "done" and {rid for rid, _, _ in batches} == {"r1"}


def _demo_entries() -> list:  # type: ignore[type-arg]
    library = Library()
    library.add_file(demo_model_path(), source=DEMO_SOURCE)
    return library.models()


@pytest.fixture
def page(qtbot: QtBot) -> Iterator[ChatPage]:
    jobs = JobManager()
    chat = ChatPage(jobs)
    qtbot.addWidget(chat)
    chat.resize(1100, 760)
    chat.show()
    yield chat
    chat.shutdown()
    jobs.stop_all(timeout_s=5.0)


GiB = 2**30
GPU_FREE = 1_600_000_000  # room for the CUDA overhead, margin, logits buffer, output layer and some blocks


def _gpu_report(free: int, offload: bool = True) -> hardware.HardwareReport:
    gpu = hardware.GpuInfo(0, "Test GPU", "CUDA", vram_total=4 * GiB, vram_free=free, source="nvml")
    devices = [hardware.LlamaDevice("CUDA0", "Test GPU", "GPU", "CUDA", 4 * GiB, free)] if offload else []
    return hardware.HardwareReport(
        "test", hardware.collect_cpu(), hardware.MemoryInfo(16 * GiB, 8 * GiB), [gpu],
        hardware.LlamaBuild(available=True, supports_gpu_offload=offload, devices=devices), [],
    )


def test_offload_slider_breakdown_and_verdict_follow_the_settings(qtbot: QtBot, page: ChatPage) -> None:
    page.set_models(_demo_entries())
    page.set_hardware_report(_gpu_report(free=GPU_FREE))
    panel = page.offload
    qtbot.waitUntil(lambda: panel.plan is not None and panel.shape is not None, timeout=30_000)
    assert panel.context.maximum() == 32768  # up to the trained length
    assert panel.slider.maximum() == 19 and panel.slider.isEnabled()
    best = panel.plan.max_gpu_layers
    assert 1 < best < 19 and panel.slider.value() == best  # starts at the most that fits
    assert panel.verdict.text().startswith("✔ Fits with")

    panel.slider.setValue(19)
    assert panel.verdict.text().startswith("✖ Does not fit: Test GPU needs")
    assert f"At most {best} layers fit." in panel.verdict.text()
    assert panel._rows[0].title.text().startswith("Test GPU, 19 layers:")
    assert all(label in panel._rows[0].detail.text() for label in ("Weights", "KV cache", "Compute", "GPU overhead", "Margin"))
    assert page.load_options().n_gpu_layers == 19  # type: ignore[union-attr]

    panel.slider.setValue(0)
    assert panel.verdict.text().startswith("✔ Fits in system memory (no layers on the GPU)")
    host_before = panel.plan.host.breakdown.kv_cache
    panel.context.setValue(32768)
    assert panel.plan.host.breakdown.kv_cache > host_before  # the KV cache grows with the context, live

    page.set_hardware_report(_gpu_report(free=GPU_FREE, offload=False))  # a GPU this build cannot use
    assert not panel.slider.isEnabled() and page.load_options().n_gpu_layers == 0  # type: ignore[union-attr]
    assert "slider stays at 0" in panel.verdict.text()


def test_saved_conversations_are_listed_opened_renamed_exported_and_deleted(
    qtbot: QtBot, tmp_path: Path
) -> None:
    with ConversationStore(paths.database_path()) as store:
        first = store.create("Adding numbers", system_prompt="Be brief.")
        store.add_message(first.id, "user", "How do I add?")
        store.add_message(first.id, "assistant", REPLY, METRICS)
        second = store.create("Second chat")
        store.add_message(second.id, "user", "Hi")
    jobs = JobManager()
    page = ChatPage(jobs)
    qtbot.addWidget(page)
    page.show()
    try:
        qtbot.waitUntil(lambda: page.conversations.list.count() == 2, timeout=10_000)
        assert page.conversations.titles() == ["Second chat", "Adding numbers"]

        page.conversations.sig_open.emit(first.id)
        qtbot.waitUntil(lambda: len(page.transcript.bubbles) == 2, timeout=10_000)
        assert page.settings.system_text() == "Be brief."
        assert page.transcript.bubbles[1].code_blocks()[0].code == "def add(a, b):\n    return a + b"
        assert page.graph.history_values() == [30.0]  # the stored reply's speed
        assert "10 tokens · 30.0 tok/s" in page.transcript.bubbles[1].footer.text()
        qtbot.waitUntil(lambda: page.conversations.current_id() == first.id, timeout=10_000)

        item = page.conversations.list.item(page.conversations.ids().index(first.id))
        item.setText("Sums")  # what an edit in place (F2) does
        qtbot.waitUntil(lambda: "Sums" in page.conversations.titles() and page.store.idle(), timeout=10_000)

        target = tmp_path / "sums.md"
        page.export_conversation(first.id, target)
        qtbot.waitUntil(target.exists, timeout=10_000)
        text = target.read_text()
        assert text.startswith("# Sums\n") and "```python\ndef add(a, b):" in text and "30.0 tok/s" in text
        qtbot.waitUntil(lambda: page.status.text() == f"Exported to {target}.", timeout=5_000)

        page.delete_conversation(first.id)  # the open one: the page starts a new conversation
        qtbot.waitUntil(lambda: page.conversations.titles() == ["Second chat"], timeout=10_000)
        assert page.transcript.bubbles == [] and page.conversation.id is None
        with ConversationStore(paths.database_path()) as store:
            assert [c.title for c in store.list()] == ["Second chat"]

        page.conversations.sig_open.emit(second.id)
        qtbot.waitUntil(lambda: len(page.transcript.bubbles) == 1, timeout=10_000)
        page.setFocus()
        qtbot.keyClick(page, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
        assert page.transcript.bubbles == [] and page.conversation.id is None
    finally:
        page.shutdown()
        jobs.stop_all(timeout_s=5.0)
