"""Memory: the one planner of what fits where, used by every page and verb that shows a memory figure.

* :mod:`~desktop.memory.shape`: the one :class:`ModelShape` (from a GGUF, a remote header or a config.json);
* :mod:`~desktop.memory.sizes`: the KV cache, compute buffers, per-backend overhead and byte margins (each once);
* :mod:`~desktop.memory.planner`: layer placement and the per-device breakdown (:func:`plan_offload`);
* :mod:`~desktop.memory.machine`: which GPUs count (only those the selected llama.cpp has a device for);
* :mod:`~desktop.memory.verdict`: one-line verdicts, "what fits" and a generation-speed estimate.

Bytes are decimal everywhere they are shown (GB = 10^9, MB = 10^6, :func:`desktop.jobs.format_bytes`).
"""

from desktop.memory.machine import Machine, machine_from_report, this_machine
from desktop.memory.planner import (
    PARTS,
    DevicePlan,
    GpuBudget,
    HostBudget,
    MemoryBreakdown,
    OffloadPlan,
    PlanOptions,
    evaluate,
    max_gpu_layers,
    plan_offload,
    predicted_vs_actual,
)
from desktop.memory.shape import (
    ModelShape,
    shape_from_config,
    shape_from_gguf,
    shape_from_header,
    shape_from_metadata,
)
from desktop.memory.sizes import (
    FLASH_ATTN_CHOICES,
    GPU_MARGIN_BYTES,
    HOST_MARGIN_BYTES,
    KV_CACHE_TYPES,
    KV_CHOICES,
    backend,
    kv_cache_bytes,
)
from desktop.memory.verdict import Fit, cpu_tokens_per_s, fit, largest_model, memory_needed, what_fits

__all__ = [
    "FLASH_ATTN_CHOICES", "GPU_MARGIN_BYTES", "HOST_MARGIN_BYTES", "KV_CACHE_TYPES", "KV_CHOICES", "PARTS",
    "DevicePlan", "Fit", "GpuBudget", "HostBudget", "Machine", "MemoryBreakdown", "ModelShape", "OffloadPlan",
    "PlanOptions", "backend", "cpu_tokens_per_s", "evaluate", "fit", "kv_cache_bytes", "largest_model",
    "machine_from_report", "max_gpu_layers", "memory_needed", "plan_offload", "predicted_vs_actual",
    "shape_from_config", "shape_from_gguf", "shape_from_header", "shape_from_metadata", "this_machine", "what_fits",
]
