"""The hardware report: the real path on this machine, and the NVIDIA path against an NVML stand-in."""

from __future__ import annotations

import json
import subprocess
import sys

import psutil

import fake_nvml
from desktop.hardware.report import (
    UsageSampler,
    collect_nvidia,
    collect_report,
    cpu_features_from_flags,
    cpu_model_name,
    parse_system_info,
)

GiB = 2**30


def test_real_report_on_this_machine() -> None:
    report = collect_report()
    assert report.cpu.model and report.cpu.model != "unknown CPU"
    assert report.cpu.logical_cores == psutil.cpu_count(logical=True)
    assert report.cpu.physical_cores >= 1
    assert report.memory.total == psutil.virtual_memory().total
    assert 0 < report.memory.available <= report.memory.total
    # llama.cpp is installed and reports at least its CPU device
    assert report.llama.available, report.llama.error
    assert report.llama.version
    assert any(d.kind == "CPU" for d in report.llama.devices)
    assert report.llama.cpu_features  # the build's CPU code paths, e.g. AVX2
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    if " avx2 " in flags:
        assert "AVX2" in report.cpu.features


def test_no_nvidia_driver_is_a_plain_note_with_the_real_module() -> None:
    """This machine has nvidia-ml-py but no driver: the real module raises LibraryNotFound."""
    gpus, note = collect_nvidia()
    assert gpus == []
    assert note.startswith("No NVIDIA driver found")
    assert collect_report(include_llama=False).notes[0] == note


def test_nvml_lists_every_gpu_with_memory_driver_and_capability() -> None:
    nvml = fake_nvml.make_module(
        [
            fake_nvml.FakeGpu("NVIDIA GeForce RTX 4090", total=24 * GiB, used=2 * GiB, capability=(8, 9)),
            fake_nvml.FakeGpu("NVIDIA RTX A2000", total=6 * GiB, used=1 * GiB, capability=(8, 6), utilization=None),
        ]
    )
    gpus, note = collect_nvidia(nvml)
    assert note == ""
    assert [(g.index, g.name, g.backend, g.source) for g in gpus] == [
        (0, "NVIDIA GeForce RTX 4090", "CUDA", "nvml"),
        (1, "NVIDIA RTX A2000", "CUDA", "nvml"),
    ]
    assert (gpus[0].vram_total, gpus[0].vram_free, gpus[0].vram_used) == (24 * GiB, 22 * GiB, 2 * GiB)
    assert gpus[0].driver == "550.54.14" and gpus[0].compute_capability == "8.9"
    assert gpus[0].utilization == 37
    assert gpus[1].utilization is None  # "Not Supported" is not an error
    assert nvml.state == {"initialised": 0, "shutdowns": 1}  # NVML was shut down again


def test_driver_not_loaded_is_normal_and_other_errors_are_reported_plainly() -> None:
    gpus, note = collect_nvidia(fake_nvml.make_module([], init_error=fake_nvml.NVML_ERROR_DRIVER_NOT_LOADED))
    assert gpus == [] and note.startswith("No NVIDIA driver found")
    gpus, note = collect_nvidia(fake_nvml.make_module([], init_error=999))
    assert gpus == [] and note == "The NVIDIA driver did not answer (Unknown Error); NVIDIA GPUs are not listed."


def test_report_includes_nvidia_gpus_and_serialises_to_json() -> None:
    nvml = fake_nvml.make_module([fake_nvml.FakeGpu("NVIDIA H100", total=80 * GiB, used=3 * GiB)])
    report = collect_report(nvml)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["gpus"][0]["name"] == "NVIDIA H100"
    assert data["gpus"][0]["vram_used"] == 3 * GiB
    assert not any("NVIDIA driver" in n for n in report.notes)
    assert any("CPU only" in n for n in report.notes)  # this build cannot offload


def test_live_sampler_reads_cpu_ram_and_vram() -> None:
    nvml = fake_nvml.make_module([fake_nvml.FakeGpu("NVIDIA L4", total=24 * GiB, used=5 * GiB)])
    sampler = UsageSampler(nvml)
    try:
        sample = sampler.sample()
    finally:
        sampler.close()
    assert 0.0 <= sample.cpu_percent <= 100.0
    assert 0 < sample.ram_used < sample.ram_total == psutil.virtual_memory().total
    assert [(g.index, g.vram_used, g.vram_total) for g in sample.gpus] == [(0, 5 * GiB, 24 * GiB)]
    assert nvml.state["initialised"] == 0


def test_cpu_name_and_features_from_cpuinfo_text() -> None:
    text = "processor : 0\nmodel name : Intel(R) Xeon(R) Platinum 8480+\nflags : fpu sse3 avx avx2 fma f16c avx512f amx_tile\n"
    assert cpu_model_name(text) == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu_features_from_flags({"avx", "avx2", "fma", "avx512f", "amx_tile"}, "x86_64") == [
        "AVX", "AVX2", "FMA", "AVX-512", "AMX",
    ]
    assert cpu_features_from_flags({"asimd", "asimddp", "i8mm", "sve"}, "aarch64") == ["NEON", "DOTPROD", "I8MM", "SVE"]


def test_llama_system_info_parsing() -> None:
    text = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 0 | AMX_INT8 = 1 | REPACK = 1 |"
    assert parse_system_info(text) == ["SSE3", "SSSE3", "AVX", "AVX2", "AMX_INT8", "REPACK"]


