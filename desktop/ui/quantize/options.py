"""Calibration text (for an importance matrix), the advanced options in a collapsible group, and the output
folder. Reading the widgets gives a :class:`~desktop.quant.quantize.QuantizeOptions`; nothing here touches files."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop.quant.imatrix import default_calibration_text
from desktop.quant.types import GGML_TYPE_SIZES
from desktop.quant.quantize import REQUANTIZE_WARNING, QuantizeOptions
from desktop.quant.pipeline import parse_overrides
from desktop.ui.widgets import choice_combo, labelled_row, note_label

# Tensor types offered for the output and embedding tensors (the sensible ones; overrides accept any).
TENSOR_TYPES = ["F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K", "Q4_K", "Q5_0", "Q4_0", "IQ4_NL", "IQ4_XS", "Q3_K", "Q2_K"]
DEFAULT = "Default for the type"
assert all(t in GGML_TYPE_SIZES for t in TENSOR_TYPES)


class CalibrationPanel(QWidget):
    """"Use the bundled sample" or "Choose text…": with a text, an importance matrix is computed first."""

    sig_changed = Signal()
    """The calibration text was chosen or cleared."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._chosen: Path | None = None
        self.bundled = QCheckBox("Use the bundled sample")
        self.bundled.setToolTip(f"A general-purpose English sample shipped with QuantDesk ({default_calibration_text().name})")
        self.bundled.toggled.connect(self._on_bundled)
        self.choose_button = QPushButton("Choose text…")
        self.choose_button.clicked.connect(self.choose_text)
        self.clear_button = QPushButton("Clear")
        self.clear_button.clicked.connect(self.clear)
        self.chunks = QSpinBox()
        self.chunks.setRange(0, 10_000)
        self.chunks.setSpecialValueText("all")
        self.chunks.setToolTip("How much of the text to use, in chunks of 512 tokens (“all” uses the whole text); "
                               "fewer chunks are faster and a little less precise")
        row = labelled_row("Calibration text:", self.bundled, self.choose_button, self.clear_button)
        self.status = note_label()
        second = QHBoxLayout()
        second.setContentsMargins(0, 0, 0, 0)
        second.addWidget(self.status, 1)
        second.addWidget(QLabel("Chunks:"), 0, Qt.AlignmentFlag.AlignTop)
        second.addWidget(self.chunks, 0, Qt.AlignmentFlag.AlignTop)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addLayout(row)
        layout.addLayout(second)
        self._update()

    def text_path(self) -> Path | None:
        if self._chosen is not None:
            return self._chosen
        return default_calibration_text() if self.bundled.isChecked() else None

    def max_chunks(self) -> int | None:
        return self.chunks.value() or None

    def set_text(self, path: Path | None) -> None:
        self._chosen = Path(path) if path else None
        if self._chosen is not None:
            self.bundled.blockSignals(True)
            self.bundled.setChecked(False)
            self.bundled.blockSignals(False)
        self._update()
        self.sig_changed.emit()

    @Slot()
    def choose_text(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Choose a calibration text", str(Path.home()),
                                              "Text files (*.txt *.md);;All files (*)")
        if name:
            self.set_text(Path(name))

    @Slot()
    def clear(self) -> None:
        self.bundled.setChecked(False)
        self.set_text(None)

    @Slot(bool)
    def _on_bundled(self, checked: bool) -> None:
        if checked:
            self._chosen = None
        self._update()
        self.sig_changed.emit()

    def _update(self) -> None:
        path = self.text_path()
        self.clear_button.setEnabled(path is not None)
        self.chunks.setEnabled(path is not None)
        if path is None:
            self.status.setText("Without a calibration text the types that need an importance matrix (IQ1_*, IQ2_*, "
                                "IQ3_XXS, IQ3_XS, Q2_K_S) are off: llama.cpp refuses to make them without one, "
                                "because the result would be garbage.")
        elif self._chosen is not None:
            self.status.setText(f"An importance matrix is computed from {path.name} first and used for every type.")
        else:
            self.status.setText("An importance matrix is computed from the bundled sample first and used for every "
                                "type; the low-bit types are available.")


