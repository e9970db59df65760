"""The fit verdict and the KV-cache arithmetic, from explicit numbers."""

from __future__ import annotations

from desktop.memory.fit import (
    GPU_HEADROOM_BYTES,
    RAM_HEADROOM_BYTES,
    AttentionShape,
    attention_from_config,
    attention_from_gguf,
    compute_buffer_bytes,
    fit_verdict,
    kv_cache_bytes,
)

GB = 1024**3
MB = 1024**2

LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192,
}


def test_kv_cache_of_llama3_8b_matches_llama_cpp() -> None:
    # llama.cpp logs "KV self size = 512.00 MiB" for Llama 3 8B at n_ctx 4096 with an F16 cache.
    shape = attention_from_config(LLAMA3_8B)
    assert (shape.n_layers, shape.n_head_kv, shape.key_length, shape.value_length) == (32, 8, 128, 128)
    assert kv_cache_bytes(shape, 4096) == 512 * MB
    assert kv_cache_bytes(shape, 8192) == 2 * kv_cache_bytes(shape, 4096)
    assert kv_cache_bytes(shape, 4096, bytes_per_element=1.0625) < kv_cache_bytes(shape, 4096)  # q8_0 cache
    assert shape.n_ctx_train == 8192 and shape.n_vocab == 128256


def test_sliding_window_layers_cache_only_the_window() -> None:
    gemma3 = {"model_type": "gemma3_text", "num_hidden_layers": 12, "num_attention_heads": 4,
              "num_key_value_heads": 1, "head_dim": 256, "hidden_size": 640, "sliding_window": 512,
              "sliding_window_pattern": 6}
    shape = attention_from_config(gemma3)
    assert shape.swa_layers == 10  # layers 6 and 12 are global
    per_token_layer = 1 * (256 + 256) * 2
    assert kv_cache_bytes(shape, 32768) == (2 * 32768 + 10 * 512) * per_token_layer
    assert kv_cache_bytes(shape, 256) == 12 * 256 * per_token_layer  # shorter than the window: every layer full
    with_types = dict(gemma3, layer_types=["sliding_attention"] * 5 + ["full_attention"])
    with_types["num_hidden_layers"] = 6
    assert attention_from_config(with_types).swa_layers == 5
    # Qwen configs carry a sliding_window they do not use.
    qwen = dict(LLAMA3_8B, model_type="qwen2", sliding_window=4096, use_sliding_window=False)
    assert attention_from_config(qwen).swa_layers == 0


def test_attention_from_gguf_metadata_and_text_config() -> None:
    meta = {"general.architecture": "llama", "llama.block_count": 16, "llama.attention.head_count": 32,
            "llama.attention.head_count_kv": 8, "llama.embedding_length": 2048, "llama.context_length": 131072}
    shape = attention_from_gguf(meta, n_vocab=128256)
    assert (shape.n_layers, shape.n_head_kv, shape.key_length, shape.n_vocab) == (16, 8, 64, 128256)
    assert shape.n_ctx_train == 131072
    nested = {"architectures": ["Gemma3ForConditionalGeneration"], "text_config": dict(LLAMA3_8B)}
    assert attention_from_config(nested).n_layers == 32


def test_verdict_gpu_ram_neither() -> None:
    on_gpu = fit_verdict(4 * GB, 1 * GB, ram_available=32 * GB, gpu_free=[8 * GB])
    assert on_gpu.where == "GPU" and on_gpu.needed_bytes == 5 * GB
    assert "GPU" in on_gpu.sentence()
    in_ram = fit_verdict(10 * GB, 1 * GB, ram_available=32 * GB, gpu_free=[8 * GB])
    assert in_ram.where == "RAM" and "RAM" in in_ram.sentence()
    nowhere = fit_verdict(40 * GB, 1 * GB, ram_available=32 * GB, gpu_free=[8 * GB])
    assert nowhere.where == "neither" and "Does not fit" in nowhere.sentence()
    no_gpu = fit_verdict(1 * GB, 0, ram_available=4 * GB)
    assert no_gpu.where == "RAM" and "no GPU" in no_gpu.sentence()


def test_verdict_boundaries_keep_headroom() -> None:
    gpu = 8 * GB
    exact = gpu - GPU_HEADROOM_BYTES
    assert fit_verdict(exact, 0, 0, [gpu]).where == "GPU"
    assert fit_verdict(exact + 1, 0, 0, [gpu]).where == "neither"
    ram = 16 * GB
    assert fit_verdict(ram - RAM_HEADROOM_BYTES, 0, ram).where == "RAM"
    assert fit_verdict(ram - RAM_HEADROOM_BYTES + 1, 0, ram).where == "neither"
    # The KV cache and the compute buffer count too.
    assert fit_verdict(exact - MB, 2 * MB, 0, [gpu]).where == "neither"
    assert fit_verdict(exact - MB, 0, 0, [gpu], compute_bytes=2 * MB).where == "neither"


def test_layers_split_across_gpus() -> None:
    # Two 8 GB cards hold a 12 GB model together; one alone does not.
    assert fit_verdict(12 * GB, 0, 0, [8 * GB, 8 * GB]).where == "GPU"
    assert fit_verdict(12 * GB, 0, 0, [8 * GB]).where == "neither"
    assert fit_verdict(12 * GB, 0, 64 * GB, [8 * GB]).where == "RAM"


def test_compute_buffer_grows_with_vocab() -> None:
    small = AttentionShape(n_layers=2, n_head_kv=2, key_length=64, value_length=64, n_embd=512, n_vocab=32000)
    big = AttentionShape(n_layers=2, n_head_kv=2, key_length=64, value_length=64, n_embd=512, n_vocab=256000)
    assert 0 < compute_buffer_bytes(small, 4096) < compute_buffer_bytes(big, 4096)
    assert compute_buffer_bytes(small, 128) < compute_buffer_bytes(small, 4096)  # batch never exceeds context
