"""The main window as a user meets it: pages, real hardware figures, the demo model, remembered state."""

from __future__ import annotations

import psutil
from pytestqt.qtbot import QtBot

from desktop.jobs import format_bytes
from desktop.process import live_children
from desktop.ui.main_window import PAGES, MainWindow
from desktop.workers import Job


def _open(qtbot: QtBot) -> MainWindow:
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    return window


def test_opens_on_hardware_with_real_figures_and_the_demo_model(qtbot: QtBot) -> None:
    window = _open(qtbot)
    assert [window.sidebar.item(i).text() for i in range(window.sidebar.count())] == PAGES
    assert window.current_page_name() == "Hardware"

    page = window.hardware_page
    qtbot.waitUntil(lambda: page.report is not None, timeout=60_000)
    assert page.cpu_grid.value("Cores").startswith(f"{psutil.cpu_count(logical=False)} cores")
    assert page.memory_grid.value("Total") == format_bytes(psutil.virtual_memory().total)
    assert page.llama_grid.value("GPU offload") == "not in this build (CPU only)"
    qtbot.waitUntil(
        lambda: "No NVIDIA driver found" in " ".join(
            w.text() for w in page.gpu_card.findChildren(type(page.status)) if w.isVisible()
        ),
        timeout=5_000,
    )
    assert page.fits_ram.text().startswith("In RAM now: about")
    qtbot.waitUntil(lambda: page.cpu_bar.text.text().endswith("%"), timeout=10_000)  # live usage arrived

    models = window.models_page
    qtbot.waitUntil(lambda: len(models.entries) == 2, timeout=120_000)  # the chat model and the demo base model
    rows = {models.table.item(r, 1).text(): r for r in range(models.table.rowCount())}
    assert models.table.item(rows["gemma3"], 3).text() == "Q4_K_M"
    assert models.table.item(rows["llama"], 3).text() == "Q4_1"
    models.table.selectRow(rows["gemma3"])
    assert models.details_grid.value("Context length") == "32,768 tokens"
    window.close()


def test_page_and_geometry_are_remembered(qtbot: QtBot) -> None:
    window = _open(qtbot)
    window.show_page(PAGES.index("Compare"))
    window.resize(720, 530)
    window.close()

    again = _open(qtbot)
    assert again.current_page_name() == "Compare"
    assert (again.width(), again.height()) == (720, 530)
    again.close()


def test_keyboard_switches_pages(qtbot: QtBot) -> None:
    from PySide6.QtCore import Qt

    window = _open(qtbot)
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=5_000)
    qtbot.keyClick(window, Qt.Key.Key_4, Qt.KeyboardModifier.ControlModifier)
    assert window.current_page_name() == "Compare"
    qtbot.keyClick(window, Qt.Key.Key_2, Qt.KeyboardModifier.ControlModifier)
    assert window.current_page_name() == "Models"
    window.close()


def test_status_area_lists_running_jobs_with_progress_and_cancel(qtbot: QtBot) -> None:
    import threading

    from PySide6.QtCore import Qt

    window = _open(qtbot)
    release = threading.Event()

    def work(progress, cancelled):  # type: ignore[no-untyped-def]
        progress(3, 10, "Converting blk.3")
        while not cancelled() and not release.is_set():
            threading.Event().wait(0.01)

    job = window.jobs.start(Job("Convert model", work))
    qtbot.waitUntil(lambda: any(r.job is job and r.detail.text().startswith("Converting blk.3") for r in window.jobs_panel.rows()), timeout=10_000)
    row = next(r for r in window.jobs_panel.rows() if r.job is job)
    assert row.bar.value() == 300 and row.cancel_button.isVisible()
    with qtbot.waitSignal(job.sig_finished, timeout=10_000):
        qtbot.mouseClick(row.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: row.detail.text() == "Cancelled", timeout=5_000)
    window.close()


def test_closing_the_window_stops_every_job_and_child(qtbot: QtBot, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from desktop.process import run_in_child

    window = _open(qtbot)
    started = tmp_path / "started"
    job = window.jobs.start(
        Job(
            "stubborn",
            lambda progress, cancelled: run_in_child(
                "child_jobs:ignore_cancel",
                {"out": str(tmp_path / "x.gguf"), "started": str(started)},
                cancelled=cancelled,
                grace_s=0.5,
            ),
        )
    )
    qtbot.waitUntil(started.exists, timeout=30_000)
    window.close()
    assert job.wait(0)  # its worker thread has finished
    assert live_children() == []


def test_theme_follows_the_system_colour_scheme(qtbot: QtBot) -> None:
    """The offscreen platform cannot switch schemes itself, so the test sends the system's change signal."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QPalette
    from PySide6.QtWidgets import QApplication

    from desktop.ui.theme import follow_system

    app = QApplication.instance()
    hints = QGuiApplication.styleHints()
    follow_system(app)
    window = app.palette().color(QPalette.ColorRole.Window)
    assert window.lightness() > 200  # this platform reports no scheme: light
    hints.colorSchemeChanged.emit(Qt.ColorScheme.Dark)
    assert app.palette().color(QPalette.ColorRole.Window).lightness() < 80
    assert app.palette().color(QPalette.ColorRole.Text).lightness() > 200
    hints.colorSchemeChanged.emit(Qt.ColorScheme.Light)
    assert app.palette().color(QPalette.ColorRole.Window).lightness() > 200


def test_a_long_progress_line_does_not_widen_the_window(qtbot: QtBot) -> None:
    import threading

    window = _open(qtbot)
    window.resize(720, 530)
    release = threading.Event()

    def work(progress, cancelled):  # type: ignore[no-untyped-def]
        progress(1, 2, "Measuring " + "a very long model name " * 40)
        release.wait(10)

    job = window.jobs.start(Job("Measure", work))
    qtbot.waitUntil(lambda: any(r.job is job and r.detail.text().startswith("Measuring") for r in window.jobs_panel.rows()), timeout=10_000)
    assert window.width() == 720 and window.minimumSizeHint().width() < 720
    release.set()
    with qtbot.waitSignal(job.sig_finished, timeout=10_000):
        pass
    window.close()
