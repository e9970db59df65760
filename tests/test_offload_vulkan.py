"""The memory planner against llama.cpp on a GPU backend: the Vulkan engine (made by the app's own builder, from
the shared cache when it is there) on this machine's Vulkan device (Mesa's lavapipe in CI), with full and partial
offload of the demo Gemma 3 270M and the bundled SmolLM2 135M.

What llama.cpp logs per buffer (Vulkan0 weights, KV cache and compute; the host's mapped weights, KV cache and
Vulkan_Host compute under partial offload) is compared with the plan for the same settings, on the machine the
hardware report of that engine describes (so the planner's own reading of the report is tested too).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from desktop import memory
from desktop.chat.engine import Engine, LoadOptions
from desktop.gguf.reader import read_gguf
from desktop.process import run_in_child

from engine_helpers import demo_model_path  # noqa: E402 - tests/ is on sys.path under pytest
from serve_helpers import instruct_model_path  # noqa: E402

N_CTX = 1024
PARTS = ("weights", "kv_cache", "compute")


@pytest.fixture(scope="module")
def vulkan_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    """The child environment of the Vulkan engine, installed into a module data folder (built when not cached)."""
    from desktop.llama.build import build_engine
    from desktop.llama.engines import child_environment, load_engine

    result = build_engine("vulkan", lambda *a, **k: None, lambda: False,
                          data_dir=tmp_path_factory.mktemp("engines-data"))
    engine = load_engine(Path(result["path"]))
    assert engine is not None, result
    # llama.cpp skips CPU-type Vulkan devices (lavapipe) unless told which to use; a real GPU 0 serves as well
    return {**child_environment(engine), "GGML_VK_VISIBLE_DEVICES": "0"}


@pytest.fixture(scope="module")
def machine(vulkan_env: dict[str, str | None]) -> memory.Machine:
    report = run_in_child("desktop.hardware.report:report_job", env=vulkan_env)
    found = memory.machine_from_report(report)
    assert [g.backend for g in found.gpus] == ["Vulkan"], (report.gpus, found.left_out)
    return found


@pytest.fixture(scope="module")
def engine(vulkan_env: dict[str, str | None], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    eng = Engine(log_path=tmp_path_factory.mktemp("engine") / "engine.log")
    eng.engine_env = vulkan_env  # the child starts on this engine
    yield eng
    eng.close()


@pytest.mark.parametrize("which", ["demo", "chat"])
@pytest.mark.parametrize("share", ["all", "half", "none"])
def test_vulkan_buffers_full_partial_and_no_offload_match_the_plan(
    engine: Engine, machine: memory.Machine, which: str, share: str
) -> None:
    """With no layer offloaded the Vulkan engine still takes a compute buffer on the GPU (prompt batches run
    there), so "none" is checked too."""
    model = demo_model_path() if which == "demo" else instruct_model_path()
    shape = memory.shape_from_gguf(read_gguf(model))
    layers = {"all": shape.total_layers, "half": shape.total_layers // 2, "none": 0}[share]
    plan = memory.plan_offload(shape, gpus=machine.gpus, host=machine.host,
                               options=memory.PlanOptions(n_ctx=N_CTX), n_gpu_layers=layers)
    loaded = engine.load_and_wait(LoadOptions(str(model), n_ctx=N_CTX, n_gpu_layers=layers), timeout=600)
    actual = loaded.data["memory"]
    assert [g["name"] for g in actual["gpus"]] == ["Vulkan0"], actual
    gpu, host = actual["gpus"][0], actual["host"]
    predicted_gpu, predicted_host = plan.gpus[0].breakdown, plan.host.breakdown
    mib = 0.01 * 2**20  # llama.cpp logs MiB with two decimals
    # weights and KV cache exactly, on both sides (the host's weights as llama.cpp maps them: a file range)
    for part in ("weights", "kv_cache"):
        assert abs(gpu[part] - getattr(predicted_gpu, part)) <= 2 * mib, (part, gpu, predicted_gpu)
        assert abs(host[part] - getattr(predicted_host, part)) <= 2 * mib, (part, host, predicted_host)
    # compute buffers: the GPU's within 5%; the host's (Vulkan_Host: the inputs, or the logits when the output
    # weight stayed on the CPU; the planner's old guess was a whole CPU graph) within 1 MiB
    assert gpu["compute"] == pytest.approx(predicted_gpu.compute, rel=0.05)
    assert abs(host["compute"] - predicted_host.compute) <= 2**20, (host, predicted_host)
    assert sum(gpu[p] for p in PARTS) == pytest.approx(sum(getattr(predicted_gpu, p) for p in PARTS), rel=0.05)
    assert sum(host[p] for p in PARTS) == pytest.approx(sum(getattr(predicted_host, p) for p in PARTS), rel=0.05)
