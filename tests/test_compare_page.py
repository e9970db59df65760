"""The Compare page driven through qtbot with real llama.cpp on a tiny model: measure a base, an existing quant and
a type made on the spot into the table and chart; a new page brings the stored results back without measuring;
Find my quant within limits; the calibration text refused as the evaluation text."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from desktop.settings import models_dir
from desktop.quant.imatrix import default_calibration_text
from desktop.library import Library
from desktop.quant.quantize import quantize_many
from desktop.eval.recommend import memory_estimate
from desktop.quant.sizing import predict_size, tensors_from_gguf
from desktop.eval.compare import CALIBRATION_REFUSAL, LOADED_MESSAGE
from desktop.ui.compare.page import ComparePage
from desktop.workers import JobManager, JobState
from tests.quant_helpers import TINY_TEXT, write_tiny_llama

RUN_TIMEOUT = 180_000
N_CTX = 64
CHUNKS = 2
GB = 1024**3


@pytest.fixture
def jobs() -> Iterator[JobManager]:
    manager = JobManager()
    yield manager
    assert manager.stop_all(timeout_s=10)


@pytest.fixture
def base() -> Path:
    """A tiny F16 model in the library's models folder (this test's own data folder)."""
    folder = models_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = write_tiny_llama(folder / "tiny-F16.gguf", n_layer=4)
    Library().add_file(path)
    return path


@pytest.fixture
def text(tmp_path: Path) -> Path:
    path = tmp_path / "short-eval.txt"
    path.write_text(TINY_TEXT * 6, encoding="utf-8")
    return path


def open_page(qtbot: QtBot, jobs: JobManager, text: Path) -> ComparePage:
    page = ComparePage(jobs)
    qtbot.addWidget(page)
    page.resize(1200, 820)
    page.show()
    assert page.selection.set_text_path(text)
    return page


def set_library(qtbot: QtBot, page: ComparePage) -> None:
    """What the window does when the library changes; waits for the stored-results read of the picked base."""
    page.set_models(Library().models())
    assert page.load_job is not None
    qtbot.waitUntil(lambda: page.load_job is not None and not page.load_job.is_active(), timeout=30_000)


def small_run(page: ComparePage) -> None:
    page.selection.context.setValue(N_CTX)
    page.selection.chunks.setValue(CHUNKS)


def test_measure_fills_table_and_chart_and_results_come_back(qtbot: QtBot, jobs: JobManager, base: Path,
                                                               text: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quantize_many(base, ["Q8_0"], progress=lambda *a: None, cancelled=lambda: False)  # registers it
    page = open_page(qtbot, jobs, text)
    set_library(qtbot, page)
    assert page.selection.base() is not None and page.selection.base().path == base  # chosen automatically
    assert [p.name for p in page.selection.checked_quants()] == ["tiny-Q8_0.gguf"]
    assert not page.selection.make_boxes["Q8_0"].isEnabled()  # it exists already
    assert page.table.rowCount() == 0 and page.last_load_message == LOADED_MESSAGE
    small_run(page)
    page.selection.make_boxes["Q4_K_M"].setChecked(True)

    page.activateWindow()
    qtbot.waitUntil(page.isActiveWindow, timeout=5_000)
    with qtbot.waitSignal(page.sig_finished, timeout=RUN_TIMEOUT):
        qtbot.keyClick(page.selection.quant_list, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    assert page.run_job is not None and page.run_job.state is JobState.DONE, page.status.text()
    assert (models_dir() / "tiny-Q4_K_M.gguf").is_file()

    types = ["F16", "Q8_0", "Q4_K_M"]
    assert sorted(page.table.text(t, "Type").split(" ")[0] for t in types) == sorted(types)
    assert page.table.text("F16", "Type") == "F16 (base)"
    for t in types:
        for column in ("PPL", "PPL change", "KLD", "Top-1 agree", "Prompt tok/s", "Gen tok/s", "Size",
                       "Bits/weight", "Fits (estimate)"):
            assert page.table.text(t, column) not in ("", "–", "?"), (t, column)
        tip = page.table.tooltip(t, "KLD")
        assert "measured on short-eval.txt" in tip and "threads" in tip and "20" in tip  # text, hardware, date
    assert "Estimate at context 64" in page.table.tooltip("Q4_K_M", "Fits (estimate)")
    assert float(page.table.text("Q8_0", "KLD")) < float(page.table.text("Q4_K_M", "KLD"))
    assert float(page.table.text("Q4_K_M", "Bits/weight")) < float(page.table.text("Q8_0", "Bits/weight"))
    assert "Measured on short-eval.txt, context 64" in page.footnote.text()
    points = page.chart.points()
    assert sorted(name for name, _, _ in points) == ["Q4_K_M", "Q8_0"]  # one point per quant
    assert all(y > 0 for _, _, y in points) and len(page.chart.scatter.data) == 2
    page.chart.speed_button.click()
    assert page.chart.view == "speed" and len(page.chart.points()) == 3
    assert page.chart.plot.getAxis("left").labelText == "generation tok/s"
    shown = {t: page.table.text(t, "KLD") for t in types}

    # A new page (the model reopened): the stored results come back, and nothing is measured or made.
    def no_child(*_a: object, **_k: object) -> None:
        raise AssertionError("a child process was started")

    monkeypatch.setattr("desktop.eval.evaluate.evaluate_in_child", no_child)
    monkeypatch.setattr("desktop.process.run_in_child", no_child)
    again = open_page(qtbot, jobs, text)
    with qtbot.waitSignal(again.sig_results_shown, timeout=30_000):
        again.set_models(Library().models())
    assert again.last_load_message == LOADED_MESSAGE and again.run_job is None
    assert {t: again.table.text(t, "KLD") for t in types} == shown
    assert again.selection.context.value() == N_CTX
    assert sorted(name for name, _, _ in again.chart.points()) == ["Q4_K_M", "Q8_0"]
    assert {p.name for p in again.selection.all_quants()} == {"tiny-Q8_0.gguf", "tiny-Q4_K_M.gguf"}


def test_find_my_quant_makes_measures_and_recommends_within_limits(qtbot: QtBot, jobs: JobManager, base: Path,
                                                                   text: Path) -> None:
    page = open_page(qtbot, jobs, text)
    set_library(qtbot, page)
    small_run(page)
    for name in ("Q8_0", "Q4_K_M", "Q2_K"):
        page.selection.make_boxes[name].setChecked(True)
    tensors = tensors_from_gguf(base)
    overhead = memory_estimate(base, N_CTX) - base.stat().st_size
    limit = overhead + (predict_size(tensors, "Q8_0") + predict_size(tensors, "Q4_K_M")) // 2  # leaves Q8_0 out
    page.find.use_memory.setChecked(True)
    page.find.memory.setValue(limit / GB)
    page.find.use_kld.setChecked(True)
    page.find.kld.setValue(50.0)

    with qtbot.waitSignal(page.sig_recommended, timeout=RUN_TIMEOUT) as blocker:
        qtbot.mouseClick(page.find.find_button, Qt.MouseButton.LeftButton)
    rec = blocker.args[0]
    assert rec.chosen is not None, rec.why
    assert rec.chosen.quant_type == "Q2_K"  # the smallest that meets the limits
    assert rec.chosen.memory_bytes <= page.find.limits(N_CTX).max_memory_bytes
    assert rec.chosen.result is not None and rec.chosen.result.kld_mean <= 50.0
    assert "Recommended: Q2_K" in page.find.answer.text()
    assert page.find.why().startswith("Q2_K is the smallest quant that meets memory ≤ ")
    assert "measured on short-eval.txt" in page.find.why()
    lines = page.find.lines()
    assert any(line.startswith("Runner-up: Q4_K_M") for line in lines), lines
    assert any(line.startswith("Rejected Q8_0") and "estimate" in line for line in lines), lines
    assert not (models_dir() / "tiny-Q8_0.gguf").exists()  # could not fit: not made
    qtbot.waitUntil(lambda: not page.cancel_button.isEnabled(), timeout=10_000)
    assert sorted(page.table.text(t, "Type").split(" ")[0] for t in ("F16", "Q4_K_M", "Q2_K")) == \
        ["F16", "Q2_K", "Q4_K_M"]
    assert sorted(name for name, _, _ in page.chart.points()) == ["Q2_K", "Q4_K_M"]


def test_the_calibration_text_is_refused(qtbot: QtBot, jobs: JobManager, base: Path, text: Path,
                                         tmp_path: Path) -> None:
    page = open_page(qtbot, jobs, text)
    set_library(qtbot, page)
    assert not page.selection.set_text_path(default_calibration_text())
    assert page.selection.text_error.isVisible() and page.selection.text_error.text() == CALIBRATION_REFUSAL
    assert page.selection.text_name() == "short-eval.txt"  # the earlier choice stays

    copy = tmp_path / "my-text.txt"
    shutil.copyfile(default_calibration_text(), copy)  # a copy under another name is caught by its content
    assert page.selection.set_text_path(copy)
    page.selection.make_boxes["Q8_0"].setChecked(True)
    with qtbot.waitSignal(page.sig_finished, timeout=30_000):
        job = page.measure()
    assert job is not None and job.state is JobState.FAILED
    assert page.status.text().startswith(CALIBRATION_REFUSAL)
    assert not (models_dir() / "tiny-Q8_0.gguf").exists()
    assert page.table.rowCount() == 0


def test_cancel_stops_the_run_and_leaves_no_partial_file(qtbot: QtBot, jobs: JobManager, base: Path,
                                                         text: Path) -> None:
    from desktop.fileio import PARTIAL_SUFFIX

    page = open_page(qtbot, jobs, text)
    set_library(qtbot, page)
    small_run(page)
    for box in page.selection.make_boxes.values():
        box.setChecked(True)
    job = page.measure()
    assert job is not None and page.cancel_button.isEnabled() and not page.measure_button.isEnabled()
    qtbot.waitUntil(lambda: page.status.text().startswith("making quants: "), timeout=60_000)
    with qtbot.waitSignal(page.sig_finished, timeout=60_000):
        qtbot.mouseClick(page.cancel_button, Qt.MouseButton.LeftButton)
    assert job.state is JobState.CANCELLED
    assert page.status.text().startswith("Cancelled.")
    assert not any(p.name.endswith(PARTIAL_SUFFIX) for p in models_dir().iterdir())
    assert page.measure_button.isEnabled() and not page.cancel_button.isEnabled() and page.table.rowCount() == 0
