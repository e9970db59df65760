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
