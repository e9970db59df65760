"""The Compare page driven through qtbot with real llama.cpp on a tiny model: measure a base, an existing quant and
a type made on the spot into the table and chart; a new page brings the stored results back without measuring;
Find my quant within limits; the calibration text refused as the evaluation text."""

from __future__ import annotations

import dataclasses
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


def test_the_base_follows_the_library_until_the_user_picks_one(qtbot: QtBot, jobs: JobManager, tmp_path: Path,
                                                                text: Path) -> None:
    """First launch lists a Q4_K_M only; the F16 made later becomes the base (it was listed as a quant of the
    Q4_K_M); a base the user picked stays; two files that look alike get told apart; one file listed twice once."""
    f16 = write_tiny_llama(tmp_path / "tiny-F16.gguf", n_layer=4)  # not in the library yet
    [q4] = quantize_many(f16, ["Q4_K_M"], models_dir(), progress=lambda *a: None, cancelled=lambda: False)
    page = open_page(qtbot, jobs, text)
    set_library(qtbot, page)
    assert page.selection.base().path == q4.path  # the only model
    Library().add_file(f16)
    set_library(qtbot, page)
    assert page.selection.base().path == f16  # followed the library: the F16 is the base
    assert page.selection.all_quants() == [q4.path]

    other = tmp_path / "copy"
    other.mkdir()
    twin = other / q4.path.name
    shutil.copyfile(q4.path, twin)
    Library().add_file(twin)
    (tmp_path / "link.gguf").symlink_to(f16)
    Library().add_file(tmp_path / "link.gguf")
    set_library(qtbot, page)
    labels = [page.selection.base_combo.itemText(i) for i in range(page.selection.base_combo.count())]
    assert len(labels) == 3 == len(set(labels)), labels  # the link is the F16 again: listed once
    assert any(label.endswith("· in copy") for label in labels), labels

    page.selection.base_combo.setCurrentIndex(page.selection.base_combo.findData(str(q4.path)))
    page.selection.base_combo.activated.emit(page.selection.base_combo.currentIndex())  # what a user's pick emits
    assert page.selection.base().path == q4.path
    assert f16 not in page.selection.all_quants()  # an F16 is not a quant of a Q4_K_M
    Library().add_file(write_tiny_llama(tmp_path / "tiny2-F16.gguf", n_layer=4))
    set_library(qtbot, page)
    assert page.selection.base().path == q4.path  # the user's pick stays when the library changes


def test_speeds_are_medians_of_several_runs_flagged_when_unsteady_and_measured_again(
        qtbot: QtBot, jobs: JobManager, base: Path, text: Path) -> None:
    from desktop.eval import speed
    from desktop.eval.measurements import MeasurementStore
    from desktop.eval.recommend import Candidate, Limits, select
    from desktop.ui.compare.chart import MB

    page = open_page(qtbot, jobs, text)
    set_library(qtbot, page)
    small_run(page)
    page.selection.make_boxes["Q8_0"].setChecked(True)
    seen: list[tuple[float, float, str]] = []
    with qtbot.waitSignal(page.sig_finished, timeout=RUN_TIMEOUT):
        job = page.measure()
        assert job is not None
        job.sig_progress.connect(lambda d, t, m: seen.append((d, t, m)))
    assert job.state is JobState.DONE, page.status.text()
    # the speed phase says what it does, and the bar is not full while it runs
    timing = [(d, t) for d, t, m in seen if "timing speed, run 3/5" in m]
    assert timing and all(d < t for d, t in timing), seen[-5:]
    for row in page.rows:
        r = row.result
        assert r is not None and len(r.gen_tps_runs) == len(r.prompt_tps_runs) == speed.SPEED_RUNS
        assert r.gen_tps == speed.median(r.gen_tps_runs) and r.prompt_tps == speed.median(r.prompt_tps_runs)
        assert f"of {speed.SPEED_RUNS} runs" in page.table.tooltip(row.quant_type, "Gen tok/s")
        assert "±" in page.table.text(row.quant_type, "Gen tok/s")

    # The chart is in the table's unit (decimal MB, desktop.jobs.format_bytes).
    q8 = next(r for r in page.rows if r.quant_type == "Q8_0")
    assert page.chart.plot.getAxis("bottom").labelText == "file size (MB)" and MB == 1000**2
    assert ("Q8_0", q8.size_bytes / 1e6) in [(name, x) for name, x, _ in page.chart.points()]

    # A disturbed run (another program was busy): stored as a measurement would store it, it is flagged on
    # reopening, "find my quant" does not quote it as the model's speed, and the row can be timed again.
    assert q8.result is not None
    fast = q8.result.gen_tps_runs
    disturbed = (fast[0], fast[1], fast[2] / 60, fast[3], fast[4])
    MeasurementStore().save(dataclasses.replace(q8.result, gen_tps_runs=disturbed,
                                                gen_tps=speed.median(disturbed)))
    again = open_page(qtbot, jobs, text)
    with qtbot.waitSignal(again.sig_results_shown, timeout=30_000):
        again.set_models(Library().models())
    assert "Q8_0" in again.table.unsteady_types()  # (on a busy machine the others may be flagged too: honestly)
    assert again.table.text("Q8_0", "Gen tok/s").startswith("⚠")
    assert "measure this row again" in again.table.tooltip("Q8_0", "Gen tok/s")
    stored = next(r for r in again.rows if r.quant_type == "Q8_0")
    assert stored.result is not None and stored.result.gen_tps_runs == disturbed
    why = select([Candidate("Q8_0", stored.path, stored.size_bytes, stored.size_bytes, stored.result)], Limits()).why
    assert "unsteady" in why and "measure again" in why

    assert not again.respeed_button.isEnabled()  # nothing selected
    row = next(i for i in range(again.table.rowCount()) if again.table.item(i, 0).text() == "Q8_0")
    again.table.selectRow(row)
    assert again.respeed_button.isEnabled()
    with qtbot.waitSignal(again.sig_finished, timeout=RUN_TIMEOUT):
        qtbot.mouseClick(again.respeed_button, Qt.MouseButton.LeftButton)
    assert again.run_job is not None and again.run_job.state is JobState.DONE, again.status.text()
    timed = next(r for r in again.rows if r.quant_type == "Q8_0").result
    assert timed is not None and timed.gen_tps_runs != disturbed and len(timed.gen_tps_runs) == speed.SPEED_RUNS
    assert timed.kld_mean == stored.result.kld_mean  # quality kept: only the speed was measured again
    assert MeasurementStore().find(stored.path, text_sha256=timed.text_sha256, n_ctx=N_CTX,
                                   base_path=base, min_chunks=CHUNKS) == timed


