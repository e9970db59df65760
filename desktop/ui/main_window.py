"""The main window: a sidebar of pages, the pages, and the status area of background jobs."""

from __future__ import annotations

import time

from PySide6.QtCore import QByteArray, QSettings, QSize, QTimer, Slot
from PySide6.QtGui import QAction, QCloseEvent, QIcon, QKeySequence
from PySide6.QtWidgets import (
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from desktop import APP_NAME, paths, process, resources
from desktop.demo_model import first_launch_job
from desktop.jobs import JobError
from desktop.ui.chat.page import ChatPage
from desktop.ui.compare.page import ComparePage
from desktop.ui.hardware.page import HardwarePage
from desktop.ui.jobs_panel import JobsPanel
from desktop.ui.models.page import ModelsPage
from desktop.ui.quantize.page import QuantizePage
from desktop.workers import Job, JobManager
from desktop.workers.monitor import UsageMonitor

PAGES = ["Hardware", "Models", "Quantize", "Compare", "Chat"]
QUICK_STOP_S = 1.5
"""At quit, how long the window waits for cancelled jobs before it stops blocking and waits for them as events."""
KILL_AFTER_MS = 8000
"""How long cancelled jobs get to stop on their own at quit before their child processes are killed."""
GIVE_UP_AFTER_MS = 15000
"""After this the window closes even if a worker thread has not returned (it then reports to nothing)."""
LOST_SENTENCE = ("What they have finished is kept: quants already made, models already measured, files already "
                 "downloaded. The step in progress is lost, and its partial file removed.")


def describe_running(jobs: list[Job]) -> str:
    """One line per running job with how far it got, for the quit question."""
    lines = []
    for job in jobs:
        done = f" ({100 * job.done / job.total:.0f}% done)" if job.total > 0 else ""
        lines.append(f"• {job.title}{done}")
    return "\n".join(lines)


def window_settings() -> QSettings:
    return QSettings(str(paths.data_dir() / "window.ini"), QSettings.Format.IniFormat)


class MainWindow(QMainWindow):
    def __init__(self, jobs: JobManager | None = None, *, start_background: bool = True) -> None:
        super().__init__()
        self.setWindowTitle(APP_NAME)
        self.setWindowIcon(QIcon(str(resources.path("icons/app.svg"))))
        self.jobs = jobs or JobManager(self)
        self.monitor = UsageMonitor(self)
        self.quit_box: QMessageBox | None = None
        self._quit_confirmed = False
        self._shut_down = False
        self._kill_timer = QTimer(self, singleShot=True, interval=KILL_AFTER_MS)
        self._kill_timer.timeout.connect(lambda: process.terminate_all(grace_s=0.5))
        self._give_up_timer = QTimer(self, singleShot=True, interval=GIVE_UP_AFTER_MS)
        self._give_up_timer.timeout.connect(self._close_now)
        self._closing_now = False

        self.sidebar = QListWidget()
        self.sidebar.setObjectName("sidebar")
        self.sidebar.setFixedWidth(180)
        self.sidebar.setIconSize(QSize(20, 20))
        self.stack = QStackedWidget()

        self.hardware_page = HardwarePage(self.jobs)
        self.models_page = ModelsPage(self.jobs)
        self.quantize_page = QuantizePage(self.jobs)
        self.compare_page = ComparePage(self.jobs)
        self.chat_page = ChatPage(self.jobs)
        pages = [self.hardware_page, self.models_page, self.quantize_page, self.compare_page, self.chat_page]
        for index, (name, page) in enumerate(zip(PAGES, pages, strict=True)):
            item = QListWidgetItem(QIcon(str(resources.path(f"icons/{name.lower()}.svg"))), name)
            item.setToolTip(f"{name} (Ctrl+{index + 1})")
            self.sidebar.addItem(item)
            self.stack.addWidget(page)
            action = QAction(self)
            action.setShortcut(QKeySequence(f"Ctrl+{index + 1}"))
            action.triggered.connect(lambda _=False, i=index: self.show_page(i))
            self.addAction(action)
        self.sidebar.currentRowChanged.connect(self.stack.setCurrentIndex)

        self.jobs_panel = JobsPanel(self.jobs)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        right_layout.setSpacing(0)
        right_layout.addWidget(self.stack, 1)
        right_layout.addWidget(self.jobs_panel)
        central = QWidget()
        layout = QHBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.sidebar)
        layout.addWidget(right, 1)
        self.setCentralWidget(central)

        quit_action = QAction("Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        self.addAction(quit_action)

        self.monitor.sig_sample.connect(self.hardware_page.show_usage)
        self.hardware_page.sig_report.connect(self.models_page.hub_panel.set_hardware_report)
        self.hardware_page.sig_report.connect(self.chat_page.set_hardware_report)
        self.models_page.sig_models_changed.connect(self.chat_page.set_models)
        self.models_page.sig_models_changed.connect(self.quantize_page.set_models)
        self.quantize_page.sig_finished.connect(self.models_page.reload)
        self.hardware_page.sig_report.connect(self.compare_page.set_hardware_report)
        self.models_page.sig_models_changed.connect(self.compare_page.set_models)
        self.compare_page.sig_finished.connect(self.models_page.reload)
        self._restore_state()
        if start_background:
            self.start_background()

    def start_background(self) -> None:
        """Start what the window shows live: the hardware report, usage sampling, the library."""
        self.hardware_page.refresh()
        self.monitor.start()
        self.models_page.reload()
        first = Job("Set up the demo model", first_launch_job)
        first.sig_result.connect(self._on_first_launch)
        first.sig_error.connect(self._on_first_launch_error)
        self.jobs.start(first)

    @Slot(object)
    def _on_first_launch(self, added: object) -> None:
        if added:
            self.models_page.reload()

    @Slot(object)
    def _on_first_launch_error(self, error: JobError) -> None:
        self.models_page.status.setText(error.sentence())

    @Slot(int)
    def show_page(self, index: int) -> None:
        self.sidebar.setCurrentRow(index)

    def current_page_name(self) -> str:
        return PAGES[self.stack.currentIndex()]

    # ---- remembered state
    def _restore_state(self) -> None:
        settings = window_settings()
        geometry = settings.value("geometry")
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1180, 780)
        page = settings.value("page", "Hardware")
        self.show_page(PAGES.index(page) if page in PAGES else 0)

    def save_state(self) -> None:
        settings = window_settings()
        settings.setValue("geometry", self.saveGeometry())
        settings.setValue("page", self.current_page_name())
        settings.sync()

    # ---- quitting: ask while work would be lost, then stop every job before the window goes
    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        running = self.work_in_progress()
        if running and not self._quit_confirmed and not self._closing_now:
            event.ignore()
            self._ask_to_quit(running)
            return
        if not self._shut_down:
            self._shut_down = True
            self.save_state()
            self.monitor.stop()
            self.chat_page.shutdown()  # the engine process, and conversation writes still queued
            for job in self.jobs.active_jobs():
                job.cancel()
                job.sig_finished.connect(self._close_when_stopped)
            deadline = time.monotonic() + QUICK_STOP_S  # most jobs stop within moments of a cancel
            for job in self.jobs.active_jobs():
                job.wait(max(0.0, deadline - time.monotonic()))
        stuck = self._still_working()
        if stuck and not self._closing_now:
            # a job slow to stop: the GUI thread does not block; the window closes when it reports it stopped
            event.ignore()
            self.setWindowTitle(f"{APP_NAME}: stopping {len(stuck)} job{'s' if len(stuck) != 1 else ''}…")
            if not self._kill_timer.isActive() and not self._give_up_timer.isActive():
                self._kill_timer.start()
                self._give_up_timer.start()
            return
        self._kill_timer.stop()
        self._give_up_timer.stop()
        self.jobs.stop_all(timeout_s=1.0)  # every worker has returned: this only collects them
        event.accept()

    def work_in_progress(self) -> list[Job]:
        """The running jobs whose work a quit would lose: a quantization, a measurement, a download. (Reading the
        hardware or the library loses nothing; the demo models resume unpacking at the next start.)"""
        jobs = [self.quantize_page.run_job, self.compare_page.run_job, self.models_page.hub_panel.download_job]
        return [j for j in jobs if j is not None and j.is_active()]

    def _ask_to_quit(self, running: list[Job]) -> None:
        if self.quit_box is not None and self.quit_box.isVisible():
            return
        box = QMessageBox(QMessageBox.Icon.Warning, "Quit QuantDesk?",
                          f"{len(running)} job{'s are' if len(running) != 1 else ' is'} still running. Quitting "
                          f"stops {'them' if len(running) != 1 else 'it'}:", parent=self)
        box.setInformativeText(f"{describe_running(running)}\n\n{LOST_SENTENCE}")
        self.quit_stop_button: QPushButton = box.addButton("Stop and quit", QMessageBox.ButtonRole.DestructiveRole)
        keep = box.addButton("Keep working", QMessageBox.ButtonRole.RejectRole)
        box.setDefaultButton(keep)
        box.setEscapeButton(keep)
        box.finished.connect(lambda _result: self._on_quit_answer(box.clickedButton() is self.quit_stop_button))
        self.quit_box = box
        box.open()  # window-modal, and the GUI thread goes on (jobs keep reporting while the user reads)

    def _on_quit_answer(self, stop: bool) -> None:
        if stop:
            self._quit_confirmed = True
            self.close()

    def _still_working(self) -> list[Job]:
        """Active jobs whose worker thread has not returned yet."""
        return [j for j in self.jobs.active_jobs() if not j.wait(0)]

    @Slot()
    def _close_when_stopped(self) -> None:
        if self._shut_down and not self._still_working():
            self.close()

    @Slot()
    def _close_now(self) -> None:
        self._closing_now = True
        self.close()
