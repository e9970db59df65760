"""Will a model fit this machine? Weights plus KV cache plus working buffers against GPU memory and RAM.

Everything here is a pure function of explicit numbers, so the Models page, ``quantdesk inspect`` and the tests
get the same verdict from the same inputs. Only :func:`machine_memory` looks at the machine.

The KV cache follows llama.cpp: per layer and per cached token it stores ``n_head_kv * key_length`` K values and
``n_head_kv * value_length`` V values (F16 by default, 2 bytes each); layers with sliding-window attention cache
at most ``sliding_window`` tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from desktop.jobs import format_bytes

log = logging.getLogger(__name__)

__all__ = [
    "GPU_HEADROOM_BYTES",
    "RAM_HEADROOM_BYTES",
    "AttentionShape",
    "Fit",
    "MachineMemory",
    "attention_from_config",
    "attention_from_gguf",
    "compute_buffer_bytes",
    "fit_verdict",
    "kv_cache_bytes",
    "machine_memory",
]

GPU_HEADROOM_BYTES = 512 * 1024**2
"""Kept free on each GPU: the backend's own context and allocator slack."""

RAM_HEADROOM_BYTES = 512 * 1024**2
"""Kept free in RAM for the app and the operating system."""

DEFAULT_UBATCH = 512

# The number of layers in each repeat of gemma's local/global attention pattern when the file does not say.
_SWA_PATTERN_BY_ARCH = {"gemma2": 2, "gemma3": 6, "gemma3_text": 6}


@dataclass(frozen=True)
class AttentionShape:
    """What the KV cache and the working buffers depend on.

    ``swa_layers`` is how many of ``n_layers`` use sliding-window attention of ``sliding_window`` tokens;
    ``n_ctx_train`` is the context the model was trained for (0 when unknown).
    """

    n_layers: int
    n_head_kv: int
    key_length: int
    value_length: int
    n_head: int = 0
    n_embd: int = 0
    n_vocab: int = 0
    sliding_window: int = 0
    swa_layers: int = 0
    n_ctx_train: int = 0


@dataclass(frozen=True)
class MachineMemory:
    """Free memory now: RAM available to a new process and each GPU's free memory."""

    ram_available: int
    gpu_free: tuple[int, ...] = ()
    gpu_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class Fit:
    """The verdict for one model at one context: ``where`` is "GPU", "RAM" or "neither"."""

    where: str
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    needed_bytes: int
    gpu_free_bytes: int
    ram_available_bytes: int
    notes: tuple[str, ...] = field(default=())

    def sentence(self) -> str:
        needed = format_bytes(self.needed_bytes)
        if self.where == "GPU":
            return f"Fits in GPU memory: needs {needed} of {format_bytes(self.gpu_free_bytes)} free."
        if self.where == "RAM":
            gpu = (
                f"too big for the {format_bytes(self.gpu_free_bytes)} free on the GPU"
                if self.gpu_free_bytes
                else "no GPU to offload to"
            )
            return f"Fits in RAM: needs {needed} of {format_bytes(self.ram_available_bytes)} available ({gpu})."
        return (
            f"Does not fit: needs {needed}, but only {format_bytes(self.ram_available_bytes)} of RAM "
            f"and {format_bytes(self.gpu_free_bytes)} of GPU memory are free."
        )


def kv_cache_bytes(shape: AttentionShape, n_ctx: int, bytes_per_element: float = 2.0) -> int:
    """Bytes of the KV cache for ``n_ctx`` tokens (F16 cache unless ``bytes_per_element`` says otherwise)."""
    if n_ctx <= 0 or shape.n_layers <= 0:
        return 0
    per_token_per_layer = shape.n_head_kv * (shape.key_length + shape.value_length)
    swa_layers = min(shape.swa_layers, shape.n_layers) if shape.sliding_window > 0 else 0
    swa_tokens = min(n_ctx, shape.sliding_window) if swa_layers else 0
    tokens = (shape.n_layers - swa_layers) * n_ctx + swa_layers * swa_tokens
    return int(tokens * per_token_per_layer * bytes_per_element)


def compute_buffer_bytes(shape: AttentionShape, n_ctx: int, n_ubatch: int = DEFAULT_UBATCH) -> int:
    """A rough size of llama.cpp's compute buffer: logits for one micro-batch plus its activations.

    With flash attention (llama.cpp's default where the backend has it) the attention scores are not
    materialised, so the context length matters little here; the KV cache carries the context cost.
    """
    n_vocab = shape.n_vocab or 32000
    n_embd = shape.n_embd or 4096
    batch = max(1, min(n_ubatch, n_ctx)) if n_ctx > 0 else n_ubatch
    return int(batch * 4 * (n_vocab + 8 * n_embd))


def fit_verdict(
    weights_bytes: int,
    kv_bytes: int,
    ram_available: int,
    gpu_free: Sequence[int] = (),
    *,
    compute_bytes: int = 0,
    gpu_headroom: int = GPU_HEADROOM_BYTES,
    ram_headroom: int = RAM_HEADROOM_BYTES,
) -> Fit:
    """Where a model of ``weights_bytes`` with a KV cache of ``kv_bytes`` can run entirely.

    "GPU": weights, cache and buffers fit the GPUs' free memory together (llama.cpp splits layers across
    GPUs), keeping ``gpu_headroom`` free on each. "RAM": they fit the available RAM with ``ram_headroom``
    to spare. "neither" otherwise.
    """
    needed = int(weights_bytes) + int(kv_bytes) + int(compute_bytes)
    gpus = [int(g) for g in gpu_free if g > 0]
    gpu_total = sum(gpus)
    gpu_usable = sum(max(0, g - gpu_headroom) for g in gpus)
    notes: list[str] = []
    if gpus and needed <= gpu_usable:
        where = "GPU"
    elif needed + ram_headroom <= ram_available:
        where = "RAM"
        if gpus and weights_bytes <= gpu_usable:
            notes.append("The weights alone would fit the GPU; a shorter context may let the whole model fit.")
    else:
        where = "neither"
    return Fit(where, int(weights_bytes), int(kv_bytes), int(compute_bytes), needed, gpu_total,
               int(ram_available), tuple(notes))


