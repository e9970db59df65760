"""Property-based fuzzing (Hypothesis) of the readers of untrusted files: the GGUF header reader (local and by
byte ranges), the safetensors header parser, and the config.json / GGUF numbers the memory planner and the
converter read. Every generated input must end in a result or one UserError sentence, within a time bound
(Hypothesis' deadline) and a memory bound (tracemalloc's peak per input).

Inputs are built from the formats' own pieces (valid fields, hostile counts and lengths, unknown type codes,
nesting, huge or negative dimensions, Infinity/NaN, wrong JSON types), then cut short or corrupted at random.
"""

from __future__ import annotations

import json
import math
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from gguf_bytes import ARRAY, STRING, U32, gguf, kv, string, tensor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import desktop.convert  # noqa: F401 - imported once here, not inside the first timed example
import desktop.memory  # noqa: F401
import desktop.gguf.reader  # noqa: F401
import gguf as gguf_py  # noqa: F401
from desktop.errors import UserError

MB = 1024 * 1024

def fuzz(examples: int) -> Callable[[Any], Any]:
    """Hypothesis settings: ``examples`` inputs, each within 2 s; reproducible, no example database on disk. The
    counts keep the four fuzz tests together under about a minute on a loaded 2-core machine (tracemalloc, which
    bounds each input's memory, is most of the cost)."""
    return settings(max_examples=examples, deadline=2000, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MEMORY_BOUND = 48 * MB


@contextmanager
def bounded_memory() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"{peak / MB:.0f} MiB for one input"


def one_sentence(error: UserError) -> None:
    text = f"{error.message} {error.next_step}"
    assert error.message.endswith(".") and "\n" not in text and "Traceback" not in text, text


def result_or_sentence(call: Callable[[], Any]) -> Any:
    """``call()``'s result, or None after checking that it raised one UserError sentence."""
    try:
        return call()
    except UserError as exc:
        one_sentence(exc)
        return None


# ---------------------------------------------------------------------------------------------------------------
# GGUF headers

SIZES = st.one_of(st.integers(0, 70), st.sampled_from([2**31, 2**32 - 1, 2**40, 2**62, 2**63, 2**64 - 1]))
DIMS = st.one_of(st.integers(0, 300), st.sampled_from([32, 4096, 2**31, 2**32, 2**62, 2**63 - 1, 2**64 - 1]))
KEYS = st.sampled_from(["general.architecture", "general.alignment", "general.file_type", "general.name",
                        "llama.block_count", "llama.context_length", "llama.embedding_length",
                        "llama.attention.head_count", "llama.attention.head_count_kv",
                        "llama.attention.key_length", "llama.attention.sliding_window",
                        "llama.attention.sliding_window_pattern", "tokenizer.ggml.tokens", "x"])
SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                  12: "<d"}


@st.composite
def gguf_value(draw: st.DrawFn, depth: int = 0) -> tuple[int, bytes]:
    vtype = draw(st.one_of(st.sampled_from(sorted(SCALAR_FORMATS) + [STRING, ARRAY]), st.integers(13, 2**32 - 1)))
    if vtype in SCALAR_FORMATS:
        fmt = SCALAR_FORMATS[vtype]
        if fmt in ("<f", "<d"):
            value: Any = draw(st.floats(allow_nan=True, allow_infinity=True, width=32 if fmt == "<f" else 64))
        elif fmt == "<?":
            value = draw(st.booleans())
        else:
            bits = struct.calcsize(fmt) * 8
            signed = fmt[1].islower()
            value = draw(st.integers(-(2 ** (bits - 1)) if signed else 0, 2 ** (bits - 1) - 1 if signed else 2**bits - 1))
        return vtype, struct.pack(fmt, value)
    if vtype == STRING:
        if draw(st.booleans()):
            return vtype, string(draw(st.text(max_size=40)))
        return vtype, struct.pack("<Q", draw(SIZES)) + draw(st.binary(max_size=40))  # a length that lies
    if vtype == ARRAY:
        item_type = draw(st.sampled_from([U32, 6, STRING, ARRAY, 77]))
        if depth < 4 and draw(st.booleans()):
            items = [draw(gguf_value(depth + 1)) for _ in range(draw(st.integers(0, 5)))]
            body = b"".join(p for t, p in items if t == item_type or item_type in (77,))
            return vtype, struct.pack("<IQ", item_type, len(items)) + body
        return vtype, struct.pack("<IQ", item_type, draw(SIZES)) + draw(st.binary(max_size=64))
    return vtype, draw(st.binary(max_size=16))  # an unknown type


