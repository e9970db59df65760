"""The one memory model from explicit numbers: shapes from config.json and GGUF metadata, the KV cache, the
per-backend compute buffer, GPU overhead and byte margins, against what llama.cpp measured (gpu-facts.md)."""

from __future__ import annotations

import pytest

from desktop.errors import UserError
from desktop.memory import GpuBudget, HostBudget, Machine, PlanOptions, fit, plan_offload, sizes
from desktop.memory.shape import shape_from_config, shape_from_metadata

MiB = 2**20

LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
    "intermediate_size": 14336,
}
# Llama-3.2-1B's shape, the model of the H200 measurements in shared/notes/gpu-facts.md
LLAMA32_1B = {
    "model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
    "num_key_value_heads": 8, "vocab_size": 128256, "intermediate_size": 8192, "tie_word_embeddings": True,
    "max_position_embeddings": 131072,
}
H200 = 150_000_000_000


def test_kv_cache_of_llama3_8b_matches_llama_cpp() -> None:
    # llama.cpp logs "KV self size = 512.00 MiB" for Llama 3 8B at n_ctx 4096 with an F16 cache.
    shape = shape_from_config(LLAMA3_8B)
    assert (shape.n_layer, shape.n_embd_k_gqa[0], shape.n_embd_v_gqa[0]) == (32, 1024, 1024)
    assert sizes.kv_cache_bytes(shape, 4096) == 512 * MiB
    assert sizes.kv_cache_bytes(shape, 8192) == 2 * sizes.kv_cache_bytes(shape, 4096)
    assert sizes.kv_cache_bytes(shape, 4096, cache_type_k="q8_0") == 512 * MiB * 34 // 64
    assert shape.n_ctx_train == 8192 and shape.n_vocab == 128256


def test_sliding_window_is_sized_one_way_from_config_and_from_gguf() -> None:
    gemma3 = {"model_type": "gemma3_text", "num_hidden_layers": 12, "num_attention_heads": 4,
              "num_key_value_heads": 1, "head_dim": 256, "hidden_size": 640, "sliding_window": 512,
              "sliding_window_pattern": 6, "vocab_size": 262144}
    from_config = shape_from_config(gemma3)
    meta = {"general.architecture": "gemma3", "gemma3.block_count": 12, "gemma3.attention.head_count": 4,
            "gemma3.attention.head_count_kv": 1, "gemma3.embedding_length": 640, "gemma3.attention.key_length": 256,
            "gemma3.attention.value_length": 256, "gemma3.attention.sliding_window": 512}
    from_gguf = shape_from_metadata(meta, 262144)
    assert from_config.swa_layers == from_gguf.swa_layers == (True,) * 5 + (False,) + (True,) * 5 + (False,)
    per_cell = (256 + 256) * 2
    # llama.cpp's SWA cache holds pad256(window + n_ubatch) = 1024 cells, not the window alone
    expected = (2 * 32768 + 10 * 1024) * per_cell
    assert sizes.kv_cache_bytes(from_config, 32768) == sizes.kv_cache_bytes(from_gguf, 32768) == expected
    with_types = dict(gemma3, layer_types=["sliding_attention"] * 5 + ["full_attention"], num_hidden_layers=6)
    assert sum(shape_from_config(with_types).swa_layers) == 5
    # Qwen configs carry a sliding_window llama.cpp does not use
    qwen = dict(LLAMA3_8B, model_type="qwen2", sliding_window=4096, use_sliding_window=True)
    assert shape_from_config(qwen).sliding_window == 0


def test_per_layer_head_counts_size_each_layer_by_its_own() -> None:
    meta = {"general.architecture": "llama", "llama.block_count": 16, "llama.attention.head_count": 32,
            "llama.attention.head_count_kv": [8, 8, 4, 8], "llama.embedding_length": 2048,
            "llama.context_length": 131072}
    shape = shape_from_metadata(meta, n_vocab=128256)
    assert (shape.n_layer, shape.n_vocab, shape.n_ctx_train) == (16, 128256, 131072)
    # llama.cpp's n_embd_k_gqa(il): layer 2 has 4 KV heads of 64, the others (the array's last value on) 8
    assert shape.n_embd_k_gqa == (512, 512, 256) + (512,) * 13 == shape.n_embd_v_gqa
    assert sizes.kv_cache_bytes(shape, 256) == 256 * 2 * 2 * (15 * 512 + 256)
    nested = {"architectures": ["Gemma3ForConditionalGeneration"], "text_config": dict(LLAMA3_8B)}
    assert shape_from_config(nested).n_layer == 32


