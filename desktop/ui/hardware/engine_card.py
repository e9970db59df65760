"""The Hardware page's engine section: which llama.cpp build models run on, switching it, building a GPU one.

Every piece of work runs as a job (desktop.workers): reading the engines folder, remembering the choice, the build
(CMake under a worker thread; nothing of llama.cpp is loaded in this process) and the smoke test (its own children).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt, QUrl, Signal, Slot
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QWidget,
)

from desktop.jobs import JobError, format_duration
from desktop.ui.widgets import Card, note_label
from desktop.workers import Job, JobManager

AUTO = "auto"


class EngineCard(Card):
    sig_engine_changed = Signal()
    """The engine children run on changed (the page reads the hardware again: the device list is the engine's)."""

    def __init__(self, jobs: JobManager, parent: QWidget | None = None) -> None:
        super().__init__("llama.cpp engine", parent)
        self._jobs = jobs
        self._engines: list[dict[str, Any]] = []
        self._build_job: Job | None = None
        self._log_path = ""
        self._filling = False

        row = QHBoxLayout()
        row.addWidget(QLabel("Run models on"))
        self.choice = QComboBox()
        self.choice.setToolTip("Automatic: the best engine that passed its test on this machine")
        self.choice.currentIndexChanged.connect(self._on_choice)
        row.addWidget(self.choice, 1)
        self.body.addLayout(row)
        self.status = note_label()
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)  # commands to copy
        self.body.addWidget(self.status)

        buttons = QHBoxLayout()
        self.build_vulkan = QPushButton("Build Vulkan engine")
        self.build_vulkan.setToolTip("NVIDIA, AMD and Intel GPUs; about 20 minutes on 2 cores, once")
        self.build_vulkan.clicked.connect(lambda: self.build("vulkan"))
        self.build_cuda = QPushButton("Build CUDA engine")
        self.build_cuda.setToolTip("NVIDIA GPUs; needs NVIDIA's CUDA toolkit")
        self.build_cuda.clicked.connect(lambda: self.build("cuda"))
        self.test_button = QPushButton("Test")
        self.test_button.setToolTip("Load a model with every layer on the GPU and compare its tokens with the CPU's")
        self.test_button.clicked.connect(self.test_untested)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.log_button = QPushButton("Open log")
        self.log_button.clicked.connect(self._open_log)
        for button in (self.build_vulkan, self.build_cuda, self.test_button, self.cancel_button, self.log_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        self.body.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(True)
        self.body.addWidget(self.progress)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(200)
        self.log_view.setFixedHeight(110)
        self.body.addWidget(self.log_view)
        self._set_busy(False)

    # ---- the list
    @Slot()
    def refresh(self) -> None:
        from desktop.llama.engines import describe_engines

        job = Job("Read engines", lambda progress, cancelled: describe_engines(), visible=False)
        job.sig_result.connect(self.show_engines)
        job.sig_error.connect(self._on_error)
        self._jobs.start(job)

    @Slot(object)
    def show_engines(self, engines: list[dict[str, Any]]) -> None:
        self._engines = engines
        self._filling = True
        self.choice.clear()
        self.choice.addItem("Automatic (the best engine that passed its test)", AUTO)
        for engine in engines:
            if engine["usable"]:
                self.choice.addItem(f"{engine['label']} ({engine['name']})", engine["name"])
        chosen = next((e["name"] for e in engines if e["chosen"] and e["usable"]), AUTO)
        self.choice.setCurrentIndex(max(0, self.choice.findData(chosen)))
        self._filling = False
        selected = next((e for e in engines if e["selected"]), None)
        lines = [f"Now: {selected['label']} ({selected['name']})." if selected else ""]
        lines += [f"{e['label']} ({e['name']}): {e['status']}" for e in engines if e["built"]]
        self.status.setText("\n".join(x for x in lines if x))
        self.test_button.setVisible(any(e["built"] and not e["usable"] for e in engines))

    def set_has_nvidia(self, has_nvidia: bool) -> None:
        self.build_cuda.setVisible(has_nvidia)

    @Slot(int)
    def _on_choice(self, _index: int) -> None:
        if self._filling:
            return
        from desktop.llama.engines import select_engine

        name = str(self.choice.currentData() or AUTO)
        job = Job("Choose engine", lambda progress, cancelled: select_engine(name), visible=False)
        job.sig_error.connect(self._on_error)
        job.sig_finished.connect(self.refresh)
        job.sig_result.connect(lambda _engine: self.sig_engine_changed.emit())
        self._jobs.start(job)

    # ---- build, test, cancel
    def build(self, backend: str) -> None:
        from desktop.llama.build import build_engine, build_log_path

        self._log_path = str(build_log_path(backend))
        self.log_view.clear()
        job = Job(f"Build the {backend.capitalize()} engine",
                  lambda progress, cancelled: build_engine(backend, progress, cancelled))
        job.sig_progress.connect(self._on_progress)
        job.sig_result.connect(self._on_built)
        job.sig_error.connect(self._on_error)
        job.sig_cancelled.connect(lambda: self.status.setText("Build cancelled; the next build resumes where it stopped."))
        job.sig_finished.connect(lambda job=job: self._job_finished(job))
        self._build_job = job
        self._set_busy(True)
        self._jobs.start(job)

    @Slot(object)
    def _on_built(self, result: dict[str, Any]) -> None:
        self.log_view.appendPlainText(f"Built {result['name']} in {format_duration(float(result.get('build_seconds', 0)))}.")
        self.test(str(result["name"]))

    @Slot()
    def test_untested(self) -> None:
        for engine in self._engines:
            if engine["built"] and not engine["usable"]:
                self.test(engine["name"])
                return

    def test(self, name: str) -> None:
        from desktop.llama.smoke import smoke_job

        job = Job(f"Test the {name} engine", lambda progress, cancelled: smoke_job(name, progress, cancelled))
        job.sig_progress.connect(self._on_progress)
        job.sig_result.connect(self._on_tested)
        job.sig_error.connect(self._on_error)
        job.sig_finished.connect(lambda job=job: self._job_finished(job))
        job.sig_finished.connect(self.refresh)
        self._build_job = job
        self._set_busy(True)
        self._jobs.start(job)

    @Slot(object)
    def _on_tested(self, result: dict[str, Any]) -> None:
        self.log_view.appendPlainText(result["sentence"])
        if result["ok"]:
            self.sig_engine_changed.emit()

    @Slot()
    def cancel(self) -> None:
        if self._build_job is not None:
            self._build_job.cancel()

    @Slot(float, float, str)
    def _on_progress(self, done: float, total: float, message: str) -> None:
        self.progress.setValue(int(1000 * done / total) if total else 0)
        job = self._build_job
        eta = job.eta() if job is not None else None
        self.progress.setFormat(f"%p%{f' · about {format_duration(eta)} left' if eta else ''}")
        if message:
            self.log_view.appendPlainText(message)

    @Slot(object)
    def _on_error(self, error: JobError) -> None:
        self.status.setText(error.sentence())
        if error.detail:
            self.log_view.appendPlainText(error.detail[-2000:])

    def _job_finished(self, job: Job) -> None:
        if job is self._build_job:  # a build hands over to its smoke test: that one is the current job now
            self._set_busy(False)

    def _set_busy(self, busy: bool) -> None:
        for button in (self.build_vulkan, self.build_cuda, self.test_button):
            button.setEnabled(not busy)
        self.choice.setEnabled(not busy)
        self.cancel_button.setEnabled(busy)
        self.progress.setVisible(busy)
        self.log_button.setEnabled(bool(self._log_path))
        if not busy:
            self._build_job = None

    @Slot()
    def _open_log(self) -> None:
        if self._log_path:
            QDesktopServices.openUrl(QUrl.fromLocalFile(self._log_path))
