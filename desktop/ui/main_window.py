"""The main window: a sidebar of pages, the pages, and the status area of background jobs."""

from __future__ import annotations

from PySide6.QtCore import QByteArray, QSettings, QSize, Slot
from PySide6.QtGui import QAction, QCloseEvent, QIcon, QKeySequence
from PySide6.QtWidgets import QHBoxLayout, QListWidget, QListWidgetItem, QMainWindow, QStackedWidget, QVBoxLayout, QWidget

from desktop import APP_NAME, paths, resources
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


def window_settings() -> QSettings:
    return QSettings(str(paths.data_dir() / "window.ini"), QSettings.Format.IniFormat)


class MainWindow(QMainWindow):
    def __init__(self, jobs: JobManager | None = None, *, start_background: bool = True) -> None:
        super().__init__()
        self.setWindowTitle(APP_NAME)
        self.setWindowIcon(QIcon(str(resources.path("icons/app.svg"))))
        self.jobs = jobs or JobManager(self)
        self.monitor = UsageMonitor(self)

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

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt override
        self.save_state()
        self.monitor.stop()
        self.chat_page.shutdown()  # the engine process, and conversation writes still queued
        self.jobs.stop_all(timeout_s=5.0)
        event.accept()
