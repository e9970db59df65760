"""How many bytes llama.cpp takes for a model: KV cache, compute buffers, per-backend overhead, margins.

Every formula here exists once; the planner (:mod:`desktop.memory.planner`) places them on devices.

* KV cache (llama.cpp's ``llama_kv_cache``): per layer ``cells x (n_embd_k_gqa + n_embd_v_gqa)`` elements of the
  cache type; ``cells`` is the context padded to 256, or ``min(that, pad256(window + n_ubatch))`` on a
  sliding-window layer unless ``swa_full``.
* Compute buffer: ggml's allocator keeps the largest set of live f32 activations of one micro-batch of
  ``n_ub = min(n_ubatch, n_ctx)`` tokens. Measured with this llama.cpp (logged "compute buffer size") on the CPU
  for several shapes, on CUDA and Vulkan (docs: shared/notes/gpu-facts.md), three phases bound it:
  attention ``[n_head x n_kv x n_ub scores without flash attention] + mask + k x n_embd x n_ub``, feed-forward
  ``mask + 3 x n_ff x n_ub + 4 x n_embd x n_ub`` and, on the device with the output layer, logits
  ``n_vocab x n_ub + 2 x n_embd x n_ub``. The mask is f32 (f16 with flash attention), ``n_kv x n_ub``; ``k`` is
  5.5 on the CPU, 4.5 on CUDA, 3.5 on Vulkan (the measured differences between backends).
* Host compute under GPU offload: with a GPU backend llama.cpp runs big batches of CPU-resident layers on the
  GPU too (op offload, even with no layer offloaded: the main GPU then holds a compute buffer, the copied output
  weight for the logits included, and the backend's overhead), so the host keeps only the inputs: the mask and about 2.5 ``n_embd x n_ub`` tensors (CUDA_Host
  compute 19.4 MB measured for a Llama-3.2-1B shape at 4096 with 17 and with 8 of 17 layers offloaded).
* Overhead: what a backend takes on each GPU it uses beyond llama.cpp's buffers (context, cuBLAS workspace),
  from NVML before/after load: CUDA about 558 MB, Vulkan about 52 MB (H200, driver 580). Backends not measured
  (Metal, ROCm, SYCL, ...) use CUDA's figure, the safe side.
* Margins are bytes, not shares: a GPU keeps :data:`GPU_MARGIN_BYTES` free, the host :data:`HOST_MARGIN_BYTES`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from desktop.errors import UserError
from desktop.memory.shape import ModelShape

DEFAULT_N_UBATCH = 512
GPU_MARGIN_BYTES = 250 * 10**6
"""Kept free on each GPU used: allocator slack and the compute estimate's error (about 4% of a 300 MB buffer)."""
HOST_MARGIN_BYTES = 500 * 10**6
"""Kept free in RAM for the app and the operating system."""

# bytes per block and elements per block of the KV cache types llama.cpp accepts (ggml type traits)
KV_CACHE_TYPES: dict[str, tuple[int, int]] = {
    "f16": (2, 1),
    "q8_0": (34, 32),
    "q4_0": (18, 32),
    "f32": (4, 1),
    "bf16": (2, 1),
    "q5_1": (24, 32),
    "q5_0": (22, 32),
    "q4_1": (20, 32),
    "iq4_nl": (18, 32),
}
KV_CHOICES = ("f16", "q8_0", "q4_0")
"""The KV cache types the Chat page offers."""
FLASH_ATTN_CHOICES = ("auto", "on", "off")


@dataclass(frozen=True)
class Backend:
    """What one llama.cpp backend costs on a device beyond the buffers it logs."""

    name: str
    overhead_bytes: int  # per device used
    attention_embd: float  # k in the attention phase's k x n_embd x n_ub
    measured: bool
    flash_attn_auto: bool = True  # what llama.cpp's "auto" resolves to on this backend


BACKENDS: dict[str, Backend] = {
    "CPU": Backend("CPU", 0, 5.5, True),
    "CUDA": Backend("CUDA", 558 * 10**6, 4.5, True),
    "Vulkan": Backend("Vulkan", 52 * 10**6, 3.5, True),
}


def backend(name: str) -> Backend:
    """The profile of a backend by llama.cpp's name ("CUDA", "Vulkan", "Metal", ...); unmeasured ones take
    CUDA's overhead and sizes, labelled as not measured."""
    key = next((k for k in BACKENDS if k.lower() == (name or "").lower()), None)
    if key is not None:
        return BACKENDS[key]
    cuda = BACKENDS["CUDA"]
    return Backend(name or "GPU", cuda.overhead_bytes, cuda.attention_embd, False)


def flash_attention(setting: str | bool, backend_name: str = "CPU", cache_type_v: str = "f16") -> bool:
    """Whether llama.cpp will run with flash attention: "auto" follows the backend (on for CPU, CUDA, Vulkan);
    a quantized V cache needs it, so it is on whenever V is quantized and the user did not turn it off."""
    if isinstance(setting, bool):
        return setting
    if setting == "on":
        return True
    if setting == "off":
        return False
    return backend(backend_name).flash_attn_auto or is_quantized(cache_type_v)


def is_quantized(cache_type: str) -> bool:
    return KV_CACHE_TYPES.get(cache_type.lower(), (2, 1))[1] > 1


