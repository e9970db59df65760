"""The Chat page's saved conversations: list, new, open (restoring what the conversation saved), rename, delete,
export. A mixin of :class:`~desktop.ui.chat.page.ChatPage`: it uses the page's session, store and widgets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Slot
from PySide6.QtGui import QShowEvent
from PySide6.QtWidgets import QFileDialog, QMessageBox

from desktop.chat.conversations import Conversation, ConversationStore, Message
from desktop.chat.engine import ReplyMetrics
from desktop.chat.session import ConversationSettings, metrics_line, parse_server_model_path
from desktop.naming import safe_name
from desktop.ui.chat.conversations import ConversationList
from desktop.ui.chat.offload import MODEL_TEMPLATE
from desktop.workers import Job


class HistoryMixin:
    """Needs the page's ``session``, ``store``, ``worker``, ``entries`` and widgets (see ChatPage._build)."""

    _shown_once = False
    session: Any
    store: Any

    def connect_history(self, conversations: ConversationList) -> None:
        conversations.sig_new.connect(self.new_conversation)
        conversations.sig_open.connect(self.open_conversation)
        conversations.sig_rename.connect(self.rename_conversation)
        conversations.sig_delete.connect(self._confirm_delete)
        conversations.sig_export.connect(self._choose_export)

    def showEvent(self, event: QShowEvent) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        if not self._shown_once:
            self._shown_once = True
            self.refresh_conversations()

    def refresh_conversations(self) -> None:
        self.store.call("Read conversations", lambda store: store.list(), self._show_conversations)

    @Slot(object)
    def _show_conversations(self, conversations: list[Conversation]) -> None:
        self.conversations.set_conversations(conversations, self.session.conversation.id)
        self.sig_conversations_changed.emit()

    def _leave_conversation(self) -> None:
        if self.session.detach():
            self.worker.stop()
        self.transcript.clear()
        self.notice.clear()
        self.stats.clear()

    @Slot()
    def new_conversation(self) -> None:
        self._leave_conversation()
        self.session.new()
        self.graph.set_history([])
        self.conversations.list.setCurrentRow(-1)
        self._update_controls()
        self.input.setFocus()

    @Slot(int)
    def open_conversation(self, conversation_id: int) -> None:
        if conversation_id == self.session.conversation.id:
            return
        if self.session.detach():
            self.worker.stop()

        def read(store: ConversationStore) -> tuple[Conversation, list[Message]]:
            return store.get(conversation_id), store.messages(conversation_id)

        self.store.call("Open conversation", read, self._show_conversation)

    @Slot(object)
    def _show_conversation(self, result: tuple[Conversation, list[Message]]) -> None:
        conversation, messages = result
        self._leave_conversation()
        self.restore_settings(ConversationSettings.of(conversation))
        self.settings.system_prompt.setPlainText(conversation.system_prompt)
        for turn in self.session.open(conversation, messages):
            turn.bubble = self.transcript.add(turn.role, turn.content)
            if turn.metrics:
                turn.bubble.set_footer(metrics_line(ReplyMetrics.from_dict(turn.metrics)))
        self.graph.set_history(self.session.history())
        self._update_controls()
        self.refresh_conversations()

    def restore_settings(self, saved: ConversationSettings) -> None:
        """What the conversation was last sent with: its model (when still in the library), context, template,
        sampling. The next message reloads the model if these differ from the loaded one."""
        server = parse_server_model_path(saved.model_path)
        if server is not None:  # held with a server's model: that server again, connected, that model chosen
            self.model_combo.setCurrentIndex(self.model_combo.count() - 1)
            self.remote_bar.choose(*server)
        index = next((i for i, e in enumerate(self.entries) if str(e.path) == saved.model_path), -1)
        if saved.model_path and index >= 0 and index != self.model_combo.currentIndex():
            self.model_combo.setCurrentIndex(index)
        if saved.n_ctx is not None:
            self.offload.context.setValue(saved.n_ctx)
        template = self.offload.template.findData(saved.template or MODEL_TEMPLATE)
        if template >= 0:
            self.offload.template.setCurrentIndex(template)
        if saved.sampling:
            self.settings.set_sampling(saved.sampling)

    @Slot(int, str)
    def rename_conversation(self, conversation_id: int, title: str) -> None:
        def rename(store: ConversationStore) -> list[Conversation]:
            store.update(conversation_id, title=title)
            return store.list()

        self.store.call("Rename conversation", rename, self._show_conversations)

    @Slot(int)
    def _confirm_delete(self, conversation_id: int) -> None:
        answer = QMessageBox.question(self, "Delete conversation", "Delete this conversation? This cannot be undone.")
        if answer == QMessageBox.StandardButton.Yes:
            self.delete_conversation(conversation_id)

    def delete_conversation(self, conversation_id: int) -> None:
        if conversation_id == self.session.conversation.id:
            self.new_conversation()

        def delete(store: ConversationStore) -> list[Conversation]:
            store.delete(conversation_id)
            return store.list()

        self.store.call("Delete conversation", delete, self._show_conversations)

    @Slot(int)
    def _choose_export(self, conversation_id: int) -> None:
        titles = dict(zip(self.conversations.ids(), self.conversations.titles()))
        suggested = safe_name(titles.get(conversation_id, ""), "conversation")
        path, _ = QFileDialog.getSaveFileName(
            self, "Export conversation", str(Path.home() / f"{suggested}.md"), "Markdown (*.md)"
        )
        if path:
            self.export_conversation(conversation_id, Path(path))

    def export_conversation(self, conversation_id: int, path: Path) -> Job:
        def export(store: ConversationStore) -> Path:
            return store.export_markdown_file(conversation_id, path)

        return self.store.call("Export conversation", export, lambda p: self.set_status(f"Exported to {p}."))
