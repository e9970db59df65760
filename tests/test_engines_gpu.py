"""The GPU paths for real, on the Vulkan engine the app's own builder made (Mesa's lavapipe in CI: a Vulkan device
that runs on the CPU). Each test starts as few processes on the Vulkan engine as it can: the first decode in a
process compiles shader pipelines (about 45 s on 2 cores; Mesa's on-disk cache makes later processes quick)."""

from __future__ import annotations

import json
import os
import signal
import shutil
from pathlib import Path
from typing import Any

import pytest

from desktop.chat.engine import Engine as ChatEngine
from desktop.chat.engine import LoadOptions, Sampling
from desktop.llama import engines
from desktop.llama.engines import Engine, SmokeResult
from desktop.llama.smoke import run_smoke_test
from engine_helpers import demo_model_path


@pytest.fixture
def chat_model(bundled_chat_model: Path) -> Path:
    return bundled_chat_model


def test_the_vulkan_engine_passed_its_smoke_test_on_the_vulkan_device(vulkan_engine: Engine) -> None:
    smoke = vulkan_engine.smoke
    assert smoke is not None and smoke.ok, smoke
    assert smoke.layers_total > 1 and smoke.layers_offloaded == smoke.layers_total
    assert smoke.gpu_buffers == ["Vulkan0"]
    assert smoke.tokens_match and smoke.device
    assert engines.selected_engine().name == vulkan_engine.name  # offered, and the best engine here


def test_the_hardware_report_lists_the_device_of_the_selected_engine(vulkan_engine: Engine) -> None:
    from desktop.hardware.report import collect_report_on_engine
    from desktop.verbs.hw import format_report

    report = collect_report_on_engine()
    assert report.llama.engine == vulkan_engine.name and report.llama.lib_dir == str(vulkan_engine.lib_dir)
    assert report.llama.supports_gpu_offload
    vulkan = [d for d in report.llama.devices if d.backend == "Vulkan"]
    assert vulkan and vulkan[0].name == "Vulkan0" and vulkan[0].memory_total > 0
    gpu = next(g for g in report.gpus if g.backend == "Vulkan")
    assert gpu.engine_uses is True and gpu.fix == ""
    assert gpu.software == ("llvmpipe" in gpu.name)
    assert gpu.max_tensor_bytes == _vulkaninfo_storage_range(gpu.name)  # lavapipe: 128 MiB
    assert f"used by the {vulkan_engine.name} engine" in format_report(report)


def _vulkaninfo_storage_range(name: str) -> int:
    """maxStorageBufferRange of the device called ``name`` as Khronos' own vulkaninfo prints it."""
    import re
    import subprocess

    text = subprocess.run(["vulkaninfo"], capture_output=True, text=True, timeout=120).stdout
    for block in text.split("VkPhysicalDeviceProperties:")[1:]:
        device = re.search(r"deviceName\s*=\s*(.+)", block)
        limit = re.search(r"maxStorageBufferRange\s*=\s*(\d+)", block)
        if device and limit and device.group(1).strip() == name:
            return int(limit.group(1))
    raise AssertionError(f"vulkaninfo does not list {name}")


def _plan_for(model: Path, report: Any, n_ctx: int, layers: int) -> Any:
    from desktop import memory
    from desktop.gguf.reader import read_gguf

    machine = memory.machine_from_report(report)
    assert machine.gpus, f"the Vulkan device must be a budget for the planner: {machine.left_out}"
    return memory.plan_offload(memory.shape_from_gguf(read_gguf(model)), gpus=machine.gpus, host=machine.host,
                               options=memory.PlanOptions(n_ctx=n_ctx), n_gpu_layers=layers)


