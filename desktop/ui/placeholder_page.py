"""A page whose feature has not landed yet: it says what will be here, plainly."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from desktop.ui.widgets import Card, note_label


class PlaceholderPage(QWidget):
    def __init__(self, title: str, summary: str, points: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 16)
        heading = QLabel(title)
        heading.setObjectName("pageTitle")
        layout.addWidget(heading)
        card = Card("Coming soon")
        card.body.addWidget(note_label(summary))
        for point in points:
            label = QLabel(f"•  {point}")
            label.setWordWrap(True)
            card.body.addWidget(label)
        layout.addWidget(card)
        layout.addStretch(1)
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
