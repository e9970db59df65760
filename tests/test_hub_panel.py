"""The Hugging Face tab of the Models page, driven through qtbot against the mock Hub over real HTTP: inspect,
fit at a context, sharded GGUF download into the library, cancel and retry, the token dialog, search, offline."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from mockhub import MockHub, checkpoint_files, files_under, gguf_files, hf_cache_dir
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QDialogButtonBox
from pytestqt.qtbot import QtBot

from desktop.hardware.report import CpuInfo, GpuInfo, HardwareReport, LlamaBuild, LlamaDevice, MemoryInfo
from desktop.hub.repo import fit_rows
from desktop.jobs import format_bytes
from desktop.memory import GpuBudget, HostBudget, Machine
from desktop.ui.models.hub_fit_table import VERDICT_COLOR
from desktop.ui.models.hub_panel import HubPanel
from desktop.ui.models.hub_search_view import OFFLINE_SENTENCE
from desktop.ui.models.hub_token_dialog import TokenDialog
from desktop.ui.jobs_panel import JobsPanel
from desktop.ui.models.page import LIBRARY_TAB, ModelsPage
from desktop.workers import JobManager

GB = 1000**3
MiB = 1024**2


def machine(ram_available: int = 32 * GB, gpu_free: int = 0, llama_cuda: bool = True) -> HardwareReport:
    gpus = [GpuInfo(0, "Test GPU", "CUDA", 24 * GB, gpu_free, "nvml")] if gpu_free else []
    llama = LlamaBuild(available=True, supports_gpu_offload=llama_cuda,
                       devices=[LlamaDevice("CUDA0", "Test GPU", "GPU", "CUDA", 24 * GB, gpu_free)] if llama_cuda else [])
    return HardwareReport("Linux", CpuInfo("Test CPU", 2, 2, "x86_64", []), MemoryInfo(64 * GB, ram_available),
                          gpus, llama, [])


@pytest.fixture
def jobs() -> Iterator[JobManager]:
    manager = JobManager()
    yield manager
    assert manager.stop_all(timeout_s=10)


@pytest.fixture
def page(qtbot: QtBot, jobs: JobManager) -> ModelsPage:
    models = ModelsPage(jobs)
    qtbot.addWidget(models)
    models.resize(1100, 760)
    models.show()
    return models


def inspect(qtbot: QtBot, panel: HubPanel, repo: str) -> None:
    panel.repo.setText(repo)
    with qtbot.waitSignal(panel.sig_report, timeout=30_000):
        qtbot.keyClick(panel.repo, Qt.Key.Key_Return)  # Enter inspects


def verdicts(panel: HubPanel) -> dict[str, str]:
    return {row.quant: panel.fit.verdict_text(i) for i, row in enumerate(panel.fit.rows)}


def cell(panel: HubPanel, quant: str, column: int) -> str:
    index = next(i for i, row in enumerate(panel.fit.rows) if row.quant == quant)
    return panel.fit.table.item(index, column).text()


def select_quant(panel: HubPanel, quant: str) -> None:
    panel.fit.table.selectRow(next(i for i, row in enumerate(panel.fit.rows) if row.quant == quant))


def test_checkpoint_fit_table_follows_the_context(mock_hub: MockHub, qtbot: QtBot, page: ModelsPage) -> None:
    mock_hub.add_repo("org/tiny-llama", checkpoint_files(n_layers=4, hidden=256, heads=8, kv_heads=2, vocab=1024))
    panel = page.hub_panel
    page.tabs.setCurrentIndex(1)
    inspect(qtbot, panel, "org/tiny-llama")
    assert panel.summary.grid.value("Architecture") == "LlamaForCausalLM (llama)"
    assert panel.summary.grid.value("Weights") == "BF16"
    assert "model-00002-of-00002.safetensors" in panel.summary.file_names()
    quants = [row.quant for row in panel.fit.rows]
    assert {"F16", "Q8_0", "Q4_K_M", "Q2_K"} <= set(quants) and all(row.predicted for row in panel.fit.rows)
    # The context is capped at what the model was trained for (2048 here), the default 4096 with it.
    assert (panel.fit.context.minimum(), panel.fit.context.maximum(), panel.fit.context.value()) == (512, 2048, 2048)
    # A GPU with just enough free memory for F16 at a 512-token context: F16 runs partly on the GPU at 2048, all on
    # it at 512 (the planner's own need for it at 512, overhead and margin included).
    report = panel.fit.report
    assert report is not None
    roomy = Machine((GpuBudget("Test GPU", 10**12, backend="CUDA"),), HostBudget(32 * GB))
    f16 = next(row for row in fit_rows(report, 512, roomy) if row.quant == "F16")
    gpu_free = f16.fit.plan.gpus[0].need_bytes + 1000
    panel.set_hardware_report(machine(gpu_free=gpu_free))
    # KV cache: 4 layers x 2 KV heads x (32 + 32) dims x 2 bytes = 1 KiB per token, padded to 256 cells.
    assert cell(panel, "F16", 2) == format_bytes(1024 * 2048)
    assert verdicts(panel)["F16"] == "GPU + CPU" and verdicts(panel)["Q4_K_M"] == "GPU"
    f16_index = quants.index("F16")
    item = panel.fit.table.item(f16_index, 4)
    assert item.foreground().color().name() == VERDICT_COLOR["GPU+CPU"]
    assert item.toolTip().startswith(panel.fit.rows[f16_index].fit.sentence())
    assert "layers on the GPU, the rest on the CPU" in item.toolTip()
    assert "This machine: 32.0 GB RAM available; Test GPU (CUDA)" in panel.fit.memory_label.text()

    panel.fit.context.setValue(512)
    assert cell(panel, "F16", 2) == format_bytes(1024 * 512)
    assert verdicts(panel)["F16"] == "GPU"
    assert panel.fit.table.item(f16_index, 4).foreground().color().name() == VERDICT_COLOR["GPU"]
    # the same card next to a llama.cpp that cannot use it does not count: F16 runs in RAM
    panel.set_hardware_report(machine(gpu_free=gpu_free, llama_cuda=False))
    assert verdicts(panel)["F16"] == "RAM"
    assert "no GPU llama.cpp can offload to" in panel.fit.memory_label.text()
    assert "CPU only" in panel.fit.memory_label.toolTip()
    panel.set_hardware_report(machine(ram_available=0))  # nothing free anywhere
    assert set(verdicts(panel).values()) == {"Does not fit"}
    assert panel.download_button.text().startswith("Download checkpoint (") and panel.download_button.isEnabled()


def test_sharded_gguf_download_shows_progress_and_lands_in_the_library(
    mock_hub: MockHub, qtbot: QtBot, page: ModelsPage, jobs: JobManager, tmp_path: Path
) -> None:
    q4 = gguf_files(tmp_path, "tiny-Q4_K_M", "Q4_K_M", shards=2, pad_bytes=3 * MiB)
    q8 = gguf_files(tmp_path, "tiny-Q8_0", "Q8_0")
    mock_hub.add_repo("org/tiny-GGUF", {**q4, **q8, "README.md": "# tiny"}, tags=["gguf"])
    status_area = JobsPanel(jobs)
    qtbot.addWidget(status_area)
    status_area.show()
    panel = page.hub_panel
    page.tabs.setCurrentIndex(1)
    inspect(qtbot, panel, "https://huggingface.co/org/tiny-GGUF")  # no hardware report yet: the job reads memory
    assert panel.summary.grid.value("Kind").startswith("GGUF repository")
    assert {row.quant for row in panel.fit.rows} == {"Q4_K_M", "Q8_0"}
    assert set(verdicts(panel).values()) <= {"GPU", "RAM"}
    assert panel.fit.memory_label.text().startswith("This machine:")
    shards = len(q4)
    assert shards == 3  # the filler tensor makes a third shard
    assert cell(panel, "Q4_K_M", 0) == f"tiny-Q4_K_M  ({shards} files)"
    select_quant(panel, "Q4_K_M")
    assert panel.download_button.text().startswith("Download Q4_K_M (")

    big = max(q4, key=lambda name: q4[name].stat().st_size)
    mock_hub.throttle("org/tiny-GGUF", big, bytes_per_second=1 * MiB)
    added: list[Path] = []
    panel.sig_model_added.connect(added.append)
    qtbot.mouseClick(panel.download_button, Qt.MouseButton.LeftButton)
    job = panel.download_job
    assert job is not None and not panel.download_button.isEnabled() and panel.cancel_button.isEnabled()
    # Bytes and speed in the panel, and in the status area with an ETA and a Cancel button.
    qtbot.waitUntil(lambda: "MB/s" in panel.download_message.text()
                    and f"of {shards} files" in panel.download_message.text(), timeout=30_000)
    assert 0 < panel.progress.value() < 1000
    qtbot.waitUntil(lambda: any(r.job is job and "MB/s" in r.detail.text() and r.detail.text().endswith(" left")
                                for r in status_area.rows()), timeout=30_000)
    row = next(r for r in status_area.rows() if r.job is job)
    assert row.detail.text().count(" left") == 1 and row.cancel_button.isVisible()
    assert "MB of " in row.detail.text()

    qtbot.waitUntil(lambda: bool(added), timeout=60_000)
    path = Path(added[0])
    assert page.tabs.currentIndex() == LIBRARY_TAB
    qtbot.waitUntil(lambda: page.selected_entry() is not None and page.selected_entry().path == path, timeout=10_000)
    entry = page.selected_entry()
    assert entry.quant_type == "Q4_K_M" and entry.source == "Hugging Face: org/tiny-GGUF"
    assert page.table.rowCount() == 1 and page.details_grid.value("Source") == "Hugging Face: org/tiny-GGUF"
    snapshot = next(p.parent for p in files_under(hf_cache_dir()) if p.name == big)
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(q4)  # every shard, not the Q8_0
    assert panel.progress.value() == 1000
    finished = panel.download_message.text()
    assert finished.startswith(f"Downloaded {shards} files") and "is in the library" in finished


def test_cancel_leaves_no_partial_file_and_retry_keeps_the_finished_ones(
    mock_hub: MockHub, qtbot: QtBot, page: ModelsPage
) -> None:
    files = checkpoint_files(shards=1)
    mock_hub.add_repo("org/tiny-llama", files)
    panel = page.hub_panel
    panel.set_hardware_report(machine())
    inspect(qtbot, panel, "org/tiny-llama")
    mock_hub.throttle("org/tiny-llama", "model.safetensors", bytes_per_second=1 * MiB)  # after inspect's reads
    qtbot.mouseClick(panel.download_button, Qt.MouseButton.LeftButton)
    job = panel.download_job
    assert job is not None
    qtbot.waitUntil(lambda: 0 < panel.progress.value() < 1000 and "MB of" in panel.download_message.text(),
                    timeout=30_000)
    with qtbot.waitSignal(job.sig_finished, timeout=10_000):
        qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    assert panel.download_message.text().startswith("Download cancelled")
    assert [p for p in files_under(hf_cache_dir()) if p.name.endswith(".incomplete")] == []
    assert "model.safetensors" not in [p.name for p in files_under(hf_cache_dir()) if "/snapshots/" in p.as_posix()]
    assert panel.retry_button.isEnabled() and panel.download_button.isEnabled()

    qtbot.mouseClick(panel.retry_button, Qt.MouseButton.LeftButton)
    retried = panel.download_job
    assert retried is not job and retried is not None
    qtbot.waitUntil(lambda: not retried.is_active(), timeout=60_000)
    text = panel.download_message.text()
    assert text.startswith("Downloaded 1 file") and "Kept 5 files already downloaded" in text, text
    assert "Next step: convert and quantize it on the Quantize page" in text
    snapshot = Path(text.split("The checkpoint is in ")[1].split(". Next step")[0])
    assert (snapshot / "model.safetensors").read_bytes() == files["model.safetensors"]


def test_401_asks_for_a_token_then_the_download_succeeds(
    mock_hub: MockHub, qtbot: QtBot, page: ModelsPage, memory_keyring, caplog: pytest.LogCaptureFixture  # type: ignore[no-untyped-def]
) -> None:
    from desktop.hub import tokens

    secret = "hf_mock_secret_token_0123456789"
    mock_hub.add_token(secret)
    tmp = hf_cache_dir().parent / "src"
    repo = mock_hub.add_repo("org/gated-GGUF", gguf_files(tmp, "m-Q4_K_M", "Q4_K_M"), tags=["gguf"])
    caplog.set_level(logging.DEBUG)
    panel = page.hub_panel
    panel.set_hardware_report(machine())
    inspect(qtbot, panel, "org/gated-GGUF")
    repo.gated = True  # the owner gates it: downloads now need a token
    qtbot.mouseClick(panel.download_button, Qt.MouseButton.LeftButton)

    def dialog() -> TokenDialog | None:
        found = [w for w in QApplication.topLevelWidgets() if isinstance(w, TokenDialog) and w.isVisible()]
        return found[0] if found else None

    qtbot.waitUntil(lambda: dialog() is not None, timeout=30_000)
    box = dialog()
    assert box is not None and "gated" in box.reason.text()
    assert box.token.echoMode() == box.token.EchoMode.Password
    assert f"{mock_hub.url}/settings/tokens" in box.hint.text()
    ok = box.buttons.button(QDialogButtonBox.StandardButton.Ok)
    assert not ok.isEnabled()
    qtbot.keyClicks(box.token, secret)
    with qtbot.waitSignal(panel.sig_model_added, timeout=60_000):
        qtbot.mouseClick(ok, Qt.MouseButton.LeftButton)
    assert tokens.get_token() == secret and secret in memory_keyring.store.values()
    assert [r.status for r in mock_hub.requests if r.kind == "resolve"][-1] == 200
    assert secret not in caplog.text and secret not in panel.download_message.text() + panel.message.text()


def test_bad_repo_id_is_a_sentence_without_a_request(mock_hub: MockHub, qtbot: QtBot, page: ModelsPage) -> None:
    panel = page.hub_panel
    panel.repo.setText("a/b/c")
    qtbot.mouseClick(panel.inspect_button, Qt.MouseButton.LeftButton)
    assert panel.message.text() == ("'a/b/c' is not a Hugging Face model id. Use the form owner/name, for example "
                                    "Qwen/Qwen3-0.6B, or paste the model's Hugging Face address.")
    assert panel.inspect_job is None and mock_hub.requests == []
    assert not panel.download_button.isEnabled()


def test_a_failed_lookup_clears_the_previous_repo(mock_hub: MockHub, qtbot: QtBot, page: ModelsPage) -> None:
    """Issue 15: after a failed lookup the panel still showed the previous repo with Download enabled, and Retry's
    tooltip spoke of downloaded files."""
    mock_hub.add_repo("org/tiny-llama", checkpoint_files())
    panel = page.hub_panel
    page.tabs.setCurrentIndex(1)
    inspect(qtbot, panel, "org/tiny-llama")
    assert panel.download_button.isEnabled() and "org/tiny-llama" in panel.summary.grid.value("Repository")
    panel.repo.setText("org/missing")
    qtbot.mouseClick(panel.inspect_button, Qt.MouseButton.LeftButton)
    job = panel.inspect_job
    assert job is not None
    qtbot.waitUntil(lambda: not job.is_active() and "org/missing" in panel.message.text(), timeout=30_000)
    assert panel.report is None and panel.fit.rows == []
    assert not panel.download_button.isEnabled() and panel.download_button.text() == "Download"
    assert not panel.summary.grid.isVisible() and "org/tiny-llama" not in panel.summary.file_names()
    assert "org/missing" in panel.message.text()
    assert panel.retry_button.isEnabled()
    assert panel.retry_button.toolTip() == "Look up org/missing again"
    # Retry looks the repo up again (it exists by now), and the panel shows it.
    mock_hub.add_repo("org/missing", checkpoint_files(n_layers=2))
    with qtbot.waitSignal(panel.sig_report, timeout=30_000):
        qtbot.mouseClick(panel.retry_button, Qt.MouseButton.LeftButton)
    assert panel.report is not None and panel.report.repo_id == "org/missing" and panel.download_button.isEnabled()
    # A mistyped id clears it too, before any request.
    panel.repo.setText("a/b/c")
    qtbot.mouseClick(panel.inspect_button, Qt.MouseButton.LeftButton)
    assert panel.report is None and not panel.download_button.isEnabled()


def test_unsupported_repo_says_why(mock_hub: MockHub, qtbot: QtBot, page: ModelsPage) -> None:
    mock_hub.add_repo("org/pickles", {"pytorch_model.bin": b"\x80\x02" * 600, "config.json": "{}"})
    panel = page.hub_panel
    inspect(qtbot, panel, "org/pickles")
    assert "pickle" in panel.summary.grid.value("Why") and panel.summary.grid.value("Next step")
    assert "pickle" in panel.message.text() and panel.fit.rows == []
    assert not panel.download_button.isEnabled()


def test_a_newer_inspection_wins_over_a_late_one(mock_hub: MockHub, qtbot: QtBot, page: ModelsPage) -> None:
    mock_hub.add_repo("org/first", checkpoint_files())
    mock_hub.add_repo("org/second", checkpoint_files(n_layers=2))
    panel = page.hub_panel
    mock_hub.hang("info")  # the first look-up gets no answer for now
    panel.repo.setText("org/first")
    qtbot.mouseClick(panel.inspect_button, Qt.MouseButton.LeftButton)
    first = panel.inspect_job
    assert first is not None
    qtbot.waitUntil(mock_hub.hung.is_set, timeout=10_000)
    inspect(qtbot, panel, "org/second")
    # The first look-up was cancelled and really stops (its child process ends) while its request still hangs.
    qtbot.waitUntil(lambda: not first.is_active(), timeout=30_000)
    mock_hub.release()
    assert panel.report is not None and panel.report.repo_id == "org/second"
    assert panel.message.text().startswith("org/second:")


def test_search_filters_then_inspect_and_offline_sentence(mock_hub: MockHub, qtbot: QtBot, page: ModelsPage) -> None:
    mock_hub.add_repo("org/Tiny-GGUF", {"a-Q4_K_M.gguf": b"x"}, tags=["gguf"], downloads=50)
    mock_hub.add_repo("org/tiny", checkpoint_files(), downloads=500)
    mock_hub.add_repo("org/tiny-embed", {"config.json": "{}"}, pipeline_tag="feature-extraction", downloads=5)
    view = page.hub_panel.search_view
    view.query.setText("tiny")
    assert view.text_generation.isChecked()
    view.search()
    qtbot.waitUntil(lambda: view.repo_ids() == ["org/tiny", "org/Tiny-GGUF"], timeout=30_000)
    view.gguf.setChecked(True)
    qtbot.mouseClick(view.search_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: view.repo_ids() == ["org/Tiny-GGUF"], timeout=30_000)
    view.gguf.setChecked(False)
    qtbot.keyClick(view.query, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: view.repo_ids() == ["org/tiny", "org/Tiny-GGUF"], timeout=30_000)
    panel = page.hub_panel
    with qtbot.waitSignal(panel.sig_report, timeout=30_000):
        item = view.results.item(0)
        qtbot.mouseClick(view.results.viewport(), Qt.MouseButton.LeftButton,
                         pos=view.results.visualItemRect(item).center())
    assert panel.repo.text() == "org/tiny" and panel.report is not None and panel.report.kind == "checkpoint"

    mock_hub.stop()  # the network is gone
    view.search()
    qtbot.waitUntil(lambda: view.status.text() == OFFLINE_SENTENCE, timeout=30_000)
    assert view.repo_ids() == []


def test_main_window_passes_the_hardware_report_to_the_panel(qtbot: QtBot) -> None:
    from desktop.ui.main_window import MainWindow

    window = MainWindow(start_background=False)
    qtbot.addWidget(window)
    window.hardware_page.sig_report.emit(machine(ram_available=12 * GB, gpu_free=8 * GB))
    memory = window.models_page.hub_panel.fit.memory
    assert memory is not None and memory.host.available_bytes == 12 * GB
    assert [g.free_bytes for g in memory.gpus] == [8 * GB]
    assert [window.models_page.tabs.tabText(i) for i in range(2)] == ["On this computer", "Hugging Face"]
    window.close()


def test_cancel_stops_a_hung_inspection_at_once(mock_hub: MockHub, qtbot: QtBot, page: ModelsPage) -> None:
    """13.1: inspect ran in the GUI process without cancel (a hung server held it until the timeout); it runs in
    a child process now, and Cancel ends it while the server still hangs."""
    mock_hub.add_repo("org/slow", checkpoint_files())
    panel = page.hub_panel
    mock_hub.hang("info")
    try:
        panel.repo.setText("org/slow")
        qtbot.mouseClick(panel.inspect_button, Qt.MouseButton.LeftButton)
        job = panel.inspect_job
        assert job is not None and panel.cancel_button.isEnabled()
        qtbot.waitUntil(mock_hub.hung.is_set, timeout=30_000)
        # Well inside the 10 s the Hub request itself would wait for: the child is stopped, not waited for.
        with qtbot.waitSignal(job.sig_finished, timeout=5_000):
            qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
        assert panel.message.text() == "Inspection cancelled." and panel.retry_button.isEnabled()
    finally:
        mock_hub.release()
