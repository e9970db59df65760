"""The conversation as the user reads it: message bubbles with Markdown, code blocks with copy buttons.

A bubble is a column of segments, prose (a QTextBrowser with ``setMarkdown``) and code (monospace, with its own
copy button). While a reply streams, the page hands the bubble its whole text at the redraw rate; segments that
did not change are left alone, so the cost is one Markdown parse of the last segment per frame.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QFontDatabase, QGuiApplication, QKeyEvent, QResizeEvent, QTextDocument
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

log = logging.getLogger(__name__)

WEB_SCHEMES = ("http", "https")
MARKDOWN = QTextDocument.MarkdownFeature(
    QTextDocument.MarkdownFeature.MarkdownDialectGitHub.value | QTextDocument.MarkdownFeature.MarkdownNoHTML.value
)
_SOFT_BREAK = re.compile(r"(?<=[^\n])[ \t]*\n(?=[^\n])")  # a newline alone between two non-empty lines
_FENCE = re.compile(r"^[ \t]{0,3}(```+|~~~+)[ \t]*([\w+#.-]*)[^\n]*$", re.MULTILINE)
ROLE_NAMES = {"user": "You", "assistant": "Assistant", "system": "System"}


@dataclass(frozen=True)
class Segment:
    kind: str  # "text" or "code"
    content: str
    language: str = ""


def split_markdown(text: str) -> list[Segment]:
    """Cut a message into prose and fenced code blocks (an unclosed fence, mid-stream, runs to the end)."""
    segments: list[Segment] = []
    pos = 0
    while True:
        opening = _FENCE.search(text, pos)
        if opening is None:
            break
        before = text[pos : opening.start()]
        if before.strip():
            segments.append(Segment("text", before.strip("\n")))
        fence = opening.group(1)
        closing = re.compile(rf"^[ \t]{{0,3}}{re.escape(fence[0]) * len(fence)}{re.escape(fence[0])}*[ \t]*$", re.MULTILINE)
        body_start = opening.end() + 1
        end = closing.search(text, body_start) if body_start <= len(text) else None
        body = text[body_start : end.start() if end else len(text)]
        segments.append(Segment("code", body.rstrip("\n"), opening.group(2)))
        if end is None:
            return segments
        pos = end.end()
    rest = text[pos:]
    if rest.strip() or not segments:
        segments.append(Segment("text", rest.strip("\n")))
    return segments


def hard_breaks(markdown: str) -> str:
    """Each single line break the model wrote stays a line break on screen (Markdown would join the lines)."""
    return _SOFT_BREAK.sub("  \n", markdown)


class AutoHeightBrowser(QTextBrowser):
    """A read-only text view as tall as its content, so the transcript scrolls as one page.

    The text is the model's, so untrusted: Markdown without raw HTML, no images or other resources loaded, and a
    click on a link opens it in the browser only for http and https (the browser itself never navigates)."""

    def __init__(self, parent: QWidget | None = None, *, wrap: bool = True) -> None:
        super().__init__(parent)
        self.setOpenLinks(False)
        self.setOpenExternalLinks(False)
        self.anchorClicked.connect(open_web_link)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        if not wrap:
            self.setLineWrapMode(QTextBrowser.LineWrapMode.NoWrap)
        self.setHorizontalScrollBarPolicy(
            Qt.ScrollBarPolicy.ScrollBarAsNeeded if not wrap else Qt.ScrollBarPolicy.ScrollBarAlwaysOff
        )
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.document().setDocumentMargin(2)
        self.document().contentsChanged.connect(self._fit)

    def _fit(self) -> None:
        doc = self.document()
        if self.lineWrapMode() != QTextBrowser.LineWrapMode.NoWrap:
            doc.setTextWidth(self.viewport().width())
        height = int(doc.size().height()) + 2 * self.frameWidth()
        bar = self.horizontalScrollBar()
        if self.lineWrapMode() == QTextBrowser.LineWrapMode.NoWrap and doc.idealWidth() > self.viewport().width():
            height += bar.sizeHint().height()
        if height != self.height():
            self.setFixedHeight(max(height, 18))

    def set_markdown(self, markdown: str) -> None:
        self.document().setMarkdown(hard_breaks(markdown), MARKDOWN)

    def loadResource(self, kind: int, name: QUrl) -> Any:  # noqa: N802 - Qt override
        return None  # an image in a reply would read a local file (or be a tracker): none are loaded

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt override
        super().resizeEvent(event)
        if event.size().width() != event.oldSize().width():
            self._fit()


def open_web_link(url: QUrl) -> bool:
    """Open a link from a reply in the user's browser: http and https only; any other scheme is ignored."""
    if url.scheme().lower() not in WEB_SCHEMES or not url.host():
        log.info("a link with the scheme %r in a reply was not opened", url.scheme()[:20])
        return False
    return QDesktopServices.openUrl(url)


