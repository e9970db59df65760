"""Where the layers of a model go and what each device then holds: the one planner.

Placement follows llama.cpp (``src/llama-model.cpp``, ``load_tensors``):

* ``n_gpu_layers`` counts the repeating blocks plus one *output layer*; "all layers" is ``n_layer + 1``.
  The **last** blocks go first, and the output layer (``output.weight`` and ``output_norm``, or a copy of
  ``token_embd`` when the embeddings are tied) is the first thing offloaded.
* The input embeddings (``token_embd``) always stay on the CPU.
* With several GPUs the offloaded layers are split in proportion to each GPU's free memory (llama.cpp's
  default ``tensor_split``) unless a split is given.
* The KV cache of a layer lives where the layer lives.
* A weight larger than the device takes (``max_tensor_bytes``: Vulkan's maxStorageBufferRange, 128 MiB on lavapipe)
  stays on the CPU: for the output layer that moves the logits to the host too.
* The host's weights are what llama.cpp maps: the file range from its first to its last tensor, which includes
  offloaded blocks when a file orders them blk.0, blk.1, blk.10, ... ("CPU_Mapped model buffer size").

Sizes come from :mod:`desktop.memory.sizes`. Apple Silicon has one pool of unified memory: what the GPU takes the
host no longer has, and Metal caps the GPU's share at its recommended working-set size.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from desktop.jobs import format_bytes
from desktop.memory import sizes
from desktop.memory.shape import ModelShape


@dataclass(frozen=True)
class GpuBudget:
    """One GPU the selected llama.cpp can use. ``free_bytes`` is what llama.cpp may take now."""

    name: str
    free_bytes: int
    total_bytes: int = 0
    unified_memory: bool = False
    working_set_limit: int | None = None  # Metal's recommendedMaxWorkingSetSize, when known
    backend: str = "CUDA"  # llama.cpp's backend for it: its overhead and compute sizes follow
    nvml_index: int | None = None  # its NVML index when NVML sees it (GPU memory really used after a load)
    max_tensor_bytes: int | None = None  # the largest weight the device takes (Vulkan's maxStorageBufferRange)


@dataclass(frozen=True)
class HostBudget:
    available_bytes: int
    total_bytes: int = 0


@dataclass(frozen=True)
class PlanOptions:
    n_ctx: int = 4096
    cache_type_k: str = "f16"
    cache_type_v: str = ""  # empty: same as cache_type_k
    n_ubatch: int = sizes.DEFAULT_N_UBATCH
    flash_attn: str | bool = "auto"  # "auto" (llama.cpp's default), "on", "off"
    swa_full: bool = False
    gpu_margin_bytes: int = sizes.GPU_MARGIN_BYTES
    host_margin_bytes: int = sizes.HOST_MARGIN_BYTES
    tensor_split: tuple[float, ...] | None = None  # None: in proportion to free memory, as llama.cpp does

    @property
    def cache_v(self) -> str:
        return self.cache_type_v or self.cache_type_k


@dataclass(frozen=True)
class MemoryBreakdown:
    weights: int = 0
    kv_cache: int = 0
    compute: int = 0
    overhead: int = 0  # the backend's own context and workspaces on a GPU
    margin: int = 0

    @property
    def used(self) -> int:
        """What llama.cpp and its backend take (everything but the margin kept free)."""
        return self.weights + self.kv_cache + self.compute + self.overhead

    @property
    def total(self) -> int:
        return self.used + self.margin

    def __add__(self, other: MemoryBreakdown) -> MemoryBreakdown:
        return MemoryBreakdown(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


def astuple(b: MemoryBreakdown) -> tuple[int, ...]:
    return (b.weights, b.kv_cache, b.compute, b.overhead, b.margin)


PARTS = ("weights", "kv_cache", "compute", "overhead", "margin")


@dataclass(frozen=True)
class DevicePlan:
    """What one device (a GPU, or the host) would hold, against what it has."""

    name: str
    kind: str  # "gpu" or "host"
    layers: int  # blocks (and the output layer) placed here
    breakdown: MemoryBreakdown
    budget_bytes: int
    fits: bool
    backend: str = "CPU"

    @property
    def need_bytes(self) -> int:
        return self.breakdown.total


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
    flash_attn: bool
    gpus: tuple[DevicePlan, ...]
    host: DevicePlan
    fits: bool
    verdict: str
    message: str
    totals: MemoryBreakdown = field(default_factory=MemoryBreakdown)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["totals"]["used"] = self.totals.used
        data["totals"]["total"] = self.totals.total
        for device, plan in zip([data["host"], *data["gpus"]], [self.host, *self.gpus], strict=True):
            device["breakdown"]["used"] = plan.breakdown.used
            device["breakdown"]["total"] = plan.breakdown.total
        return data


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


def _gpu_budget(gpu: GpuBudget) -> int:
    if gpu.unified_memory and gpu.working_set_limit:
        return min(gpu.free_bytes, gpu.working_set_limit)
    return gpu.free_bytes


def evaluate(shape: ModelShape, n_gpu_layers: int, *, gpus: Sequence[GpuBudget], host: HostBudget,
             options: PlanOptions | None = None, with_max: bool = True) -> OffloadPlan:
    """The verdict and breakdown for one slider position (``0..shape.total_layers``); ``with_max`` also finds
    the most layers that fit (``max_gpu_layers``, else -1)."""
    options = options or PlanOptions()
    plan = _evaluate(shape, n_gpu_layers, gpus, host, options)
    if not with_max:
        return plan
    return replace(plan, max_gpu_layers=max_gpu_layers(shape, gpus=gpus, host=host, options=options))


def _evaluate(shape: ModelShape, n_gpu_layers: int, gpus: Sequence[GpuBudget], host: HostBudget,
              options: PlanOptions) -> OffloadPlan:
    sizes.check_cache_types(options.cache_type_k, options.cache_v, options.flash_attn)
    n_gpu_layers = max(0, min(n_gpu_layers, shape.total_layers)) if gpus else 0
    weights = list(options.tensor_split) if options.tensor_split else [max(0, _gpu_budget(g)) for g in gpus]
    if gpus and not any(weights):
        weights = [1.0] * len(gpus)
    placement = layer_devices(shape, n_gpu_layers, weights)
    output_device = placement[-1]
    limit = gpus[output_device].max_tensor_bytes if output_device >= 0 else None
    if limit is not None and shape.output_bytes > limit:
        placement[-1] = -1  # llama.cpp keeps a weight the device cannot hold on the CPU, and the logits with it
    used = sorted({d for d in placement if d >= 0})
    engine = gpus[0].backend if gpus else "CPU"
    flash = sizes.flash_attention(options.flash_attn, engine, options.cache_v)
    # a GPU engine runs prompt batches on its main GPU (llama.cpp's op offload), even the host's layers, copying
    # their weights over: the logits too when the output weight stayed on the host and the GPU can take it
    main_limit = gpus[0].max_tensor_bytes if gpus else None
    logits_on_gpu = bool(gpus) and placement[-1] < 0 and (main_limit is None or shape.output_bytes <= main_limit)

    gpu_weights, gpu_kv, gpu_layers = [0] * len(gpus), [0] * len(gpus), [0] * len(gpus)
    gpu_has_output = [False] * len(gpus)
    host_weights, host_kv, host_layers = shape.input_bytes, 0, 0
    for il, device in enumerate(placement):
        is_output = il == shape.n_layer
        size = shape.output_bytes if is_output else shape.layer_bytes[il]
        kv = 0 if is_output else sizes.layer_kv_bytes(
            shape, il, options.n_ctx, cache_type_k=options.cache_type_k, cache_type_v=options.cache_v,
            n_ubatch=options.n_ubatch, swa_full=options.swa_full)
        if device < 0:
            host_layers += 1
            host_kv += kv
            host_weights += size - (shape.output_copy_bytes if is_output else 0)  # a tied output reuses token_embd
        else:
            gpu_layers[device] += 1
            gpu_weights[device] += size
            gpu_kv[device] += kv
            gpu_has_output[device] = gpu_has_output[device] or is_output

    if shape.file_order and used:  # the host's weights as llama.cpp maps them (a file range)
        owners = {-1} | {il for il, device in enumerate(placement) if device < 0}
        if shape.tied_embeddings:
            owners.discard(shape.n_layer)
        host_weights = max(host_weights, shape.mapped_bytes(owners))
    partial = 0 < n_gpu_layers < shape.total_layers
    gpu_plans: list[DevicePlan] = []
    unified_need = 0
    for index, gpu in enumerate(gpus):
        main = index == 0
        on = gpu_layers[index] > 0 or main
        copy = shape.output_bytes if main and logits_on_gpu else 0
        compute = sizes.compute_buffer_bytes(
            shape, options.n_ctx, backend_name=gpu.backend, n_ubatch=options.n_ubatch, flash_attn=flash,
            with_output=gpu_has_output[index] or bool(copy), partial=partial or n_gpu_layers == 0,
            output_weight_copy=copy) if on else 0
        breakdown = MemoryBreakdown(weights=gpu_weights[index], kv_cache=gpu_kv[index], compute=compute,
                                    overhead=sizes.backend(gpu.backend).overhead_bytes if on else 0,
                                    margin=options.gpu_margin_bytes if on else 0)
        budget = _gpu_budget(gpu)
        gpu_plans.append(DevicePlan(gpu.name, "gpu", gpu_layers[index], breakdown, budget,
                                    breakdown.total <= budget, gpu.backend))
        if gpu.unified_memory:
            unified_need += breakdown.used

    if gpus:
        host_compute = sizes.host_compute_bytes(shape, options.n_ctx, n_ubatch=options.n_ubatch, flash_attn=flash)
        if placement[-1] < 0 and not logits_on_gpu:  # an output weight no GPU takes: the logits stay here
            host_compute = max(host_compute, sizes.logits_bytes(shape, options.n_ctx, n_ubatch=options.n_ubatch))
    else:
        host_compute = sizes.compute_buffer_bytes(shape, options.n_ctx, backend_name="CPU",
                                                  n_ubatch=options.n_ubatch, flash_attn=flash)
    host_breakdown = MemoryBreakdown(weights=host_weights, kv_cache=host_kv,
                                     compute=host_compute + sizes.output_buffer_bytes(shape),
                                     margin=options.host_margin_bytes)
    host_budget = host.available_bytes - unified_need  # unified memory: the GPU's share comes out of RAM
    host_plan = DevicePlan("CPU", "host", host_layers, host_breakdown, host_budget,
                           host_breakdown.total <= host_budget)

    fits = host_plan.fits and all(p.fits for p in gpu_plans)
    totals = host_breakdown
    for p in gpu_plans:
        totals = totals + p.breakdown
    verdict, message = _verdict(shape, n_gpu_layers, gpus, gpu_plans, host_plan, fits)
    return OffloadPlan(n_gpu_layers=n_gpu_layers, total_layers=shape.total_layers, max_gpu_layers=-1,
                       n_ctx=options.n_ctx, cache_type_k=options.cache_type_k, cache_type_v=options.cache_v,
                       flash_attn=flash, gpus=tuple(gpu_plans), host=host_plan, fits=fits, verdict=verdict,
                       message=message, totals=totals)


def _verdict(shape: ModelShape, n_gpu_layers: int, gpus: Sequence[GpuBudget], gpu_plans: Sequence[DevicePlan],
             host_plan: DevicePlan, fits: bool) -> tuple[str, str]:
    if not fits:
        worst = ([p for p in gpu_plans if not p.fits] + [host_plan])[0]
        where = "system memory" if worst.kind == "host" else worst.name
        return "does_not_fit", (f"Does not fit: {where} needs {format_bytes(worst.need_bytes)} but has "
                                f"{format_bytes(max(0, worst.budget_bytes))}.")
    if n_gpu_layers == 0:
        return "cpu_only", "Fits in system memory" + (
            " (no layers on the GPU). llama.cpp still runs prompt batches on the GPU." if gpus else ".")
    if n_gpu_layers >= shape.total_layers:
        return "fits", f"Fits entirely on the GPU ({n_gpu_layers} of {shape.total_layers} layers)."
    return "fits_partly", f"Fits with {n_gpu_layers} of {shape.total_layers} layers on the GPU, the rest on the CPU."


def max_gpu_layers(shape: ModelShape, *, gpus: Sequence[GpuBudget], host: HostBudget,
                   options: PlanOptions | None = None) -> int:
    """The largest ``n_gpu_layers`` for which every device fits; -1 when no setting fits.

    A GPU's need grows with its layers and the host's shrinks, so the most layers the GPUs take is found by
    bisection (the Hub table plans many rows per keystroke), and then the host decides whether it fits at all."""
    options = options or PlanOptions()
    if not gpus:
        return 0 if _evaluate(shape, 0, gpus, host, options).fits else -1

    def gpus_fit(n: int) -> bool:
        return all(p.fits for p in _evaluate(shape, n, gpus, host, options).gpus)

    lo, hi = 0, shape.total_layers  # gpus_fit(0) holds: an unused GPU needs nothing
    if gpus_fit(hi):
        lo = hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if gpus_fit(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo if _evaluate(shape, lo, gpus, host, options).fits else -1


def plan_offload(shape: ModelShape, *, gpus: Sequence[GpuBudget], host: HostBudget,
                 options: PlanOptions | None = None, n_gpu_layers: int | None = None) -> OffloadPlan:
    """The plan at ``n_gpu_layers``, or (None) at the largest number of GPU layers that fits."""
    options = options or PlanOptions()
    best = max_gpu_layers(shape, gpus=gpus, host=host, options=options)
    chosen = n_gpu_layers if n_gpu_layers is not None else max(best, 0)
    return replace(_evaluate(shape, chosen, gpus, host, options), max_gpu_layers=best)


def predicted_vs_actual(plan: OffloadPlan, actual: Mapping[str, Any],
                        gpus: Sequence[GpuBudget] = ()) -> list[dict[str, Any]]:
    """Rows "device, part, predicted, actual" from a plan and the engine's ``loaded`` memory report.

    ``actual`` is the ``memory`` dict of the engine's ``loaded`` event: ``{"host": {"weights", "kv_cache",
    "compute"}, "gpus": [{...}], "nvml": [{"index", "delta"}, ...] or None}``: llama.cpp's own buffer sizes, and
    the GPU memory NVML saw the load take where there is an NVIDIA driver ("used" against the plan's used, and
    the backend's overhead as that minus llama.cpp's buffers).
    """
    rows: list[dict[str, Any]] = []
    parts = ("weights", "kv_cache", "compute")
    gpus_nvml = [g.nvml_index for g in gpus] + [None] * (len(plan.gpus) - len(gpus))
    actual_host = actual.get("host", {}) or {}
    for part in parts:
        rows.append({"device": "CPU", "part": part, "predicted": getattr(plan.host.breakdown, part),
                     "actual": actual_host.get(part)})
    actual_gpus = list(actual.get("gpus", []) or [])
    nvml = {int(n["index"]): int(n["delta"]) for n in actual.get("nvml") or [] if isinstance(n, Mapping)}
    for index, gpu in enumerate(plan.gpus):
        got = actual_gpus[index] if index < len(actual_gpus) else {}
        for part in parts:
            rows.append({"device": gpu.name, "part": part, "predicted": getattr(gpu.breakdown, part),
                         "actual": got.get(part)})
        if gpu.layers:
            nvml_index = gpus_nvml[index]
            measured = nvml.get(nvml_index) if nvml_index is not None else None
            rows.append({"device": gpu.name, "part": "overhead", "predicted": gpu.breakdown.overhead,
                         "actual": None if measured is None else max(0, int(measured) - sum(
                             int(got.get(p) or 0) for p in parts))})
            rows.append({"device": gpu.name, "part": "used", "predicted": gpu.breakdown.used, "actual": measured})
    return rows