def test_hw_command_prints_json() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "desktop", "hw", "--json"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    data = json.loads(out)
    assert data["cpu"]["logical_cores"] == psutil.cpu_count(logical=True)
    assert data["memory"]["total"] == psutil.virtual_memory().total
    assert data["llama"]["available"] is True


def test_hw_command_prints_a_readable_report() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "desktop", "hw"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert out.splitlines()[1].startswith("CPU      ")
    assert "Memory" in out and "llama.cpp" in out


def test_an_nvidia_gpu_the_cpu_engine_cannot_use_says_the_one_fix_and_gets_no_layers(tmp_path, monkeypatch) -> None:
    """The H200 case: NVML sees the card, pip's CPU build cannot offload: the report says so and what to do, and
    the planner puts no layer on that GPU instead of pretending."""
    from desktop.llama.engines import SmokeResult, load_engine, save_smoke
    from desktop.memory import machine_from_report

    nvml = fake_nvml.make_module([fake_nvml.FakeGpu("NVIDIA H200", total=141 * GiB, used=1 * GiB, capability=(9, 0))])
    report = collect_report(nvml)
    assert report.llama.engine == "cpu"
    gpu = report.gpus[0]
    assert (gpu.name, gpu.engine_uses) == ("NVIDIA H200", False)
    assert gpu.fix == "Build the Vulkan engine: quantdesk engine build vulkan (or Build on the Hardware page)."
    machine = machine_from_report(report)
    assert machine.gpus == () and "quantdesk engine build vulkan" in machine.left_out[0]
    # once a Vulkan engine passed its test, the fix is to switch to it
    folder = tmp_path / "engines" / "vulkan-9"
    (folder / "lib").mkdir(parents=True)
    (folder / "engine.json").write_text(json.dumps({"backend": "vulkan", "llama_cpp_python": report.llama.version}))
    engine = load_engine(folder)
    assert engine is not None
    save_smoke(engine, SmokeResult(True, "Passed."))
    monkeypatch.setenv("QUANTDESK_HOME", str(tmp_path))
    nvml = fake_nvml.make_module([fake_nvml.FakeGpu("NVIDIA H200", total=141 * GiB, used=1 * GiB, capability=(9, 0))])
    assert collect_report(nvml).gpus[0].fix.startswith("Switch to the Vulkan engine: quantdesk engine use vulkan")


def test_a_card_nvml_and_the_vulkan_engine_both_list_is_one_gpu_reached_through_vulkan() -> None:
    from desktop.hardware.report import GpuInfo, merge_llama_gpus

    nvml_gpu = GpuInfo(0, "NVIDIA GeForce RTX 4090", "CUDA", 24 * GiB, 22 * GiB, "nvml", compute_capability="8.9")
    vulkan = GpuInfo(1, "NVIDIA GeForce RTX 4090", "Vulkan", 24 * GiB, 23 * GiB, "llama.cpp")
    amd = GpuInfo(2, "AMD Radeon RX 7900 XTX (RADV NAVI31)", "Vulkan", 24 * GiB, 24 * GiB, "llama.cpp")
    merged = merge_llama_gpus([nvml_gpu], [vulkan, amd])
    assert [(g.name, g.backend, g.engine_uses, g.index) for g in merged] == [
        ("NVIDIA GeForce RTX 4090", "Vulkan", True, 0),
        ("AMD Radeon RX 7900 XTX (RADV NAVI31)", "Vulkan", None, 1),
    ]


def test_pci_display_devices_are_found_in_sysfs(tmp_path) -> None:
    from desktop.hardware.engine_use import fix_for, pci_gpus

    for slot, cls, vendor in (("0000:03:00.0", "0x030000", "0x1002"), ("0000:00:02.0", "0x030000", "0x8086"),
                              ("0000:00:1f.0", "0x060100", "0x8086")):
        device = tmp_path / slot
        device.mkdir()
        (device / "class").write_text(cls + "\n")
        (device / "vendor").write_text(vendor + "\n")
        (device / "device").write_text("0x73bf\n")
    assert [(g.vendor, g.pci_id) for g in pci_gpus(tmp_path)] == [("Intel", "8086:73bf"), ("AMD", "1002:73bf")]
    assert fix_for("AMD", "cuda", {"cuda": True}).startswith("CUDA runs on NVIDIA GPUs only")
    assert "mesa-vulkan-drivers" in fix_for("AMD", "vulkan", {"vulkan": True})


def test_vulkan_storage_buffer_limits_read_from_the_loader_match_vulkaninfo() -> None:
    """The limit that decides whether a big weight can run on a Vulkan device, read through the loader with ctypes,
    against Khronos' vulkaninfo (vulkan-tools; lavapipe here: 128 MiB)."""
    import re

    from desktop.hardware.vulkan import storage_buffer_limits

    text = subprocess.run(["vulkaninfo"], capture_output=True, text=True, timeout=120).stdout
    expected = {}
    for block in text.split("VkPhysicalDeviceProperties:")[1:]:
        name = re.search(r"deviceName\s*=\s*(.+)", block)
        limit = re.search(r"maxStorageBufferRange\s*=\s*(\d+)", block)
        if name and limit:
            expected[name.group(1).strip()] = int(limit.group(1))
    assert expected, "vulkaninfo listed no device"
    assert storage_buffer_limits() == expected
