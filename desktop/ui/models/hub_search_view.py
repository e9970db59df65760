"""Searching Hugging Face by name, with the GGUF and text-generation filters; offline, one plain sentence and the
repos already in the local Hugging Face cache."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop.hub.search import CachedRepo, SearchResult
from desktop.jobs import CancelledFn, JobError, ProgressFn, format_bytes
from desktop.ui.widgets import note_label
from desktop.workers import Job, JobManager

OFFLINE_SENTENCE = "Offline: searching needs a connection to Hugging Face."


@dataclass
class SearchOutcome:
    result: SearchResult
    cached: list[CachedRepo]  # only looked up when offline


def search_job(progress: ProgressFn, cancelled: CancelledFn, *, query: str, gguf: bool,
               text_generation: bool) -> SearchOutcome:
    from desktop.hub.search import cached_repos, search_models

    progress(0, 0, f"Searching Hugging Face for “{query}”…" if query else "Listing popular models…")
    result = search_models(query, gguf=gguf, text_generation=text_generation)
    cached = cached_repos() if result.offline else []
    return SearchOutcome(result, cached)


def _compact(n: int) -> str:
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if n >= size:
            return f"{n / size:.1f}{unit}".replace(".0", "")
    return str(n)


class HubSearchView(QWidget):
    sig_repo_chosen = Signal(str)
    """A repo id the user picked from the results (select or double-click): inspect it."""

    def __init__(self, jobs: JobManager, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._jobs = jobs
        self._job: Job | None = None

        self.query = QLineEdit()
        self.query.setPlaceholderText("Search models by name")
        self.query.setClearButtonEnabled(True)
        self.query.returnPressed.connect(self.search)
        self.search_button = QPushButton("Search")
        self.search_button.clicked.connect(self.search)
        row = QHBoxLayout()
        row.addWidget(self.query, 1)
        row.addWidget(self.search_button)
        self.gguf = QCheckBox("GGUF only")
        self.gguf.setToolTip("Only repositories that hold GGUF files, ready to run")
        self.text_generation = QCheckBox("Text generation")
        self.text_generation.setChecked(True)
        self.text_generation.setToolTip("Only models tagged for text generation (chat and completion)")
        filters = QHBoxLayout()
        filters.addWidget(self.gguf)
        filters.addWidget(self.text_generation)
        filters.addStretch(1)

        self.status = note_label("Find a model by name, or paste its id on the right.")
        self.results = QListWidget()
        self.results.setAlternatingRowColors(True)
        self.results.setSpacing(2)
        self.results.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.results.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.results.itemActivated.connect(self._choose)  # double-click or Enter
        self.results.itemClicked.connect(self._choose)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addLayout(filters)
        layout.addWidget(self.status)
        layout.addWidget(self.results, 1)

    @Slot()
    def search(self) -> Job:
        if self._job is not None and self._job.is_active():
            self._job.cancel()  # a newer search supersedes it; its late result never arrives
        query = self.query.text().strip()
        gguf, text_generation = self.gguf.isChecked(), self.text_generation.isChecked()
        job = Job(f"Search Hugging Face for “{query}”" if query else "Search Hugging Face",
                  lambda progress, cancelled: search_job(progress, cancelled, query=query, gguf=gguf,
                                                         text_generation=text_generation),
                  visible=False)
        job.sig_result.connect(self._show)
        job.sig_error.connect(self._on_error)
        self._job = job
        self.status.setText("Searching…")
        self.search_button.setEnabled(False)
        job.sig_finished.connect(lambda: self.search_button.setEnabled(True))
        self._jobs.start(job)
        return job

    @Slot(object)
    def _show(self, outcome: SearchOutcome) -> None:
        self.results.clear()
        result = outcome.result
        if result.offline:
            cached = outcome.cached
            self.status.setText(OFFLINE_SENTENCE + (" Models already downloaded are listed." if cached else ""))
            for repo in cached:
                self._add(repo.repo_id, f"downloaded · {repo.kind} · {format_bytes(repo.size_bytes)}")
            return
        hits = result.hits
        self.status.setText(
            f"{len(hits)} model{'s' if len(hits) != 1 else ''}, most downloaded first. Click one to inspect it."
            if hits else f"No model matches “{result.query}” with these filters."
        )
        for hit in hits:
            kind = "GGUF" if hit.is_gguf else (hit.pipeline_tag or "model")
            self._add(hit.repo_id, f"{kind} · {_compact(hit.downloads)} downloads · {_compact(hit.likes)} likes")

    def _add(self, repo_id: str, detail: str) -> None:
        item = QListWidgetItem(f"{repo_id}\n{detail}")
        item.setData(Qt.ItemDataRole.UserRole, repo_id)
        item.setToolTip(f"Inspect {repo_id}")
        self.results.addItem(item)

    @Slot(object)
    def _on_error(self, error: JobError) -> None:
        self.results.clear()
        self.status.setText(error.sentence())

    @Slot(QListWidgetItem)
    def _choose(self, item: QListWidgetItem) -> None:
        repo_id = item.data(Qt.ItemDataRole.UserRole)
        if repo_id:
            self.sig_repo_chosen.emit(str(repo_id))

    def repo_ids(self) -> list[str]:
        return [str(self.results.item(i).data(Qt.ItemDataRole.UserRole)) for i in range(self.results.count())]
