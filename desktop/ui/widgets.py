"""Small widgets shared by the pages."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QSplitter,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)


class Card(QFrame):
    """A titled panel, the building block of every page."""

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("card")
        self.setFrameShape(QFrame.Shape.StyledPanel)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(14, 12, 14, 12)
        outer.setSpacing(8)
        self.title_label = section_title(title)
        outer.addWidget(self.title_label)
        self.body = QVBoxLayout()
        self.body.setSpacing(6)
        outer.addLayout(self.body)
        outer.addStretch(1)  # keep the content at the top when a grid row makes the card taller

    def stretch_body(self) -> None:
        """Let the body take the card's height instead (for a table, a log or a chart that should grow)."""
        layout = self.layout()
        layout.setStretch(1, 1)
        layout.setStretch(2, 0)


class KeyValueGrid(QWidget):
    """Two aligned columns of "label: value" rows whose values can be updated in place."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._grid = QGridLayout(self)
        self._grid.setContentsMargins(0, 0, 0, 0)
        self._grid.setHorizontalSpacing(16)
        self._grid.setVerticalSpacing(4)
        self._grid.setColumnStretch(1, 1)
        self._values: dict[str, QLabel] = {}

    def set_row(self, key: str, value: str) -> None:
        label = self._values.get(key)
        if label is None:
            row = len(self._values)
            name = QLabel(key)
            name.setObjectName("keyLabel")
            name.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
            label = QLabel()
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            self._grid.addWidget(name, row, 0)
            self._grid.addWidget(label, row, 1)
            self._values[key] = label
        label.setText(value)

    def value(self, key: str) -> str:
        return self._values[key].text()

    def clear(self) -> None:
        while self._grid.count():
            item = self._grid.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        self._values.clear()


class UsageBar(QWidget):
    """A labelled bar: "RAM  12.1 GB of 24.0 GB" over a progress bar."""

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QGridLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.title = QLabel(title)
        self.title.setObjectName("keyLabel")
        self.text = QLabel("–")
        self.text.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(False)
        self.bar.setFixedHeight(8)
        layout.addWidget(self.title, 0, 0)
        layout.addWidget(self.text, 0, 1)
        layout.addWidget(self.bar, 1, 0, 1, 2)

    def set_value(self, fraction: float, text: str) -> None:
        self.bar.setValue(int(max(0.0, min(1.0, fraction)) * 1000))
        self.text.setText(text)


def section_title(text: str) -> QLabel:
    """A card's title, or the title of a section inside a card."""
    label = QLabel(text)
    label.setObjectName("cardTitle")
    return label


def note_label(text: str = "") -> QLabel:
    """A word-wrapped note in the muted style."""
    label = QLabel(text)
    label.setObjectName("note")
    label.setWordWrap(True)
    return label


def read_only_table(columns: list[str], stretch_column: int = 0) -> QTableWidget:
    """A table of rows the user selects but never edits: one column stretches, the others fit their contents."""
    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(columns)
    table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.verticalHeader().setVisible(False)
    table.setAlternatingRowColors(True)
    header = table.horizontalHeader()
    for col in range(len(columns)):
        header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
    header.setSectionResizeMode(stretch_column, QHeaderView.ResizeMode.Stretch)
    return table


def splitter(orientation: Qt.Orientation, *panes: QWidget, stretch: tuple[int, ...] = (),
             sizes: tuple[int, ...] = (), collapsible: bool = False) -> QSplitter:
    """Panes side by side (or stacked) that the user resizes (and collapses by dragging, if ``collapsible``):
    ``stretch`` is each pane's share of extra room, ``sizes`` the starting sizes in pixels."""
    split = QSplitter(orientation)
    for pane in panes:
        split.addWidget(pane)
    for index, factor in enumerate(stretch):
        split.setStretchFactor(index, factor)
    if sizes:
        split.setSizes(list(sizes))
    split.setChildrenCollapsible(collapsible)
    return split


def labelled_row(label: str, *widgets: QWidget, stretch: QWidget | None = None) -> QHBoxLayout:
    """A row without margins: ``label`` then ``widgets``; ``stretch`` (one of them) takes the spare room, else
    the room is left empty at the end."""
    row = QHBoxLayout()
    row.setContentsMargins(0, 0, 0, 0)
    row.addWidget(QLabel(label))
    for widget in widgets:
        row.addWidget(widget, 1 if widget is stretch else 0)
    if stretch is None:
        row.addStretch(1)
    return row


def choice_combo(choices: Iterable[tuple[str, Any]], tip: str = "") -> QComboBox:
    """A combo box of (text shown, value) choices; ``currentData()`` is the chosen value."""
    combo = QComboBox()
    for text, value in choices:
        combo.addItem(text, value)
    combo.setToolTip(tip)
    return combo
