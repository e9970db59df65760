"""The Chat page's memory panel: the KV cache type and flash attention are planner inputs chosen there, the
breakdown follows them live, and the engine is loaded with them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pytestqt.qtbot import QtBot

from desktop import memory
from desktop.demo_model import DEMO_SOURCE
from desktop.hardware.report import CpuInfo, GpuInfo, HardwareReport, LlamaBuild, LlamaDevice, MemoryInfo
from desktop.jobs import format_bytes
from desktop.library import Library
from desktop.ui.chat.offload import OffloadPanel
from desktop.ui.chat.page import ChatPage
from desktop.workers import JobManager

from engine_helpers import demo_model_info, demo_model_path  # noqa: E402 - tests/ is on sys.path under pytest

GB = 10**9


def vulkan_report(free: int = 3 * GB) -> HardwareReport:
    gpu = GpuInfo(0, "Radeon", "Vulkan", 8 * GB, free, "llama.cpp", engine_uses=True)
    llama = LlamaBuild(available=True, supports_gpu_offload=True,
                       devices=[LlamaDevice("Vulkan0", "Radeon", "GPU", "Vulkan", 8 * GB, free)])
    return HardwareReport("Linux", CpuInfo("CPU", 2, 2, "x86_64", []), MemoryInfo(16 * GB, 8 * GB), [gpu], llama, [])


@pytest.fixture
def panel(qtbot: QtBot) -> OffloadPanel:
    widget = OffloadPanel()
    qtbot.addWidget(widget)
    widget.set_hardware_report(vulkan_report())
    widget.set_model(memory.shape_from_gguf(demo_model_info()))
    widget.context.setValue(8192)
    return widget


def test_the_kv_type_changes_the_breakdown_live(panel: OffloadPanel) -> None:
    assert panel.plan is not None and panel.cache_type() == "f16" and panel.flash_attn() == "auto"
    f16 = panel.plan.totals.kv_cache
    panel.kv_type.setCurrentIndex(panel.kv_type.findData("q8_0"))
    assert panel.plan.cache_type_k == "q8_0" and panel.plan.totals.kv_cache == f16 * 34 // 64
    panel.kv_type.setCurrentIndex(panel.kv_type.findData("q4_0"))
    assert panel.plan.totals.kv_cache == f16 * 18 // 64
    # the device rows say it too
    gpu_row = panel._rows[0]
    assert f"KV cache {format_bytes(panel.plan.gpus[0].breakdown.kv_cache)}" in gpu_row.detail.text()
    assert "GPU overhead 52.0 MB" in gpu_row.detail.text()  # Vulkan's measured overhead


def test_flash_attention_off_grows_the_compute_buffer_and_refuses_a_quantized_cache(panel: OffloadPanel) -> None:
    assert panel.plan is not None and panel.plan.flash_attn
    auto = panel.plan.totals.compute
    panel.flash.setCurrentIndex(panel.flash.findData("off"))
    assert panel.plan is not None and not panel.plan.flash_attn
    assert panel.plan.totals.compute > auto  # the n_head x n_kv x n_ubatch scores are back
    panel.kv_type.setCurrentIndex(panel.kv_type.findData("q8_0"))
    assert panel.plan is None
    assert panel.verdict.text() == ("✖ llama.cpp needs flash attention for a q8_0 V cache. Set flash attention to "
                                    "auto or on, or use an f16 KV cache.")
    panel.flash.setCurrentIndex(panel.flash.findData("on"))
    assert panel.plan is not None and panel.plan.flash_attn


@pytest.fixture
def page(qtbot: QtBot) -> Iterator[ChatPage]:
    jobs = JobManager()
    chat = ChatPage(jobs)
    qtbot.addWidget(chat)
    chat.show()
    yield chat
    chat.shutdown()
    jobs.stop_all(timeout_s=5.0)


def test_the_chosen_kv_type_and_flash_attention_go_to_the_engine(qtbot: QtBot, page: ChatPage) -> None:
    library = Library()
    library.add_file(demo_model_path(), source=DEMO_SOURCE)
    page.set_models(library.models())
    page.set_hardware_report(vulkan_report())
    qtbot.waitUntil(lambda: page.offload.plan is not None, timeout=30_000)
    page.offload.kv_type.setCurrentIndex(page.offload.kv_type.findData("q4_0"))
    page.offload.flash.setCurrentIndex(page.offload.flash.findData("on"))
    options = page.load_options()
    assert options is not None
    assert (options.cache_type_k, options.flash_attn) == ("q4_0", "on")
    assert options.request()["settings"]["cache_type_v"] == "q4_0"
