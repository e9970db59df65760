"""The Quantize page driven through qtbot with real llama.cpp on tiny models: predicted sizes, a two-type run into
the library, the importance-matrix types, cancel, and a Hugging Face checkpoint converted then quantized."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from desktop.errors import UserError
from desktop.fileio import PARTIAL_SUFFIX
from desktop.jobs import format_bytes
from desktop.library import Library
from desktop.settings import load_settings
from desktop.quant.pipeline import StepEvent
from desktop.quant.types import IMATRIX_REASON, QUANT_TYPES
from desktop.quant.sizing import bits_per_weight, predict_size, tensors_from_gguf
from desktop.ui.quantize.page import QuantizePage
from desktop.workers import JobManager, JobState
from tests.quant_helpers import write_tiny_llama

RUN_TIMEOUT = 180_000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("page-src") / "tiny-F16.gguf", n_layer=2)


@pytest.fixture
def jobs() -> Iterator[JobManager]:
    manager = JobManager()
    yield manager
    assert manager.stop_all(timeout_s=10)


@pytest.fixture
def page(qtbot: QtBot, jobs: JobManager, tmp_path: Path) -> QuantizePage:
    widget = QuantizePage(jobs)
    qtbot.addWidget(widget)
    widget.resize(1100, 760)
    widget.show()
    widget.output.edit.setText(str(tmp_path / "out"))
    return widget


def choose(qtbot: QtBot, page: QuantizePage, source: Path) -> None:
    with qtbot.waitSignal(page.sig_sizes_predicted, timeout=60_000):
        page.select_source(source)


def tick_only(page: QuantizePage, *names: str) -> None:
    for quant in QUANT_TYPES:
        page.types.set_checked(quant.name, quant.name in names)


def run(qtbot: QtBot, page: QuantizePage) -> None:
    page.activateWindow()
    qtbot.waitUntil(page.isActiveWindow, timeout=5_000)
    with qtbot.waitSignal(page.sig_finished, timeout=RUN_TIMEOUT):
        qtbot.keyClick(page.types, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)  # Ctrl+Enter starts


def test_gguf_source_two_types_end_to_end(qtbot: QtBot, page: QuantizePage, tiny: Path, tmp_path: Path) -> None:
    choose(qtbot, page, tiny)
    assert "llama" in page.source.summary.text() and "F16" in page.source.summary.text()
    tensors = tensors_from_gguf(tiny)
    for name in ("Q8_0", "Q4_K_M", "Q2_K", "F16"):
        assert page.types.size_text(name) == format_bytes(predict_size(tensors, name))
    n_params = sum(t.n_elements for t in tensors)  # bits per weight of the predicted file, as Compare shows it
    assert page.types.item(page.types.row_of("Q4_K_M"), 2).text() == \
        f"{bits_per_weight(predict_size(tensors, 'Q4_K_M'), n_params):.2f}"
    tick_only(page, "Q8_0", "Q4_K_M")
    assert page.types.checked_types() == ["Q8_0", "Q4_K_M"]

    run(qtbot, page)
    assert page.run_job is not None and page.run_job.state is JobState.DONE, page.status.text()
    out = tmp_path / "out"
    files = {p.name for p in out.iterdir()}
    assert files == {"tiny-Q8_0.gguf", "tiny-Q4_K_M.gguf"}
    for name in ("Q8_0", "Q4_K_M"):
        assert page.queue.state(name) == "done"
        real = (out / f"tiny-{name}.gguf").stat().st_size
        assert page.queue.detail(name).startswith(f"{format_bytes(real)} (predicted {page.types.size_text(name)}) in ")
    assert str(out) in page.status.text() and "tiny-Q4_K_M.gguf" in page.status.text()
    lines = page.log.lines()
    assert any(line.startswith("Q4_K_M: [") and "blk.1.ffn_down.weight → " in line for line in lines)
    entries = {e.path.name: e for e in Library().models()}
    assert entries["tiny-Q4_K_M.gguf"].quant_type == "Q4_K_M" and entries["tiny-Q8_0.gguf"].quant_type == "Q8_0"
    assert not page.cancel_button.isEnabled() and page.start_button.isEnabled()
    # the folder of the run is remembered: the next window's Quantize page starts there
    qtbot.waitUntil(lambda: load_settings().models_dir == str(out), timeout=10_000)
    jobs = JobManager()
    again = QuantizePage(jobs)
    qtbot.addWidget(again)
    qtbot.waitUntil(lambda: again.output.folder() == out, timeout=10_000)  # read in a job, off the window's thread
    assert jobs.stop_all(timeout_s=10)


def test_imatrix_types_need_a_calibration_text(qtbot: QtBot, page: QuantizePage, tiny: Path, tmp_path: Path) -> None:
    choose(qtbot, page, tiny)
    needing = [q.name for q in QUANT_TYPES if q.needs_imatrix]
    assert set(needing) == {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S"}
    for name in needing:
        assert not page.types.is_enabled(name)
        assert IMATRIX_REASON in page.types.item(page.types.row_of(name), 1).toolTip()
    assert page.types.is_enabled("Q2_K")
    assert "are off: llama.cpp refuses" in page.calibration.status.text()
    tick_only(page, "IQ2_XXS")
    assert page.types.checked_types() == [] and not page.start_button.isEnabled()

    with qtbot.waitSignal(page.sig_sizes_predicted, timeout=60_000):
        page.calibration.bundled.setChecked(True)
    assert all(page.types.is_enabled(name) for name in needing)
    assert page.types.checked_types() == ["IQ2_XXS"]
    assert page.types.size_text("IQ2_XXS") == format_bytes(predict_size(tensors_from_gguf(tiny), "IQ2_XXS",
                                                                           has_imatrix=True))
    page.calibration.chunks.setValue(1)  # one chunk of 512 tokens keeps the test quick
    run(qtbot, page)
    assert page.run_job is not None and page.run_job.state is JobState.DONE, page.status.text()
    assert page.queue.keys == ["imatrix", "IQ2_XXS"]
    assert page.queue.state("imatrix") == "done" and page.queue.state("IQ2_XXS") == "done"
    out = tmp_path / "out"
    assert (out / "tiny-IQ2_XXS.gguf").is_file() and (out / "tiny.imatrix.gguf").is_file()
    entry = Library().get_by_path(out / "tiny-IQ2_XXS.gguf")
    assert entry is not None and entry.imatrix == str(out / "tiny.imatrix.gguf")

    page.calibration.clear()
    assert not page.types.is_enabled("IQ2_XXS") and not page.start_button.isEnabled()
    page.types.set_imatrix_available(True)  # even if the table let it through, the page refuses in one sentence
    page.start()
    assert page.status.text() == "IQ2_XXS needs an importance matrix. Choose a calibration text first."


@pytest.fixture(scope="module")
def slower(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Big enough (27M parameters) that a type takes a good fraction of a second even on a fast machine: the
    quantize child runs on while the test clicks, and must not finish the whole queue in that moment."""
    return write_tiny_llama(tmp_path_factory.mktemp("page-slow") / "tiny-F16.gguf", n_layer=8, embd=512, ff=1536)


