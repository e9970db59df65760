"""The table of target types: a checkbox per type, its bits per weight, the predicted size for this source and
a one-line description. Types that need an importance matrix stay disabled until a calibration text is chosen."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem, QWidget

from desktop.jobs import format_bytes
from desktop.quant.sizing import bits_per_weight
from desktop.quant.types import IMATRIX_REASON, QUANT_TYPES, QuantType

CHECK, NAME, BPW, SIZE, DESCRIPTION = range(5)
HEADERS = ["", "Type", "Bits/weight", "Predicted size", "What it is"]
DEFAULT_CHECKED = ("Q4_K_M",)


class TypeTable(QTableWidget):
    sig_selection_changed = Signal()
    """The set of ticked types changed."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(len(QUANT_TYPES), len(HEADERS), parent)
        self.types: list[QuantType] = list(QUANT_TYPES)
        self._imatrix_available = False
        self.setHorizontalHeaderLabels(HEADERS)
        self.verticalHeader().setVisible(False)
        self.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAlternatingRowColors(True)
        self.setWordWrap(False)
        header = self.horizontalHeader()
        for col in (CHECK, NAME, BPW, SIZE):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(DESCRIPTION, QHeaderView.ResizeMode.Stretch)
        self.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 10)
        for row, quant in enumerate(self.types):
            check = QTableWidgetItem()
            check.setFlags(Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEnabled)
            check.setCheckState(Qt.CheckState.Checked if quant.name in DEFAULT_CHECKED else Qt.CheckState.Unchecked)
            self.setItem(row, CHECK, check)
            self.setItem(row, NAME, QTableWidgetItem(quant.name))
            bpw = QTableWidgetItem(f"{quant.bpw:.2f}")
            bpw.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.setItem(row, BPW, bpw)
            size = QTableWidgetItem("–")
            size.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.setItem(row, SIZE, size)
            self.setItem(row, DESCRIPTION, QTableWidgetItem(quant.description))
        self.itemChanged.connect(self._on_item_changed)
        self.cellClicked.connect(self._toggle_row)
        self.set_imatrix_available(False)

    # ---- state
    def row_of(self, name: str) -> int:
        return next(i for i, q in enumerate(self.types) if q.name == name)

    def is_checked(self, name: str) -> bool:
        return self.item(self.row_of(name), CHECK).checkState() == Qt.CheckState.Checked

    def set_checked(self, name: str, checked: bool) -> None:
        self.item(self.row_of(name), CHECK).setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)

    def is_enabled(self, name: str) -> bool:
        return bool(self.item(self.row_of(name), CHECK).flags() & Qt.ItemFlag.ItemIsEnabled)

    def checked_types(self) -> list[str]:
        """The ticked types that can run now, in table order (largest first)."""
        return [q.name for q in self.types if self.is_checked(q.name) and self.is_enabled(q.name)]

    def size_text(self, name: str) -> str:
        return self.item(self.row_of(name), SIZE).text()

    # ---- updates
    def set_imatrix_available(self, available: bool) -> None:
        """Enable the types that need an importance matrix only when one will be computed."""
        self._imatrix_available = available
        self.blockSignals(True)
        for row, quant in enumerate(self.types):
            enabled = available or not quant.needs_imatrix
            tip = "" if enabled else f"{quant.name}: {IMATRIX_REASON}"
            for col in range(self.columnCount()):
                item = self.item(row, col)
                flags = item.flags()
                item.setFlags(flags | Qt.ItemFlag.ItemIsEnabled if enabled else flags & ~Qt.ItemFlag.ItemIsEnabled)
                item.setToolTip(tip or (quant.description if col == DESCRIPTION else ""))
            if not enabled:
                self.item(row, SIZE).setToolTip(tip)
        self.blockSignals(False)
        self.viewport().update()
        self.sig_selection_changed.emit()

    def set_sizes(self, sizes: dict[str, int | str] | None, parameters: int = 0) -> None:
        """Predicted bytes per type (a sentence where none could be made); None clears them. With the source's
        ``parameters`` the Bits/weight column shows what each predicted file comes to (as Compare shows it for
        the file once made) instead of the type's nominal figure."""
        self.blockSignals(True)
        for row, quant in enumerate(self.types):
            item = self.item(row, SIZE)
            value = None if sizes is None else sizes.get(quant.name)
            bpw = bits_per_weight(value, parameters) if isinstance(value, int) else None
            self.item(row, BPW).setText(f"{bpw if bpw is not None else quant.bpw:.2f}")
            self.item(row, BPW).setToolTip(
                f"This source at {quant.name}: predicted size × 8 / parameters (typical on an 8B model: "
                f"{quant.bpw:.2f})" if bpw is not None else f"Typical on an 8B model; this source's comes with "
                "its predicted size")
            if isinstance(value, int):
                item.setText(format_bytes(value))
                if self.is_enabled(quant.name):
                    item.setToolTip(f"{quant.name} of this source: about {value:,} bytes")
            else:
                item.setText("–" if value is None else "n/a")
                if isinstance(value, str):
                    item.setToolTip(value)
        self.blockSignals(False)

    def set_sizes_pending(self) -> None:
        self.blockSignals(True)
        for row in range(self.rowCount()):
            self.item(row, SIZE).setText("…")
        self.blockSignals(False)

    @Slot(QTableWidgetItem)
    def _on_item_changed(self, item: QTableWidgetItem) -> None:
        if item.column() == CHECK:
            self.sig_selection_changed.emit()

    @Slot(int, int)
    def _toggle_row(self, row: int, column: int) -> None:
        """A click anywhere on a row ticks it (the checkbox itself toggles on its own)."""
        if column == CHECK:
            return
        item = self.item(row, CHECK)
        if item.flags() & Qt.ItemFlag.ItemIsEnabled:
            item.setCheckState(Qt.CheckState.Unchecked if item.checkState() == Qt.CheckState.Checked
                               else Qt.CheckState.Checked)