def _first(value: Any) -> Any:
    """Per-layer lists (some archs vary heads by layer) count by their largest entry."""
    if isinstance(value, (list, tuple)):
        numbers = [v for v in value if isinstance(v, (int, float))]
        return max(numbers) if numbers else None
    return value


def _int(value: Any, default: int = 0) -> int:
    value = _first(value)
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def attention_from_config(config: Mapping[str, Any]) -> AttentionShape:
    """The attention shape from a Hugging Face ``config.json`` (``text_config`` merged in, as converters do)."""
    merged: dict[str, Any] = dict(config)
    text = config.get("text_config")
    if isinstance(text, Mapping):
        merged.update(text)
    n_layers = _int(merged.get("num_hidden_layers") or merged.get("n_layer") or merged.get("num_layers"))
    n_head = _int(merged.get("num_attention_heads") or merged.get("n_head"))
    n_embd = _int(merged.get("hidden_size") or merged.get("n_embd") or merged.get("d_model"))
    n_head_kv = _int(merged.get("num_key_value_heads"), n_head)
    head_dim = _int(merged.get("head_dim"), n_embd // n_head if n_head else 0)
    window = _int(merged.get("sliding_window"))
    swa_layers = 0
    layer_types = merged.get("layer_types")
    model_type = str(merged.get("model_type") or "")
    if isinstance(layer_types, list) and window:
        swa_layers = sum(1 for t in layer_types if "sliding" in str(t))
    elif window and model_type in _SWA_PATTERN_BY_ARCH:
        pattern = _int(merged.get("sliding_window_pattern"), _SWA_PATTERN_BY_ARCH[model_type]) or 1
        swa_layers = sum(1 for i in range(n_layers) if (i + 1) % pattern != 0)
    elif window and merged.get("use_sliding_window") and model_type.startswith("qwen"):
        swa_layers = n_layers
    return AttentionShape(
        n_layers=n_layers,
        n_head_kv=n_head_kv,
        key_length=head_dim,
        value_length=head_dim,
        n_head=n_head,
        n_embd=n_embd,
        n_vocab=_int(merged.get("vocab_size")),
        sliding_window=window if swa_layers else 0,
        swa_layers=swa_layers,
        n_ctx_train=_int(merged.get("max_position_embeddings")),
    )


def attention_from_gguf(metadata: Mapping[str, Any], n_vocab: int = 0) -> AttentionShape:
    """The attention shape from GGUF key/values (``general.architecture``, ``{arch}.block_count``, ...)."""
    arch = str(metadata.get("general.architecture") or "")

    def hp(key: str, default: int = 0) -> int:
        return _int(metadata.get(f"{arch}.{key}"), default)

    n_layers = hp("block_count")
    n_head = hp("attention.head_count")
    n_embd = hp("embedding_length")
    n_head_kv = hp("attention.head_count_kv", n_head)
    default_dim = n_embd // n_head if n_head else 0
    key_length = hp("attention.key_length", default_dim)
    value_length = hp("attention.value_length", key_length or default_dim)
    window = hp("attention.sliding_window")
    swa_layers = 0
    pattern_value = metadata.get(f"{arch}.attention.sliding_window_pattern")
    if window and isinstance(pattern_value, (list, tuple)):
        swa_layers = sum(1 for v in pattern_value if v)
    elif window and arch in _SWA_PATTERN_BY_ARCH:
        pattern = _int(pattern_value, _SWA_PATTERN_BY_ARCH[arch]) or 1
        swa_layers = sum(1 for i in range(n_layers) if (i + 1) % pattern != 0)
    return AttentionShape(
        n_layers=n_layers,
        n_head_kv=n_head_kv,
        key_length=key_length,
        value_length=value_length,
        n_head=n_head,
        n_embd=n_embd,
        n_vocab=n_vocab or hp("vocab_size"),
        sliding_window=window if swa_layers else 0,
        swa_layers=swa_layers,
        n_ctx_train=hp("context_length"),
    )


def machine_memory(report: Any | None = None) -> MachineMemory:
    """Free RAM and GPU memory from a :mod:`desktop.hardware.report` report (collected now when not given).

    Falls back to psutil's available RAM and no GPU when the hardware probe fails. GPUs with unified memory
    (Apple Silicon) share the RAM, so they are not counted twice.
    """
    try:
        if report is None:
            from desktop.hardware import report as hardware

            report = hardware.collect_report()
        gpus = [
            g
            for g in report.gpus
            if getattr(g, "vram_free", 0)
            and not getattr(g, "unified_memory", False)
            and getattr(g, "engine_uses", None) is not False  # a GPU the selected engine cannot reach holds nothing
        ]
        return MachineMemory(
            ram_available=int(report.memory.available),
            gpu_free=tuple(int(g.vram_free) for g in gpus),
            gpu_names=tuple(str(g.name) for g in gpus),
        )
    except Exception as exc:  # noqa: BLE001 - a hardware probe failing must not stop an inspection
        log.info("hardware report unavailable (%s); using psutil for RAM and assuming no GPU", exc)
        import psutil

        return MachineMemory(ram_available=int(psutil.virtual_memory().available))
