"""The source picker: the library's GGUFs and the Hugging Face checkpoints in the local cache in one combo, plus
"Choose GGUF…" and "Choose Hugging Face folder…"; for a checkpoint, the type it is converted to first."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QDir, Qt, Signal, Slot
from PySide6.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from desktop.errors import UserError
from desktop.library import ModelEntry
from desktop.quant.pipeline import CONVERT_TYPES, GGUF, Source, source_for_path
from desktop.ui.widgets import note_label

NONE_TEXT = "Choose a model to quantize…"


class SourcePicker(QWidget):
    sig_source_changed = Signal(object)
    """The chosen :class:`Source`, or None."""
    sig_convert_type_changed = Signal(str)
    """The type a checkpoint is converted to first ("F16", "BF16", "F32" or "Q8_0")."""
    sig_refused = Signal(str)
    """A chosen path cannot be a source: the sentence why."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._library: list[Source] = []
        self._checkpoints: list[Source] = []
        self._extra: list[Source] = []  # chosen with a button, kept in the list
        self.combo = QComboBox()
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setMinimumContentsLength(24)  # long model names must not widen the page
        self.combo.currentIndexChanged.connect(self._on_index)
        self.gguf_button = QPushButton("Choose GGUF…")
        self.gguf_button.clicked.connect(self.choose_gguf)
        self.folder_button = QPushButton("Choose Hugging Face folder…")
        self.folder_button.setToolTip("A folder with config.json, *.safetensors weights and the tokenizer "
                                      "(a downloaded checkpoint); it is converted to GGUF first")
        self.folder_button.clicked.connect(self.choose_folder)
        self.convert_label = QLabel("Convert to:")
        self.convert_type = QComboBox()
        self.convert_type.addItems(list(CONVERT_TYPES))
        self.convert_type.setToolTip("The checkpoint is converted to this GGUF type first (F16 is the usual base; "
                                     "BF16 keeps the range of bf16-trained models)")
        self.convert_type.currentTextChanged.connect(self.sig_convert_type_changed)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.combo, 1)
        row.addWidget(self.convert_label)
        row.addWidget(self.convert_type)
        row.addWidget(self.gguf_button)
        row.addWidget(self.folder_button)
        self.summary = note_label("Pick a GGUF from the library, a GGUF file, or a Hugging Face checkpoint folder.")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addLayout(row)
        layout.addWidget(self.summary)
        self._rebuild(None)

    def current(self) -> Source | None:
        data = self.combo.currentData()
        return data if isinstance(data, Source) else None

    def convert_to(self) -> str:
        return self.convert_type.currentText()

    # ---- filling the list
    @Slot(list)
    def set_models(self, entries: list[ModelEntry]) -> None:
        """The library's entries (from the Models page): its existing GGUF files become choices."""
        self._library = [Source(e.path, GGUF, f"{e.name} · {e.quant_type} · {e.path.name}")
                         for e in entries if e.exists]
        self._rebuild(self.current())

    @Slot(object)
    def set_checkpoints(self, sources: list[Source]) -> None:
        self._checkpoints = list(sources)
        self._rebuild(self.current())

    def select(self, source: Source) -> None:
        """Make ``source`` the current choice, adding it to the list if it is not there."""
        if self._index_of(source.path) < 0:
            self._extra.append(source)
            self._rebuild(None)
        self.combo.setCurrentIndex(self._index_of(source.path))

    def select_path(self, path: Path | str) -> None:
        try:
            self.select(source_for_path(path))
        except UserError as exc:
            self.sig_refused.emit(str(exc))

    def _index_of(self, path: Path) -> int:
        for i in range(self.combo.count()):
            data = self.combo.itemData(i)
            if isinstance(data, Source) and data.path == Path(path):
                return i
        return -1

    def _rebuild(self, keep: Source | None) -> None:
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItem(NONE_TEXT, None)
        seen: set[Path] = set()
        for source in [*self._library, *self._checkpoints, *self._extra]:
            if source.path not in seen:
                seen.add(source.path)
                self.combo.addItem(source.display(), source)
                self.combo.setItemData(self.combo.count() - 1, str(source.path), Qt.ItemDataRole.ToolTipRole)
        index = self._index_of(keep.path) if keep is not None else -1
        self.combo.setCurrentIndex(max(0, index))
        self.combo.blockSignals(False)
        self._show_convert()
        if keep is not None and index < 0:
            self.sig_source_changed.emit(None)

    # ---- choosing
    @Slot()
    def choose_gguf(self) -> None:
        name, _ = QFileDialog.getOpenFileName(self, "Choose a GGUF to quantize", str(Path.home()), "GGUF models (*.gguf)")
        if name:
            self.select_path(name)

    def folder_dialog(self) -> QFileDialog:
        """The folder chooser: it opens in the Hugging Face cache (where downloads are) and shows hidden folders,
        since the cache itself lives in one (~/.cache)."""
        from desktop.hub.repo import default_cache_dir

        start = Path(default_cache_dir())
        while not start.is_dir() and start != start.parent:
            start = start.parent
        dialog = QFileDialog(self, "Choose a Hugging Face model folder", str(start))
        dialog.setFileMode(QFileDialog.FileMode.Directory)
        dialog.setOption(QFileDialog.Option.ShowDirsOnly, True)
        dialog.setOption(QFileDialog.Option.DontUseNativeDialog, True)  # native dialogs ignore the hidden filter
        dialog.setFilter(dialog.filter() | QDir.Filter.Hidden)
        return dialog

    @Slot()
    def choose_folder(self) -> None:
        dialog = self.folder_dialog()
        if dialog.exec() and dialog.selectedFiles():
            self.select_path(dialog.selectedFiles()[0])

    @Slot(int)
    def _on_index(self, _index: int) -> None:
        self._show_convert()
        self.sig_source_changed.emit(self.current())

    def _show_convert(self) -> None:
        source = self.current()
        checkpoint = source is not None and source.is_checkpoint
        self.convert_label.setVisible(checkpoint)
        self.convert_type.setVisible(checkpoint)
