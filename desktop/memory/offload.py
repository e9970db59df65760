"""How many layers of a GGUF fit on the GPU(s): pure functions over the tensor table and device budgets.

The arithmetic follows llama.cpp's own placement (``src/llama-model.cpp``, ``load_tensors``):

* ``n_gpu_layers`` counts the repeating blocks plus one *output layer*; "all layers" is ``n_layer + 1``.
  The **last** blocks go first (``i_gpu_start = max(n_layer + 1 - n_gpu_layers, 0)``), and the output layer
  (``output.weight`` and ``output_norm``, or a duplicate of ``token_embd`` when the embeddings are tied) is the
  first thing offloaded.
* The input embeddings (``token_embd``) always stay on the CPU.
* With several GPUs the offloaded layers are split in proportion to each GPU's free memory (llama.cpp's
  default ``tensor_split``) unless a split is given.
* The KV cache of a layer lives where the layer lives. Its size per layer is
  ``cells x (n_embd_k_gqa + n_embd_v_gqa) x bytes per element`` of the cache type; ``cells`` is the context
  padded to 256, or for sliding-window layers ``pad256(min(n_ctx, window + n_ubatch))``.
* The compute buffer is an estimate (see :func:`compute_buffer_bytes`); a safety margin covers the CUDA/Metal
  context, fragmentation and the estimate's error.

Apple Silicon has one pool of unified memory: what the GPU takes the host no longer has, and Metal caps the GPU's
share at its *recommended working-set size* (about two thirds of RAM up to 36 GB, three quarters above).

Nothing here touches a device or a file; :func:`model_shape` turns a :class:`~desktop.gguf.reader.GGUFInfo` into
the numbers, and the budgets are explicit parameters, so every case can be tested with synthetic sizes.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from desktop.errors import UserError

if TYPE_CHECKING:
    from desktop.gguf.reader import GGUFInfo

MiB = 1024 * 1024
GiB = 1024 * MiB

# bytes per block and elements per block of the KV cache types llama.cpp accepts (ggml type traits)
KV_CACHE_TYPES: dict[str, tuple[int, int]] = {
    "f32": (4, 1),
    "f16": (2, 1),
    "bf16": (2, 1),
    "q8_0": (34, 32),
    "q5_1": (24, 32),
    "q5_0": (22, 32),
    "q4_1": (20, 32),
    "q4_0": (18, 32),
    "iq4_nl": (18, 32),
}

# Architectures whose sliding-window layers follow a repeating pattern (llama.cpp's ``load_swa_pattern``):
# (pattern, dense_first). With pattern n and dense_first False, every n-th layer is a full-attention layer.
SWA_PATTERNS: dict[str, tuple[int, bool]] = {
    "gemma2": (2, False),
    "gemma3": (6, False),
    "gemma3n": (5, False),
    "gemma-embedding": (6, False),
    "cohere2": (4, False),
    "exaone4": (4, False),
    "llama4": (4, False),
    "olmo2": (4, False),
    "gpt-oss": (2, False),
}

DEFAULT_N_UBATCH = 512
HOST_MARGIN_BYTES = 512 * MiB
GPU_MARGIN_MIN_BYTES = 256 * MiB
GPU_MARGIN_FRACTION = 0.05

_BLOCK_RE = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs to know about a model, read from its GGUF tensor table and metadata."""

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

    @property
    def total_layers(self) -> int:
        """The slider's maximum: every block plus the output layer."""
        return self.n_layer + 1

    @property
    def weights_bytes(self) -> int:
        return sum(self.layer_bytes) + self.input_bytes + (0 if self.tied_embeddings else self.output_bytes)

    def is_swa(self, layer: int) -> bool:
        return self.sliding_window > 0 and layer < len(self.swa_layers) and self.swa_layers[layer]


@dataclass(frozen=True)
class GpuBudget:
    """One GPU as the planner sees it. ``free_bytes`` is what llama.cpp may take now."""

    name: str
    free_bytes: int
    total_bytes: int = 0
    unified_memory: bool = False
    working_set_limit: int | None = None  # Metal's recommendedMaxWorkingSetSize, when known
    backend: str = ""


@dataclass(frozen=True)
class HostBudget:
    available_bytes: int
    total_bytes: int = 0


