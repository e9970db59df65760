"""The list of saved conversations: new, open, rename (F2 or double-click), delete, export as Markdown."""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtGui import QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QAbstractItemView,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop.chat.conversations import Conversation

UNTITLED = "New conversation"


class ConversationList(QWidget):
    sig_open = Signal(int)
    """The user picked a saved conversation (its id)."""
    sig_new = Signal()
    """The user asked for a new conversation."""
    sig_rename = Signal(int, str)
    """(id, new title) after an edit in place."""
    sig_delete = Signal(int)
    """The user asked to delete a conversation (the page confirms)."""
    sig_export = Signal(int)
    """The user asked to export a conversation as Markdown."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        title = QLabel("Conversations")
        title.setObjectName("cardTitle")
        self.new_button = QPushButton("New")
        self.new_button.setToolTip("Start a new conversation (Ctrl+N)")
        self.new_button.clicked.connect(self.sig_new)
        header = QHBoxLayout()
        header.addWidget(title, 1)

        self.list = QListWidget()
        self.list.setObjectName("conversationList")
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.list.setEditTriggers(
            QAbstractItemView.EditTrigger.EditKeyPressed | QAbstractItemView.EditTrigger.DoubleClicked
        )
        self.list.itemClicked.connect(self._on_clicked)
        self.list.itemChanged.connect(self._on_changed)
        QShortcut(QKeySequence.StandardKey.Delete, self.list, self._delete_current,
                  context=Qt.ShortcutContext.WidgetShortcut)

        self.rename_button = QPushButton("Rename")
        self.rename_button.setToolTip("Rename the selected conversation (F2)")
        self.rename_button.clicked.connect(self._rename_current)
        self.delete_button = QPushButton("Delete")
        self.delete_button.setToolTip("Delete the selected conversation")
        self.delete_button.clicked.connect(self._delete_current)
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Save the selected conversation as a Markdown file")
        self.export_button.clicked.connect(lambda: self._emit_current(self.sig_export))
        buttons = QGridLayout()  # two rows, so the list stays narrow and the page fits a 1024-pixel window
        buttons.setSpacing(4)
        for index, button in enumerate((self.new_button, self.rename_button, self.delete_button, self.export_button)):
            button.setObjectName("smallButton")
            buttons.addWidget(button, index // 2, index % 2)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(header)
        layout.addWidget(self.list, 1)
        layout.addLayout(buttons)
        self._filling = False
        self._titles: dict[int, str] = {}
        self.list.currentRowChanged.connect(lambda _row: self._update_buttons())
        self._update_buttons()

    def set_conversations(self, conversations: Sequence[Conversation], current: int | None) -> None:
        self._filling = True
        self.list.clear()
        self._titles = {}
        for conversation in conversations:
            item = QListWidgetItem(conversation.title or UNTITLED)
            item.setData(Qt.ItemDataRole.UserRole, conversation.id)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
            item.setToolTip(conversation.title or UNTITLED)
            self.list.addItem(item)
            self._titles[conversation.id] = conversation.title
            if conversation.id == current:
                self.list.setCurrentItem(item)
        if current is None:
            self.list.setCurrentRow(-1)
        self._filling = False
        self._update_buttons()

    def ids(self) -> list[int]:
        return [int(self.list.item(i).data(Qt.ItemDataRole.UserRole)) for i in range(self.list.count())]

    def titles(self) -> list[str]:
        return [self.list.item(i).text() for i in range(self.list.count())]

    def current_id(self) -> int | None:
        item = self.list.currentItem()
        return int(item.data(Qt.ItemDataRole.UserRole)) if item is not None else None

    def _update_buttons(self) -> None:
        has = self.list.currentItem() is not None
        for button in (self.rename_button, self.delete_button, self.export_button):
            button.setEnabled(has)

    @Slot(QListWidgetItem)
    def _on_clicked(self, item: QListWidgetItem) -> None:
        self.sig_open.emit(int(item.data(Qt.ItemDataRole.UserRole)))

    @Slot(QListWidgetItem)
    def _on_changed(self, item: QListWidgetItem) -> None:
        if self._filling:
            return
        conversation_id = int(item.data(Qt.ItemDataRole.UserRole))
        title = item.text().strip()
        if title and title != self._titles.get(conversation_id):
            self._titles[conversation_id] = title
            self.sig_rename.emit(conversation_id, title)

    def _rename_current(self) -> None:
        item = self.list.currentItem()
        if item is not None:
            self.list.editItem(item)

    def _delete_current(self) -> None:
        self._emit_current(self.sig_delete)

    def _emit_current(self, signal: Signal) -> None:  # type: ignore[type-arg]
        conversation_id = self.current_id()
        if conversation_id is not None:
            signal.emit(conversation_id)
