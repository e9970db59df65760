"""Chat page rough edges a new user hit (issue 15) and links in model replies (issue 13, Low): the page fits a
1024x640 window after long replies, the graph's labels and legend stay clear of each other, line breaks in replies
show, a reopened conversation restores its context and template, and only http(s) links open, no raw HTML."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from PySide6.QtCore import QObject, QPoint, QRectF, Qt, QUrl, Slot
from PySide6.QtGui import QDesktopServices, QTextCursor
from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot

from desktop import paths
from desktop.chat.conversations import ConversationStore
from desktop.chat.engine import ReplyMetrics
from desktop.chat_model import CHAT_SOURCE
from desktop.library import Library
from desktop.ui.chat.transcript import AutoHeightBrowser, MessageBubble

from engine_helpers import demo_model_path  # noqa: E402 - tests/ is on sys.path under pytest

BIG = ReplyMetrics(  # a long reply after a long prompt: the widest figures a real reply shows
    prompt_tokens=8_192, prompt_ms=6_636.0, prompt_tokens_per_s=1_234.5, generated_tokens=4_096,
    generation_ms=175_043.0, generation_tokens_per_s=23.4, ttft_s=6.64, total_s=183.25,
    completion_tokens=4_096, prompt_tokens_total=8_192, context_used=12_288, n_ctx=32_768, finish_reason="length",
)
LONG_REPLY = ("A very long paragraph " * 60 + "\n\n```python\n" + "x = '" + "y" * 400 + "'\n```\n"
              + "https://example.org/" + "a" * 300)


@pytest.fixture
def window(qtbot: QtBot) -> Iterator[object]:
    from desktop.ui.main_window import PAGES, MainWindow
    from desktop.ui.theme import apply_theme

    app = QApplication.instance()
    style, sheet, palette = app.style().name(), app.styleSheet(), app.palette()
    apply_theme(app)  # sizes as the user sees them: the app's style sheet pads buttons and fields
    win = MainWindow()
    qtbot.addWidget(win)
    win.show()
    win.show_page(PAGES.index("Chat"))
    yield win
    win.close()
    app.setStyleSheet(sheet)
    app.setStyle(style)
    app.setPalette(palette)


def _fits(qtbot: QtBot, win, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    page = win.chat_page
    win.resize(*size)
    qtbot.waitUntil(lambda: win.size().toTuple() == size, timeout=5_000)
    for _ in range(5):  # layouts settle in rounds of posted events
        QApplication.processEvents()
    area = page.scroll_area
    assert not area.horizontalScrollBar().isVisible(), f"the page scrolls sideways at {size}"
    assert not area.verticalScrollBar().isVisible(), f"the page scrolls up and down at {size}"
    assert area.widget().minimumSizeHint().width() <= area.viewport().width()
    right = page.tabs.mapTo(page, QPoint(page.tabs.width(), 0)).x()
    assert page.tabs.isVisible() and right <= page.width(), "the settings panel is cut off"
    plot = page.graph.plot  # the graph is not squeezed out of its card at the bottom
    assert plot.mapTo(page.speed, QPoint(0, plot.height())).y() <= page.speed.height()
    for index in range(page.tabs.count()):  # and nothing inside it is cut off at its right edge
        side = page.tabs.widget(index)
        assert side.widget().minimumSizeHint().width() <= side.viewport().width(), page.tabs.tabText(index)


@pytest.mark.parametrize("size", [(1024, 640), (1400, 900)])
def test_the_page_fits_the_window_after_long_replies(qtbot: QtBot, window, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    page = window.chat_page
    qtbot.waitUntil(lambda: page.offload.plan is not None, timeout=60_000)
    _fits(qtbot, window, size)
    mib = 1 << 20  # what a load shows: the predicted-against-actual table widens the side panel
    page.offload.show_actual({"host": {"weights": 97 * mib, "kv_cache": 24 * mib, "compute": 105 * mib}, "gpus": []},
                             1024, 0)
    assert page.offload.actual_rows
    _fits(qtbot, window, size)
    for _ in range(3):  # each reply: a long one, with the largest figures the stats row can show
        bubble = page.transcript.add("assistant", LONG_REPLY)
        bubble.set_footer("99,999 tokens · 1234.5 tok/s · first token after 123.45 s · reached the token limit · "
                          "12 oldest messages left out to fit the context")
        page.stats.show_metrics(BIG)
        page.set_status("Loaded a-model-with-a-really-long-file-name-" + "x" * 200 + " in 1.0 s: on the CPU.")
        _fits(qtbot, window, size)


def _inside(item_rect: QRectF, outer: QRectF) -> bool:
    return outer.adjusted(-0.5, -0.5, 0.5, 0.5).contains(item_rect)


@pytest.mark.parametrize("size", [(1024, 640), (1400, 900), (1180, 780)])
def test_graph_axis_labels_are_whole_and_nothing_covers_the_curves(qtbot: QtBot, window, size) -> None:  # type: ignore[no-untyped-def]
    page = window.chat_page
    window.resize(*size)
    graph = page.graph
    graph.begin_reply(0.0)
    graph.add_tokens([0.3 + i * 0.05 for i in range(60)])
    graph.end_reply(BIG)
    qtbot.waitUntil(lambda: window.size().toTuple() == size, timeout=5_000)
    QApplication.processEvents()
    assert graph.plot.isVisible()
    for plot in (p for p in (graph.plot, graph.history) if p.isVisible()):
        scene = QRectF(plot.viewport().rect())
        item = plot.getPlotItem()
        for name in ("left", "bottom"):
            axis = item.getAxis(name)
            label = axis.label.mapRectToScene(axis.label.boundingRect())
            assert _inside(label, scene), f"{name} axis label cut at {size}: {label} outside {scene}"
        view = item.getViewBox().sceneBoundingRect()
        legend = item.legend
        assert legend is None or not legend.sceneBoundingRect().intersects(view)
        covering = [i for i in item.items if hasattr(i, "textItem") and i.isVisible()]  # pg.TextItem in the plot
        assert not covering, "text drawn over the curves"
    assert graph.legend.isVisible() and "per token" in graph.legend.text() and "first token" in graph.legend.text()


def test_line_breaks_in_a_reply_are_kept_on_screen(qtbot: QtBot) -> None:
    bubble = MessageBubble("assistant")
    qtbot.addWidget(bubble)
    bubble.set_text("Roses are red,\nviolets are blue.\nPoems are short.\n\n- one\n- two\n\nThe end.")
    prose = [w for s, w in bubble._segments if s.kind == "text"][0]
    lines = prose.toPlainText().replace("\u2028", "\n").splitlines()
    assert lines[:3] == ["Roses are red,", "violets are blue.", "Poems are short."]
    assert "one" in lines and "two" in lines and lines[-1] == "The end."
    assert bubble.text.count("\n") == 7  # what is copied and saved is the model's text, unchanged


class _Opened(QObject):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    @Slot(QUrl)
    def record(self, url: QUrl) -> None:
        self.urls.append(url.toString())


def _click_anchor(qtbot: QtBot, browser: AutoHeightBrowser, anchor_text: str) -> None:
    cursor = browser.document().find(anchor_text)
    assert not cursor.isNull(), anchor_text
    middle = QTextCursor(browser.document())
    middle.setPosition((cursor.selectionStart() + cursor.selectionEnd()) // 2)
    qtbot.mouseClick(browser.viewport(), Qt.MouseButton.LeftButton, pos=browser.cursorRect(middle).center())


def test_only_http_links_open_and_html_from_the_model_is_shown_as_text(qtbot: QtBot) -> None:
    opened = _Opened()
    schemes = ("http", "https", "file", "ftp", "smb", "javascript", "quantdesk")
    for scheme in schemes:  # Qt's own hook: the URL handler every openUrl goes through
        QDesktopServices.setUrlHandler(scheme, opened, "record")
    try:
        bubble = MessageBubble("assistant")
        qtbot.addWidget(bubble)
        bubble.resize(600, 300)
        bubble.show()
        bubble.set_text("See [the docs](https://example.org/docs) or [this file](file:///etc/passwd) or "
                        "[share](smb://host/share) and <a href=\"file:///etc/shadow\">raw link</a> "
                        "<b>bold?</b> <img src=\"file:///etc/hosts\">")
        prose = [w for s, w in bubble._segments if s.kind == "text"][0]
        qtbot.waitUntil(prose.isVisible)
        _click_anchor(qtbot, prose, "this file")
        _click_anchor(qtbot, prose, "share")
        assert opened.urls == []
        _click_anchor(qtbot, prose, "the docs")
        qtbot.waitUntil(lambda: opened.urls == ["https://example.org/docs"], timeout=2_000)
        html = prose.toHtml()
        assert "<img" not in html and 'href="file:///etc/shadow"' not in html  # raw HTML is not rendered
        plain = prose.toPlainText()
        assert "<b>bold?</b>" in plain and "raw link</a>" in plain  # it is shown as the text the model wrote
    finally:
        for scheme in schemes:
            QDesktopServices.unsetUrlHandler(scheme)


def test_a_reopened_conversation_restores_its_model_context_and_template(qtbot: QtBot) -> None:
    from desktop.ui.chat.page import ChatPage
    from desktop.workers import JobManager

    library = Library()
    library.add_file(demo_model_path(), source=CHAT_SOURCE)
    entries = library.models()
    with ConversationStore(paths.database_path()) as store:
        saved = store.create("Old chat", model_path=str(entries[0].path), system_prompt="Be brief.",
                             settings={"sampling": {"temperature": 0.3}, "n_ctx": 1536, "template": "chatml"})
        store.add_message(saved.id, "user", "Hi")
        plain = store.create("Older chat", model_path=str(entries[0].path), settings={"sampling": {}})
    jobs = JobManager()
    page = ChatPage(jobs)
    qtbot.addWidget(page)
    page.show()
    try:
        page.set_models(entries)
        qtbot.waitUntil(lambda: page.offload.shape is not None, timeout=30_000)
        assert page.offload.context.value() != 1536 and page.offload.template_choice() is None
        page.conversations.sig_open.emit(saved.id)
        qtbot.waitUntil(lambda: len(page.transcript.bubbles) == 1, timeout=10_000)
        assert page.offload.context.value() == 1536 and page.offload.template_choice() == "chatml"
        options = page.load_options()
        assert options is not None and options.n_ctx == 1536 and options.template == "chatml"
        assert page.settings.temperature.value() == pytest.approx(0.3)
        page.conversations.sig_open.emit(plain.id)  # saved with the model's own template
        qtbot.waitUntil(lambda: page.transcript.bubbles == [] and page.conversation.id == plain.id, timeout=10_000)
        assert page.offload.template_choice() is None
    finally:
        page.shutdown()
        jobs.stop_all(timeout_s=5.0)
