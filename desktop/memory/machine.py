"""Which devices count: the host and only the GPUs the installed (selected) llama.cpp can use.

The hardware report (:mod:`desktop.hardware.report`, read in a child process on the selected engine) says for each
GPU whether that engine uses it (``engine_uses``, from llama.cpp's own device list) and, when not, the one fix. A GPU
counts here only when the engine uses it: an NVIDIA card next to a CPU-only llama.cpp does not, so no plan puts
layers "on the GPU" that the engine would silently run on the CPU. The report is read duck-typed, so this module
stays free of native code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from desktop.jobs import format_bytes
from desktop.memory.planner import GpuBudget, HostBudget

log = logging.getLogger(__name__)

_GPU_KINDS = ("GPU", "integrated GPU")
LAVAPIPE_MAX_TENSOR_BYTES = 2**27
"""Mesa's lavapipe (a software Vulkan device) reports maxStorageBufferRange = 128 MiB (vulkaninfo here); llama.cpp's
Vulkan backend keeps a larger weight (the demo's 178 MB tied output) on the CPU."""


@dataclass(frozen=True)
class Machine:
    """The budgets the planner gets: the GPUs llama.cpp can use, the host, and why other GPUs are left out."""

    gpus: tuple[GpuBudget, ...]
    host: HostBudget
    left_out: tuple[str, ...] = ()  # one sentence per GPU found that the selected llama.cpp cannot use
    cpu_cores: int = 0

    def describe(self) -> str:
        """E.g. "This machine: 12.3 GB RAM available; NVIDIA H200 (CUDA) 140.1 GB free"."""
        gpus = ", ".join(f"{g.name} ({g.backend}) {format_bytes(g.free_bytes)} free" for g in self.gpus)
        text = f"This machine: {format_bytes(self.host.available_bytes)} RAM available; "
        text += gpus or "no GPU llama.cpp can offload to"
        return text + "."


def _matches(name: str, description: str) -> bool:
    a, b = name.lower().strip(), description.lower().strip()
    return bool(a) and bool(b) and (a in b or b in a)


def _inferred_use(gpu: Any, llama: Any) -> tuple[bool, str]:
    """For a report that did not say (``engine_uses`` None): does llama.cpp list a device for this GPU, and on
    which backend."""
    if not (getattr(llama, "available", False) and getattr(llama, "supports_gpu_offload", False)):
        return False, ""
    devices = [d for d in getattr(llama, "devices", []) or [] if getattr(d, "kind", "") in _GPU_KINDS]
    source = getattr(gpu, "source", "")
    if source == "llama.cpp":
        return True, str(getattr(gpu, "backend", "") or "GPU")
    if source == "nvml":
        device = next((d for d in devices if str(getattr(d, "backend", "")).upper() == "CUDA"), None) or next(
            (d for d in devices if _matches(str(gpu.name), str(getattr(d, "description", "")))), None)
        return (True, str(device.backend)) if device is not None else (False, "")
    if getattr(gpu, "unified_memory", False) and any(str(getattr(d, "backend", "")) == "Metal" for d in devices):
        return True, "Metal"
    return False, ""


def machine_from_report(report: Any) -> Machine:
    """The planner's budgets from a hardware report: only the GPUs the selected llama.cpp engine uses.

    The report says so per GPU (``engine_uses``, with the ``fix`` when not); a report that did not check (read
    without llama.cpp) counts a GPU only where llama.cpp's device list has one for it."""
    memory = getattr(report, "memory", None)
    host = HostBudget(int(getattr(memory, "available", 0) or 0), int(getattr(memory, "total", 0) or 0))
    cpu = getattr(report, "cpu", None)
    cores = int(getattr(cpu, "physical_cores", 0) or 0)
    llama = getattr(report, "llama", None)
    budgets: list[GpuBudget] = []
    left_out: list[str] = []
    gpus = list(getattr(report, "gpus", []) or [])
    for gpu in gpus:
        name = str(getattr(gpu, "name", "GPU"))
        said = getattr(gpu, "engine_uses", None)
        if said is None:
            uses, backend = _inferred_use(gpu, llama)
            if uses and getattr(gpu, "source", "") == "nvml" and backend.upper() != "CUDA":
                continue  # a Vulkan build lists the card itself; that entry counts
        else:
            uses, backend = bool(said), str(getattr(gpu, "backend", "") or "GPU")
        if not uses:
            fix = str(getattr(gpu, "fix", "") or "")
            if not getattr(llama, "available", False):
                reason = "not counted until the engine's own devices are read"
            elif not getattr(llama, "supports_gpu_offload", False):
                reason = "the selected llama.cpp runs on the CPU only, so it cannot use this GPU"
            else:
                reason = "the selected llama.cpp has no device for this GPU"
            left_out.append(f"{name}: {reason}." + (f" {fix}" if fix else ""))
            continue
        unified = bool(getattr(gpu, "unified_memory", False))
        total = int(getattr(gpu, "vram_total", 0) or 0)
        nvml_index = int(gpu.index) if getattr(gpu, "source", "") == "nvml" else next(
            (int(n.index) for n in gpus if getattr(n, "source", "") == "nvml" and _matches(str(n.name), name)), None)
        # a unified-memory GPU's total is Metal's working-set limit (llama.cpp's device memory, or the report's
        # estimate of it), the most of the shared RAM the GPU may take
        limit = total if unified and total else None
        max_tensor = getattr(gpu, "max_tensor_bytes", None)
        if max_tensor is None and getattr(gpu, "software", False) and backend.lower() == "vulkan":
            max_tensor = LAVAPIPE_MAX_TENSOR_BYTES
        budgets.append(GpuBudget(name=name, free_bytes=int(getattr(gpu, "vram_free", 0) or 0), total_bytes=total,
                                 unified_memory=unified, working_set_limit=limit, backend=backend,
                                 nvml_index=nvml_index, max_tensor_bytes=max_tensor))
    return Machine(tuple(budgets), host, tuple(left_out), cores)


def this_machine(include_llama: bool = True) -> Machine:
    """This machine's budgets. With ``include_llama`` the hardware is read in a child process started on the
    selected llama.cpp engine (its own device list decides which GPUs count); without, no GPU is counted.

    With no hardware report available: the host alone, from psutil."""
    try:
        from desktop.hardware import report as hardware

        if include_llama:
            return machine_from_report(hardware.collect_report_on_engine())
        return machine_from_report(hardware.collect_report(include_llama=False))
    except Exception as exc:  # noqa: BLE001 - detection is best effort; the plan still works for the CPU
        log.info("hardware detection unavailable (%s); planning for the CPU only", exc)
    import psutil

    memory = psutil.virtual_memory()
    return Machine((), HostBudget(int(memory.available), int(memory.total)), (), psutil.cpu_count(logical=False) or 0)
