"""Asks for a Hugging Face access token when the Hub answers 401/403. The token is only handed back to the
caller (who stores it in the OS keyring through a job); it is never shown, logged or kept in the widget."""

from __future__ import annotations

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QLineEdit, QVBoxLayout, QWidget

from desktop.hub import tokens
from desktop.ui.widgets import note_label


class TokenDialog(QDialog):
    def __init__(self, reason: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("hubTokenDialog")
        self.setWindowTitle("Hugging Face token")
        self.setModal(True)
        self.setMinimumWidth(460)

        self.reason = QLabel(reason)
        self.reason.setWordWrap(True)
        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("hf_…")
        self.token.setAccessibleName("Access token")
        self.token.textChanged.connect(self._update_ok)
        settings_page = f"{tokens.endpoint()}/settings/tokens"
        self.hint = note_label(
            f"Create a token with read access at\n{settings_page}\nQuantDesk keeps it in this computer’s keyring."
        )
        self.hint.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Save and retry")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.setSpacing(10)
        layout.addWidget(self.reason)
        layout.addWidget(self.token)
        layout.addWidget(self.hint)
        layout.addWidget(self.buttons)
        self._update_ok()

    @Slot()
    def _update_ok(self) -> None:
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setEnabled(bool(self.token.text().strip()))

    def value(self) -> str:
        return self.token.text().strip()