def check_cache_types(cache_type_k: str, cache_type_v: str, flash_attn: str | bool) -> None:
    """A UserError for settings llama.cpp refuses: unknown types, a quantized V cache without flash attention."""
    for kind in (cache_type_k, cache_type_v):
        if kind.lower() not in KV_CACHE_TYPES:
            raise UserError(f"{kind} is not a KV cache type llama.cpp supports.",
                            f"Choose one of {', '.join(KV_CACHE_TYPES)}.")
    if is_quantized(cache_type_v) and (flash_attn is False or flash_attn == "off"):
        raise UserError(f"llama.cpp needs flash attention for a {cache_type_v} V cache.",
                        "Set flash attention to auto or on, or use an f16 KV cache.")


def _pad(n: int, to: int = 256) -> int:
    return (n + to - 1) // to * to


def type_bytes(cache_type: str, n_elements: int) -> int:
    try:
        block_bytes, block_elems = KV_CACHE_TYPES[cache_type.lower()]
    except KeyError:
        raise UserError(f"{cache_type} is not a KV cache type llama.cpp supports.",
                        f"Choose one of {', '.join(KV_CACHE_TYPES)}.") from None
    return (n_elements + block_elems - 1) // block_elems * block_bytes


def kv_cells(shape: ModelShape, layer: int, n_ctx: int, *, n_ubatch: int = DEFAULT_N_UBATCH,
             swa_full: bool = False) -> int:
    """How many cells layer ``layer``'s KV cache holds for a context of ``n_ctx``."""
    size = _pad(max(1, n_ctx))
    if shape.is_swa(layer) and not swa_full:
        return min(size, _pad(shape.sliding_window + n_ubatch))
    return size


def layer_kv_bytes(shape: ModelShape, layer: int, n_ctx: int, *, cache_type_k: str = "f16", cache_type_v: str = "",
                   n_ubatch: int = DEFAULT_N_UBATCH, swa_full: bool = False) -> int:
    cells = kv_cells(shape, layer, n_ctx, n_ubatch=n_ubatch, swa_full=swa_full)
    k = type_bytes(cache_type_k, shape.n_embd_k_gqa[layer]) * cells
    v = type_bytes(cache_type_v or cache_type_k, shape.n_embd_v_gqa[layer]) * cells
    return k + v


def kv_cache_bytes(shape: ModelShape, n_ctx: int, *, cache_type_k: str = "f16", cache_type_v: str = "",
                   n_ubatch: int = DEFAULT_N_UBATCH, swa_full: bool = False, layers: Iterable[int] | None = None) -> int:
    """Bytes of the KV cache of ``layers`` (all by default) at context ``n_ctx``."""
    chosen = range(shape.n_layer) if layers is None else layers
    return sum(layer_kv_bytes(shape, il, n_ctx, cache_type_k=cache_type_k, cache_type_v=cache_type_v,
                              n_ubatch=n_ubatch, swa_full=swa_full) for il in chosen)


def _micro_batch(n_ctx: int, n_ubatch: int) -> int:
    return max(1, min(n_ubatch, n_ctx))


def _mask_bytes(shape: ModelShape, n_ctx: int, n_ub: int, flash_attn: bool) -> int:
    return _pad(max(1, n_ctx)) * n_ub * (2 if flash_attn else 4)


def compute_buffer_bytes(shape: ModelShape, n_ctx: int, *, backend_name: str = "CPU",
                         n_ubatch: int = DEFAULT_N_UBATCH, flash_attn: bool = True, with_output: bool = True,
                         partial: bool = False, output_weight_copy: int = 0) -> int:
    """One device's compute buffer as llama.cpp sizes it (see the module's notes for the measurements).

    ``partial``: a GPU that does not hold every layer also receives the activations of the host's layers.
    ``output_weight_copy``: the bytes of a host-resident output weight a GPU copies in to compute the logits.
    """
    n_ub = _micro_batch(n_ctx, n_ubatch)
    n_kv = _pad(max(1, n_ctx))
    embd = 4 * shape.n_embd * n_ub
    mask = _mask_bytes(shape, n_ctx, n_ub, flash_attn)
    scores = 0 if flash_attn else 4 * shape.n_head * n_kv * n_ub
    attention = scores + mask + int(backend(backend_name).attention_embd * embd)
    feed_forward = mask + 4 * 3 * shape.n_ff * n_ub + 4 * embd
    logits = logits_bytes(shape, n_ctx, n_ubatch=n_ubatch) + output_weight_copy if with_output else 0
    return max(attention, feed_forward, logits) + (embd if partial else 0)


def logits_bytes(shape: ModelShape, n_ctx: int, *, n_ubatch: int = DEFAULT_N_UBATCH) -> int:
    """The output phase of a compute buffer: the logits of a micro-batch and two ``n_embd`` activations."""
    n_ub = _micro_batch(n_ctx, n_ubatch)
    return 4 * shape.n_vocab * n_ub + 2 * 4 * shape.n_embd * n_ub


def host_compute_bytes(shape: ModelShape, n_ctx: int, *, n_ubatch: int = DEFAULT_N_UBATCH,
                       flash_attn: bool = True) -> int:
    """The host's compute buffer when a GPU backend runs the model (any number of layers offloaded)."""
    n_ub = _micro_batch(n_ctx, n_ubatch)
    return _mask_bytes(shape, n_ctx, n_ub, flash_attn) + int(2.5 * 4 * shape.n_embd * n_ub)


def output_buffer_bytes(shape: ModelShape) -> int:
    """The host's logits buffer for one sequence ("CPU output buffer size"), always on the host."""
    return 4 * shape.n_vocab
