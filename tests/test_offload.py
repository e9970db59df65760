"""The offload planner on synthetic GGUF tables and device sizes, and on the real demo GGUF."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from desktop.gguf.reader import GGUFInfo, TensorInfo
from desktop.memory import planner as offload
from desktop.memory import sizes
from desktop.memory.planner import GpuBudget, HostBudget, PlanOptions
from desktop.memory.shape import shape_from_gguf

MiB = 2**20
GiB = 2**30

LAYER_BYTES = 100 * MiB


def synthetic_info(
    *,
    arch: str = "llama",
    n_layer: int = 8,
    n_embd: int = 1024,
    n_head: int = 16,
    n_head_kv: int = 16,
    head_dim: int = 64,
    n_ff: int = 4096,
    n_vocab: int = 32000,
    layer_bytes: int = LAYER_BYTES,
    embd_bytes: int = 60 * MiB,
    output_bytes: int | None = 70 * MiB,  # None: tied embeddings
    sliding_window: int = 0,
    context_length: int = 8192,
) -> GGUFInfo:
    tensors = [TensorInfo("token_embd.weight", "Q8_0", (n_embd, n_vocab), n_embd * n_vocab, embd_bytes)]
    k_width = n_head_kv * head_dim
    for il in range(n_layer):
        tensors += [
            TensorInfo(f"blk.{il}.attn_q.weight", "Q4_K", (n_embd, n_head * head_dim), 1, layer_bytes // 4),
            TensorInfo(f"blk.{il}.attn_k.weight", "Q4_K", (n_embd, k_width), 1, layer_bytes // 4),
            TensorInfo(f"blk.{il}.attn_v.weight", "Q4_K", (n_embd, k_width), 1, layer_bytes // 4),
            TensorInfo(f"blk.{il}.ffn_up.weight", "Q4_K", (n_embd, n_ff), 1, layer_bytes - 3 * (layer_bytes // 4)),
        ]
    tensors.append(TensorInfo("output_norm.weight", "F32", (n_embd,), n_embd, 4 * n_embd))
    if output_bytes is not None:
        tensors.append(TensorInfo("output.weight", "Q6_K", (n_embd, n_vocab), n_embd * n_vocab, output_bytes))
    metadata = {
        "general.architecture": arch,
        f"{arch}.block_count": n_layer,
        f"{arch}.context_length": context_length,
        f"{arch}.embedding_length": n_embd,
        f"{arch}.feed_forward_length": n_ff,
        f"{arch}.attention.head_count": n_head,
        f"{arch}.attention.head_count_kv": n_head_kv,
        f"{arch}.attention.key_length": head_dim,
        f"{arch}.attention.value_length": head_dim,
    }
    if sliding_window:
        metadata[f"{arch}.attention.sliding_window"] = sliding_window
    return GGUFInfo(
        path=Path("synthetic.gguf"),
        name="synthetic",
        architecture=arch,
        parameter_count=0,
        quant_type="Q4_K_M",
        context_length=context_length,
        size_bytes=sum(t.n_bytes for t in tensors),
        block_count=n_layer,
        metadata=metadata,
        tensors=tensors,
    )


def test_model_shape_reads_bytes_per_layer_output_and_embeddings() -> None:
    shape = shape_from_gguf(synthetic_info())
    assert shape.n_layer == 8 and shape.total_layers == 9
    assert shape.layer_bytes == (LAYER_BYTES,) * 8
    assert shape.output_bytes == 70 * MiB + 4 * 1024
    assert shape.input_bytes == 60 * MiB
    assert shape.n_embd_k_gqa == (1024,) * 8 and shape.n_vocab == 32000
    assert not shape.tied_embeddings


def test_kv_cache_matches_the_formula_for_f16_q8_0_and_q4_0() -> None:
    shape = shape_from_gguf(synthetic_info())
    # 4096 cells x (K 1024 + V 1024) x 2 bytes x 8 layers
    assert sizes.kv_cache_bytes(shape, 4096) == 4096 * 2048 * 2 * 8
    assert sizes.kv_cache_bytes(shape, 4096, cache_type_k="q8_0") == 4096 * 2048 * 34 // 32 * 8
    assert sizes.kv_cache_bytes(shape, 4096, cache_type_k="q4_0") == 4096 * 2048 * 18 // 32 * 8
    # mixed: K q8_0, V f16
    assert sizes.kv_cache_bytes(shape, 4096, cache_type_k="q8_0", cache_type_v="f16") == 4096 * (1088 + 2048) * 8
    # the context is padded to 256 cells, as llama.cpp does
    assert sizes.kv_cache_bytes(shape, 1000) == sizes.kv_cache_bytes(shape, 1024)


def test_grouped_query_attention_shrinks_the_kv_cache_by_the_group_size() -> None:
    mha = shape_from_gguf(synthetic_info(n_head=32, n_head_kv=32))
    gqa = shape_from_gguf(synthetic_info(n_head=32, n_head_kv=8))
    assert sizes.kv_cache_bytes(mha, 8192) == 4 * sizes.kv_cache_bytes(gqa, 8192)
    assert gqa.n_embd_k_gqa[0] == 8 * 64


def test_sliding_window_layers_keep_only_the_window() -> None:
    shape = shape_from_gguf(synthetic_info(arch="gemma3", n_layer=12, sliding_window=512))
    # gemma3: 5 sliding-window layers, then one full-attention layer
    assert shape.swa_layers == (True,) * 5 + (False,) + (True,) * 5 + (False,)
    per_cell = 2 * 1024 * 2
    swa_cells = 1024  # pad256(512 window + 512 ubatch)
    expected = 10 * swa_cells * per_cell + 2 * 32768 * per_cell
    assert sizes.kv_cache_bytes(shape, 32768) == expected
    # swa_full keeps the whole context in every layer
    assert sizes.kv_cache_bytes(shape, 32768, swa_full=True) == 12 * 32768 * per_cell
    # a short context is never exceeded by the window
    assert sizes.kv_cache_bytes(shape, 512) == 12 * 512 * per_cell


def test_a_window_key_on_an_architecture_without_swa_layers_means_full_attention() -> None:
    shape = shape_from_gguf(synthetic_info(arch="llama", sliding_window=4096))
    assert shape.sliding_window == 0
    assert sizes.kv_cache_bytes(shape, 8192) == 8 * 8192 * 2048 * 2


def _options(**kw: object) -> PlanOptions:
    base = {"n_ctx": 512, "gpu_margin_bytes": 256 * MiB, "host_margin_bytes": 512 * MiB}
    base.update(kw)
    return PlanOptions(**base)  # type: ignore[arg-type]


def test_a_model_that_fits_entirely() -> None:
    shape = shape_from_gguf(synthetic_info())
    plan = offload.plan_offload(
        shape, gpus=[GpuBudget("GPU 0", free_bytes=24 * GiB, total_bytes=24 * GiB)], host=HostBudget(16 * GiB), options=_options()
    )
    assert plan.fits and plan.verdict == "fits"
    assert plan.n_gpu_layers == plan.max_gpu_layers == 9
    gpu = plan.gpus[0]
    assert gpu.layers == 9
    assert gpu.breakdown.weights == 8 * LAYER_BYTES + shape.output_bytes
    assert gpu.breakdown.kv_cache == sizes.kv_cache_bytes(shape, 512)
    assert gpu.breakdown.margin == 256 * MiB and gpu.breakdown.compute > 0
    # only the input embeddings stay on the CPU
    assert plan.host.breakdown.weights == shape.input_bytes and plan.host.breakdown.kv_cache == 0
    assert "entirely" in plan.message


def test_a_model_that_fits_partly_gets_the_largest_layer_count_that_fits() -> None:
    shape = shape_from_gguf(synthetic_info())
    options = _options()
    per_layer = LAYER_BYTES + sizes.layer_kv_bytes(shape, 0, 512)
    compute = sizes.compute_buffer_bytes(shape, 512, backend_name="CUDA", flash_attn=True, partial=True)
    fixed = 256 * MiB + sizes.backend("CUDA").overhead_bytes + compute + shape.output_bytes
    budget = fixed + 5 * per_layer + per_layer // 2  # room for the output layer and 5.5 blocks
    gpus = [GpuBudget("GPU 0", free_bytes=budget)]
    plan = offload.plan_offload(shape, gpus=gpus, host=HostBudget(16 * GiB), options=options)
    assert plan.max_gpu_layers == 6 and plan.n_gpu_layers == 6
    assert plan.verdict == "fits_partly" and plan.fits
    assert plan.gpus[0].breakdown.weights == shape.output_bytes + 5 * LAYER_BYTES
    assert plan.host.layers == 3  # blocks 0-2 stay on the CPU: the last blocks are offloaded first
    assert plan.host.breakdown.weights == shape.input_bytes + 3 * LAYER_BYTES
    # the slider one step further says it does not fit, and names the GPU
    over = offload.evaluate(shape, 7, gpus=gpus, host=HostBudget(16 * GiB), options=options)
    assert not over.fits and over.verdict == "does_not_fit" and "GPU 0" in over.message
    assert over.max_gpu_layers == 6


def test_the_output_layer_is_offloaded_first() -> None:
    shape = shape_from_gguf(synthetic_info())
    plan = offload.evaluate(shape, 1, gpus=[GpuBudget("GPU 0", 24 * GiB)], host=HostBudget(16 * GiB), options=_options())
    assert plan.gpus[0].layers == 1
    assert plan.gpus[0].breakdown.weights == shape.output_bytes
    assert plan.gpus[0].breakdown.kv_cache == 0
    assert plan.host.breakdown.weights == shape.input_bytes + 8 * LAYER_BYTES


def test_tied_embeddings_put_a_copy_of_token_embd_on_the_gpu() -> None:
    shape = shape_from_gguf(synthetic_info(output_bytes=None))
    assert shape.tied_embeddings
    assert shape.output_bytes == 60 * MiB + 4 * 1024
    on_gpu = offload.evaluate(shape, 9, gpus=[GpuBudget("GPU 0", 24 * GiB)], host=HostBudget(16 * GiB), options=_options())
    assert on_gpu.gpus[0].breakdown.weights == 8 * LAYER_BYTES + shape.output_bytes
    assert on_gpu.host.breakdown.weights == 60 * MiB
    cpu = offload.evaluate(shape, 0, gpus=[GpuBudget("GPU 0", 24 * GiB)], host=HostBudget(16 * GiB), options=_options())
    assert cpu.host.breakdown.weights == 60 * MiB + 8 * LAYER_BYTES + 4 * 1024  # the tied output reuses token_embd
    assert shape.weights_bytes == cpu.host.breakdown.weights  # the file's tensors, output_norm included


def test_a_model_that_does_not_fit_at_all() -> None:
    shape = shape_from_gguf(synthetic_info())
    plan = offload.plan_offload(
        shape, gpus=[GpuBudget("GPU 0", free_bytes=300 * MiB)], host=HostBudget(700 * MiB), options=_options()
    )
    assert plan.max_gpu_layers == -1
    assert not plan.fits and plan.verdict == "does_not_fit"
    assert "system memory" in plan.message or "GPU 0" in plan.message


def test_without_a_gpu_the_plan_is_cpu_only() -> None:
    shape = shape_from_gguf(synthetic_info())
    plan = offload.plan_offload(shape, gpus=[], host=HostBudget(16 * GiB), options=_options())
    assert plan.verdict == "cpu_only" and plan.fits and plan.n_gpu_layers == 0 and plan.max_gpu_layers == 0
    assert plan.host.breakdown.weights == shape.weights_bytes
    assert plan.host.breakdown.kv_cache == sizes.kv_cache_bytes(shape, 512)
    # a slider value is clamped to what exists
    assert offload.evaluate(shape, 99, gpus=[], host=HostBudget(16 * GiB), options=_options()).n_gpu_layers == 0


def test_a_small_host_forces_layers_onto_the_gpu() -> None:
    shape = shape_from_gguf(synthetic_info())
    gpus = [GpuBudget("GPU 0", 24 * GiB)]
    host = HostBudget(int(1.2 * GiB))
    assert not offload.evaluate(shape, 0, gpus=gpus, host=host, options=_options()).fits
    assert offload.plan_offload(shape, gpus=gpus, host=host, options=_options()).verdict == "fits"


def test_two_gpus_split_layers_in_proportion_to_free_memory() -> None:
    shape = shape_from_gguf(synthetic_info())
    gpus = [GpuBudget("GPU 0", 8 * GiB), GpuBudget("GPU 1", 24 * GiB)]
    plan = offload.evaluate(shape, 9, gpus=gpus, host=HostBudget(16 * GiB), options=_options())
    assert [g.layers for g in plan.gpus] == [3, 6]  # llama.cpp's split: 1/4 and 3/4 of the offloaded layers
    assert plan.gpus[1].breakdown.weights == 5 * LAYER_BYTES + shape.output_bytes
    assert plan.gpus[0].breakdown.weights == 3 * LAYER_BYTES
    assert plan.totals.weights == shape.weights_bytes


def test_unified_memory_obeys_metals_working_set_limit_and_shares_ram() -> None:
    shape = shape_from_gguf(synthetic_info())
    ram = 2 * GiB
    limit = int(ram * 2 / 3)  # Metal's recommended working set on this RAM (the hardware report's total for it)
    apple = GpuBudget("Apple M2", free_bytes=ram, total_bytes=ram, unified_memory=True, working_set_limit=limit,
                      backend="Metal")
    plan = offload.plan_offload(shape, gpus=[apple], host=HostBudget(ram, ram), options=_options(host_margin_bytes=128 * MiB))
    gpu = plan.gpus[0]
    assert gpu.budget_bytes == limit and gpu.fits
    # what the GPU takes the host no longer has
    assert plan.host.budget_bytes == ram - gpu.breakdown.used
    assert 0 < plan.n_gpu_layers < 9


def test_predicted_against_actual_rows() -> None:
    shape = shape_from_gguf(synthetic_info())
    plan = offload.plan_offload(shape, gpus=[], host=HostBudget(16 * GiB), options=_options())
    actual = {"host": {"weights": 900 * MiB, "kv_cache": 16 * MiB, "compute": 70 * MiB}, "gpus": []}
    rows = offload.predicted_vs_actual(plan, actual)
    assert [r["part"] for r in rows] == ["weights", "kv_cache", "compute"]
    assert rows[0]["predicted"] == shape.weights_bytes and rows[0]["actual"] == 900 * MiB


def test_unknown_cache_type_is_a_user_error() -> None:
    from desktop.errors import UserError

    shape = shape_from_gguf(synthetic_info())
    with pytest.raises(UserError, match="KV cache type"):
        sizes.kv_cache_bytes(shape, 512, cache_type_k="q3_k")


def test_plan_as_dict_is_json_ready() -> None:
    import json

    shape = shape_from_gguf(synthetic_info())
    plan = offload.plan_offload(shape, gpus=[GpuBudget("GPU 0", 24 * GiB)], host=HostBudget(16 * GiB), options=_options())
    data = json.loads(json.dumps(plan.as_dict()))
    assert data["verdict"] == "fits" and data["gpus"][0]["breakdown"]["total"] == plan.gpus[0].need_bytes


def test_the_most_layers_that_fit_is_the_brute_force_answer_for_any_budget() -> None:
    shape = shape_from_gguf(synthetic_info())
    for gpu_mib in range(0, 3000, 97):
        for host_mib in (400, 900, 16 * 1024):
            gpus = [GpuBudget("GPU 0", gpu_mib * MiB, backend="Vulkan")]
            host = HostBudget(host_mib * MiB)
            brute = max((n for n in range(10) if offload.evaluate(shape, n, gpus=gpus, host=host, options=_options(),
                                                                   with_max=False).fits), default=-1)
            assert offload.max_gpu_layers(shape, gpus=gpus, host=host, options=_options()) == brute, (gpu_mib, host_mib)


def test_an_output_larger_than_the_device_takes_stays_on_the_cpu_with_its_logits() -> None:
    # lavapipe takes no weight over 128 MiB: the demo's 178 MB tied output stayed on the CPU, and the logits with it
    shape = shape_from_gguf(synthetic_info(output_bytes=None, embd_bytes=200 * MiB))
    roomy = GpuBudget("lavapipe", 24 * GiB, backend="Vulkan")
    limited = GpuBudget("lavapipe", 24 * GiB, backend="Vulkan", max_tensor_bytes=2**27)
    held = offload.evaluate(shape, 9, gpus=[roomy], host=HostBudget(16 * GiB), options=_options())
    kept = offload.evaluate(shape, 9, gpus=[limited], host=HostBudget(16 * GiB), options=_options())
    assert held.gpus[0].breakdown.weights == 8 * LAYER_BYTES + shape.output_bytes
    assert kept.gpus[0].breakdown.weights == 8 * LAYER_BYTES
    logits = sizes.logits_bytes(shape, 512)
    assert kept.host.breakdown.compute == logits + sizes.output_buffer_bytes(shape)
    assert kept.gpus[0].breakdown.compute < held.gpus[0].breakdown.compute


def test_host_weights_are_the_mapped_file_range_when_blocks_interleave() -> None:
    # files that order blocks blk.0, blk.1, blk.10, ..., blk.2: the CPU's blocks 0-3 span most of the file
    info = synthetic_info(n_layer=12)
    blocks = [t for t in info.tensors if t.name.startswith("blk.")]
    others = [t for t in info.tensors if not t.name.startswith("blk.")]
    ordered = [others[0], *sorted(blocks, key=lambda t: t.name), *others[1:]]
    starts = [sum(t.n_bytes for t in ordered[:i]) for i in range(len(ordered))]  # offsets in the tensor data
    info.tensors = [dataclasses.replace(t, offset=start) for t, start in zip(ordered, starts, strict=True)]
    shape = shape_from_gguf(info)
    gpus = [GpuBudget("GPU 0", 24 * GiB, backend="Vulkan")]
    plan = offload.evaluate(shape, 9, gpus=gpus, host=HostBudget(16 * GiB), options=_options())  # blocks 0-3 on the CPU
    order = [t.name.split(".")[1] for t in info.tensors if t.name.startswith("blk.")][::4]
    assert order[:5] == ["0", "1", "10", "11", "2"]
    # token_embd, then blk.0, blk.1, blk.10, blk.11, blk.2, blk.3: two GPU blocks lie inside the mapped range
    assert plan.host.breakdown.weights == shape.input_bytes + 6 * LAYER_BYTES
    assert plan.gpus[0].breakdown.weights == 8 * LAYER_BYTES + shape.output_bytes
    # everything on the CPU: the file's own bytes, no range arithmetic
    cpu = offload.evaluate(shape, 0, gpus=gpus, host=HostBudget(16 * GiB), options=_options())
    assert cpu.host.breakdown.weights == shape.weights_bytes


def test_an_apple_gpu_from_the_hardware_report_is_capped_at_metals_working_set() -> None:
    from desktop.hardware.report import CpuInfo, HardwareReport, LlamaBuild, LlamaDevice, MemoryInfo, apple_unified_gpu
    from desktop.memory import machine_from_report

    ram = MemoryInfo(total=48 * 10**9, available=30 * 10**9)
    gpu = apple_unified_gpu(ram, "Apple M3")  # the report's estimate: 3/4 of RAM above 36 GB
    llama = LlamaBuild(available=True, supports_gpu_offload=True,
                       devices=[LlamaDevice("Metal", "Apple M3", "GPU", "Metal", gpu.vram_total, gpu.vram_free)])
    machine = machine_from_report(HardwareReport("macOS", CpuInfo("Apple M3", 8, 8, "arm64", []), ram, [gpu], llama, []))
    (budget,) = machine.gpus
    assert budget.unified_memory and budget.backend == "Metal"
    assert budget.working_set_limit == gpu.vram_total == int(48 * 10**9 * 0.75)