class AdvancedOptions(QWidget):
    """A collapsible group: output tensor type, embedding type, overrides, pure, allow requantize."""

    sig_changed = Signal()
    """An option that changes the predicted sizes (or the warning) changed."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.toggle = QToolButton()
        self.toggle.setText("Advanced options")
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.toggle.setAutoRaise(True)
        self.toggle.toggled.connect(self.set_expanded)
        self.body = QWidget()
        form = QFormLayout(self.body)
        form.setContentsMargins(18, 0, 0, 0)
        self.output_type = self._type_combo("The type of output.weight (the last layer); keeping it higher "
                                            "(Q8_0, F16) costs little and helps quality")
        self.embedding_type = self._type_combo("The type of token_embd.weight (the embeddings); large in small "
                                               "models, so a higher type costs more here")
        self.overrides = QPlainTextEdit()
        self.overrides.setPlaceholderText("regex=type, one per line, e.g.\nffn_down=Q6_K\nblk\\.0\\.attn_v=Q8_0")
        self.overrides.setFixedHeight(self.fontMetrics().lineSpacing() * 3 + 14)
        self.overrides.textChanged.connect(self.sig_changed)
        self.pure = QCheckBox("Pure: every tensor gets the type's main format (no per-layer mix)")
        self.pure.toggled.connect(self.sig_changed)
        self.requantize = QCheckBox("Allow requantize (the source is already quantized)")
        self.requantize.toggled.connect(self._on_requantize)
        self.requantize_warning = note_label(REQUANTIZE_WARNING)
        self.requantize_warning.setObjectName("warning")
        self.requantize_warning.setStyleSheet("color: #b45309;")
        self.requantize_warning.setVisible(False)
        form.addRow("Output tensor:", self.output_type)
        form.addRow("Token embeddings:", self.embedding_type)
        form.addRow("Overrides:", self.overrides)
        form.addRow("", self.pure)
        form.addRow("", self.requantize)
        form.addRow("", self.requantize_warning)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.toggle)
        layout.addWidget(self.body)
        self.set_expanded(False)

    def _type_combo(self, tip: str) -> QComboBox:
        combo = choice_combo([(DEFAULT, None), *((name, name) for name in TENSOR_TYPES)], tip)
        combo.currentIndexChanged.connect(self.sig_changed)
        return combo

    @Slot(bool)
    def set_expanded(self, expanded: bool) -> None:
        self.toggle.blockSignals(True)
        self.toggle.setChecked(expanded)
        self.toggle.blockSignals(False)
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        self.body.setVisible(expanded)

    @Slot(bool)
    def _on_requantize(self, checked: bool) -> None:
        self.requantize_warning.setVisible(checked)
        self.sig_changed.emit()

    def options(self) -> QuantizeOptions:
        """The options as set (raises UserError for an override line that is not regex=type)."""
        return QuantizeOptions(
            output_type=self.output_type.currentData(),
            embedding_type=self.embedding_type.currentData(),
            overrides=parse_overrides(self.overrides.toPlainText()),
            pure=self.pure.isChecked(),
            allow_requantize=self.requantize.isChecked(),
        )


class OutputFolder(QWidget):
    def __init__(self, folder: Path | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.edit = QLineEdit("" if folder is None else str(folder))
        self.edit.setToolTip("Where the GGUF files (and a converted checkpoint, and the importance matrix) are written")
        self.button = QPushButton("Choose…")
        self.button.clicked.connect(self.choose)
        self.setLayout(labelled_row("Output folder:", self.edit, self.button, stretch=self.edit))

    def folder(self) -> Path:
        return Path(self.edit.text().strip()).expanduser()

    @Slot()
    def choose(self) -> None:
        name = QFileDialog.getExistingDirectory(self, "Output folder", self.edit.text())
        if name:
            self.edit.setText(name)