def test_compute_buffer_matches_llama_cpp_on_cuda_and_vulkan_for_the_1b_shape() -> None:
    # measured (flash attention off, ctx 4096): CUDA0 compute 295,708,917 B, Vulkan0 291,514,613 B; 8 of 17
    # layers on CUDA0: 300,154,880 B. The old planner said 285.2 MB for all of them.
    shape = shape_from_config(LLAMA32_1B)
    cuda = sizes.compute_buffer_bytes(shape, 4096, backend_name="CUDA", flash_attn=False)
    vulkan = sizes.compute_buffer_bytes(shape, 4096, backend_name="Vulkan", flash_attn=False)
    partial = sizes.compute_buffer_bytes(shape, 4096, backend_name="CUDA", flash_attn=False, partial=True)
    assert cuda == pytest.approx(295_708_917, rel=0.005)
    assert vulkan == pytest.approx(291_514_613, rel=0.005)
    assert partial == pytest.approx(300_154_880, rel=0.005)
    # flash attention drops the n_head x n_kv x n_ubatch scores: the logits are the largest then
    with_fa = sizes.compute_buffer_bytes(shape, 4096, backend_name="CUDA", flash_attn=True)
    assert with_fa == 4 * 128256 * 512 + 2 * 4 * 2048 * 512


def test_host_compute_under_partial_offload_is_the_inputs_not_a_whole_graph() -> None:
    # measured: CUDA_Host compute 19.4 MB with all 17 layers and with 8 of 17 on the GPU (the planner said 285 MB)
    shape = shape_from_config(LLAMA32_1B).with_weights(808_000_000)
    machine = Machine((GpuBudget("H200", H200, H200, backend="CUDA"),), HostBudget(64 * 10**9))
    options = PlanOptions(n_ctx=4096, flash_attn="off")
    for layers in (17, 8):
        plan = plan_offload(shape, gpus=machine.gpus, host=machine.host, options=options, n_gpu_layers=layers)
        host_compute = plan.host.breakdown.compute - sizes.output_buffer_bytes(shape)
        assert host_compute == pytest.approx(19_400_000, rel=0.05)


def test_gpu_overhead_is_per_backend_and_the_margin_is_bytes_not_a_share() -> None:
    shape = shape_from_config(LLAMA32_1B).with_weights(808_000_000)
    host = HostBudget(64 * 10**9)
    options = PlanOptions(n_ctx=4096, flash_attn="off")
    small = GpuBudget("8 GB card", 8 * 10**9, 8 * 10**9, backend="CUDA")
    big = GpuBudget("H200", H200, H200, backend="CUDA")
    vulkan = GpuBudget("H200", H200, H200, backend="Vulkan")
    on_small = plan_offload(shape, gpus=[small], host=host, options=options).gpus[0].breakdown
    on_big = plan_offload(shape, gpus=[big], host=host, options=options).gpus[0].breakdown
    on_vulkan = plan_offload(shape, gpus=[vulkan], host=host, options=options).gpus[0].breakdown
    assert on_small.margin == on_big.margin == sizes.GPU_MARGIN_BYTES  # not 5% of 150 GB
    assert on_big.overhead == 558_000_000 and on_vulkan.overhead == 52_000_000
    # NVML saw the load take 1,787,625,472 B on CUDA and 1,277,427,712 B on Vulkan: within 10%, overhead included
    assert on_big.used == pytest.approx(1_787_625_472, rel=0.10)
    assert on_vulkan.used == pytest.approx(1_277_427_712, rel=0.10)
    # unmeasured backends take CUDA's overhead (the safe side), and say they are not measured
    assert sizes.backend("Metal").overhead_bytes == 558_000_000 and not sizes.backend("Metal").measured
    assert sizes.backend("CPU").overhead_bytes == 0


