"""Models: the local library (GGUF files QuantDesk made, downloaded or imported) with a details pane, and a
Hugging Face tab to search, inspect, check the fit of and download models (:mod:`desktop.ui.models.hub_panel`)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from PySide6.QtCore import QUrl, Qt, Signal, Slot
from PySide6.QtGui import QDesktopServices, QDragEnterEvent, QDropEvent, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QTabWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from desktop.errors import UserError
from desktop.gguf.reader import format_parameters
from desktop.jobs import JobError, format_bytes
from desktop.library import CheckpointEntry, Library, ModelEntry, in_models_folder
from desktop.ui.models.checkpoints_view import CheckpointsView
from desktop.ui.models.columns import model_cells
from desktop.ui.models.hub_panel import HubPanel
from desktop.ui.page import Page
from desktop.ui.widgets import Card, KeyValueGrid, note_label, read_only_table, splitter
from desktop.workers import Job, JobManager, LibraryWatcher

LIBRARY_TAB, HUB_TAB = 0, 1
COLUMNS = ["Name", "Architecture", "Parameters", "Type", "Context", "Size"]


Loaded = tuple[list[ModelEntry], list[CheckpointEntry], list[str], Path | None]


def _load_library(progress, cancelled) -> Loaded:  # type: ignore[no-untyped-def]
    """The library, and the models folder (settings are read and the folder made here, not on the GUI thread)."""
    from desktop import settings

    library = Library()
    skipped = library.sync_hf_cache()  # cached snapshots are listed offline, without a request
    try:
        models_dir: Path | None = settings.models_dir()
    except (OSError, UserError):  # the chosen folder's drive is gone: the library still shows, and a delete asks twice
        models_dir = None
    return library.models(), library.checkpoints(), skipped, models_dir


class ModelsPage(Page):
    sig_models_changed = Signal(list)
    """The library's entries after every reload (a list of :class:`ModelEntry`)."""

    def __init__(self, jobs: JobManager, parent: QWidget | None = None) -> None:
        super().__init__("Models", start=None, scroll=False, parent=parent)  # the Hub tab scrolls on its own
        self._jobs = jobs
        self.entries: list[ModelEntry] = []
        self.models_dir: Path | None = None  # read with the library; None: not yet (a delete then asks twice)
        self._select_after_reload: Path | None = None
        self.setAcceptDrops(True)

        self.status.setText("Loading the library…")
        self.add_button = QPushButton("Add GGUF…")
        self.add_button.setToolTip("Add GGUF files from disk to the library (Ctrl+O); you can also drop them here")
        self.add_button.clicked.connect(self.choose_files)
        QShortcut(QKeySequence.StandardKey.Open, self, self.choose_files)
        library_header = QHBoxLayout()
        library_header.addStretch(1)
        library_header.addWidget(self.add_button)

        self.table = read_only_table(COLUMNS)
        self.table.setSortingEnabled(True)
        self.table.itemSelectionChanged.connect(self._show_selected)

        self.details = Card("Details")
        self.details_grid = KeyValueGrid()
        self.details_empty = note_label("Select a model to see its details.")
        self.details.body.addWidget(self.details_empty)
        self.details.body.addWidget(self.details_grid)
        buttons = QHBoxLayout()
        self.reveal_button = QPushButton("Show in folder")
        self.reveal_button.clicked.connect(self.reveal_selected)
        self.remove_button = QPushButton("Remove…")
        self.remove_button.setToolTip("Remove from the library, optionally deleting the file (Delete)")
        self.remove_button.clicked.connect(self.remove_selected)
        QShortcut(QKeySequence.StandardKey.Delete, self.table, self.remove_selected)
        buttons.addWidget(self.reveal_button)
        buttons.addWidget(self.remove_button)
        buttons.addStretch(1)
        self.details.body.addLayout(buttons)
        self.details.body.addStretch(1)

        panes = splitter(Qt.Orientation.Horizontal, self.table, self.details, stretch=(3, 2), collapsible=True)

        library = QWidget()
        library_layout = QVBoxLayout(library)
        library_layout.setContentsMargins(0, 8, 0, 0)
        library_layout.addLayout(library_header)
        library_layout.addWidget(panes, 1)
        self.checkpoints = CheckpointsView(jobs)
        self.checkpoints.sig_changed.connect(self.reload)
        library_layout.addWidget(self.checkpoints)

        self.hub_panel = HubPanel(jobs)
        self.hub_panel.sig_model_added.connect(self.show_added_model)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(library, "On this computer")
        hub_scroll = QScrollArea()  # a small window scrolls instead of squeezing the panel
        hub_scroll.setWidget(self.hub_panel)
        hub_scroll.setWidgetResizable(True)
        hub_scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        self.tabs.addTab(hub_scroll, "Hugging Face")

        self.body.addWidget(self.tabs, 1)
        self._show_selected()
        self.library_watch = LibraryWatcher(self)  # a download, a quant, an import anywhere: show it
        self.library_watch.sig_changed.connect(self.reload)

    # ---- library
    @Slot()
    def reload(self) -> None:
        job = Job("Read library", _load_library, visible=False)
        job.sig_result.connect(self._show_library)
        job.sig_error.connect(self._on_error)
        self._jobs.start(job)

    @Slot(object)
    def show_added_model(self, path: Path) -> None:
        """A model was downloaded into the library: show the library with it selected."""
        self._select_after_reload = Path(path)
        self.tabs.setCurrentIndex(LIBRARY_TAB)
        self.reload()

    @Slot(object)
    def _show_library(self, loaded: Loaded) -> None:
        models, checkpoints, skipped, self.models_dir = loaded
        self.checkpoints.show_entries(checkpoints, skipped)
        self.show_entries(models)

    @Slot(object)
    def show_entries(self, entries: list[ModelEntry]) -> None:
        selected = self.selected_entry()
        if self._select_after_reload is not None:
            selected_path: Path | None = self._select_after_reload
            self._select_after_reload = None
        else:
            selected_path = selected.path if selected is not None else None
        self.entries = entries
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(entries))
        for row, entry in enumerate(entries):
            for col, value in enumerate(model_cells(entry, entry.quant_type)):
                item = _SortItem(value, sort_key=_sort_key(entry, col))
                item.setData(Qt.ItemDataRole.UserRole, entry.id)
                if not entry.exists:
                    item.setToolTip("The file is missing from disk.")
                self.table.setItem(row, col, item)
        self.table.setSortingEnabled(True)
        count = len(entries)
        self.status.setText(
            f"{count} model{'s' if count != 1 else ''} on this computer."
            if count
            else "No models yet: add GGUF files with “Add GGUF…” or drop them on this page."
        )
        if selected_path is not None:
            self.select_path(selected_path)
        self._show_selected()
        self.sig_models_changed.emit(entries)

    def select_path(self, path: Path) -> None:
        for row in range(self.table.rowCount()):
            entry = self._entry_for_row(row)
            if entry is not None and entry.path == Path(path):
                self.table.selectRow(row)
                return

    def _entry_for_row(self, row: int) -> ModelEntry | None:
        item = self.table.item(row, 0)
        if item is None:
            return None
        model_id = item.data(Qt.ItemDataRole.UserRole)
        return next((e for e in self.entries if e.id == model_id), None)

    def selected_entry(self) -> ModelEntry | None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        return self._entry_for_row(rows[0].row()) if rows else None

    @Slot()
    def _show_selected(self) -> None:
        entry = self.selected_entry()
        self.details_empty.setVisible(entry is None)
        self.details_grid.setVisible(entry is not None)
        self.reveal_button.setEnabled(entry is not None)
        self.remove_button.setEnabled(entry is not None)
        if entry is None:
            return
        self.details_grid.set_row("Name", entry.name)
        self.details_grid.set_row("Architecture", entry.architecture)
        self.details_grid.set_row("Parameters", f"{format_parameters(entry.parameters)} ({entry.parameters:,})")
        self.details_grid.set_row("Quant type", entry.quant_type)
        self.details_grid.set_row("Context length", f"{entry.context_length:,} tokens" if entry.context_length else "–")
        self.details_grid.set_row("Size on disk", format_bytes(entry.size_bytes))
        self.details_grid.set_row("Path", str(entry.path) + ("" if entry.exists else "  (missing)"))
        self.details_grid.set_row("Source", entry.source)
        self.details_grid.set_row("Imatrix", entry.imatrix or "–")
        self.details_grid.set_row("Added", datetime.fromtimestamp(entry.added_at).strftime("%Y-%m-%d %H:%M"))

    @Slot(object)
    def _on_error(self, error: JobError) -> None:
        self.status.setText(error.sentence())

    # ---- adding
    @Slot()
    def choose_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Add GGUF models", str(Path.home()), "GGUF models (*.gguf)")
        if files:
            self.add_files([Path(f) for f in files])

    def add_files(self, files: list[Path]) -> Job:
        def add(progress, cancelled):  # type: ignore[no-untyped-def]
            library = Library()
            added = []
            for i, path in enumerate(files):
                progress(i, len(files), f"Reading {path.name}")
                added.append(library.add_file(path, source="imported"))
            return added

        job = Job(f"Add {len(files)} model{'s' if len(files) != 1 else ''}", add)
        job.sig_result.connect(lambda _: self.reload())
        job.sig_error.connect(self._on_error)
        self._jobs.start(job)
        return job

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt override
        if any(u.isLocalFile() for u in event.mimeData().urls()):  # which are folders is for the job to find out
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt override
        """GGUF files join the library; the other paths' folders are checked as Hugging Face checkpoints, in a job
        (the disk may be slow: the window's thread does not ask it which paths are folders)."""
        paths = [Path(u.toLocalFile()) for u in event.mimeData().urls() if u.isLocalFile()]
        files = [p for p in paths if p.suffix.lower() == ".gguf"]
        others = [p for p in paths if p.suffix.lower() != ".gguf"]
        if files:
            self.add_files(files)
        if others:
            self.checkpoints.add_folders(others, dropped=True, with_models=bool(files))
        if paths:
            event.acceptProposedAction()

    # ---- actions on the selection
    @Slot()
    def reveal_selected(self) -> None:
        entry = self.selected_entry()
        if entry is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(entry.path.parent)))

    @Slot()
    def remove_selected(self) -> None:
        entry = self.selected_entry()
        if entry is None:
            return
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle("Remove model")
        box.setText(f"Remove “{entry.name}” ({entry.quant_type}) from the library?")
        box.setInformativeText(f"{entry.path}\n\nYou can keep the file on disk or delete it.")
        keep = box.addButton("Remove, keep file", QMessageBox.ButtonRole.AcceptRole)
        delete = box.addButton("Delete file", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        clicked = box.clickedButton()
        if clicked not in (keep, delete):
            return
        inside = self.models_dir is not None and in_models_folder(entry.path, self.models_dir)
        if clicked is delete and not inside and not self._confirm_delete_outside(entry):
            return
        self.remove_entry(entry, delete_file=clicked is delete)

    def _confirm_delete_outside(self, entry: ModelEntry) -> bool:
        """The second confirmation for a file outside the models folder, saying what deleting it really does."""
        from desktop.naming import hf_cache_repo

        repo = hf_cache_repo(entry.path)
        box = QMessageBox(self)
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("Delete a file outside the models folder")
        if repo is not None:
            box.setText(f"“{entry.path.name}” is a download in the Hugging Face cache ({repo}), which other tools "
                        "share.")
            box.setInformativeText(
                f"Deleting it removes its data from the cache ({format_bytes(entry.size_bytes)}), unless another "
                "downloaded revision uses the same file. Other programs that use this download will fetch it "
                "again.")
        else:
            box.setText(f"“{entry.path.name}” is outside QuantDesk's models folder ({self.models_dir}).")
            box.setInformativeText(f"{entry.path}\n\nIt will be deleted from disk.")
        delete = box.addButton("Delete it", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        return box.clickedButton() is delete

    def remove_entry(self, entry: ModelEntry, *, delete_file: bool) -> Job:
        job = Job(
            f"Remove {entry.name}",
            lambda progress, cancelled: Library().remove(entry.id, delete_file=delete_file),
            visible=False,
        )
        job.sig_finished.connect(self.reload)
        job.sig_error.connect(self._on_error)
        self._jobs.start(job)
        return job


class _SortItem(QTableWidgetItem):
    def __init__(self, text: str, sort_key: object) -> None:
        super().__init__(text)
        self._key = sort_key

    def __lt__(self, other: QTableWidgetItem) -> bool:
        if isinstance(other, _SortItem):
            try:
                return self._key < other._key  # type: ignore[operator]
            except TypeError:
                pass
        return super().__lt__(other)


def _sort_key(entry: ModelEntry, column: int) -> object:
    return [
        entry.name.lower(),
        entry.architecture,
        entry.parameters,
        entry.quant_type,
        entry.context_length,
        entry.size_bytes,
    ][column]
