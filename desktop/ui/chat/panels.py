"""The Chat page's thin widgets: the model bar, the message composer, the speed card, and the page's style.

They hold no state of the conversation (that is :class:`desktop.chat.session.ChatSession`'s) and make no
decisions: the page connects their signals and sets what they show. Each is built to shrink: nothing here has a
minimum width that grows with the text it shows, so the page fits a 1024x640 window after any reply.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, QSize, Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from desktop.ui.chat.graph import SpeedGraph, SpeedStats
from desktop.ui.chat.transcript import ChatInput

STYLE = """
QFrame#userBubble { background: palette(alternate-base); border: 1px solid palette(midlight); border-radius: 10px; }
QFrame#assistantBubble { background: palette(base); border: 1px solid palette(midlight); border-radius: 10px; }
QFrame#userBubble QTextBrowser, QFrame#assistantBubble > QTextBrowser { background: transparent; }
QFrame#codeBlock { background: palette(window); border: 1px solid palette(midlight); border-radius: 6px; }
QFrame#codeBlock QTextBrowser { background: transparent; }
QLabel#bubbleRole { font-weight: 600; }
QLabel#statValue { font-size: 14px; font-weight: 600; }
QPushButton#smallButton { padding: 1px 8px; }
QWidget#transcriptContent { background: palette(window); }
QFrame#noticeBar { border-radius: 8px; }
QFrame#noticeBar[severity="error"] { background: rgba(220, 38, 38, 0.10); border: 1px solid rgba(220, 38, 38, 0.45); }
QFrame#noticeBar[severity="info"] { background: rgba(37, 99, 235, 0.08); border: 1px solid rgba(37, 99, 235, 0.40); }
QLabel#verdict { font-weight: 600; }
QLabel#verdict[fits="yes"] { color: #15803d; }
QLabel#verdict[fits="no"] { color: #dc2626; }
"""


class ModelBar(QWidget):
    """The model picker and its Load button."""

    sig_selected = Signal()
    """Another model was picked."""
    sig_load = Signal()
    """Load was clicked."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.combo = QComboBox()
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setMinimumContentsLength(8)
        self.combo.setToolTip("The model to chat with (from the library)")
        self.combo.currentIndexChanged.connect(self.sig_selected)
        self.load_button = QPushButton("Load")
        self.load_button.setToolTip("Load the model with the settings on the right (sending a message loads it too)")
        self.load_button.clicked.connect(self.sig_load)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("Model"))
        row.addWidget(self.combo, 1)
        row.addWidget(self.load_button)


class Composer(QWidget):
    """The message box and its buttons: Send, Stop, Regenerate."""

    sig_send = Signal()
    sig_stop = Signal()
    sig_regenerate = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.input = ChatInput()
        self.input.sig_submit.connect(self.sig_send)
        self.input.sig_escape.connect(self.sig_stop)
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.setToolTip("Send (Enter)")
        self.send_button.clicked.connect(self.sig_send)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("Stop the reply (Esc)")
        self.stop_button.clicked.connect(self.sig_stop)
        self.regenerate_button = QPushButton("Regenerate")
        self.regenerate_button.setToolTip("Ask again for the last reply (Ctrl+R)")
        self.regenerate_button.clicked.connect(self.sig_regenerate)
        buttons = QVBoxLayout()
        buttons.setSpacing(4)
        for button in (self.send_button, self.stop_button, self.regenerate_button):
            buttons.addWidget(button)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.input, 1)
        row.addLayout(buttons)


class SpeedCard(QFrame):
    """The figures of the last reply above the live graph."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("card")
        self.stats = SpeedStats()
        self.graph = SpeedGraph()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 8, 10, 6)
        layout.setSpacing(4)
        layout.addWidget(self.stats)
        layout.addWidget(self.graph, 1)


class SidePanel(QScrollArea):
    """A vertical-only scroll area that is never narrower than its content's minimum, so nothing in it is cut
    off at the right (its content grows after a load: the predicted-against-actual table)."""

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt override
        hint = super().minimumSizeHint()
        inner = self.widget()
        if inner is None:
            return hint
        bar = self.verticalScrollBar().sizeHint().width()
        return QSize(inner.minimumSizeHint().width() + bar + 2 * self.frameWidth(), hint.height())

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
        if watched is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()  # the content's minimum may have changed: let the splitter make room
        return super().eventFilter(watched, event)


def scrolled(widget: QWidget) -> QScrollArea:
    """``widget`` in a vertical-only scroll area (a side panel that may be taller than the window)."""
    area = SidePanel()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Ignored)
    holder = QWidget()
    layout = QVBoxLayout(holder)
    layout.setContentsMargins(6, 10, 6, 10)
    layout.addWidget(widget)
    area.setWidget(holder)
    holder.installEventFilter(area)
    return area
