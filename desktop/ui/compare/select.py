"""The Compare selection: a base model, its quants in the library (ticked), types to make now, the evaluation
text (bundled, or the user's own but never the calibration text), the context size and how many chunks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from desktop.library import ModelEntry
from desktop.eval.recommend import DEFAULT_TYPES
from desktop.eval.compare import CALIBRATION_REFUSAL, distinct, entry_label, family, is_calibration_text, pick_base
from desktop.ui.widgets import note_label

BUNDLED_TEXT = "eval.txt (bundled)"


class SelectionPanel(QWidget):
    sig_base_changed = Signal(object)
    """The base model changed (a ModelEntry, or None when the library is empty)."""
    sig_changed = Signal()
    """Any choice changed (quants, types to make, text, context)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.entries: list[ModelEntry] = []
        self._text_path: Path | None = None
        self.base_chosen_by_user = False  # else the base follows the library (pick_base) as models are added

        self.base_combo = QComboBox()
        self.base_combo.setToolTip("The F16/BF16 model the quants were made from; KLD and PPL change are against it")
        self.base_combo.currentIndexChanged.connect(self._on_base_index)
        self.base_combo.activated.connect(self._on_base_chosen)
        self.quant_list = QListWidget()
        self.quant_list.setMinimumHeight(70)
        self.quant_list.setMaximumHeight(110)
        self.quant_list.itemChanged.connect(lambda _item: self.sig_changed.emit())
        self.make_boxes: dict[str, QCheckBox] = {}
        make_grid = QGridLayout()
        make_grid.setContentsMargins(0, 0, 0, 0)
        for i, name in enumerate(DEFAULT_TYPES):
            box = QCheckBox(name)
            box.setToolTip(f"Quantize the base to {name} before measuring")
            box.toggled.connect(lambda _on: self.sig_changed.emit())
            self.make_boxes[name] = box
            make_grid.addWidget(box, 0, i)
        self.quant_note = note_label()

        self.text_label = QLabel(BUNDLED_TEXT)
        self.text_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.choose_text_button = QPushButton("Choose text…")
        self.choose_text_button.clicked.connect(self._choose_text)
        self.bundled_button = QPushButton("Use bundled")
        self.bundled_button.clicked.connect(self.use_bundled_text)
        self.bundled_button.setEnabled(False)
        text_row = QHBoxLayout()
        text_row.addWidget(self.text_label, 1)
        text_row.addWidget(self.choose_text_button)
        text_row.addWidget(self.bundled_button)
        self.text_error = note_label()
        self.text_error.setStyleSheet("color: #b91c1c;")
        self.text_error.setVisible(False)

        self.context = QSpinBox()
        self.context.setRange(16, 131072)
        self.context.setSingleStep(128)
        self.context.setValue(512)
        self.context.setSuffix(" tokens")
        self.context.setToolTip("Context of each evaluation chunk, and the context the fit estimate is for")
        self.context.valueChanged.connect(lambda _v: self.sig_changed.emit())
        self.chunks = QSpinBox()
        self.chunks.setRange(0, 10000)
        self.chunks.setSpecialValueText("whole text")
        self.chunks.setToolTip("Score only this many chunks of the text (quicker, less precise)")
        self.chunks.valueChanged.connect(lambda _v: self.sig_changed.emit())
        numbers = QHBoxLayout()
        numbers.addWidget(self.context)
        numbers.addWidget(QLabel("chunks"))
        numbers.addWidget(self.chunks)
        numbers.addStretch(1)

        form = QFormLayout()
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Base model", self.base_combo)
        form.addRow("Quants", self.quant_list)
        form.addRow("", self.quant_note)
        form.addRow("Also make", make_grid)
        form.addRow("Evaluation text", text_row)
        form.addRow("", self.text_error)
        form.addRow("Context", numbers)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(form)

    # ---- library
    def set_models(self, entries: Sequence[ModelEntry]) -> None:
        """The library changed; keep the base the user chose while it is still there, else pick the best one
        again (the F16 made after the first launch becomes the base instead of the bundled Q4_K_M)."""
        current = self.base()
        self.entries = distinct(entries)
        self.base_combo.blockSignals(True)
        self.base_combo.clear()
        for e in self.entries:
            self.base_combo.addItem(entry_label(e, self.entries), str(e.path))
            self.base_combo.setItemData(self.base_combo.count() - 1, str(e.path), Qt.ItemDataRole.ToolTipRole)
        kept = current is not None and self.base_chosen_by_user and any(e.path == current.path for e in self.entries)
        chosen = current if kept else pick_base(self.entries)
        if chosen is not None:
            self.base_combo.setCurrentIndex(self.base_combo.findData(str(chosen.path)))
        self.base_combo.blockSignals(False)
        if chosen is None or current is None or chosen.path != current.path:
            self._on_base_index()
        else:
            self._fill_quants(chosen, keep=True)

    def select_base(self, path: Path | str) -> None:
        self.base_chosen_by_user = True
        self.base_combo.setCurrentIndex(self.base_combo.findData(str(Path(path))))

    @Slot(int)
    def _on_base_chosen(self, _index: int) -> None:
        self.base_chosen_by_user = True

    def base(self) -> ModelEntry | None:
        path = self.base_combo.currentData()
        return next((e for e in self.entries if str(e.path) == path), None)

    @Slot()
    def _on_base_index(self) -> None:
        base = self.base()
        self._fill_quants(base, keep=False)
        self.sig_base_changed.emit(base)

    def _fill_quants(self, base: ModelEntry | None, *, keep: bool) -> None:
        unticked = {str(p) for p in self.all_quants()} - {str(p) for p in self.checked_quants()} if keep else set()
        self.quant_list.blockSignals(True)
        self.quant_list.clear()
        members = family(self.entries, base) if base is not None else []
        for e in members:
            item = QListWidgetItem(entry_label(e, self.entries))
            item.setData(Qt.ItemDataRole.UserRole, str(e.path))
            item.setToolTip(str(e.path))
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            on = str(e.path) not in unticked  # new quants (just made) come ticked
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            self.quant_list.addItem(item)
        self.quant_list.blockSignals(False)
        have = {e.quant_type for e in members}
        for name, box in self.make_boxes.items():
            box.setEnabled(base is not None and name not in have)
            if name in have:
                box.setChecked(False)
                box.setToolTip(f"{name} is in the library already")
        if base is None:
            self.quant_note.setText("Add a model on the Models page first.")
        elif not members:
            self.quant_note.setText(f"No quants of {base.name} in the library yet: tick types to make below.")
        else:
            self.quant_note.setText(f"{len(members)} in the library with the same architecture and parameters.")

    def checked_quants(self) -> list[Path]:
        out = []
        for i in range(self.quant_list.count()):
            item = self.quant_list.item(i)
            if item.checkState() == Qt.CheckState.Checked:
                out.append(Path(item.data(Qt.ItemDataRole.UserRole)))
        return out

    def all_quants(self) -> list[Path]:
        return [Path(self.quant_list.item(i).data(Qt.ItemDataRole.UserRole)) for i in range(self.quant_list.count())]

    def set_quant_checked(self, path: Path | str, on: bool) -> None:
        for i in range(self.quant_list.count()):
            item = self.quant_list.item(i)
            if item.data(Qt.ItemDataRole.UserRole) == str(Path(path)):
                item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)

    def types_to_make(self) -> list[str]:
        return [name for name, box in self.make_boxes.items() if box.isChecked() and box.isEnabled()]

    # ---- text
    def text_path(self) -> Path | None:
        """The user's evaluation text, or None for the bundled one."""
        return self._text_path

    def text_name(self) -> str:
        return self._text_path.name if self._text_path is not None else BUNDLED_TEXT

    def set_text_path(self, path: Path | str) -> bool:
        """Use ``path`` as the evaluation text; refuses the calibration text with a sentence (False)."""
        p = Path(path)
        if is_calibration_text(p, read=False):  # a copy is refused by the job, which reads it
            self.text_error.setText(CALIBRATION_REFUSAL)
            self.text_error.setVisible(True)
            return False
        self.text_error.setVisible(False)
        self._text_path = p
        self.text_label.setText(p.name)
        self.text_label.setToolTip(str(p))
        self.bundled_button.setEnabled(True)
        self.sig_changed.emit()
        return True

    @Slot()
    def use_bundled_text(self) -> None:
        self._text_path = None
        self.text_label.setText(BUNDLED_TEXT)
        self.text_label.setToolTip("")
        self.text_error.setVisible(False)
        self.bundled_button.setEnabled(False)
        self.sig_changed.emit()

    @Slot()
    def _choose_text(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Choose an evaluation text", str(Path.home()),
                                              "Text files (*.txt *.md);;All files (*)")
        if name:
            self.set_text_path(name)