class CodeBlock(QFrame):
    """A fenced code block: the code in a monospace font and a button that copies exactly that code."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("codeBlock")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 6)
        layout.setSpacing(2)
        header = QHBoxLayout()
        self.language = QLabel()
        self.language.setObjectName("note")
        self.copy_button = QPushButton("Copy code")
        self.copy_button.setObjectName("smallButton")
        self.copy_button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.copy_button.clicked.connect(self.copy)
        header.addWidget(self.language, 1)
        header.addWidget(self.copy_button)
        layout.addLayout(header)
        self.view = AutoHeightBrowser(wrap=False)
        self.view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        layout.addWidget(self.view)
        self.code = ""

    def set_code(self, code: str, language: str) -> None:
        if code != self.code:
            self.code = code
            self.view.setPlainText(code)
        self.language.setText(language or "code")

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.code)
        self.copy_button.setText("Copied")
        QTimer.singleShot(1500, self.copy_button, lambda: self.copy_button.setText("Copy code"))


class MessageBubble(QFrame):
    """One message: who wrote it, its text, a copy button, and a footer line (speed, stopped, interrupted)."""

    def __init__(self, role: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.role = role
        self.setObjectName("userBubble" if role == "user" else "assistantBubble")
        self.text = ""
        self._segments: list[tuple[Segment, QWidget]] = []
        outer = QVBoxLayout(self)
        outer.setContentsMargins(12, 8, 12, 8)
        outer.setSpacing(4)
        header = QHBoxLayout()
        self.role_label = QLabel(ROLE_NAMES.get(role, role))
        self.role_label.setObjectName("bubbleRole")
        self.copy_button = QPushButton("Copy")
        self.copy_button.setObjectName("smallButton")
        self.copy_button.setToolTip("Copy the whole message as Markdown")
        self.copy_button.setCursor(Qt.CursorShape.PointingHandCursor)
        self.copy_button.clicked.connect(self.copy)
        header.addWidget(self.role_label, 1)
        header.addWidget(self.copy_button)
        outer.addLayout(header)
        self.body = QVBoxLayout()
        self.body.setSpacing(6)
        outer.addLayout(self.body)
        self.footer = QLabel()
        self.footer.setObjectName("note")
        self.footer.setWordWrap(True)
        self.footer.hide()
        outer.addWidget(self.footer)

    def set_text(self, text: str) -> None:
        if text == self.text and self._segments:
            return
        self.text = text
        wanted = split_markdown(text)
        for index, segment in enumerate(wanted):
            if index < len(self._segments):
                old, widget = self._segments[index]
                if old == segment:
                    continue
                if old.kind == segment.kind:
                    self._fill(widget, segment)
                    self._segments[index] = (segment, widget)
                    continue
                for _, stale in self._segments[index:]:
                    stale.deleteLater()
                del self._segments[index:]
            widget = CodeBlock() if segment.kind == "code" else AutoHeightBrowser()
            self._fill(widget, segment)
            self.body.addWidget(widget)
            self._segments.append((segment, widget))
        for _, stale in self._segments[len(wanted) :]:
            stale.deleteLater()
        del self._segments[len(wanted) :]

    @staticmethod
    def _fill(widget: QWidget, segment: Segment) -> None:
        if isinstance(widget, CodeBlock):
            widget.set_code(segment.content, segment.language)
        elif isinstance(widget, AutoHeightBrowser):
            widget.set_markdown(segment.content)

    def code_blocks(self) -> list[CodeBlock]:
        return [w for _, w in self._segments if isinstance(w, CodeBlock)]

    def set_footer(self, text: str) -> None:
        self.footer.setText(text)
        self.footer.setVisible(bool(text))

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.text)


class Transcript(QScrollArea):
    """The bubbles of one conversation, newest at the bottom; follows the end while the user is there."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("transcript")
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        content = QWidget()
        content.setObjectName("transcriptContent")
        self._layout = QVBoxLayout(content)
        self._layout.setContentsMargins(12, 12, 12, 12)
        self._layout.setSpacing(10)
        self.empty = QLabel("Write a message below. Enter sends, Shift+Enter starts a new line, Esc stops the reply.")
        self.empty.setObjectName("note")
        self.empty.setWordWrap(True)
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._layout.addWidget(self.empty)
        self._layout.addStretch(1)
        self.setWidget(content)
        self.bubbles: list[MessageBubble] = []
        self._follow = True
        bar = self.verticalScrollBar()
        bar.valueChanged.connect(lambda value: setattr(self, "_follow", value >= bar.maximum() - 24))
        bar.rangeChanged.connect(lambda _lo, hi: bar.setValue(hi) if self._follow else None)

    def add(self, role: str, text: str = "") -> MessageBubble:
        bubble = MessageBubble(role)
        bubble.set_text(text)
        self._layout.insertWidget(self._layout.count() - 1, bubble)
        self.bubbles.append(bubble)
        self.empty.hide()
        self._follow = True
        return bubble

    def remove(self, bubble: MessageBubble) -> None:
        if bubble in self.bubbles:
            self.bubbles.remove(bubble)
            bubble.hide()
            bubble.deleteLater()
        self.empty.setVisible(not self.bubbles)

    def clear(self) -> None:
        for bubble in list(self.bubbles):
            self.remove(bubble)


