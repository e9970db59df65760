"""Every memory figure in the app comes from the one planner: the Hub fit table, find my quant, the Compare fit
column, the Chat slider's breakdown, `quantdesk plan` and the Hardware page's "what fits", side by side on the same
model, context and machine, give the same numbers; GPUs the installed llama.cpp cannot use count nowhere."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from mockhub import MockHub, gguf_files, mock_hub  # noqa: F401 - fixtures
from pytestqt.qtbot import QtBot

from desktop import cli, memory
from desktop.eval import compare, recommend
from desktop.gguf.reader import read_gguf
from desktop.gguf.remote import GgufModel
from desktop.hardware.report import (
    CpuInfo,
    GpuInfo,
    HardwareReport,
    LlamaBuild,
    LlamaDevice,
    MemoryInfo,
    UsageSample,
)
from desktop.hub.inspect import inspect_repo
from desktop.hub.repo import RepoReport, fit_rows
from desktop.jobs import format_bytes
from desktop.ui.chat.offload import OffloadPanel
from desktop.ui.hardware.page import HardwarePage
from desktop.workers import JobManager

from engine_helpers import demo_model_info, demo_model_path  # noqa: E402 - tests/ is on sys.path under pytest

GB = 10**9
N_CTX = 4096
GPU_FREE = 1_600_000_000  # the demo model then fits partly: CUDA overhead, margin, logits buffer, some layers


def hardware_report(*, llama_cuda: bool, gpu_free: int = GPU_FREE) -> HardwareReport:
    """An NVIDIA card NVML sees, next to a llama.cpp with a CUDA device for it (or a CPU-only llama.cpp)."""
    total = max(4 * GB, gpu_free + GB)
    gpu = GpuInfo(0, "Test GPU", "CUDA", total, gpu_free, "nvml")
    devices = [LlamaDevice("CUDA0", "Test GPU", "GPU", "CUDA", total, gpu_free)] if llama_cuda else []
    llama = LlamaBuild(available=True, supports_gpu_offload=llama_cuda, devices=devices)
    return HardwareReport("Linux", CpuInfo("Test CPU", 2, 2, "x86_64", []), MemoryInfo(16 * GB, 8 * GB), [gpu],
                          llama, [])


@pytest.fixture
def jobs() -> Iterator[JobManager]:
    manager = JobManager()
    yield manager
    assert manager.stop_all(timeout_s=10)


def consumers(qtbot: QtBot, report: HardwareReport, monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture[str]) -> dict[str, tuple[int, int]]:
    """(bytes needed, GPU layers) as each consumer computes them for the demo model at N_CTX on ``report``."""
    path = demo_model_path()
    shape = memory.shape_from_gguf(demo_model_info())
    machine = memory.machine_from_report(report)
    found: dict[str, tuple[int, int]] = {}

    hub = RepoReport("org/demo-GGUF", "main", "0" * 40, "gguf", [], attention=shape,
                     gguf_models=[GgufModel("demo-Q4_K_M.gguf", "Q4_K_M", ["demo-Q4_K_M.gguf"], path.stat().st_size)])
    row = fit_rows(hub, N_CTX, machine)[0]
    found["hub"] = (row.fit.needed_bytes, row.fit.plan.n_gpu_layers)

    found["find my quant"] = (recommend.memory_estimate(path, N_CTX, machine=machine), -1)

    short, _sentence = compare.fits_text(shape, N_CTX, report)
    found["compare"] = (-1, -1)
    found["compare text"] = short  # type: ignore[assignment]

    panel = OffloadPanel()
    qtbot.addWidget(panel)
    panel.set_hardware_report(report)
    panel.set_model(shape)
    panel.context.setValue(N_CTX)
    assert panel.plan is not None
    found["chat"] = (panel.plan.totals.used, panel.slider.value())

    import desktop.verbs.plan as plan_verb

    monkeypatch.setattr(plan_verb, "detected_machine", lambda: machine)
    cli.main(["plan", str(path), "--ctx", str(N_CTX), "--json"])
    data = json.loads(capsys.readouterr().out)
    found["plan"] = (data["totals"]["used"], data["n_gpu_layers"])
    return found


@pytest.mark.parametrize("llama_cuda", [True, False])
def test_every_consumer_gives_the_same_numbers(qtbot: QtBot, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str], llama_cuda: bool) -> None:
    report = hardware_report(llama_cuda=llama_cuda)
    found = consumers(qtbot, report, monkeypatch, capsys)
    needed, layers = found["plan"]
    assert found["hub"] == found["chat"] == (needed, layers)
    assert found["find my quant"][0] == needed
    compare_text = found["compare text"]
    assert format_bytes(needed) in compare_text  # type: ignore[operator]
    if llama_cuda:
        assert 0 < layers < 19 and compare_text == f"GPU {layers}/19 ~{format_bytes(needed)}"
    else:  # the NVIDIA card is there, but this llama.cpp cannot use it: nothing is planned on it
        assert layers == 0 and compare_text == f"RAM ~{format_bytes(needed)}"
        assert memory.machine_from_report(report).gpus == ()


def test_the_hardware_page_uses_the_planner_and_its_ram_numbers_add_up(qtbot: QtBot, jobs: JobManager) -> None:
    page = HardwarePage(jobs)
    qtbot.addWidget(page)
    report = hardware_report(llama_cuda=True, gpu_free=20 * GB)
    page.show_report(report)
    machine = memory.machine_from_report(report)
    assert page.fits_ram.text() == memory.what_fits(machine, on_gpu=False)
    assert page.fits_gpu.text() == memory.what_fits(machine, on_gpu=True)
    # what it claims fits does fit in the planner, and the next size up does not
    largest = memory.largest_model(machine, on_gpu=False)
    ram_only = memory.Machine((), machine.host)
    for parameters, fits in ((largest, True), (largest + 1e9, False)):
        shape = memory.verdict.reference_shape(parameters, memory.verdict.Q4_K_M_BPW)
        assert (memory.fit(shape, ram_only).where == "RAM") is fits
    # a many-billion model on 2 cores comes with a speed estimate, labelled as one
    assert "On 2 cores that model would generate about" in page.fits_ram.text() and "an estimate" in page.fits_ram.text()
    # the same card with a CPU-only llama.cpp: no "what fits on the GPU"
    page.show_report(hardware_report(llama_cuda=False, gpu_free=20 * GB))
    assert "cannot offload" in page.fits_gpu.text()
    # live usage: available and in use are one moment's numbers, so they add up to the total
    page.show_usage(UsageSample(cpu_percent=10.0, ram_used=11 * GB, ram_total=16 * GB, gpus=[]))
    assert page.memory_grid.value("Available") == format_bytes(5 * GB)
    assert page.ram_bar.text.text().startswith(format_bytes(11 * GB))


def test_cpu_speed_estimate_is_bandwidth_bound() -> None:
    # 2 cores move about 16 GB/s: a 21.8 GB model reads all its weights per token
    assert memory.cpu_tokens_per_s(21_800_000_000, 2) == pytest.approx(16e9 / 21.8e9)
    assert memory.cpu_tokens_per_s(1_000_000_000, 64) == pytest.approx(60.0)  # capped by the memory bus


def test_gpu_reading_for_the_demo_model_after_a_load_includes_nvml(qtbot: QtBot) -> None:
    # the engine's "loaded" report with NVML's before/after delta: predicted against actual shows the GPU's total
    shape = memory.shape_from_gguf(demo_model_info())
    panel = OffloadPanel()
    qtbot.addWidget(panel)
    panel.set_hardware_report(hardware_report(llama_cuda=True))
    panel.set_model(shape)
    plan = panel.plan
    assert plan is not None and plan.gpus[0].layers
    gpu = plan.gpus[0].breakdown
    buffers = {"weights": gpu.weights, "kv_cache": gpu.kv_cache, "compute": gpu.compute}
    actual = {"host": {"weights": 1, "kv_cache": 0, "compute": 1}, "gpus": [{"name": "CUDA0", **buffers}],
              "nvml": [{"index": 0, "used_before": 0, "used_after": 0, "delta": sum(buffers.values()) + 600 * 10**6}]}
    rows = panel.show_actual(actual, N_CTX, plan.n_gpu_layers)
    by_part = {(r["device"], r["part"]): r for r in rows}
    assert by_part[("Test GPU", "used")]["actual"] == sum(buffers.values()) + 600 * 10**6
    assert by_part[("Test GPU", "used")]["predicted"] == gpu.used
    assert by_part[("Test GPU", "overhead")]["actual"] == 600 * 10**6
    assert by_part[("Test GPU", "overhead")]["predicted"] == 558 * 10**6


def test_the_hub_row_of_a_gguf_is_the_plan_of_that_file_once_downloaded(mock_hub: MockHub, tmp_path: Path) -> None:
    """The Hub reads a single-file GGUF's whole tensor table by byte ranges, so its row is the local file's plan."""
    files = gguf_files(tmp_path, "tiny-Q8_0", "Q8_0", n_layers=6, hidden=512, heads=8, kv_heads=2, vocab=4096)
    mock_hub.add_repo("org/tiny-GGUF", files, tags=["gguf"])
    report = inspect_repo(progress=lambda *a, **k: None, cancelled=lambda: False, repo="org/tiny-GGUF",
                          revision=None)
    machine = memory.Machine((memory.GpuBudget("GPU", 4 * 10**8, backend="Vulkan"),), memory.HostBudget(8 * GB))
    (row,) = fit_rows(report, 2048, machine)
    local = memory.fit(memory.shape_from_gguf(read_gguf(files["tiny-Q8_0.gguf"])), machine,
                       memory.PlanOptions(n_ctx=2048))
    assert (row.fit.where, row.fit.needed_bytes, row.kv_bytes) == (local.where, local.needed_bytes, local.kv_bytes)
    assert row.fit.plan.gpus[0].breakdown == local.plan.gpus[0].breakdown
    assert row.size_bytes > row.fit.plan.host.breakdown.weights  # the file's header is not weights


def test_parameter_counts_read_the_same_in_the_hardware_sentence_and_the_library() -> None:
    """One formatter for parameter counts: the Hardware page's "what fits" said 13B where the Models table said 13.0B."""
    from desktop.gguf.reader import format_parameters

    assert [format_parameters(n) for n in (135_000_000, 1_240_000_000, 13_000_000_000, 70_600_000_000)] == \
        ["135M", "1.2B", "13B", "71B"]
    machine = memory.Machine((), memory.HostBudget(available_bytes=48 * GB, total_bytes=64 * GB), cpu_cores=8)
    largest = memory.largest_model(machine, on_gpu=False)
    assert f"up to about a {format_parameters(int(largest))} model at Q4_K_M" in memory.what_fits(machine, on_gpu=False)
