"""The main window as a user meets it: pages, real hardware figures, the demo model, remembered state."""

from __future__ import annotations

import psutil
from pytestqt.qtbot import QtBot

from desktop.jobs import format_bytes
from desktop.process import live_children
from desktop.ui.main_window import PAGES, MainWindow
from desktop.workers import Job, JobState


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
    assert page.fits_ram.text().startswith("In RAM now: ")
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
    window.close()  # no work a user would lose: no question, but the job is stopped before the window goes
    assert window.quit_box is None
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=30_000)
    assert job.wait(0)  # its worker thread has finished
    assert live_children() == []


def test_quitting_during_a_measurement_asks_what_is_lost_then_stops_it(qtbot: QtBot) -> None:
    from desktop.fileio import PARTIAL_SUFFIX
    from desktop.library import Library
    from desktop.settings import models_dir
    from quant_helpers import write_tiny_llama

    base = write_tiny_llama(models_dir() / "tiny-F16.gguf", n_layer=4)
    Library().add_file(base)
    window = _open(qtbot)
    page = window.compare_page
    qtbot.waitUntil(lambda: page.selection.base() is not None and page.selection.base().path == base, timeout=60_000)
    page.selection.context.setValue(64)
    page.selection.chunks.setValue(2)
    for name in ("Q8_0", "Q4_K_M", "Q2_K"):
        page.selection.make_boxes[name].setChecked(True)
    job = page.measure()
    assert job is not None
    qtbot.waitUntil(lambda: job.total > 0, timeout=60_000)
    window.close()  # asks first: the measurement would be lost
    box = window.quit_box
    assert window.isVisible() and box is not None and box.isVisible()
    assert "1 job is still running" in box.text()
    assert "• Compare quants of tiny-F16 (" in box.informativeText() and "% done)" in box.informativeText()
    assert "partial file removed" in box.informativeText()
    next(b for b in box.buttons() if b.text() == "Keep working").click()
    assert window.isVisible() and job.is_active()  # nothing was stopped
    window.close()
    window.quit_stop_button.click()
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=60_000)
    assert job.wait(0)  # its worker had returned before the window went
    qtbot.waitUntil(lambda: job.state is JobState.CANCELLED, timeout=5_000)
    assert live_children() == []
    assert not any(p.name.endswith(PARTIAL_SUFFIX) for p in models_dir().iterdir())


def test_quitting_waits_for_a_job_slow_to_stop_without_blocking_or_a_late_signal(
        qtbot: QtBot, capfd) -> None:  # type: ignore[no-untyped-def]
    """A job step that does not look at cancel for 6 s (a native call): the window used to close after a 5 s wait,
    and the worker, still running, printed 'RuntimeError: Signal source has been deleted' when it reported."""
    import threading

    window = _open(qtbot)
    release = threading.Event()

    def slow_step(progress, cancelled):  # type: ignore[no-untyped-def]
        progress(1, 4, "making Q4_K_M")
        release.wait(6)  # ignores cancel, like one long native call
        progress(2, 4, "making Q8_0")

    job = window.jobs.start(Job("Quantize to Q4_K_M, Q8_0", slow_step))
    window.quantize_page.run_job = job  # what the Quantize page does with the job it starts
    qtbot.waitUntil(lambda: job.total > 0, timeout=10_000)
    window.close()
    assert "• Quantize to Q4_K_M, Q8_0 (25% done)" in window.quit_box.informativeText()  # type: ignore[union-attr]
    window.quit_stop_button.click()
    assert window.isVisible() and "stopping" in window.windowTitle()  # the GUI thread did not block
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=20_000)
    assert not job.is_active() and job.wait(0)  # the window went only once the job had stopped
    assert "Signal source has been deleted" not in capfd.readouterr().err


def test_closing_without_running_jobs_does_not_ask(qtbot: QtBot) -> None:
    window = _open(qtbot)  # reading the hardware and unpacking the demo models lose nothing: no question
    window.close()
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=30_000)
    assert window.quit_box is None


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