class ChatInput(QPlainTextEdit):
    """The message box: Enter sends, Shift+Enter starts a new line, Esc stops the reply."""

    sig_submit = Signal()
    """Enter was pressed (without Shift)."""
    sig_escape = Signal()
    """Esc was pressed in the box."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setPlaceholderText("Message the model (Enter to send, Shift+Enter for a new line)")
        self.setTabChangesFocus(True)
        self.setFixedHeight(72)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt override
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter):
            if event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
                self.insertPlainText("\n")
            else:
                self.sig_submit.emit()
            return
        if event.key() == Qt.Key.Key_Escape:
            self.sig_escape.emit()
            return
        super().keyPressEvent(event)


class NoticeBar(QFrame):
    """A message in the chat that needs a decision: a sentence and up to two buttons."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("noticeBar")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(12, 8, 12, 8)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.primary = QPushButton()
        self.secondary = QPushButton("Dismiss")
        self.secondary.clicked.connect(self.hide)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.primary)
        layout.addWidget(self.secondary)
        self._action = None
        self.primary.clicked.connect(self._run)
        self.kind = ""
        self.hide()

    def show_notice(self, kind: str, text: str, action_text: str = "", action=None) -> None:  # type: ignore[no-untyped-def]
        self.kind = kind
        self.setProperty("severity", "error" if kind in ("crash", "error") else "info")
        self.style().unpolish(self)
        self.style().polish(self)
        self.label.setText(text)
        self._action = action
        self.primary.setText(action_text)
        self.primary.setVisible(bool(action_text))
        self.show()

    def clear(self) -> None:
        self.kind = ""
        self.hide()

    def _run(self) -> None:
        action = self._action
        self.clear()
        if action is not None:
            action()
