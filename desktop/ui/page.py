"""The scaffold every page is built on: a title, a body that scrolls when the window is small, and a status row
pinned under it (a progress bar, one line of status, Start and Cancel).

A page subclasses :class:`Page`, adds its cards to ``self.body``, connects ``sig_start``/``sig_cancel`` and calls
:meth:`Page.set_running` / :meth:`Page.set_progress` / :meth:`Page.set_status` while its job runs."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QKeySequence, QPainter, QPaintEvent, QShortcut
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

START_KEYS = ("Ctrl+Return", "Ctrl+Enter")


class StatusLine(QLabel):
    """One line of status that never widens the page: a long sentence is elided on screen, and shown whole in
    the tooltip. ``text()`` is always the whole sentence."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("note")
        self.setWordWrap(False)  # a word-wrapped label gives the page a height-for-width (see Page)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setMinimumWidth(80)
        self.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

    def setText(self, text: str) -> None:  # noqa: N802 - Qt override
        super().setText(text)
        self.setToolTip(text)

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt override
        rect = self.contentsRect()
        shown = self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight, rect.width())
        if shown == self.text():
            super().paintEvent(event)  # keeps selection by mouse working for a sentence that fits
            return
        painter = QPainter(self)
        painter.setPen(self.palette().color(self.foregroundRole()))
        painter.drawText(rect, int(self.alignment() | Qt.AlignmentFlag.AlignVCenter), shown)

    def is_elided(self) -> bool:
        return self.fontMetrics().horizontalAdvance(self.text()) > self.contentsRect().width()


class Page(QWidget):
    """Title, scrolling body and status row. ``start=None`` gives a page without Start/Cancel (status only)."""

    sig_start = Signal()
    """Start was clicked, or Ctrl+Enter typed anywhere on the page (also while Start is disabled, so the page can
    say why it cannot start)."""
    sig_cancel = Signal()
    """Cancel was clicked."""

    def __init__(self, title: str, *, start: str | None = "Start", start_tip: str = "", scroll: bool = True,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._page_can_start = True
        self._page_running = False
        self.title_label = QLabel(title)
        self.title_label.setObjectName("pageTitle")

        content = QWidget()
        self.body = QVBoxLayout(content)
        """Where the page puts its cards (below the title)."""
        self.body.setContentsMargins(20, 16, 20, 8)
        self.body.addWidget(self.title_label)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.progress.setFixedHeight(8)
        self.progress.setFixedWidth(180)
        self.progress.setVisible(False)
        self.status = StatusLine()
        self.status_row = QHBoxLayout()
        """Progress, status, then any widgets the page inserts, then Start and Cancel."""
        self.status_row.setContentsMargins(20, 4, 20, 12)
        self.status_row.addWidget(self.progress)
        self.status_row.addWidget(self.status, 1)
        self.start_button: QPushButton | None = None
        self.cancel_button: QPushButton | None = None
        if start is not None:
            self.start_button = QPushButton(start)
            self.start_button.setDefault(True)
            self.start_button.setToolTip(f"{start_tip} (Ctrl+Enter)" if start_tip else "Ctrl+Enter")
            self.start_button.clicked.connect(self.sig_start)
            self.cancel_button = QPushButton("Cancel")
            self.cancel_button.setToolTip("Stop the running job; what is already finished is kept")
            self.cancel_button.clicked.connect(self.sig_cancel)
            self.status_row.addWidget(self.start_button)
            self.status_row.addWidget(self.cancel_button)
            for keys in START_KEYS:
                shortcut = QShortcut(QKeySequence(keys), self, self.sig_start.emit)
                shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)

        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        if scroll:  # a small window scrolls the body instead of squeezing it; the status row stays in view
            self.scroll_area: QScrollArea | None = QScrollArea()
            self.scroll_area.setWidget(content)
            self.scroll_area.setWidgetResizable(True)
            self.scroll_area.setFrameShape(QScrollArea.Shape.NoFrame)
            outer.addWidget(self.scroll_area, 1)
        else:
            self.scroll_area = None
            outer.addWidget(content, 1)
        outer.addLayout(self.status_row)
        self._sync_start_cancel()

    def add_to_status_row(self, widget: QWidget, stretch: int = 0) -> None:
        """Put ``widget`` in the status row, just before Start."""
        index = self.status_row.count() - (2 if self.start_button is not None else 0)
        self.status_row.insertWidget(index, widget, stretch)

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    def set_can_start(self, can_start: bool) -> None:
        """Whether the page's inputs are complete enough to start (Start is also disabled while running)."""
        self._page_can_start = can_start
        self._sync_start_cancel()

    def set_running(self, running: bool) -> None:
        """Show the progress bar and enable Cancel while a job runs; hide it and enable Start afterwards."""
        self._page_running = running
        self.progress.setVisible(running)
        if running:
            self.progress.setRange(0, 0)  # busy until the first progress with a total
        self._sync_start_cancel()

    def is_running(self) -> bool:
        return self._page_running

    def set_progress(self, done: float, total: float) -> None:
        """``total`` 0 shows a busy bar: the job runs but cannot say how far it is."""
        if total > 0:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * max(0.0, min(1.0, done / total))))
        else:
            self.progress.setRange(0, 0)

    def _sync_start_cancel(self) -> None:
        if self.start_button is not None and self.cancel_button is not None:
            self.start_button.setEnabled(self._page_can_start and not self._page_running)
            self.cancel_button.setEnabled(self._page_running)