def test_bits_per_weight_is_one_number_on_compare_and_quantize(qtbot: QtBot, jobs: JobManager) -> None:
    """For the demo Q4_K_M file Compare said 7.55 bits/weight and Quantize 4.90 (the type's nominal figure on an 8B
    model); both now show what the file comes to, Quantize as predicted for its source."""
    from desktop.eval.compare import Row
    from desktop.gguf.reader import read_gguf
    from desktop.ui.compare.table import ResultsTable
    from desktop.ui.quantize.page import QuantizePage
    from engine_helpers import demo_model_path

    demo = demo_model_path()
    info = read_gguf(demo)
    table = ResultsTable()
    qtbot.addWidget(table)
    table.set_rows([Row(str(demo), "Q4_K_M", demo.stat().st_size, info.parameter_count, False, None, None)], 512, None)
    on_compare = float(table.text("Q4_K_M", "Bits/weight"))
    assert 7.0 < on_compare < 8.0  # the 262k-token embedding weighs a lot in a 270M model

    page = QuantizePage(jobs)
    qtbot.addWidget(page)
    with qtbot.waitSignal(page.sig_sizes_predicted, timeout=120_000):
        page.select_source(demo)
    on_quantize = float(page.types.item(page.types.row_of("Q4_K_M"), 2).text())
    assert abs(on_quantize - on_compare) / on_compare < 0.02, (on_quantize, on_compare)


def test_a_models_folder_that_cannot_be_made_is_one_sentence_from_the_job(qtbot: QtBot, jobs: JobManager, base: Path,
                                                                          text: Path, tmp_path: Path) -> None:
    """The models folder (where made quants go) is read and made by the job, off the window's thread; a folder that
    cannot be made (a file in the way, a drive that is gone) fails the run with one sentence, not a traceback."""
    from desktop.settings import load_settings, save_settings

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the models folder should be", encoding="utf-8")
    page = open_page(qtbot, jobs, text)
    set_library(qtbot, page)
    small_run(page)
    save_settings(dataclasses.replace(load_settings(), models_dir=str(blocker / "models")))
    page.selection.make_boxes["Q8_0"].setChecked(True)
    with qtbot.waitSignal(page.sig_finished, timeout=30_000):
        job = page.measure()
    assert job is not None and job.state is JobState.FAILED
    sentence = page.status.text()
    assert str(blocker / "models") in sentence and "cannot be used" in sentence and "Traceback" not in sentence
    assert "unexpected" not in sentence
