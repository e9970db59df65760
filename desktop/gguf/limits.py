"""How big a real model's numbers can be: the bounds every number read from a file or a server is checked against.

A GGUF header and a Hugging Face ``config.json`` are untrusted input. Each number that sizes a loop or an
allocation (layers, heads, widths, context, counts) is checked here before anything uses it, with bounds far
above any published model and far below what would exhaust the machine. A value outside them, of the wrong type,
or not finite (``Infinity`` and ``NaN`` are valid JSON to Python) is :class:`BadNumber`, which callers turn into one
sentence.
"""

from __future__ import annotations

import math
from typing import Any

MAX_LAYERS = 1024  # the deepest published models have under 200; gguf-py's tensor map takes ~2 s at 1024
MAX_HEADS = 1 << 16
MAX_WIDTH = 1 << 22  # embedding, feed-forward and head widths
MAX_VOCAB = 1 << 24
MAX_CONTEXT = 1 << 32  # a few models claim 10M tokens
MAX_EXPERTS = 1 << 16
MAX_ELEMENTS = (1 << 63) - 1  # a tensor's element count must fit ggml's int64

# config.json keys (top level or text_config) the planner and the converter read, and their bound.
CONFIG_BOUNDS: dict[str, int] = {
    "num_hidden_layers": MAX_LAYERS, "n_layer": MAX_LAYERS, "num_layers": MAX_LAYERS,
    "num_attention_heads": MAX_HEADS, "n_head": MAX_HEADS, "num_key_value_heads": MAX_HEADS,
    "hidden_size": MAX_WIDTH, "n_embd": MAX_WIDTH, "d_model": MAX_WIDTH, "head_dim": MAX_WIDTH,
    "intermediate_size": MAX_WIDTH, "vocab_size": MAX_VOCAB, "max_position_embeddings": MAX_CONTEXT,
    "original_max_position_embeddings": MAX_CONTEXT, "sliding_window": MAX_CONTEXT,
    "sliding_window_pattern": MAX_LAYERS, "num_local_experts": MAX_EXPERTS, "num_experts": MAX_EXPERTS,
    "num_experts_per_tok": MAX_EXPERTS,
}
# GGUF ``{arch}.*`` keys and their bound (arrays of them are per-layer values, each checked).
GGUF_BOUNDS: dict[str, int] = {
    "block_count": MAX_LAYERS, "context_length": MAX_CONTEXT, "embedding_length": MAX_WIDTH,
    "feed_forward_length": MAX_WIDTH, "attention.head_count": MAX_HEADS, "attention.head_count_kv": MAX_HEADS,
    "attention.key_length": MAX_WIDTH, "attention.value_length": MAX_WIDTH, "attention.sliding_window": MAX_CONTEXT,
    "vocab_size": MAX_VOCAB, "expert_count": MAX_EXPERTS, "expert_used_count": MAX_EXPERTS,
}

GGUF_PER_LAYER = frozenset({"attention.head_count", "attention.head_count_kv", "feed_forward_length"})


class BadNumber(ValueError):
    """A number outside what any real model has, or not a number; ``str()`` is a sentence fragment."""


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false value"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def whole_number(value: Any, what: str, bound: int) -> int:
    """``value`` as an int in ``[0, bound]``; integral finite floats are accepted (some configs write ``4096.0``)."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadNumber(f"its {what} is {value}, not a number a model can have")
        if not value.is_integer():
            raise BadNumber(f"its {what} is {value}, not a whole number")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadNumber(f"its {what} is a {_kind(value)}, not a whole number")
    if value < 0 or value > bound:
        raise BadNumber(f"its {what} is {value}, outside what any model has (0 to {bound})")
    return value


def number_or_layers(value: Any, what: str, bound: int) -> int | tuple[int, ...]:
    """A whole number, or a per-layer list of them (at most :data:`MAX_LAYERS` long)."""
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_LAYERS:
            raise BadNumber(f"its {what} lists {len(value)} layers, more than any model has")
        return tuple(whole_number(v, what, bound) for v in value)
    return whole_number(value, what, bound)


def check_config_numbers(config: dict[str, Any]) -> None:
    """Raise :class:`BadNumber` for a ``config.json`` (and its ``text_config``) number outside its bound;
    also for a ``layer_types`` list longer than any model. ``None`` (absent) passes."""
    holders = [config]
    if isinstance(config.get("text_config"), dict):
        holders.append(config["text_config"])
    for holder in holders:
        for key, bound in CONFIG_BOUNDS.items():
            value = holder.get(key)
            if value is not None:
                whole_number(value, key, bound)
        layer_types = holder.get("layer_types")
        if isinstance(layer_types, list) and len(layer_types) > MAX_LAYERS:
            raise BadNumber(f"its layer_types lists {len(layer_types)} layers, more than any model has")


def check_gguf_numbers(metadata: dict[str, Any]) -> None:
    """Raise :class:`BadNumber` for a GGUF ``{arch}.*`` number the planner reads that is outside its bound."""
    arch = metadata.get("general.architecture")
    if not isinstance(arch, str):
        return
    for key, bound in GGUF_BOUNDS.items():
        value = metadata.get(f"{arch}.{key}")
        if value is None:
            continue
        if key in GGUF_PER_LAYER:
            number_or_layers(value, key, bound)
        else:
            whole_number(value, key, bound)
    pattern = metadata.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, (list, tuple)) and len(pattern) > MAX_LAYERS:
        raise BadNumber(f"its sliding_window_pattern lists {len(pattern)} layers, more than any model has")
