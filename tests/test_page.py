"""The shared page scaffold: title, a body that scrolls in a small window while the status row stays in view,
Start/Cancel that follow the running state, Ctrl+Enter, and a long status line that never widens the page."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel
from pytestqt.qtbot import QtBot

from desktop.ui.page import Page


def _page(qtbot: QtBot, **kwargs: object) -> Page:
    page = Page("Example", **kwargs)  # type: ignore[arg-type]
    qtbot.addWidget(page)
    page.resize(600, 300)
    page.show()
    qtbot.waitExposed(page)
    return page


def test_start_and_cancel_follow_the_running_state(qtbot: QtBot) -> None:
    page = _page(qtbot, start="Measure")
    assert page.title_label.text() == "Example" and page.start_button is not None and page.cancel_button is not None
    assert page.start_button.text() == "Measure"
    assert page.start_button.isEnabled() and not page.cancel_button.isEnabled() and not page.progress.isVisible()
    with qtbot.waitSignal(page.sig_start, timeout=1_000):
        page.start_button.click()
    page.set_running(True)
    assert not page.start_button.isEnabled() and page.cancel_button.isEnabled() and page.progress.isVisible()
    assert page.progress.maximum() == 0  # busy until a total is known
    page.set_progress(1, 4)
    assert (page.progress.maximum(), page.progress.value()) == (1000, 250)
    with qtbot.waitSignal(page.sig_cancel, timeout=1_000):
        page.cancel_button.click()
    page.set_running(False)
    page.set_can_start(False)
    assert not page.start_button.isEnabled() and not page.cancel_button.isEnabled() and not page.progress.isVisible()


def test_ctrl_enter_asks_to_start_even_when_start_is_disabled(qtbot: QtBot) -> None:
    """The page then says why it cannot start, instead of the key doing nothing."""
    page = _page(qtbot)
    field = QLabel("x")
    field.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
    page.body.addWidget(field)
    page.set_can_start(False)
    page.activateWindow()
    qtbot.waitUntil(page.isActiveWindow, timeout=5_000)
    field.setFocus()
    with qtbot.waitSignal(page.sig_start, timeout=1_000):
        qtbot.keyClick(field, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)


def test_small_window_scrolls_the_body_and_keeps_the_status_row(qtbot: QtBot) -> None:
    page = _page(qtbot)
    tall = QLabel("tall")
    tall.setMinimumHeight(900)
    page.body.addWidget(tall)
    assert page.scroll_area is not None
    qtbot.waitUntil(lambda: page.scroll_area.verticalScrollBar().maximum() > 0, timeout=2_000)
    assert page.start_button is not None and page.start_button.isVisible()
    assert page.start_button.mapTo(page, page.start_button.rect().bottomLeft()).y() <= page.height()


def test_a_long_status_is_elided_not_widening_the_page(qtbot: QtBot) -> None:
    page = _page(qtbot, start=None)
    assert page.start_button is None and page.cancel_button is None
    before = page.minimumSizeHint().width()
    sentence = "Measuring " + "a very long model name " * 40
    page.set_status(sentence)
    assert page.status.text() == sentence and page.status.toolTip() == sentence
    assert page.minimumSizeHint().width() == before and page.width() == 600
    qtbot.waitUntil(page.status.is_elided, timeout=2_000)


def test_extra_widgets_go_before_start(qtbot: QtBot) -> None:
    page = _page(qtbot)
    extra = QLabel("output folder")
    page.add_to_status_row(extra)
    order = [page.status_row.itemAt(i).widget() for i in range(page.status_row.count())]
    assert order.index(extra) == order.index(page.start_button) - 1
