"""The one model shape the planner works on, from a local GGUF, a remote GGUF header or a ``config.json``.

A :class:`ModelShape` holds what memory depends on: per-layer weight bytes and K/V widths, the vocabulary and
embedding sizes, the feed-forward width and the sliding-window layout. A local GGUF gives exact per-layer bytes
(:func:`shape_from_gguf`); a Hub checkpoint or a remote header gives the shape without bytes
(:func:`shape_from_config`, :func:`shape_from_metadata`), and :meth:`ModelShape.with_weights` spreads a (predicted)
file size over the layers so the same planner can place it.

Per-layer head counts given as lists count by their largest entry, everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from desktop.errors import UserError
from desktop.gguf.parser import head_counts

if TYPE_CHECKING:
    from desktop.gguf.reader import GGUFInfo

# Architectures whose sliding-window layers follow a repeating pattern (llama.cpp's ``set_swa_pattern``):
# with pattern n, every n-th layer is a full-attention layer.
SWA_PATTERNS: dict[str, int] = {
    "gemma2": 2,
    "gemma3": 6,
    "gemma3_text": 6,
    "gemma3n": 5,
    "gemma-embedding": 6,
    "cohere2": 4,
    "exaone4": 4,
    "llama4": 4,
    "olmo2": 4,
    "gpt-oss": 2,
}

_BLOCK_RE = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs to know about a model.

    ``weights_known`` is False for a shape read from a ``config.json`` or a remote header: the byte fields are
    zero until :meth:`with_weights` fills them from a file size.
    """

    architecture: str
    n_layer: int
    n_ctx_train: int
    n_embd: int
    n_vocab: int
    n_head: int
    n_ff: int
    layer_bytes: tuple[int, ...]  # weights of blk.{i}.*
    output_bytes: int  # output layer as placed on its device (output.weight + output_norm, or a tied copy)
    input_bytes: int  # token_embd and other tensors that always stay on the CPU
    n_embd_k_gqa: tuple[int, ...]  # per layer: K width (n_head_kv x key_length)
    n_embd_v_gqa: tuple[int, ...]  # per layer: V width
    sliding_window: int = 0
    swa_layers: tuple[bool, ...] = ()  # per layer: True for a sliding-window layer
    tied_embeddings: bool = False
    weights_known: bool = True
    output_copy_bytes: int = 0  # tied embeddings: the copy of token_embd in output_bytes (not in the file)
    file_order: tuple[tuple[int, int, int], ...] = ()  # (owner layer, offset, bytes) per tensor (-1: input)
    header_bytes: int = 0  # what a file of this model holds besides its tensors (the GGUF header), when known

    def mapped_bytes(self, owners: set[int]) -> int:
        """What llama.cpp maps for the tensors of ``owners`` ("CPU_Mapped model buffer size"): the file range from
        the first to the last of them, including other layers' tensors in between (files that order blocks
        blk.0, blk.1, blk.10, ... interleave them). Without the file order: the tensors' own bytes."""
        hits = [(offset, offset + size) for owner, offset, size in self.file_order if owner in owners]
        return max(end for _, end in hits) - min(start for start, _ in hits) if hits else 0

    @property
    def total_layers(self) -> int:
        """The slider's maximum: every block plus the output layer."""
        return self.n_layer + 1

    @property
    def weights_bytes(self) -> int:
        return sum(self.layer_bytes) + self.input_bytes + self.output_bytes - self.output_copy_bytes

    def is_swa(self, layer: int) -> bool:
        return self.sliding_window > 0 and layer < len(self.swa_layers) and self.swa_layers[layer]

    def with_weights(self, total_bytes: int) -> ModelShape:
        """The same shape holding ``total_bytes`` of weights (a file's or a predicted quant's size; a known
        header is not weights).

        Known per-layer bytes are scaled; unknown ones are estimated from parameter counts: the embeddings
        (``n_vocab x n_embd``, twice when the output is not tied) and equal blocks for the rest.
        """
        total = max(0, int(total_bytes) - self.header_bytes)
        order: tuple[tuple[int, int, int], ...] = ()
        if self.weights_known and self.weights_bytes > 0:
            if total == self.weights_bytes:
                return self
            scale = total / self.weights_bytes
            layers = tuple(int(b * scale) for b in self.layer_bytes)
            input_bytes = int(self.input_bytes * scale)
            output = int(self.output_bytes * scale)
            copy = int(self.output_copy_bytes * scale)
            order = tuple((owner, int(offset * scale), int(size * scale)) for owner, offset, size in self.file_order)
        else:
            embd = self.n_vocab * self.n_embd
            kv = max(self.n_embd_k_gqa, default=0) + max(self.n_embd_v_gqa, default=0)
            block = 2 * self.n_embd * self.n_embd + self.n_embd * kv + 3 * self.n_embd * self.n_ff
            elements = self.n_layer * block + embd * (1 if self.tied_embeddings else 2)
            per = total / elements if elements else 0.0
            layers = tuple(int(block * per) for _ in range(self.n_layer))
            input_bytes = int(embd * per)
            output = input_bytes  # untied: its own matrix of the same size; tied: llama.cpp's copy
            copy = output if self.tied_embeddings else 0
        used = sum(layers) + input_bytes + output - copy
        input_bytes += total - used  # rounding lands on the host
        return replace(self, layer_bytes=layers, input_bytes=input_bytes, output_bytes=output, weights_known=True,
                       file_order=order, output_copy_bytes=copy)


