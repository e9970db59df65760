"""The memory planner against real llama.cpp: the engine loads models on the CPU with each KV cache type and
flash-attention setting, and the buffers llama.cpp logs (KV, compute, output) are compared with the prediction.

The models are the demo Gemma 3 270M (a 262k vocabulary: the logits dominate its compute buffer, sliding-window
KV cache) and a llama-shaped model written here whose attention scores dominate without flash attention.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from desktop import memory
from desktop.chat.engine import Engine, LoadOptions
from desktop.gguf.reader import read_gguf

from engine_helpers import demo_model_path  # noqa: E402 - tests/ is on sys.path under pytest


def write_llama_shape(path: Path, *, n_layer: int = 2, n_embd: int = 256, n_head: int = 4, n_head_kv: int = 2,
                      n_ff: int = 4096, n_vocab: int = 8000) -> Path:
    """A llama-architecture GGUF of zeros with a real header and tokenizer: enough for llama.cpp to size it."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(n_layer)
    writer.add_context_length(8192)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_name("shape")
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"t{i}".encode() for i in range(n_vocab)])
    writer.add_token_scores([0.0] * n_vocab)
    writer.add_token_types([1] * n_vocab)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    head_dim = n_embd // n_head
    f16 = np.float16
    writer.add_tensor("token_embd.weight", np.zeros((n_vocab, n_embd), dtype=f16))
    for il in range(n_layer):
        writer.add_tensor(f"blk.{il}.attn_norm.weight", np.ones((n_embd,), dtype=np.float32))
        writer.add_tensor(f"blk.{il}.attn_q.weight", np.zeros((n_embd, n_embd), dtype=f16))
        writer.add_tensor(f"blk.{il}.attn_k.weight", np.zeros((n_head_kv * head_dim, n_embd), dtype=f16))
        writer.add_tensor(f"blk.{il}.attn_v.weight", np.zeros((n_head_kv * head_dim, n_embd), dtype=f16))
        writer.add_tensor(f"blk.{il}.attn_output.weight", np.zeros((n_embd, n_embd), dtype=f16))
        writer.add_tensor(f"blk.{il}.ffn_norm.weight", np.ones((n_embd,), dtype=np.float32))
        writer.add_tensor(f"blk.{il}.ffn_gate.weight", np.zeros((n_ff, n_embd), dtype=f16))
        writer.add_tensor(f"blk.{il}.ffn_up.weight", np.zeros((n_ff, n_embd), dtype=f16))
        writer.add_tensor(f"blk.{il}.ffn_down.weight", np.zeros((n_embd, n_ff), dtype=f16))
    writer.add_tensor("output_norm.weight", np.ones((n_embd,), dtype=np.float32))
    writer.add_tensor("output.weight", np.zeros((n_vocab, n_embd), dtype=f16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    eng = Engine(log_path=tmp_path_factory.mktemp("engine") / "engine.log")
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def llama_shape(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llama_shape(tmp_path_factory.mktemp("models") / "shape-F16.gguf")


def _predicted(path: Path, n_ctx: int, cache: str, flash: str) -> memory.OffloadPlan:
    shape = memory.shape_from_gguf(read_gguf(path))
    options = memory.PlanOptions(n_ctx=n_ctx, cache_type_k=cache, flash_attn=flash)
    return memory.plan_offload(shape, gpus=[], host=memory.HostBudget(10**12), options=options)


@pytest.mark.parametrize(("cache", "flash"), [("f16", "off"), ("f16", "auto"), ("q8_0", "auto"), ("q4_0", "on")])
def test_kv_cache_and_compute_buffer_follow_the_kv_type_and_flash_attention(
    engine: Engine, llama_shape: Path, cache: str, flash: str
) -> None:
    loaded = engine.load_and_wait(LoadOptions(str(llama_shape), n_ctx=4096, n_threads=1, cache_type_k=cache,
                                              flash_attn=flash))
    actual = loaded.data["memory"]["host"]
    plan = _predicted(llama_shape, 4096, cache, flash)
    # llama.cpp resolved "auto" to what the planner assumed (on, on the CPU); a quantized V cache forces it on
    assert loaded.data["metadata"]["flash_attn"] is plan.flash_attn is (flash != "off")
    assert loaded.data["metadata"]["cache_type_k"] == cache
    # the KV cache to the byte (llama.cpp logs MiB with two decimals: within 0.01 MiB)
    assert abs(actual["kv_cache"] - plan.host.breakdown.kv_cache) <= 0.01 * 2**20
    # the compute buffer (scores without flash attention, the feed-forward with it) within 2%
    assert actual["compute"] == pytest.approx(plan.host.breakdown.compute, rel=0.02)


def test_the_demo_model_at_two_contexts_and_with_a_q8_0_cache(engine: Engine) -> None:
    demo = demo_model_path()
    for n_ctx, cache in ((4096, "f16"), (1024, "q8_0")):
        loaded = engine.load_and_wait(LoadOptions(str(demo), n_ctx=n_ctx, n_threads=1, cache_type_k=cache))
        actual = loaded.data["memory"]["host"]
        plan = _predicted(demo, n_ctx, cache, "auto")
        assert abs(actual["kv_cache"] - plan.host.breakdown.kv_cache) <= 0.02 * 2**20  # two caches: full and SWA
        assert actual["compute"] == pytest.approx(plan.host.breakdown.compute, rel=0.01)
        assert actual["weights"] == pytest.approx(plan.host.breakdown.weights, rel=0.02)


def test_a_quantized_v_cache_with_flash_attention_off_is_one_sentence(engine: Engine, llama_shape: Path) -> None:
    from desktop.errors import UserError

    shape = memory.shape_from_gguf(read_gguf(llama_shape))
    with pytest.raises(UserError, match="needs flash attention"):
        memory.plan_offload(shape, gpus=[], host=memory.HostBudget(10**12),
                            options=memory.PlanOptions(cache_type_k="q4_0", flash_attn="off"))
    with pytest.raises(Exception, match="needs flash attention"):
        engine.load_and_wait(LoadOptions(str(llama_shape), n_ctx=1024, n_threads=1, cache_type_k="q4_0",
                                         flash_attn="off"))