@st.composite
def gguf_header(draw: st.DrawFn) -> bytes:
    kvs = []
    for _ in range(draw(st.integers(0, 8))):
        vtype, payload = draw(gguf_value())
        kvs.append(kv(draw(KEYS), vtype, payload))
    tensors = []
    for i in range(draw(st.integers(0, 4))):
        shape = draw(st.lists(DIMS, max_size=6))
        n_dims = draw(st.one_of(st.none(), st.sampled_from([0, 5, 2**16, 2**32 - 1])))
        tensors.append(tensor(f"blk.{i}.attn_k.weight", shape, draw(st.integers(0, 45)), draw(DIMS), n_dims))
    data = gguf(kvs, tensors, n_kv=draw(st.one_of(st.none(), SIZES)), n_tensors=draw(st.one_of(st.none(), SIZES)),
                version=draw(st.sampled_from([3, 3, 3, 2, 1, 4])), data=draw(st.binary(max_size=256)))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    if cut is not None:
        data = data[:cut]
    for _ in range(draw(st.integers(0, 3))):  # a few corrupted bytes
        if data:
            at = draw(st.integers(0, len(data) - 1))
            data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
    return data


@fuzz(500)
@given(data=gguf_header())
def test_gguf_headers_end_in_a_result_or_one_sentence(tmp_path: Path, data: bytes) -> None:
    from desktop.gguf.reader import read_gguf
    from desktop.memory import kv_cache_bytes, shape_from_gguf

    path = tmp_path / "fuzz.gguf"
    path.write_bytes(data)
    with bounded_memory():
        info = result_or_sentence(lambda: read_gguf(path))
        if info is not None:
            assert info.block_count >= 0 and info.context_length >= 0 and info.parameter_count >= 0
            shape = result_or_sentence(lambda: shape_from_gguf(info))  # the planner's numbers
            if shape is not None:
                assert kv_cache_bytes(shape, 4096) >= 0


@fuzz(700)
@given(data=gguf_header(), first=st.sampled_from([16, 64, 1024]))
def test_remote_gguf_headers_end_in_a_result_or_one_sentence(data: bytes, first: int) -> None:
    """The same parser by byte ranges, as Hub inspect calls it: a result, or a refusal it turns into a sentence."""
    from desktop.gguf.limits import BadNumber, check_gguf_numbers
    from desktop.gguf.parser import BadHeader
    from desktop.gguf.remote import read_gguf_header
    from desktop.memory import shape_from_metadata

    fetched: list[int] = []

    def fetch(start: int, end: int) -> bytes:
        fetched.append(end - start)
        return data[start:end]

    with bounded_memory():
        try:
            header = read_gguf_header(fetch, len(data), first=first, limit=4096, partial=True)
            check_gguf_numbers(header.metadata)
        except (BadHeader, BadNumber) as exc:  # inspect: "<file> in <repo> is not a readable GGUF file (<exc>)."
            assert str(exc) and "\n" not in str(exc)
            return
        shape_from_metadata(header.metadata, header.n_vocab)
    assert sum(fetched) <= max(len(data), 4096)  # never more than the file, nor past the limit


# ---------------------------------------------------------------------------------------------------------------
# safetensors headers

JSON_NUMBERS = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([2**63 - 1, 2**63, 2**64, -1, 0]),
                         st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(), st.text(max_size=4))
DTYPES = st.sampled_from(["F32", "F16", "BF16", "I64", "F8_E4M3", "BOOL", "Q4", "", "f16"])


@st.composite
def safetensors_file(draw: st.DrawFn) -> bytes:
    header: dict[str, Any] = {}
    offset = 0
    for i in range(draw(st.integers(0, 5))):
        shape = draw(st.lists(st.one_of(st.integers(0, 9), JSON_NUMBERS), max_size=5))
        n = 1
        for d in shape:
            n *= d if isinstance(d, int) and not isinstance(d, bool) else 1
        size = abs(n) * 2 if draw(st.booleans()) else draw(st.integers(0, 64))
        begin = draw(st.one_of(st.just(offset), JSON_NUMBERS))
        end = draw(st.one_of(st.just(offset + size), JSON_NUMBERS))
        entry: Any = {"dtype": draw(DTYPES), "shape": shape, "data_offsets": [begin, end]}
        if draw(st.integers(0, 9)) == 0:
            entry = draw(st.one_of(JSON_NUMBERS, st.just([1, 2]), st.just({"shape": "x"})))
        header[f"model.layers.{i}.w"] = entry
        offset += size if isinstance(size, int) else 0
    raw = json.dumps(header).encode()
    if draw(st.integers(0, 7)) == 0:
        raw = draw(st.sampled_from([b'{"a": Infinity}', b"[" * 100_000, b"\xff\xfe", b'{"w": {"shape": [NaN]}}']))
    length = draw(st.one_of(st.just(len(raw)), SIZES))
    data = struct.pack("<Q", length) + raw + bytes(min(offset, 4096))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return data if cut is None else data[:cut]