def test_flash_attention_follows_auto_and_a_quantized_v_cache_needs_it() -> None:
    assert sizes.flash_attention("auto", "CUDA") and sizes.flash_attention("auto", "CPU")
    assert not sizes.flash_attention("off", "CUDA") and sizes.flash_attention("on", "CPU")
    shape = shape_from_config(LLAMA32_1B).with_weights(808_000_000)
    gpus = [GpuBudget("H200", H200, H200, backend="CUDA")]
    host = HostBudget(64 * 10**9)
    auto = plan_offload(shape, gpus=gpus, host=host, options=PlanOptions(n_ctx=4096))
    off = plan_offload(shape, gpus=gpus, host=host, options=PlanOptions(n_ctx=4096, flash_attn="off"))
    assert auto.flash_attn and not off.flash_attn
    assert auto.gpus[0].breakdown.compute < off.gpus[0].breakdown.compute
    q8 = plan_offload(shape, gpus=gpus, host=host, options=PlanOptions(n_ctx=4096, cache_type_k="q8_0"))
    assert q8.totals.kv_cache == auto.totals.kv_cache * 34 // 64
    with pytest.raises(UserError, match="flash attention"):
        plan_offload(shape, gpus=gpus, host=host, options=PlanOptions(cache_type_k="q4_0", flash_attn="off"))


def test_the_fit_verdict_gpu_partly_ram_neither() -> None:
    shape = shape_from_config(LLAMA3_8B).with_weights(4_920_000_000)
    ram = HostBudget(32 * 10**9)
    assert fit(shape, Machine((GpuBudget("24 GB", 24 * 10**9),), ram)).where == "GPU"
    partly = fit(shape, Machine((GpuBudget("4 GB", 4 * 10**9),), ram))
    assert partly.where == "GPU+CPU" and 0 < partly.plan.n_gpu_layers < 33
    assert fit(shape, Machine((), ram)).where == "RAM"
    nowhere = fit(shape, Machine((), HostBudget(2 * 10**9)))
    assert nowhere.where == "neither" and nowhere.short().startswith("no: ")
    # the verdict's "needs" is the plan's: weights + KV cache + compute + overhead, margins excluded
    gpu = fit(shape, Machine((GpuBudget("24 GB", 24 * 10**9),), ram))
    assert gpu.needed_bytes == gpu.plan.totals.used == gpu.plan.totals.total - gpu.plan.totals.margin


def test_with_weights_keeps_the_size_exactly() -> None:
    shape = shape_from_config(LLAMA3_8B)
    assert not shape.weights_known
    sized = shape.with_weights(4_920_000_123)
    assert sized.weights_known and sized.weights_bytes == 4_920_000_123
    assert sized.with_weights(1_000_000).weights_bytes == 1_000_000


def test_a_gpu_engine_with_no_layer_offloaded_still_uses_its_gpu() -> None:
    # llama.cpp's op offload runs prompt batches on the main GPU: the backend's overhead and a compute buffer
    # (measured on Vulkan: 97.25 MiB with 0 of 9 layers, the copied output weight included) are taken there
    shape = shape_from_config(LLAMA32_1B).with_weights(808_000_000)
    gpus = [GpuBudget("H200", H200, H200, backend="CUDA"), GpuBudget("second", H200, H200, backend="CUDA")]
    plan = plan_offload(shape, gpus=gpus, host=HostBudget(64 * 10**9), options=PlanOptions(n_ctx=4096),
                        n_gpu_layers=0)
    main, second = plan.gpus[0].breakdown, plan.gpus[1].breakdown
    assert plan.verdict == "cpu_only" and "still runs prompt batches on the GPU" in plan.message
    assert main.weights == main.kv_cache == 0 and main.overhead == 558_000_000
    assert main.compute >= sizes.logits_bytes(shape, 4096) + shape.output_bytes
    assert second.used == 0  # only the main GPU
    assert plan.host.breakdown.compute == (sizes.host_compute_bytes(shape, 4096) + sizes.output_buffer_bytes(shape))