@dataclass(frozen=True)
class PlanOptions:
    n_ctx: int = 4096
    cache_type_k: str = "f16"
    cache_type_v: str = ""  # empty: same as cache_type_k
    n_ubatch: int = DEFAULT_N_UBATCH
    flash_attn: bool = False
    swa_full: bool = False
    gpu_margin_bytes: int | None = None  # None: max(256 MiB, 5% of the GPU's total)
    host_margin_bytes: int = HOST_MARGIN_BYTES
    tensor_split: tuple[float, ...] | None = None  # None: in proportion to free memory, as llama.cpp does


@dataclass(frozen=True)
class MemoryBreakdown:
    weights: int = 0
    kv_cache: int = 0
    compute: int = 0
    margin: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.margin

    def __add__(self, other: MemoryBreakdown) -> MemoryBreakdown:
        return MemoryBreakdown(
            self.weights + other.weights,
            self.kv_cache + other.kv_cache,
            self.compute + other.compute,
            self.margin + other.margin,
        )


@dataclass(frozen=True)
class DevicePlan:
    """What one device (a GPU, or the host) would hold, against what it has."""

    name: str
    kind: str  # "gpu" or "host"
    layers: int  # blocks (and the output layer) placed here
    breakdown: MemoryBreakdown
    budget_bytes: int
    fits: bool

    @property
    def need_bytes(self) -> int:
        return self.breakdown.total

    @property
    def spare_bytes(self) -> int:
        return self.budget_bytes - self.need_bytes


@dataclass(frozen=True)
class OffloadPlan:
    """The verdict for one slider position, with the breakdown per device.

    ``verdict`` is "fits" (everything on the GPU), "fits_partly" (some layers on the GPU, the rest on the CPU),
    "cpu_only" (no GPU layers; it fits in RAM) or "does_not_fit"; ``message`` says it in a sentence.
    ``max_gpu_layers`` is the largest ``n_gpu_layers`` that fits (-1 when nothing fits at all).
    """

    n_gpu_layers: int
    total_layers: int
    max_gpu_layers: int
    n_ctx: int
    cache_type_k: str
    cache_type_v: str
    gpus: tuple[DevicePlan, ...]
    host: DevicePlan
    fits: bool
    verdict: str
    message: str
    totals: MemoryBreakdown = field(default_factory=MemoryBreakdown)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["totals"]["total"] = self.totals.total
        for device in [data["host"], *data["gpus"]]:
            device["breakdown"]["total"] = sum(device["breakdown"].values())
        return data


# --------------------------------------------------------------------------------------------- model shape


def _int(value: Any, default: int = 0) -> int:
    if isinstance(value, (list, tuple)):
        return int(max(value)) if value else default
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def swa_layer_pattern(architecture: str, n_layer: int, pattern: int | None = None) -> tuple[bool, ...]:
    """Which layers use the sliding window, as llama.cpp's ``set_swa_pattern`` lays them out."""
    default, dense_first = SWA_PATTERNS.get(architecture, (0, False))
    n = pattern if pattern is not None else default
    if n == 0:
        return tuple(True for _ in range(n_layer)) if pattern == 0 else tuple(False for _ in range(n_layer))
    if dense_first:
        return tuple(il % n != 0 for il in range(n_layer))
    return tuple(il % n < n - 1 for il in range(n_layer))


