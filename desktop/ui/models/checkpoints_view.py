"""Hugging Face checkpoint folders on this computer (cached snapshots and imported folders): what they are, and
that the Quantize page turns them into GGUF."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QUrl, Signal, Slot
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop.jobs import JobError
from desktop.library import CheckpointEntry, Library
from desktop.ui.models.columns import model_cells
from desktop.ui.widgets import note_label, read_only_table
from desktop.workers import Job, JobManager

COLUMNS = ["Checkpoint", "Architecture", "Parameters", "Weights", "Context", "Size", "Source"]


NOTHING_DROPPED = "Nothing to add: drop GGUF files or Hugging Face model folders here."


def add_folders_job(folders: list[Path], *, folders_only: bool = False) -> Job:
    """Check each folder as the converter would and list it; ``folders_only``: what was dropped, so paths that are
    not folders are passed over (the window's thread does not ask the disk which they are)."""
    def add(progress, cancelled):  # type: ignore[no-untyped-def]
        library = Library()
        added = 0
        for i, folder in enumerate(folders):
            progress(i, len(folders), f"Checking {folder.name}")
            if folders_only and not folder.is_dir():
                continue
            library.add_checkpoint(folder)
            added += 1
        return added

    n, s = len(folders), "s" if len(folders) != 1 else ""
    return Job(f"Look for checkpoint folders in {n} dropped item{s}" if folders_only else
               f"Add {n} checkpoint folder{s}", add)


class CheckpointsView(QWidget):
    sig_changed = Signal()
    """A folder was added or forgotten; the library should be read again."""

    def __init__(self, jobs: JobManager, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._jobs = jobs
        self.entries: list[CheckpointEntry] = []
        title = QLabel("Hugging Face checkpoints")
        title.setObjectName("cardTitle")
        self.status = note_label("Safetensors models from the Hugging Face cache or imported folders.")
        self.add_button = QPushButton("Add folder…")
        self.add_button.setToolTip("Add a Hugging Face model folder (config.json, tokenizer, safetensors)")
        self.add_button.clicked.connect(self.choose_folder)
        self.reveal_button = QPushButton("Show in folder")
        self.reveal_button.clicked.connect(self.reveal_selected)
        self.forget_button = QPushButton("Forget")
        self.forget_button.setToolTip("Take it off this list; the folder itself is not deleted")
        self.forget_button.clicked.connect(self.forget_selected)
        header = QHBoxLayout()
        header.addWidget(title, 1)
        header.addWidget(self.reveal_button)
        header.addWidget(self.forget_button)
        header.addWidget(self.add_button)

        self.table = read_only_table(COLUMNS)
        self.table.setMaximumHeight(150)
        self.table.itemSelectionChanged.connect(self._update_buttons)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 8, 0, 0)
        layout.addLayout(header)
        layout.addWidget(self.status)
        layout.addWidget(self.table)
        self._update_buttons()

    def show_entries(self, entries: list[CheckpointEntry], skipped: list[str]) -> None:
        self.entries = entries
        self.table.setRowCount(len(entries))
        for row, entry in enumerate(entries):
            for col, value in enumerate([*model_cells(entry, entry.dtype), entry.source]):
                item = QTableWidgetItem(value)
                item.setToolTip(f"{entry.path}\nConvert and quantize it on the Quantize page.")
                self.table.setItem(row, col, item)
        text = (
            f"{len(entries)} on this computer; the Quantize page converts them to GGUF."
            if entries
            else "None yet: download one on the Hugging Face tab, or add a model folder."
        )
        if skipped:
            text += f" Not listed: {'; '.join(skipped)}"
        self.table.setVisible(bool(entries))  # an empty table would only take room from the GGUF list
        self.status.setText(text)
        self._update_buttons()

    def selected(self) -> CheckpointEntry | None:
        rows = self.table.selectionModel().selectedRows()
        return self.entries[rows[0].row()] if rows else None

    @Slot()
    def _update_buttons(self) -> None:
        has = self.selected() is not None
        self.reveal_button.setEnabled(has)
        self.forget_button.setEnabled(has)

    @Slot()
    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a Hugging Face model folder", str(Path.home()))
        if folder:
            self.add_folders([Path(folder)])

    def add_folders(self, folders: list[Path], *, dropped: bool = False, with_models: bool = False) -> Job:
        """Add checkpoint folders (in a job). ``dropped``: paths dropped on the page, of which only the folders
        count; when none is one and no GGUF came with them (``with_models``), the drop gets a sentence."""
        job = add_folders_job(folders, folders_only=dropped)
        say_if_none = dropped and not with_models
        job.sig_result.connect(lambda added: self.sig_changed.emit() if added else self._on_nothing_added(say_if_none))
        job.sig_error.connect(self._on_error)
        self._jobs.start(job)
        return job

    @Slot(object)
    def _on_error(self, error: JobError) -> None:
        self.status.setText(error.sentence())

    def _on_nothing_added(self, say: bool) -> None:
        if say:
            self.status.setText(NOTHING_DROPPED)

    @Slot()
    def reveal_selected(self) -> None:
        entry = self.selected()
        if entry is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(entry.path)))

    @Slot()
    def forget_selected(self) -> None:
        entry = self.selected()
        if entry is None:
            return
        job = Job(
            f"Forget {entry.name}",
            lambda progress, cancelled: Library().remove_checkpoint(entry.id),
            visible=False,
        )
        job.sig_finished.connect(self.sig_changed)
        self._jobs.start(job)