def test_cancel_leaves_no_partial_file(qtbot: QtBot, page: QuantizePage, slower: Path, tmp_path: Path) -> None:
    choose(qtbot, page, slower)
    types = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q5_0", "Q5_1", "Q4_0", "Q4_1", "IQ4_NL", "IQ4_XS",
             "Q4_K_S", "Q5_K_S", "Q3_K_L", "Q3_K_S", "Q2_K"]
    tick_only(page, *types)
    job = page.start()
    assert job is not None and page.cancel_button.isEnabled()
    # Hold the worker thread at Q6_K's first per-tensor report until the click has landed, so the click meets Q6_K
    # running (its child quantizes on meanwhile, hence the slower model). CI's fast machine once showed every type
    # "done" after a cancel: each later type's child started anyway and finished before it read the cancel; the
    # queue now starts nothing after a cancel (test_quantize, test_process).
    reached, clicked = threading.Event(), threading.Event()

    def hold(event: object) -> None:  # runs in the worker thread (direct connection)
        if isinstance(event, StepEvent) and event.key == "Q6_K" and "[" in event.detail and not reached.is_set():
            reached.set()
            clicked.wait(timeout=RUN_TIMEOUT / 1000)

    assert page._relay is not None
    page._relay.sig_event.connect(hold, Qt.ConnectionType.DirectConnection)
    qtbot.waitUntil(lambda: reached.is_set() and page.queue.state("Q6_K") == "running", timeout=RUN_TIMEOUT)
    try:
        with qtbot.waitSignal(page.sig_finished, timeout=60_000):
            qtbot.mouseClick(page.cancel_button, Qt.MouseButton.LeftButton)
            clicked.set()
    finally:
        clicked.set()
    assert job.state is JobState.CANCELLED
    states = {k: page.queue.state(k) for k in page.queue.keys}
    assert "cancelled" in states.values() and "running" not in states.values() and "waiting" not in states.values()
    out = tmp_path / "out"
    files = {p.name for p in out.iterdir()}
    assert not any(name.endswith(PARTIAL_SUFFIX) for name in files)
    assert files == {f"tiny-{k}.gguf" for k, state in states.items() if state == "done"}
    assert states["Q8_0"] == "done" and states[page.queue.keys[-1]] == "cancelled"
    assert page.status.text().startswith("Cancelled; no partial file is left.")