def model_shape(info: GGUFInfo) -> ModelShape:
    """Read the planner's numbers from a GGUF's tensor table (exact per-layer bytes and K/V widths)."""
    arch = info.architecture
    n_layer = info.block_count
    if n_layer <= 0:
        raise UserError(
            f"{info.path.name} does not say how many layers it has, so its offload cannot be planned.",
            "Pick a GGUF made by a recent converter.",
        )
    layer_bytes = [0] * n_layer
    k_width = [0] * n_layer
    v_width = [0] * n_layer
    output_bytes = 0
    input_bytes = 0
    have_output_weight = False
    token_embd_bytes = 0
    n_vocab = 0
    n_embd = _int(info.hparam("embedding_length"))
    for t in info.tensors:
        match = _BLOCK_RE.match(t.name)
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
        if t.name.startswith("output.") or t.name.startswith("output_norm."):
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
    if tied:
        output_bytes += token_embd_bytes  # llama.cpp duplicates token_embd onto the output layer's device

    n_head = _int(info.hparam("attention.head_count"))
    n_head_kv = _int(info.hparam("attention.head_count_kv"), n_head)
    key_length = _int(info.hparam("attention.key_length"), n_embd // n_head if n_head else 0)
    value_length = _int(info.hparam("attention.value_length"), key_length)
    for il in range(n_layer):  # fused QKV (phi3) or missing tensors: fall back to the metadata
        k_width[il] = k_width[il] or n_head_kv * key_length
        v_width[il] = v_width[il] or n_head_kv * value_length

    window = _int(info.hparam("attention.sliding_window"))
    pattern_value = info.hparam("attention.sliding_window_pattern")
    pattern = _int(pattern_value) if isinstance(pattern_value, (int, float)) else None
    swa = swa_layer_pattern(arch, n_layer, pattern) if window > 0 else tuple(False for _ in range(n_layer))
    if window > 0 and not any(swa):
        window = 0  # an architecture llama.cpp runs with full attention despite the key (e.g. Mistral v0.1)

    return ModelShape(
        architecture=arch,
        n_layer=n_layer,
        n_ctx_train=info.context_length,
        n_embd=n_embd,
        n_vocab=n_vocab or _int(info.metadata.get("tokenizer.ggml.vocab_size")),
        n_head=n_head,
        n_ff=_int(info.hparam("feed_forward_length")),
        layer_bytes=tuple(layer_bytes),
        output_bytes=output_bytes,
        input_bytes=input_bytes,
        n_embd_k_gqa=tuple(k_width),
        n_embd_v_gqa=tuple(v_width),
        sliding_window=window,
        swa_layers=swa,
        tied_embeddings=tied,
    )


# --------------------------------------------------------------------------------------------- sizes


def _pad(n: int, to: int = 256) -> int:
    return (n + to - 1) // to * to


def _type_bytes(cache_type: str, n_elements: int) -> int:
    try:
        block_bytes, block_elems = KV_CACHE_TYPES[cache_type.lower()]
    except KeyError:
        raise UserError(
            f"{cache_type} is not a KV cache type llama.cpp supports.",
            f"Choose one of {', '.join(KV_CACHE_TYPES)}.",
        ) from None
    return (n_elements + block_elems - 1) // block_elems * block_bytes


def kv_cells(shape: ModelShape, layer: int, n_ctx: int, *, n_ubatch: int = DEFAULT_N_UBATCH, swa_full: bool = False) -> int:
    """How many cells layer ``layer``'s KV cache holds for a context of ``n_ctx``."""
    size = _pad(max(1, n_ctx))
    if shape.is_swa(layer) and not swa_full:
        return min(size, _pad(min(size, shape.sliding_window + n_ubatch)))
    return size


def layer_kv_bytes(
    shape: ModelShape,
    layer: int,
    n_ctx: int,
    *,
    cache_type_k: str = "f16",
    cache_type_v: str = "",
    n_ubatch: int = DEFAULT_N_UBATCH,
    swa_full: bool = False,
) -> int:
    cells = kv_cells(shape, layer, n_ctx, n_ubatch=n_ubatch, swa_full=swa_full)
    k = _type_bytes(cache_type_k, shape.n_embd_k_gqa[layer]) * cells
    v = _type_bytes(cache_type_v or cache_type_k, shape.n_embd_v_gqa[layer]) * cells
    return k + v


def kv_cache_bytes(
    shape: ModelShape,
    n_ctx: int,
    *,
    cache_type_k: str = "f16",
    cache_type_v: str = "",
    n_ubatch: int = DEFAULT_N_UBATCH,
    swa_full: bool = False,
    layers: Iterable[int] | None = None,
) -> int:
    """Bytes of the KV cache of ``layers`` (all by default) at context ``n_ctx``."""
    chosen = range(shape.n_layer) if layers is None else layers
    return sum(
        layer_kv_bytes(
            shape, il, n_ctx, cache_type_k=cache_type_k, cache_type_v=cache_type_v, n_ubatch=n_ubatch, swa_full=swa_full
        )
        for il in chosen
    )


def compute_buffer_bytes(
    shape: ModelShape,
    n_ctx: int,
    *,
    n_ubatch: int = DEFAULT_N_UBATCH,
    flash_attn: bool = False,
    with_output: bool = True,
) -> int:
    """An estimate of one device's compute buffer for a prompt batch of ``n_ubatch`` tokens.

    ggml's allocator reuses memory between the graph's nodes, so the buffer is about the largest set of live
    f32 activations: the attention scores of one layer (``n_head x n_kv x n_ubatch``, absent with flash
    attention), the feed-forward intermediates, or, on the device that holds the output layer, the logits
    (``n_vocab x n_ubatch``), plus a few ``n_embd``-wide residual tensors. Checked against the sizes llama.cpp
    logs ("compute buffer size") for the demo model.
    """
    n_ub = max(1, min(n_ubatch, _pad(n_ctx)))
    n_kv = _pad(max(1, n_ctx))
    attention = 0 if flash_attn else shape.n_head * n_kv * n_ub
    feed_forward = 3 * shape.n_ff * n_ub
    logits = shape.n_vocab * n_ub if with_output else 0
    residual = 4 * shape.n_embd * n_ub
    return 4 * (max(attention, feed_forward, logits) + residual)


def host_compute_bytes(shape: ModelShape, n_ubatch: int = DEFAULT_N_UBATCH) -> int:
    """The host-side buffers that remain when every layer is on a GPU: inputs, the embedding rows, logits out."""
    return 4 * (2 * shape.n_embd * n_ubatch + shape.n_vocab)


def metal_working_set_limit(total_ram: int) -> int:
    """Metal's default recommended working-set size on Apple Silicon (the GPU's cap on unified memory)."""
    return int(total_ram * (0.75 if total_ram > 36 * GiB else 2 / 3))


# --------------------------------------------------------------------------------------------- placement


def layer_devices(shape: ModelShape, n_gpu_layers: int, weights: Sequence[float]) -> list[int]:
    """For every layer ``0..n_layer`` (the last index is the output layer) the GPU index, or -1 for the CPU.

    ``weights`` are the split proportions of the GPUs (llama.cpp uses their free memory).
    """
    n_all = shape.n_layer
    n_gpu = max(0, min(n_gpu_layers, n_all + 1)) if weights else 0
    i_gpu_start = max(n_all + 1 - n_gpu, 0)
    total = sum(weights) or 1.0
    cumulative: list[float] = []
    running = 0.0
    for w in weights:
        running += w
        cumulative.append(running / total)
    placement: list[int] = []
    for il in range(n_all + 1):
        if il < i_gpu_start or n_gpu == 0:
            placement.append(-1)
            continue
        index = bisect.bisect_right(cumulative, (il - i_gpu_start) / n_gpu)
        placement.append(min(index, len(weights) - 1))
    return placement


def _gpu_margin(gpu: GpuBudget, options: PlanOptions) -> int:
    if options.gpu_margin_bytes is not None:
        return options.gpu_margin_bytes
    base = gpu.total_bytes or gpu.free_bytes
    return max(GPU_MARGIN_MIN_BYTES, int(base * GPU_MARGIN_FRACTION))


def _gpu_budget(gpu: GpuBudget) -> int:
    if gpu.unified_memory and gpu.working_set_limit:
        return min(gpu.free_bytes, gpu.working_set_limit)
    return gpu.free_bytes


def evaluate(
    shape: ModelShape,
    n_gpu_layers: int,
    *,
    gpus: Sequence[GpuBudget],
    host: HostBudget,
    options: PlanOptions | None = None,
) -> OffloadPlan:
    """The verdict and breakdown for one slider position (``0..shape.total_layers``)."""
    plan = _evaluate(shape, n_gpu_layers, gpus, host, options or PlanOptions())
    return _with_max(plan, max_gpu_layers(shape, gpus=gpus, host=host, options=options))


def _evaluate(
    shape: ModelShape, n_gpu_layers: int, gpus: Sequence[GpuBudget], host: HostBudget, options: PlanOptions
) -> OffloadPlan:
    n_gpu_layers = max(0, min(n_gpu_layers, shape.total_layers)) if gpus else 0
    weights = list(options.tensor_split) if options.tensor_split else [max(0, _gpu_budget(g)) for g in gpus]
    if gpus and not any(weights):
        weights = [1.0] * len(gpus)
    placement = layer_devices(shape, n_gpu_layers, weights)
    kv_kwargs: dict[str, Any] = {
        "cache_type_k": options.cache_type_k,
        "cache_type_v": options.cache_type_v,
        "n_ubatch": options.n_ubatch,
        "swa_full": options.swa_full,
    }

    gpu_weights = [0] * len(gpus)
    gpu_kv = [0] * len(gpus)
    gpu_layers = [0] * len(gpus)
    gpu_has_output = [False] * len(gpus)
    host_weights = shape.input_bytes
    host_kv = 0
    host_layers = 0
    for il, device in enumerate(placement):
        is_output = il == shape.n_layer
        size = shape.output_bytes if is_output else shape.layer_bytes[il]
        kv = 0 if is_output else layer_kv_bytes(shape, il, options.n_ctx, **kv_kwargs)
        if device < 0:
            host_layers += 1
            host_kv += kv
            if not (is_output and shape.tied_embeddings):  # a tied output on the CPU reuses token_embd
                host_weights += size
        else:
            gpu_layers[device] += 1
            gpu_weights[device] += size
            gpu_kv[device] += kv
            gpu_has_output[device] = gpu_has_output[device] or is_output

    compute_kwargs = {"n_ubatch": options.n_ubatch, "flash_attn": options.flash_attn}
    gpu_plans: list[DevicePlan] = []
    unified_need = 0
    for index, gpu in enumerate(gpus):
        used = gpu_layers[index] > 0
        compute = compute_buffer_bytes(shape, options.n_ctx, with_output=gpu_has_output[index], **compute_kwargs) if used else 0
        breakdown = MemoryBreakdown(
            weights=gpu_weights[index],
            kv_cache=gpu_kv[index],
            compute=compute,
            margin=_gpu_margin(gpu, options) if used else 0,
        )
        budget = _gpu_budget(gpu)
        gpu_plans.append(DevicePlan(gpu.name, "gpu", gpu_layers[index], breakdown, budget, breakdown.total <= budget))
        if gpu.unified_memory:
            unified_need += breakdown.total - breakdown.margin

    host_compute = (
        compute_buffer_bytes(shape, options.n_ctx, with_output=placement[-1] < 0, **compute_kwargs)
        if host_layers
        else host_compute_bytes(shape, options.n_ubatch)
    )
    host_breakdown = MemoryBreakdown(
        weights=host_weights, kv_cache=host_kv, compute=host_compute, margin=options.host_margin_bytes
    )
    host_budget = host.available_bytes - unified_need  # unified memory: the GPU's share comes out of RAM
    host_plan = DevicePlan("CPU", "host", host_layers, host_breakdown, host_budget, host_breakdown.total <= host_budget)

    fits = host_plan.fits and all(p.fits for p in gpu_plans)
    totals = host_breakdown
    for p in gpu_plans:
        totals = totals + p.breakdown
    verdict, message = _verdict(shape, n_gpu_layers, gpus, gpu_plans, host_plan, fits)
    return OffloadPlan(
        n_gpu_layers=n_gpu_layers,
        total_layers=shape.total_layers,
        max_gpu_layers=-1,
        n_ctx=options.n_ctx,
        cache_type_k=options.cache_type_k,
        cache_type_v=options.cache_type_v or options.cache_type_k,
        gpus=tuple(gpu_plans),
        host=host_plan,
        fits=fits,
        verdict=verdict,
        message=message,
        totals=totals,
    )


def _verdict(
    shape: ModelShape,
    n_gpu_layers: int,
    gpus: Sequence[GpuBudget],
    gpu_plans: Sequence[DevicePlan],
    host_plan: DevicePlan,
    fits: bool,
) -> tuple[str, str]:
    from desktop.jobs import format_bytes

    if not fits:
        short = [p for p in gpu_plans if not p.fits] + ([host_plan] if not host_plan.fits else [])
        worst = short[0]
        where = "system memory" if worst.kind == "host" else worst.name
        return "does_not_fit", (
            f"Does not fit: {where} needs {format_bytes(worst.need_bytes)} but has "
            f"{format_bytes(max(0, worst.budget_bytes))}."
        )
    if n_gpu_layers == 0:
        suffix = "" if not gpus else " (no layers on the GPU)"
        return "cpu_only", f"Fits in system memory{suffix}."
    if n_gpu_layers >= shape.total_layers:
        return "fits", f"Fits entirely on the GPU ({n_gpu_layers} of {shape.total_layers} layers)."
    return "fits_partly", f"Fits with {n_gpu_layers} of {shape.total_layers} layers on the GPU, the rest on the CPU."


def _with_max(plan: OffloadPlan, best: int) -> OffloadPlan:
    from dataclasses import replace

    return replace(plan, max_gpu_layers=best)


def max_gpu_layers(
    shape: ModelShape,
    *,
    gpus: Sequence[GpuBudget],
    host: HostBudget,
    options: PlanOptions | None = None,
) -> int:
    """The largest ``n_gpu_layers`` for which every device fits; -1 when no setting fits."""
    options = options or PlanOptions()
    top = shape.total_layers if gpus else 0
    for n in range(top, -1, -1):
        if _evaluate(shape, n, gpus, host, options).fits:
            return n
    return -1


def plan_offload(
    shape: ModelShape,
    *,
    gpus: Sequence[GpuBudget],
    host: HostBudget,
    options: PlanOptions | None = None,
    n_gpu_layers: int | None = None,
) -> OffloadPlan:
    """The plan at ``n_gpu_layers``, or (None) at the largest number of GPU layers that fits."""
    options = options or PlanOptions()
    best = max_gpu_layers(shape, gpus=gpus, host=host, options=options)
    chosen = n_gpu_layers if n_gpu_layers is not None else max(best, 0)
    return _with_max(_evaluate(shape, chosen, gpus, host, options), best)


# --------------------------------------------------------------------------------------------- actual memory


def predicted_vs_actual(plan: OffloadPlan, actual: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows "device, part, predicted, actual" from a plan and the engine's ``loaded`` memory report.

    ``actual`` is the ``memory`` dict of the engine's ``loaded`` event: ``{"host": {"weights", "kv_cache",
    "compute"}, "gpus": [{...}, ...]}`` in bytes, from llama.cpp's own buffer sizes (and NVML where present).
    """
    rows: list[dict[str, Any]] = []
    parts = ("weights", "kv_cache", "compute")
    actual_host = actual.get("host", {}) or {}
    for part in parts:
        rows.append(
            {
                "device": "CPU",
                "part": part,
                "predicted": getattr(plan.host.breakdown, part),
                "actual": actual_host.get(part),
            }
        )
    actual_gpus = list(actual.get("gpus", []) or [])
    for index, gpu in enumerate(plan.gpus):
        got = actual_gpus[index] if index < len(actual_gpus) else {}
        for part in parts:
            rows.append(
                {"device": gpu.name, "part": part, "predicted": getattr(gpu.breakdown, part), "actual": got.get(part)}
            )
    return rows


def budgets_from_hardware(report: Any) -> tuple[list[GpuBudget], HostBudget]:
    """Budgets from :func:`desktop.hardware.report.collect_report`'s HardwareReport (duck-typed, so this stays pure)."""
    memory = getattr(report, "memory", None)
    host = HostBudget(
        available_bytes=int(getattr(memory, "available", 0) or 0), total_bytes=int(getattr(memory, "total", 0) or 0)
    )
    gpus: list[GpuBudget] = []
    for gpu in getattr(report, "gpus", []) or []:
        if getattr(gpu, "engine_uses", None) is False:  # the selected llama.cpp engine cannot reach it
            continue
        unified = bool(getattr(gpu, "unified_memory", False))
        total = int(getattr(gpu, "vram_total", 0) or 0)
        free = int(getattr(gpu, "vram_free", 0) or 0)
        limit = metal_working_set_limit(host.total_bytes or total) if unified else None
        gpus.append(
            GpuBudget(
                name=str(getattr(gpu, "name", "GPU")),
                free_bytes=free,
                total_bytes=total,
                unified_memory=unified,
                working_set_limit=limit,
                backend=str(getattr(gpu, "backend", "")),
            )
        )
    return gpus, host
