"""The Hugging Face tab of the Models page: search, inspect a repo, see what fits before downloading, download
with progress, cancel and retry, and ask for a token when the Hub wants one.

Every network, disk and keyring call runs as a :class:`~desktop.workers.Job` (the functions are in
:mod:`desktop.ui.models.hub_jobs`); the panel only shows what the jobs emit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from desktop.errors import UserError
from desktop.memory import machine_from_report
from desktop.hub.repo import RepoReport, parse_repo_ref
from desktop.hub.errors import TOKEN_KINDS
from desktop.jobs import JobError, format_bytes
from desktop.ui.models.hub_fit_table import FitTable
from desktop.ui.models.hub_jobs import (
    DownloadOutcome,
    DownloadRequest,
    InspectOutcome,
    download_job,
    inspect_job,
    save_token_job,
)
from desktop.ui.models.hub_search_view import HubSearchView
from desktop.ui.models.hub_summary import RepoSummary
from desktop.ui.models.hub_token_dialog import TokenDialog
from desktop.ui.widgets import Card, note_label
from desktop.workers import Job, JobManager

# ---------------------------------------------------------------------------------------------------------------


class HubPanel(QWidget):
    sig_model_added = Signal(object)
    """A downloaded GGUF is in the library: its :class:`~pathlib.Path` (the Models page selects it)."""
    sig_report = Signal(object)
    """A repo inspection finished and is shown (its :class:`~desktop.hub.repo.RepoReport`)."""
    sig_lookup_failed = Signal(object)
    """A repo inspection failed and its sentence is shown (the :class:`~desktop.jobs.JobError`)."""

    def __init__(self, jobs: JobManager, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._jobs = jobs
        self.report: RepoReport | None = None
        self._hardware: Any | None = None
        self._inspect_seq = 0
        self.inspect_job: Job | None = None
        self.download_job: Job | None = None
        self.last_download: DownloadRequest | None = None
        self._retry: Callable[[], object] | None = None
        self.token_dialog: TokenDialog | None = None

        self.search_view = HubSearchView(jobs)
        self.search_view.sig_repo_chosen.connect(self.inspect_repo_id)

        self.repo = QLineEdit()
        self.repo.setPlaceholderText("Model id or address, e.g. Qwen/Qwen3-0.6B-GGUF")
        self.repo.setClearButtonEnabled(True)
        self.repo.returnPressed.connect(self.inspect)
        self.revision = QLineEdit()
        self.revision.setPlaceholderText("main")
        self.revision.setToolTip("Branch, tag or commit (optional)")
        self.revision.setFixedWidth(110)
        self.revision.returnPressed.connect(self.inspect)
        self.inspect_button = QPushButton("Inspect")
        self.inspect_button.setDefault(True)
        self.inspect_button.clicked.connect(self.inspect)
        repo_row = QHBoxLayout()
        repo_row.addWidget(self.repo, 1)
        repo_row.addWidget(QLabel("Revision"))
        repo_row.addWidget(self.revision)
        repo_row.addWidget(self.inspect_button)
        self.message = note_label("Inspect a repository to see its files and what fits before downloading.")
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.summary = RepoSummary()
        self.fit_card = Card("Fit on this machine")
        self.fit = FitTable()
        self.fit.sig_selection_changed.connect(self._update_buttons)
        self.fit_card.body.addWidget(self.fit, 1)
        card_layout = self.fit_card.layout()  # the table, not the card's closing spacer, takes the height
        card_layout.setStretch(1, 1)
        card_layout.setStretch(card_layout.count() - 1, 0)

        self.download_button = QPushButton("Download")
        self.download_button.clicked.connect(self.download)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.retry_button = QPushButton("Retry")
        self.retry_button.clicked.connect(self.retry)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        self.progress.setFixedHeight(8)
        self.download_message = note_label()
        self.download_message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        buttons = QHBoxLayout()
        buttons.addWidget(self.download_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.retry_button)
        buttons.addSpacing(8)
        buttons.addWidget(self.progress, 1)
        self.fit_card.body.addLayout(buttons)
        self.fit_card.body.addWidget(self.download_message)

        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.setSpacing(8)
        right_layout.addLayout(repo_row)
        right_layout.addWidget(self.message)
        right_layout.addWidget(self.summary)
        right_layout.addWidget(self.fit_card, 1)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.search_view)
        splitter.addWidget(right)
        splitter.setStretchFactor(0, 2)
        splitter.setStretchFactor(1, 5)
        splitter.setSizes([280, 720])
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 8, 0, 0)
        layout.addWidget(splitter)
        self._update_buttons()

    # ---- machine memory
    @Slot(object)
    def set_hardware_report(self, report: Any) -> None:
        """The latest :class:`~desktop.hardware.report.HardwareReport` (from the Hardware page); fit rows follow it."""
        self._hardware = report
        self.fit.set_memory(machine_from_report(report))

    # ---- inspect
    @Slot(str)
    def inspect_repo_id(self, repo_id: str) -> None:
        self.repo.setText(repo_id)
        self.revision.clear()
        self.inspect()

    @Slot()
    def inspect(self) -> Job | None:
        text, revision = self.repo.text().strip(), self.revision.text().strip() or None
        try:
            ref = parse_repo_ref(text, revision)  # refused here, before any request
        except UserError as exc:
            self._forget_report("Nothing to show: that is not a repository id.")
            self._show_error(JobError(exc.kind, exc.message, exc.next_step), retry=None)
            return None
        if self.inspect_job is not None and self.inspect_job.is_active():
            self.inspect_job.cancel()
        self._inspect_seq += 1
        seq = self._inspect_seq
        if self.report is not None and self.report.repo_id != ref.repo_id:
            self._forget_report(f"Looking up {ref.repo_id}…")
        probe = self._hardware is None
        job = Job(f"Inspect {ref.repo_id}",
                  lambda progress, cancelled: inspect_job(progress, cancelled, repo=text, revision=revision,
                                                          probe_memory=probe),
                  visible=False)
        job.sig_progress.connect(lambda d, t, m, s=seq: self._on_inspect_progress(s, m))
        job.sig_result.connect(lambda outcome, s=seq: self._on_inspected(s, outcome))
        job.sig_error.connect(lambda error, s=seq: self._on_inspect_error(s, error))
        job.sig_finished.connect(self._update_buttons)
        self.inspect_job = job
        self._set_message(f"Looking up {ref.repo_id}…")
        self._jobs.start(job)
        self._update_buttons()
        return job

    def _on_inspect_progress(self, seq: int, message: str) -> None:
        if seq == self._inspect_seq and message:
            self._set_message(message)

    def _on_inspected(self, seq: int, outcome: InspectOutcome) -> None:
        if seq != self._inspect_seq:
            return  # a newer inspection superseded this one
        report = outcome.report
        self.report = report
        self._retry = None
        if outcome.memory is not None and self._hardware is None:
            self.fit.set_memory(outcome.memory)
        self.summary.show_report(report)
        self.fit.set_report(report)
        if report.kind == "unsupported":
            self._set_message(f"QuantDesk cannot use {report.repo_id}. {report.reason} {report.next_step}",
                              error=True)
        else:
            self._set_message(" ".join([self._describe(report), *report.notes]))
        self.sig_report.emit(report)
        self._update_buttons()

    def _on_inspect_error(self, seq: int, error: JobError) -> None:
        if seq == self._inspect_seq:
            self._forget_report("Nothing to show: the last lookup failed.")
            self._show_error(error, retry=self.inspect)
            self.sig_lookup_failed.emit(error)

    def _forget_report(self, text: str) -> None:
        """No repository on screen: nothing stale to download after a failed or cancelled lookup."""
        self.report = None
        self.summary.clear(text)
        self.fit.set_report(None)

    @staticmethod
    def _describe(report: RepoReport) -> str:
        from desktop.hub.repo import describe

        return f"{report.repo_id}: {describe(report)}."

    # ---- download
    @Slot()
    def download(self) -> Job | None:
        report = self.report
        if report is None or report.kind not in ("checkpoint", "gguf") or self._downloading():
            return None
        revision = None if report.revision == "main" else report.revision
        if report.kind == "gguf":
            row = self.fit.selected_row()
            if row is None or not row.files:
                return None
            request = DownloadRequest(report.repo_id, revision, row.files[0], row.label.rsplit("/", 1)[-1])
        else:
            request = DownloadRequest(report.repo_id, revision, None, f"{report.repo_id} checkpoint")
        return self.start_download(request)

    def start_download(self, request: DownloadRequest) -> Job:
        self.last_download = request
        self._retry = None
        job = Job(f"Download {request.label}",
                  lambda progress, cancelled: download_job(progress, cancelled, request=request))
        job.sig_progress.connect(self._on_download_progress)
        job.sig_result.connect(self._on_downloaded)
        job.sig_error.connect(self._on_download_error)
        job.sig_cancelled.connect(self._on_download_cancelled)
        job.sig_finished.connect(self._update_buttons)
        self.download_job = job
        self.progress.setRange(0, 0)
        self.download_message.setText(f"Starting the download of {request.label}…")
        self._jobs.start(job)
        self._update_buttons()
        return job

    def _downloading(self) -> bool:
        return self.download_job is not None and self.download_job.is_active()

    @Slot(float, float, str)
    def _on_download_progress(self, done: float, total: float, message: str) -> None:
        job = self.download_job
        if total > 0:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * done / total))
        self.download_message.setText(job.status_text() if job is not None else message)

    @Slot(object)
    def _on_downloaded(self, outcome: DownloadOutcome) -> None:
        self.progress.setRange(0, 1000)
        self.progress.setValue(1000)
        if outcome.added is not None:
            text = f"{outcome.message} {outcome.added.name} is in the library (On this computer)."
        else:
            text = (f"{outcome.message} The checkpoint is in {outcome.snapshot_dir}. Next step: convert and "
                    "quantize it on the Quantize page.")
        self.download_message.setText(text)
        if outcome.added is not None:
            self.sig_model_added.emit(outcome.added)

    @Slot(object)
    def _on_download_error(self, error: JobError) -> None:
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self._show_error(error, retry=self._retry_download, where=self.download_message)

    @Slot()
    def _on_download_cancelled(self) -> None:
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self._retry = self._retry_download
        self.download_message.setText("Download cancelled; unfinished files were removed. Retry keeps the "
                                      "files that finished.")

    def _retry_download(self) -> Job | None:
        return self.start_download(self.last_download) if self.last_download is not None else None

    # ---- cancel, retry, errors, token
    @Slot()
    def cancel(self) -> None:
        if self._downloading():
            assert self.download_job is not None
            self.download_job.cancel()
        elif self.inspect_job is not None and self.inspect_job.is_active():
            self.inspect_job.cancel()
            self._inspect_seq += 1  # nothing from it is shown any more
            self._forget_report("Nothing to show: the lookup was cancelled.")
            self._retry = self.inspect
            self._set_message("Inspection cancelled.")
        self._update_buttons()

    @Slot()
    def retry(self) -> None:
        action, self._retry = self._retry, None
        if action is not None:
            action()
        self._update_buttons()

    def _show_error(self, error: JobError, *, retry: Callable[[], object] | None,
                    where: QLabel | None = None) -> None:
        self._retry = retry
        label = where or self.message
        if error.kind in TOKEN_KINDS and retry is not None:
            label.setText(f"{error.message} Waiting for a token…")
            self._ask_token(error, retry, label)
        elif label is self.message:
            self._set_message(error.sentence(), error=True)
        else:
            label.setText(error.sentence())
        self._update_buttons()

    def _ask_token(self, error: JobError, retry: Callable[[], object], label: QLabel) -> None:
        if self.token_dialog is not None:
            self.token_dialog.close()
        dialog = TokenDialog(error.message, self)
        dialog.accepted.connect(lambda: self._save_token(dialog.value(), retry))
        dialog.rejected.connect(lambda: self._token_declined(error, label))
        dialog.finished.connect(dialog.deleteLater)
        self.token_dialog = dialog
        dialog.open()

    def _token_declined(self, error: JobError, label: QLabel) -> None:
        self.token_dialog = None
        label.setText(error.sentence())

    def _save_token(self, token: str, retry: Callable[[], object]) -> None:
        self.token_dialog = None
        job = Job("Save the Hugging Face token",
                  lambda progress, cancelled: save_token_job(progress, cancelled, token=token), visible=False)
        job.sig_result.connect(lambda _: retry())
        job.sig_error.connect(lambda error: self._show_error(error, retry=retry))
        self._jobs.start(job)

    def _set_message(self, text: str, *, error: bool = False) -> None:
        self.message.setText(text)
        self.message.setObjectName("" if error else "note")
        self.message.style().unpolish(self.message)
        self.message.style().polish(self.message)

    def _retry_tooltip(self) -> str:
        if self._retry is None:
            return "Nothing to retry"
        if self._retry == self._retry_download and self.last_download is not None:
            return f"Download {self.last_download.label} again; files that finished downloading are kept"
        return f"Look up {self.repo.text().strip() or 'the repository'} again"

    @Slot()
    def _update_buttons(self) -> None:
        report, downloading = self.report, self._downloading()
        inspecting = self.inspect_job is not None and self.inspect_job.is_active()
        row = self.fit.selected_row()
        if report is not None and report.kind == "checkpoint":
            self.download_button.setText(f"Download checkpoint ({format_bytes(report.download_bytes)})")
            can = True
        elif report is not None and report.kind == "gguf" and row is not None:
            self.download_button.setText(f"Download {row.quant or row.label} ({format_bytes(row.size_bytes)})")
            can = True
        else:
            self.download_button.setText("Download")
            can = False
        self.download_button.setEnabled(can and not downloading)
        self.cancel_button.setEnabled(downloading or inspecting)
        self.retry_button.setEnabled(self._retry is not None and not downloading)
        self.retry_button.setToolTip(self._retry_tooltip())