def test_checkpoint_folder_is_converted_then_quantized(qtbot: QtBot, page: QuantizePage, tmp_path: Path) -> None:
    from test_convert_support import assemble

    folder = assemble("tinyllama", tmp_path / "hf")
    choose(qtbot, page, folder)
    assert "Hugging Face checkpoint" in page.source.summary.text()
    assert page.source.convert_type.isVisible() and page.source.convert_to() == "F16"
    assert page.types.size_text("Q8_0") not in ("–", "…", "n/a")
    tick_only(page, "Q8_0")
    run(qtbot, page)
    assert page.run_job is not None and page.run_job.state is JobState.DONE, page.status.text()
    assert page.queue.keys == ["convert", "Q8_0"]
    assert [page.queue.state(k) for k in page.queue.keys] == ["done", "done"]
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"tinyllama-F16.gguf", "tinyllama-Q8_0.gguf"}
    assert any(line.startswith("convert: [") and "→ f16" in line for line in page.log.lines())
    library = {e.path.name: e for e in Library().models()}
    assert library["tinyllama-F16.gguf"].source == f"converted from {folder}"
    assert library["tinyllama-Q8_0.gguf"].quant_type == "Q8_0"


def test_refusals_are_one_sentence(qtbot: QtBot, page: QuantizePage, tmp_path: Path) -> None:
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    page.select_source(not_a_model)
    assert page.status.text().startswith("notes is not a Hugging Face model folder")
    assert page.source.current() is None and not page.start_button.isEnabled()
    page.advanced.set_expanded(True)
    page.advanced.overrides.setPlainText("ffn_down=Q6_K\nffn_up")
    with pytest.raises(UserError, match="line 2 .* is not regex=type"):
        page.advanced.options()


def test_one_item_of_the_queue_can_be_cancelled(qtbot: QtBot, page: QuantizePage, tiny: Path, tmp_path: Path) -> None:
    """Issue 15: the queue had no per-item cancel. Cancelling one type leaves the others running."""
    choose(qtbot, page, tiny)
    tick_only(page, "Q8_0", "Q6_K", "Q4_K_M")
    job = page.start()
    assert job is not None
    assert page.queue.cancel_button("Q6_K") is not None and page.queue.cancel_button("Q6_K").isEnabled()
    with qtbot.waitSignal(page.sig_finished, timeout=RUN_TIMEOUT):
        qtbot.mouseClick(page.queue.cancel_button("Q6_K"), Qt.MouseButton.LeftButton)
    assert job.state is JobState.DONE, page.status.text()
    states = {k: page.queue.state(k) for k in page.queue.keys}
    assert states == {"Q8_0": "done", "Q6_K": "cancelled", "Q4_K_M": "done"}
    assert not page.queue.cancel_button("Q6_K").isEnabled()
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == {"tiny-Q8_0.gguf", "tiny-Q4_K_M.gguf"}
    assert Library().get_by_path(out / "tiny-Q6_K.gguf") is None


def test_a_models_folder_that_cannot_be_made_leaves_the_page_usable(qtbot: QtBot, jobs: JobManager, tiny: Path,
                                                                   tmp_path: Path) -> None:
    """The page reads (and makes) the models folder in a job: a folder on a drive that is gone, or with a file in
    its way, is one sentence on the page, which opens anyway and asks for an output folder."""
    import dataclasses

    from desktop.settings import save_settings

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the models folder should be", encoding="utf-8")
    save_settings(dataclasses.replace(load_settings(), models_dir=str(blocker / "models")))
    page = QuantizePage(jobs)
    qtbot.addWidget(page)
    qtbot.waitUntil(lambda: "cannot be used" in page.status.text(), timeout=10_000)
    assert str(blocker / "models") in page.status.text() and "Traceback" not in page.status.text()
    assert page.output.edit.text() == ""
    choose(qtbot, page, tiny)
    tick_only(page, "Q8_0")
    assert page.start() is None and page.status.text() == "Choose an output folder (a full path)."
    page.output.edit.setText(str(tmp_path / "out"))  # another folder: the run goes ahead
    with qtbot.waitSignal(page.sig_finished, timeout=RUN_TIMEOUT):
        assert page.start() is not None
    assert (tmp_path / "out" / "tiny-Q8_0.gguf").is_file()