def _int(value: Any, default: int = 0) -> int:
    if isinstance(value, (list, tuple)):
        numbers = [v for v in value if isinstance(v, (int, float))]
        return int(max(numbers)) if numbers else default
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def swa_layer_pattern(architecture: str, n_layer: int, pattern: int | None = None) -> tuple[bool, ...]:
    """Which layers use the sliding window, as llama.cpp lays them out (pattern 0: every layer)."""
    n = pattern if pattern is not None else SWA_PATTERNS.get(architecture, -1)
    if n == 0:
        return tuple(True for _ in range(n_layer))
    if n < 0:
        return tuple(False for _ in range(n_layer))
    return tuple(il % n < n - 1 for il in range(n_layer))


def _window(window: int, swa: tuple[bool, ...]) -> tuple[int, tuple[bool, ...]]:
    if window > 0 and any(swa):
        return window, swa
    return 0, tuple(False for _ in swa)  # full attention despite the key (e.g. Mistral v0.1)


def shape_from_gguf(info: GGUFInfo) -> ModelShape:
    """The planner's numbers from a local GGUF's tensor table (exact per-layer bytes and K/V widths)."""
    return shape_from_header(info, info.path.name, split=len(info.shards) > 1)


def shape_from_header(info: Any, name: str, *, split: bool = False) -> ModelShape:
    """The same from any header with ``metadata`` and ``tensors`` (a local :class:`GGUFInfo`, or a remote
    :class:`desktop.gguf.parser.Header` read by byte ranges): all of a model's tensors, so one file of it."""
    metadata = info.metadata
    arch = str(metadata.get("general.architecture") or "")
    n_layer = _int(metadata.get(f"{arch}.block_count"))
    if n_layer <= 0:
        raise UserError(
            f"{name} does not say how many layers it has, so its memory cannot be planned.",
            "Pick a GGUF made by a recent converter.",
        )
    layer_bytes = [0] * n_layer
    k_width = [0] * n_layer
    v_width = [0] * n_layer
    output_bytes = input_bytes = token_embd_bytes = n_vocab = 0
    have_output_weight = False
    n_embd = _int(metadata.get(f"{arch}.embedding_length"))
    order: list[tuple[int, int, int]] = []
    for t in info.tensors or ():
        match = _BLOCK_RE.match(t.name)
        owner = int(match.group(1)) if match and int(match.group(1)) < n_layer else -1
        if t.name.startswith(("output.", "output_norm.")):
            owner = n_layer
        order.append((owner, t.offset, t.n_bytes))
        if match:
            il = int(match.group(1))
            if il < n_layer:
                layer_bytes[il] += t.n_bytes
                if t.name.endswith(".attn_k.weight") and len(t.shape) >= 2:
                    k_width[il] = t.shape[1]
                elif t.name.endswith(".attn_v.weight") and len(t.shape) >= 2:
                    v_width[il] = t.shape[1]
            else:  # e.g. next-token-prediction layers that llama.cpp does not load by default
                input_bytes += t.n_bytes
            continue
        if t.name.startswith(("output.", "output_norm.")):
            output_bytes += t.n_bytes
            have_output_weight = have_output_weight or t.name == "output.weight"
            continue
        if t.name == "token_embd.weight":
            token_embd_bytes = t.n_bytes
            if len(t.shape) >= 2:
                n_embd = n_embd or t.shape[0]
                n_vocab = t.shape[1]
        input_bytes += t.n_bytes
    tied = not have_output_weight
    copy = token_embd_bytes if tied else 0  # llama.cpp duplicates token_embd onto the output layer's device
    output_bytes += copy
    base = shape_from_metadata(metadata, n_vocab)
    k = [k_width[il] or base.n_embd_k_gqa[il] for il in range(n_layer)]  # fused QKV (phi3): the metadata
    v = [v_width[il] or base.n_embd_v_gqa[il] for il in range(n_layer)]
    return replace(
        base,
        n_embd=n_embd or base.n_embd,
        n_vocab=n_vocab or base.n_vocab or _int(metadata.get("tokenizer.ggml.vocab_size")),
        layer_bytes=tuple(layer_bytes),
        output_bytes=output_bytes,
        input_bytes=input_bytes,
        n_embd_k_gqa=tuple(k),
        n_embd_v_gqa=tuple(v),
        tied_embeddings=tied,
        weights_known=True,
        output_copy_bytes=copy,
        # a split model maps each shard apart; offsets all 0: a table read without them
        file_order=tuple(order) if not split and any(o for _, o, _ in order) else (),
        header_bytes=_not_weights(info, order),
    )


