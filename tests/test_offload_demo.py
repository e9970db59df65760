"""The planner on real GGUF files: the demo Gemma 3 270M, and a tiny file written here for the plan CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from desktop import cli
from desktop.memory import GpuBudget, HostBudget, Machine, PlanOptions, planner, sizes
from desktop.memory.shape import shape_from_gguf

MiB = 2**20
GiB = 2**30

from engine_helpers import demo_model_info  # noqa: E402 - tests/ is on sys.path under pytest


def test_the_demo_gguf_shape() -> None:
    shape = shape_from_gguf(demo_model_info())
    assert (shape.architecture, shape.n_layer, shape.total_layers) == ("gemma3", 18, 19)
    assert shape.n_vocab == 262144 and shape.n_embd == 640 and shape.n_head == 4
    # grouped-query attention: one KV head of 256 for K and V
    assert set(shape.n_embd_k_gqa) == {256} and set(shape.n_embd_v_gqa) == {256}
    # sliding window of 512 on five of every six layers
    assert shape.sliding_window == 512 and sum(shape.swa_layers) == 15 and not shape.swa_layers[5]
    assert shape.tied_embeddings and shape.output_bytes >= shape.input_bytes > 100 * MiB


def test_the_demo_gguf_kv_cache_uses_the_window_at_long_contexts() -> None:
    shape = shape_from_gguf(demo_model_info())
    per_cell = 2 * 256 * 2  # K + V, f16
    assert sizes.kv_cache_bytes(shape, 32768) == 15 * 1024 * per_cell + 3 * 32768 * per_cell
    assert sizes.kv_cache_bytes(shape, 32768, cache_type_k="q8_0") == (15 * 1024 + 3 * 32768) * 2 * 272


def test_the_demo_gguf_on_synthetic_gpus() -> None:
    shape = shape_from_gguf(demo_model_info())
    options = PlanOptions(n_ctx=4096, gpu_margin_bytes=256 * MiB)
    host = HostBudget(8 * GiB)
    roomy = planner.plan_offload(shape, gpus=[GpuBudget("GPU 0", 4 * GiB, backend="Vulkan")], host=host, options=options)
    assert roomy.verdict == "fits" and roomy.n_gpu_layers == 19
    # the output layer goes first, and with it the logits buffer (262144 x 512 x 4 bytes): ~950 MiB before any block
    tight = planner.plan_offload(shape, gpus=[GpuBudget("GPU 0", 1 * GiB, backend="Vulkan")], host=host, options=options)
    assert tight.verdict == "fits_partly" and 1 < tight.n_gpu_layers < 19
    assert tight.gpus[0].breakdown.compute > 500 * MiB
    # a GPU engine runs prompt batches on its GPU even with no layer there: the logits of a 262k vocabulary with
    # the copied output weight (~720 MB) do not fit a 700 MiB GPU, so no setting fits there
    tiny = planner.plan_offload(shape, gpus=[GpuBudget("GPU 0", 700 * MiB, backend="Vulkan")], host=host, options=options)
    assert tiny.verdict == "does_not_fit" and tiny.max_gpu_layers == -1
    assert tiny.gpus[0].breakdown.compute > shape.output_bytes + 4 * 262144 * 512
    # with no GPU at all it runs on the CPU
    cpu = planner.plan_offload(shape, gpus=[], host=host, options=options)
    assert cpu.verdict == "cpu_only" and cpu.n_gpu_layers == 0
    nothing = planner.plan_offload(shape, gpus=[GpuBudget("GPU 0", 100 * MiB, backend="Vulkan")], host=HostBudget(300 * MiB), options=options)
    assert nothing.verdict == "does_not_fit" and nothing.max_gpu_layers == -1


def _tiny_gguf(path: Path, n_layer: int = 4, n_embd: int = 64, n_vocab: int = 256) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(n_layer)
    writer.add_context_length(2048)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(4 * n_embd)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_name("tiny")
    writer.add_tensor("token_embd.weight", np.zeros((n_vocab, n_embd), dtype=np.float16))
    for il in range(n_layer):
        writer.add_tensor(f"blk.{il}.attn_q.weight", np.zeros((n_embd, n_embd), dtype=np.float16))
        writer.add_tensor(f"blk.{il}.attn_k.weight", np.zeros((n_embd // 2, n_embd), dtype=np.float16))
        writer.add_tensor(f"blk.{il}.attn_v.weight", np.zeros((n_embd // 2, n_embd), dtype=np.float16))
        writer.add_tensor(f"blk.{il}.ffn_up.weight", np.zeros((4 * n_embd, n_embd), dtype=np.float16))
    writer.add_tensor("output_norm.weight", np.zeros((n_embd,), dtype=np.float32))
    writer.add_tensor("output.weight", np.zeros((n_vocab, n_embd), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_plan_cli_json_for_a_given_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _tiny_gguf(tmp_path / "tiny.gguf")
    code = cli.main(["plan", str(model), "--ctx", "1024", "--gpu-memory", "8", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert data["verdict"] == "fits" and data["n_gpu_layers"] == data["total_layers"] == 5
    assert data["model"]["n_layer"] == 4 and data["n_ctx"] == 1024
    gpu = data["gpus"][0]
    # K and V are 32 wide (2 KV heads of 16), f16, 1024 cells, 4 layers
    assert gpu["breakdown"]["kv_cache"] == 4 * 1024 * 64 * 2
    assert gpu["breakdown"]["weights"] == 4 * (64 * 64 + 2 * 32 * 64 + 256 * 64) * 2 + 256 * 64 * 2 + 64 * 4
    assert set(gpu["breakdown"]) == {"weights", "kv_cache", "compute", "overhead", "margin", "used", "total"}
    assert gpu["breakdown"]["overhead"] == 558_000_000  # --gpu-memory GPUs are CUDA unless --backend says


def test_plan_cli_judges_a_chosen_layer_count_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _tiny_gguf(tmp_path / "tiny.gguf")
    code = cli.main(["plan", str(model), "--ctx", "512", "--gpu-memory", "8", "--gpu-layers", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Fits with 2 of 5 layers on the GPU" in out and "GPU layers: 2 of 5 (most that fit: 5)" in out
    assert "GPU 0: weights" in out and "CPU: weights" in out


def test_plan_cli_on_this_machine_without_a_gpu_plans_for_the_cpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import desktop.verbs.plan as plan_verb

    monkeypatch.setattr(plan_verb, "detected_machine", lambda: Machine((), HostBudget(16 * GiB, 32 * GiB)))
    model = _tiny_gguf(tmp_path / "tiny.gguf")
    assert cli.main(["plan", str(model), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"] == "cpu_only" and data["gpus"] == [] and data["host"]["layers"] == 5


def test_plan_cli_detects_budgets_without_failing() -> None:
    import desktop.verbs.plan as plan_verb

    machine = plan_verb.detected_machine()
    assert machine.host.available_bytes > 0 and all(g.free_bytes >= 0 for g in machine.gpus)