@fuzz(700)
@given(data=safetensors_file())
def test_safetensors_headers_end_in_a_result_or_one_sentence(tmp_path: Path, data: bytes) -> None:
    from desktop.convert.safetensors import read_header

    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    with bounded_memory():
        tensors = result_or_sentence(lambda: read_header(path))
    for ref in (tensors or {}).values():
        assert all(d >= 0 for d in ref.shape) and ref.offset + ref.nbytes <= len(data)
        assert math.prod(ref.shape) < 2**63


# ---------------------------------------------------------------------------------------------------------------
# config.json numbers (the planner's shape and the converter's plan)

CONFIG_KEYS = ["num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size", "head_dim",
               "intermediate_size", "vocab_size", "max_position_embeddings", "sliding_window",
               "sliding_window_pattern", "layer_types", "text_config", "model_type", "architectures",
               "tie_word_embeddings", "rope_theta", "quantization_config"]
CONFIG_VALUES = st.one_of(st.integers(-5, 300), st.sampled_from([20_000, 10**6, 2**40, 2**64]), JSON_NUMBERS,
                          st.sampled_from([float("inf"), float("nan"), 4096.0, 1.5]),
                          st.lists(st.sampled_from(["sliding_attention", "full_attention", 3]), max_size=40),
                          st.sampled_from(["gemma3", "llama", "qwen2", ["LlamaForCausalLM"],
                                           ["Gemma3ForCausalLM"], ["Mamba"], {"quant_method": "gptq"}, {}]))


@st.composite
def config_json(draw: st.DrawFn) -> bytes:
    config: dict[str, Any] = {"architectures": draw(st.sampled_from([["LlamaForCausalLM"], ["Gemma3ForCausalLM"],
                                                                      ["Qwen2ForCausalLM"], ["X"], "LlamaForCausalLM"]))}
    for key in draw(st.lists(st.sampled_from(CONFIG_KEYS), max_size=12)):
        value = draw(CONFIG_VALUES)
        if key == "text_config" and draw(st.booleans()):
            value = {k: draw(CONFIG_VALUES) for k in draw(st.lists(st.sampled_from(CONFIG_KEYS[:10]), max_size=5))}
        config[key] = value
    return json.dumps(config, allow_nan=True).encode()


@fuzz(800)
@given(raw=config_json(), tensors=st.dictionaries(
    st.sampled_from(["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.norm.weight",
                     "lm_head.weight", "model.layers.9999.mlp.up_proj.weight", "vision_tower.x"]),
    st.tuples(DTYPES, st.lists(st.integers(0, 64), max_size=3).map(tuple)), max_size=4))
def test_config_numbers_end_in_a_result_or_one_sentence(raw: bytes, tensors: dict[str, Any]) -> None:
    from desktop.convert import output_tensors, remote_checkpoint
    from desktop.convert.checkpoint import parse_config
    from desktop.memory import kv_cache_bytes, shape_from_config

    with bounded_memory():
        config = result_or_sentence(lambda: parse_config(raw, "config.json in org/fuzz"))
        if config is None:
            return
        shape = shape_from_config(config)  # what Hub inspect's fit table plans with
        assert kv_cache_bytes(shape, 8192) >= 0
        result_or_sentence(lambda: output_tensors(remote_checkpoint(config, tensors, "org/fuzz")))


def test_fuzzing_reaches_the_interesting_cases() -> None:
    """The generators are not vacuous: real examples of each kind parse, and each hostile kind is refused."""
    from desktop.convert.checkpoint import parse_config

    good = json.dumps({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "hidden_size": 64,
                       "num_attention_heads": 4}).encode()
    assert parse_config(good, "config.json")["num_hidden_layers"] == 2
    for bad in (b'{"num_hidden_layers": Infinity}', b'{"hidden_size": 1e300}', b'{"vocab_size": "many"}'):
        with pytest.raises(UserError):
            parse_config(bad, "config.json")


def test_a_scalar_embedding_is_a_sentence() -> None:
    """Found by the fuzzing above: an embedding stored with shape () ended in IndexError in the converter."""
    from desktop.convert import output_tensors, remote_checkpoint

    config = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 1, "hidden_size": 8,
              "num_attention_heads": 2, "intermediate_size": 16}
    result_or_sentence(lambda: output_tensors(remote_checkpoint(config, {"model.embed_tokens.weight": ("F32", ())},
                                                                "org/fuzz")))
    with pytest.raises(UserError):
        output_tensors(remote_checkpoint({"architectures": ["LlamaForCausalLM"]},
                                         {"model.embed_tokens.weight": ("F32", ())}, "org/fuzz"))