def _not_weights(info: Any, order: list[tuple[int, int, int]]) -> int:
    """The bytes of a file that are not tensors: the header, and the alignment padding between tensors."""
    header = int(getattr(info, "data_offset", 0) or 0)
    if not order or not any(offset for _, offset, _ in order):
        return header
    return header + max(offset + size for _, offset, size in order) - sum(size for _, _, size in order)


def shape_from_metadata(metadata: Mapping[str, Any], n_vocab: int = 0) -> ModelShape:
    """The shape from GGUF key/values alone (a remote header): no weight bytes."""
    arch = str(metadata.get("general.architecture") or "")

    def hp(key: str, default: int = 0) -> int:
        return _int(metadata.get(f"{arch}.{key}"), default)

    n_layer = hp("block_count")
    heads, heads_kv = head_counts(metadata, arch, n_layer)  # the reader's one per-layer accessor
    n_head, n_head_kv = max(heads), max(heads_kv)
    n_embd = hp("embedding_length")
    key_length = hp("attention.key_length", n_embd // n_head if n_head else 0)
    value_length = hp("attention.value_length", key_length)
    pattern_value = metadata.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern_value, (list, tuple)):
        swa = tuple(bool(v) for v in pattern_value[:n_layer]) + (False,) * max(0, n_layer - len(pattern_value))
    else:
        pattern = _int(pattern_value) if isinstance(pattern_value, (int, float)) else None
        swa = swa_layer_pattern(arch, n_layer, pattern)
    window, swa = _window(hp("attention.sliding_window"), swa)
    per_layer = heads_kv[:n_layer]  # llama.cpp sizes each layer's cache by that layer's own KV heads
    return _unsized(arch, n_layer, hp("context_length"), n_embd, n_vocab or hp("vocab_size"), n_head,
                    hp("feed_forward_length"), (tuple(h * key_length for h in per_layer),
                                                tuple(h * value_length for h in per_layer)), window, swa)


def _unsized(arch: str, n_layer: int, n_ctx_train: int, n_embd: int, n_vocab: int, n_head: int, n_ff: int,
             kv_widths: tuple[int | tuple[int, ...], int | tuple[int, ...]], window: int, swa: tuple[bool, ...],
             tied: bool = False) -> ModelShape:
    """A shape whose weight bytes are not known yet (see :meth:`ModelShape.with_weights`). ``kv_widths``: K and
    V widths, each one for every layer or a tuple per layer."""
    k, v = ((w,) * n_layer if isinstance(w, int) else tuple(w) for w in kv_widths)
    return ModelShape(architecture=arch, n_layer=n_layer, n_ctx_train=n_ctx_train, n_embd=n_embd, n_vocab=n_vocab,
                      n_head=n_head, n_ff=n_ff, layer_bytes=(0,) * n_layer, output_bytes=0, input_bytes=0,
                      n_embd_k_gqa=k, n_embd_v_gqa=v,
                      sliding_window=window, swa_layers=swa, tied_embeddings=tied, weights_known=False)


def shape_from_config(config: Mapping[str, Any]) -> ModelShape:
    """The shape from a Hugging Face ``config.json`` (``text_config`` merged in, as converters do): no bytes."""
    merged: dict[str, Any] = dict(config)
    text = config.get("text_config")
    if isinstance(text, Mapping):
        merged.update(text)
    n_layer = _int(merged.get("num_hidden_layers") or merged.get("n_layer") or merged.get("num_layers"))
    n_head = _int(merged.get("num_attention_heads") or merged.get("n_head"))
    n_embd = _int(merged.get("hidden_size") or merged.get("n_embd") or merged.get("d_model"))
    n_head_kv = _int(merged.get("num_key_value_heads"), n_head)
    head_dim = _int(merged.get("head_dim"), n_embd // n_head if n_head else 0)
    model_type = str(merged.get("model_type") or "")
    arch = model_type if model_type in SWA_PATTERNS else model_type.replace("_", "-")
    layer_types = merged.get("layer_types")
    if arch not in SWA_PATTERNS:  # llama.cpp runs other architectures (qwen2 included) with full attention
        swa = tuple(False for _ in range(n_layer))
    elif isinstance(layer_types, list):
        swa = tuple("sliding" in str(t) for t in layer_types[:n_layer]) + (False,) * max(0, n_layer - len(layer_types))
    else:
        pattern = merged.get("sliding_window_pattern")
        swa = swa_layer_pattern(arch, n_layer, _int(pattern) if isinstance(pattern, (int, float)) else None)
    window, swa = _window(_int(merged.get("sliding_window")), swa)
    return _unsized(model_type, n_layer, _int(merged.get("max_position_embeddings")), n_embd,
                    _int(merged.get("vocab_size")), n_head,
                    _int(merged.get("intermediate_size") or merged.get("n_inner"), 4 * n_embd),
                    (n_head_kv * head_dim, n_head_kv * head_dim), window, swa, bool(merged.get("tie_word_embeddings")))