@pytest.fixture(scope="module")
def tinyllama_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second architecture with an untied output layer: the tinyllama fixture converted by QuantDesk (F16)."""
    from desktop.convert import convert
    from test_convert_support import assemble

    folder = tmp_path_factory.mktemp("tinyllama")
    out = folder / "tinyllama-f16.gguf"
    convert(assemble("tinyllama", folder), out, "f16", progress=lambda d, t, m: None, cancelled=lambda: False)
    return out


def test_layers_go_to_vulkan0_and_the_planner_predicts_the_buffers_within_5_percent(
    vulkan_engine: Engine, chat_model: Path, tinyllama_gguf: Path
) -> None:
    """Full and partial offload of two models in one engine process: llama.cpp's own buffer sizes against the
    planner's prediction for the same settings. Vulkan0 (weights + KV cache + compute) always; the host at full
    offload. Not at partial offload: with mmap, llama.cpp reports the host's "CPU_Mapped" buffer as the whole file
    range its tensors span, GPU layers in between included, so it is not the bytes the host keeps.
    (Gemma 3 270M is not one of the two here: its 178 MB tied output matrix is larger than lavapipe's 128 MiB
    maxStorageBufferRange, so on lavapipe, and only there, llama.cpp keeps the output and its compute on the host.)"""
    from desktop.hardware.report import collect_report_on_engine

    report = collect_report_on_engine()
    n_ctx = 1024
    parts = ("weights", "kv_cache", "compute")
    chat = ChatEngine()
    misses, checked = [], 0
    try:
        chat.start()
        for model in (chat_model, tinyllama_gguf):
            total = _plan_for(model, report, n_ctx, 0).total_layers
            for layers in (total, total // 2):
                plan = _plan_for(model, report, n_ctx, layers)
                loaded = chat.load_and_wait(LoadOptions(str(model), n_ctx=n_ctx, n_gpu_layers=layers), timeout=600)
                memory = loaded.data["memory"]
                assert [g["name"] for g in memory["gpus"]] == ["Vulkan0"], memory
                assert chat.offload_warning == ""
                sides = [("Vulkan0", plan.gpus[0].breakdown, memory["gpus"][0])]
                if layers == total:
                    sides.append(("host", plan.host.breakdown, memory["host"]))
                for where, predicted_parts, actual_parts in sides:
                    predicted = sum(getattr(predicted_parts, p) for p in parts)
                    actual = sum(int(actual_parts[p]) for p in parts)
                    checked += 1
                    if abs(predicted - actual) > 0.05 * actual:
                        misses.append(f"{model.name} {layers}/{total} layers {where}: predicted {predicted}, "
                                      f"actual {actual}")
    finally:
        chat.close()
    assert checked == 6 and misses == []


def test_a_crash_on_the_gpu_engine_offers_retry_on_the_cpu_which_answers(vulkan_engine: Engine,
                                                                         chat_model: Path) -> None:
    chat = ChatEngine()
    try:
        chat.start()
        assert chat.engine_name == vulkan_engine.name and chat.on_gpu_engine
        chat.load_and_wait(LoadOptions(str(chat_model), n_ctx=512, n_gpu_layers=-1), timeout=600)
        assert chat.loaded_memory["gpus"]
        assert chat.pid is not None
        os.kill(chat.pid, signal.SIGSEGV)  # what a driver fault inside the Vulkan backend looks like
        crash = _wait_crash(chat)
        assert crash.error is not None and crash.error.kind == "crash"
        assert chat.on_gpu_engine  # so the Chat page offers "Retry on the CPU"
        options = chat.retry_on_cpu()
        assert options.n_gpu_layers == 0 and chat.engine_name == "cpu" and not chat.on_gpu_engine
        chat.wait_for("loaded", timeout=300)
        assert chat.loaded_memory["gpus"] == []
        reply = chat.ask([{"role": "user", "content": "Say hello."}], Sampling(temperature=0, max_tokens=4, seed=1))
        assert reply.text.strip()
    finally:
        chat.close()


def _wait_crash(chat: ChatEngine) -> Any:
    while True:
        event = chat.next_event(120)
        assert event is not None, "no crash event within 120 s"
        if event.kind == "error":
            return event


def test_evaluation_runs_with_layers_offloaded(vulkan_engine: Engine, chat_model: Path) -> None:
    from desktop.eval.evaluate import evaluate_in_child

    result = evaluate_in_child(chat_model, progress=lambda d, t, m: None, cancelled=lambda: False, n_ctx=64,
                               max_chunks=1, n_gpu_layers=99, gen_tokens=2)
    assert result.ppl > 1 and result.gen_tps > 0
    assert "layers on GPU" in result.hardware


def test_an_engine_that_puts_no_layer_on_a_gpu_fails_its_smoke_test_and_is_not_chosen(
    isolated_home: Path, chat_model: Path
) -> None:
    """A "GPU" engine whose libraries cannot reach a GPU (here: pip's CPU libraries in a Vulkan engine's folder, what
    a build without its driver looks like) loads and answers, but puts no layer on a GPU: that is a failure."""
    folder = isolated_home / "engines" / f"vulkan-{engines.library_version()}"
    shutil.copytree(engines.pip_library_dir(), folder / "lib", symlinks=True)
    (folder / engines.MANIFEST).write_text(json.dumps({"backend": "vulkan",
                                                       "llama_cpp_python": engines.library_version()}))
    engine = engines.load_engine(folder)
    assert engine is not None
    result = run_smoke_test(engine, chat_model)
    assert not result.ok and "put no layer on a GPU" in result.sentence, result
    assert engines.load_engine(folder).smoke == result  # stored
    assert engines.selected_engine().name == "cpu"


def test_an_engine_that_crashes_on_load_fails_its_smoke_test(isolated_home: Path, chat_model: Path) -> None:
    folder = isolated_home / "engines" / f"cuda-{engines.library_version()}"
    (folder / "lib").mkdir(parents=True)
    (folder / "lib" / "libllama.so").write_bytes(b"not a shared library")
    (folder / engines.MANIFEST).write_text(json.dumps({"backend": "cuda",
                                                       "llama_cpp_python": engines.library_version()}))
    engine = engines.load_engine(folder)
    assert engine is not None
    result = run_smoke_test(engine, chat_model)
    assert not result.ok and result.sentence.startswith("The CUDA engine failed its test:"), result
    assert engines.selected_engine().name == "cpu"
    with pytest.raises(Exception, match="failed its test"):
        engines.select_engine(engine.name)


def test_asking_the_cpu_engine_for_gpu_layers_is_reported_not_passed_off(chat_model: Path) -> None:
    chat = ChatEngine()
    chat.engine_env = engines.cpu_environment()
    try:
        chat.start()
        chat.load_and_wait(LoadOptions(str(chat_model), n_ctx=256, n_gpu_layers=-1), timeout=300)
        assert chat.offload_warning.startswith("No layer went to the GPU: the CPU engine cannot offload.")
    finally:
        chat.close()
