"""The status area: every running job with its progress, speed, ETA and a cancel button."""

from __future__ import annotations

from PySide6.QtCore import Qt, Slot
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QSizePolicy, QVBoxLayout, QWidget

from desktop.workers import Job, JobManager, JobState


class JobRow(QWidget):
    def __init__(self, job: Job, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.job = job
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 2, 8, 2)
        self.title = QLabel(job.title)
        self.title.setMinimumWidth(160)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setFixedWidth(180)
        self.bar.setTextVisible(False)
        self.detail = QLabel()
        self.detail.setObjectName("note")
        # A long progress line must not widen the window: the label may shrink, and elides (full text in a tooltip).
        self.detail.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.detail.setMinimumWidth(80)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(job.cancel)
        layout.addWidget(self.title)
        layout.addWidget(self.bar)
        layout.addWidget(self.detail, 1)
        layout.addWidget(self.cancel_button)
        self.update_from_job()

    def update_from_job(self) -> None:
        job = self.job
        fraction = job.fraction()
        if fraction is not None:
            self.bar.setRange(0, 1000)
            self.bar.setValue(int(1000 * fraction))
        elif job.is_active():
            self.bar.setRange(0, 0)  # busy indicator when the total is unknown
        if job.state is JobState.FAILED and job.error is not None:
            text = f"Failed: {job.error.message}"
            self.bar.setRange(0, 1000)
        elif job.state is JobState.CANCELLED:
            text = "Cancelled"
        elif job.state is JobState.DONE:
            text = "Done"
            self.bar.setRange(0, 1000)
            self.bar.setValue(1000)
        elif job.is_cancelled():
            text = "Cancelling…"
        else:
            text = job.status_text()
        self.full_text = text
        self.detail.setToolTip(text)
        self.detail.setText(text)
        self.cancel_button.setVisible(job.is_active())
        self.cancel_button.setEnabled(not job.is_cancelled())


class JobsPanel(QWidget):
    def __init__(self, jobs: JobManager, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("jobsPanel")
        self._jobs = jobs
        self._rows: dict[int, JobRow] = {}
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 4, 0, 4)
        self._layout.setSpacing(0)
        self.idle = QLabel("No background jobs.")
        self.idle.setObjectName("note")
        self.idle.setAlignment(Qt.AlignmentFlag.AlignLeft)
        self.idle.setContentsMargins(12, 2, 8, 2)
        self._layout.addWidget(self.idle)
        jobs.sig_jobs_changed.connect(self.refresh)

    @Slot()
    def refresh(self) -> None:
        current = {id(job): job for job in self._jobs.jobs() if job.visible}
        for key in list(self._rows):
            if key not in current:
                self._rows.pop(key).deleteLater()
        for key, job in current.items():
            row = self._rows.get(key)
            if row is None:
                row = JobRow(job)
                self._rows[key] = row
                self._layout.addWidget(row)
            row.update_from_job()
        self.idle.setVisible(not self._rows)

    def rows(self) -> list[JobRow]:
        return list(self._rows.values())
