"""The one place the application object is made."""

from __future__ import annotations

import logging
import logging.handlers
import sys
import threading

from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from desktop import APP_NAME, __version__, paths, resources
from desktop.workers.collector import install_gui_thread_collector


def _setup_logging() -> None:
    handler = logging.handlers.RotatingFileHandler(
        paths.logs_dir() / "quantdesk.log", maxBytes=2_000_000, backupCount=3, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)


def housekeeping() -> list[str]:
    """What a start cleans up, off the GUI thread: partial files of QuantDesk instances that are gone (a killed
    window's quantization) and old per-job logs. Returns the partial files removed."""
    from desktop import settings
    from desktop.errors import UserError
    from desktop.fileio import sweep_stale_partials
    from desktop.job_logs import prune_job_logs

    try:
        removed = sweep_stale_partials((settings.models_dir(),))
    except UserError as exc:  # the models folder's drive is gone: nothing of it to sweep now
        logging.getLogger(__name__).info("%s", exc)
        removed = []
    for path in removed:
        logging.getLogger(__name__).info("removed %s, left by a QuantDesk that did not finish", path)
    prune_job_logs(paths.logs_dir())
    return [str(p) for p in removed]


def start_housekeeping() -> threading.Thread:
    def run() -> None:
        try:
            housekeeping()
        except Exception:  # noqa: BLE001 - cleaning up must never stop the window from opening
            logging.getLogger(__name__).exception("start-up clean-up failed")

    thread = threading.Thread(target=run, name="quantdesk-housekeeping", daemon=True)
    thread.start()
    return thread


def run_app(argv: list[str] | None = None) -> int:
    from desktop.ui.main_window import MainWindow
    from desktop.ui.theme import follow_system

    _setup_logging()
    start_housekeeping()
    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv)
    install_gui_thread_collector(app)  # Qt objects in garbage cycles are freed on this thread, never a worker's
    app.setApplicationName(APP_NAME)
    app.setApplicationVersion(__version__)
    app.setOrganizationName(APP_NAME)
    app.setWindowIcon(QIcon(str(resources.path("icons/app.svg"))))
    follow_system(app)
    window = MainWindow()
    window.show()
    return app.exec()


def selfcheck() -> dict[str, object]:
    """Build the window without showing it and check the parts a broken bundle would lose."""
    from PySide6.QtGui import QImage

    from desktop.process import run_in_child
    from desktop.ui.main_window import MainWindow
    from desktop.ui.theme import apply_theme

    app = QApplication.instance() or QApplication(["quantdesk", "-platform", "offscreen"])
    install_gui_thread_collector(app)
    apply_theme(app)  # type: ignore[arg-type]
    window = MainWindow(start_background=False)
    icon = QImage(str(resources.path("icons/chat.svg")))  # needs Qt's SVG image plugin
    report = run_in_child("desktop.hardware.report:report_job")  # a child process of this very executable
    token_loop = run_in_child("desktop.llama.native:check_job")
    bundled = getattr(sys, "_MEIPASS", None) is not None
    checks = {
        "resources": resources.path("style.qss").is_file(),
        "svg_plugin": not icon.isNull(),
        "main_window": window.sidebar.count() == 5,
        "child_process": report.cpu.logical_cores > 0,
        "llama_cpp": report.llama.available,
        # the bundle carries the native token loop prebuilt; a pip install builds it with the C compiler, if any
        "native_token_loop": token_loop["loop"] == "native" or not bundled,
    }
    window.close()
    return {"checks": checks, "llama_cpp_version": report.llama.version, "resources_dir": str(resources.resources_dir()),
            "token_loop": token_loop}
