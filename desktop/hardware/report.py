"""What this machine has: CPU, memory, GPUs, and what the installed llama.cpp build can use.

(Over 400 lines: one report, one owner of each probe; the per-GPU engine verdict lives in engine_use.py.)

Sources: psutil (CPU and RAM), ``/proc/cpuinfo`` or sysctl (CPU name and SIMD flags), NVML through the
``pynvml`` module (NVIDIA GPUs), llama.cpp's own backend registry (every device this build can offload to,
Metal and Vulkan included) and its system-info string (the CPU features it was built to use).

No NVIDIA driver is a normal state: it becomes a plain note in the report, not an error.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

from desktop.hardware.engine_use import fix_for, is_software, pci_gpus, same_gpu, vendor_of
from desktop.llama.engines import loaded_library_dir

log = logging.getLogger(__name__)

# CPU flags llama.cpp's kernels use, as (label, /proc/cpuinfo flag names that mean it).
_X86_FEATURES = [
    ("SSE3", ("pni", "sse3")),
    ("SSSE3", ("ssse3",)),
    ("AVX", ("avx",)),
    ("AVX2", ("avx2",)),
    ("F16C", ("f16c",)),
    ("FMA", ("fma",)),
    ("AVX-VNNI", ("avx_vnni",)),
    ("AVX-512", ("avx512f",)),
    ("AVX-512 VBMI", ("avx512vbmi",)),
    ("AVX-512 VNNI", ("avx512_vnni",)),
    ("AVX-512 BF16", ("avx512_bf16",)),
    ("AMX", ("amx_tile",)),
    ("AMX INT8", ("amx_int8",)),
    ("AMX BF16", ("amx_bf16",)),
]
_ARM_FEATURES = [
    ("NEON", ("asimd", "neon")),
    ("ARM FMA", ("fphp", "asimdhp")),
    ("DOTPROD", ("asimddp",)),
    ("I8MM", ("i8mm",)),
    ("SVE", ("sve",)),
    ("SVE2", ("sve2",)),
    ("SME", ("sme",)),
]

_DEVICE_TYPES = {0: "CPU", 1: "GPU", 2: "integrated GPU", 3: "accelerator", 4: "meta"}


@dataclass
class CpuInfo:
    model: str
    physical_cores: int
    logical_cores: int
    architecture: str
    features: list[str]  # SIMD features the CPU has, as llama.cpp names them


@dataclass
class MemoryInfo:
    total: int
    available: int

    @property
    def used(self) -> int:
        return self.total - self.available


@dataclass
class GpuInfo:
    index: int
    name: str
    backend: str  # "CUDA", "Metal", "Vulkan", ...
    vram_total: int
    vram_free: int
    source: str  # "nvml", "llama.cpp" or "estimate"
    driver: str = ""
    compute_capability: str = ""
    utilization: int | None = None  # percent
    unified_memory: bool = False
    engine_uses: bool | None = None  # does the selected llama.cpp engine offload to it (None: not checked)
    fix: str = ""  # when it does not: the one action that makes it
    software: bool = False  # a Vulkan device that is really the CPU (lavapipe): for tests, slower than the CPU
    max_tensor_bytes: int | None = None  # the largest weight the engine's backend can run an op on (Vulkan's
    # storage buffer range: a larger tied output matrix stays on the host); None: unknown or unlimited

    @property
    def vram_used(self) -> int:
        return self.vram_total - self.vram_free


@dataclass
class LlamaDevice:
    name: str
    description: str
    kind: str  # "CPU", "GPU", "integrated GPU", "accelerator"
    backend: str
    memory_total: int
    memory_free: int


@dataclass
class LlamaBuild:
    available: bool
    version: str = ""
    supports_gpu_offload: bool = False
    devices: list[LlamaDevice] = field(default_factory=list)
    cpu_features: list[str] = field(default_factory=list)  # what this build's CPU backend uses
    system_info: str = ""
    error: str = ""
    engine: str = ""  # the QuantDesk engine this report's process runs on ("cpu", "vulkan-0.3.36", ...)
    lib_dir: str = ""  # where its libraries are


@dataclass
class HardwareReport:
    os: str
    cpu: CpuInfo
    memory: MemoryInfo
    gpus: list[GpuInfo]
    llama: LlamaBuild
    notes: list[str]  # plain sentences: "No NVIDIA driver found ...", "This build cannot offload ..."

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for gpu_dict, gpu in zip(data["gpus"], self.gpus, strict=True):
            gpu_dict["vram_used"] = gpu.vram_used
        data["memory"]["used"] = self.memory.used
        return data


# ---------------------------------------------------------------- CPU


def _cpuinfo_text() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _sysctl(name: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model_name(cpuinfo: str | None = None) -> str:
    if sys.platform == "darwin":
        return _sysctl("machdep.cpu.brand_string") or platform.processor() or "Apple CPU"
    text = _cpuinfo_text() if cpuinfo is None else cpuinfo
    for key in ("model name", "Model", "Hardware", "cpu model"):
        match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
        if match:
            return match.group(1).strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_features_from_flags(flags: set[str], machine: str) -> list[str]:
    table = _ARM_FEATURES if machine.lower() in ("arm64", "aarch64") else _X86_FEATURES
    return [label for label, names in table if any(n in flags for n in names)]


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    text = _cpuinfo_text() if cpuinfo is None else cpuinfo
    match = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.MULTILINE)
    if match:
        return set(match.group(1).split())
    if sys.platform == "darwin" and platform.machine() == "arm64":
        found = {"asimd"}
        for flag, key in (("asimddp", "FEAT_DotProd"), ("i8mm", "FEAT_I8MM"), ("fphp", "FEAT_FP16"), ("sme", "FEAT_SME")):
            if _sysctl(f"hw.optional.arm.{key}") == "1":
                found.add(flag)
        return found
    return set()


def collect_cpu() -> CpuInfo:
    machine = platform.machine()
    return CpuInfo(
        model=cpu_model_name(),
        physical_cores=psutil.cpu_count(logical=False) or 0,
        logical_cores=psutil.cpu_count(logical=True) or 0,
        architecture=machine,
        features=cpu_features_from_flags(cpu_flags(), machine),
    )


def collect_memory() -> MemoryInfo:
    vm = psutil.virtual_memory()
    return MemoryInfo(total=int(vm.total), available=int(vm.available))


# ---------------------------------------------------------------- NVIDIA through NVML


def _import_nvml() -> ModuleType | None:
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def nvml_unavailable_reason(nvml: ModuleType, exc: Exception) -> str:
    """The plain sentence for an NVML init failure. Missing driver or library is the normal CPU-only case."""
    normal = tuple(
        cls
        for cls in (getattr(nvml, "NVMLError_LibraryNotFound", None), getattr(nvml, "NVMLError_DriverNotLoaded", None))
        if isinstance(cls, type)
    )
    if normal and isinstance(exc, normal):
        return "No NVIDIA driver found, so NVIDIA GPUs cannot be used here."
    return f"The NVIDIA driver did not answer ({exc}); NVIDIA GPUs are not listed."


class NvmlSession:
    """NVML initialised once, for a report or a live sampler. ``gpus`` is empty when no driver is present."""

    def __init__(self, nvml: ModuleType | None = None) -> None:
        self.nvml = nvml if nvml is not None else _import_nvml()
        self.ok = False
        self.note = ""
        self.driver = ""
        if self.nvml is None:
            self.note = "NVIDIA support (the nvidia-ml-py package) is not installed; NVIDIA GPUs are not listed."
            return
        try:
            self.nvml.nvmlInit()
        except self.nvml.NVMLError as exc:
            self.note = nvml_unavailable_reason(self.nvml, exc)
            return
        self.ok = True
        try:
            self.driver = _text(self.nvml.nvmlSystemGetDriverVersion())
        except self.nvml.NVMLError:
            self.driver = ""

    def gpus(self) -> list[GpuInfo]:
        if not self.ok or self.nvml is None:
            return []
        nvml = self.nvml
        found: list[GpuInfo] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            try:
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
                capability = f"{major}.{minor}"
            except nvml.NVMLError:
                capability = ""
            try:
                utilization: int | None = int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            except nvml.NVMLError:
                utilization = None
            found.append(
                GpuInfo(
                    index=index,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    backend="CUDA",
                    vram_total=int(memory.total),
                    vram_free=int(memory.free),
                    source="nvml",
                    driver=self.driver,
                    compute_capability=capability,
                    utilization=utilization,
                )
            )
        return found

    def close(self) -> None:
        if self.ok and self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except self.nvml.NVMLError:
                pass
            self.ok = False


def collect_nvidia(nvml: ModuleType | None = None) -> tuple[list[GpuInfo], str]:
    session = NvmlSession(nvml)
    try:
        return session.gpus(), session.note
    finally:
        session.close()


# ---------------------------------------------------------------- llama.cpp's own view


def _ggml_library() -> Any:
    from desktop.llama.ggml import ggml

    return ggml()  # the selected engine's libggml, not always pip's


def parse_system_info(text: str) -> list[str]:
    """Features from llama.cpp's system-info string, e.g. ``"CPU : SSE3 = 1 | AVX2 = 1 | AMX_INT8 = 1 |"``."""
    return [name for name, value in re.findall(r"([A-Z][A-Z0-9_]+)\s*=\s*(\d+)", text) if value != "0"]


def collect_llama() -> LlamaBuild:
    """What the installed llama-cpp-python build reports. Loads the native library, so the GUI calls this in a
    child process (see :func:`report_job`)."""
    try:
        import llama_cpp
    except Exception as exc:  # noqa: BLE001 - a broken native build must not break the report
        return LlamaBuild(available=False, error=f"llama-cpp-python could not be loaded ({exc}).")
    build = LlamaBuild(available=True, version=getattr(llama_cpp, "__version__", ""))
    from desktop.llama.engines import environment_engine_name

    build.engine = environment_engine_name({"LLAMA_CPP_LIB_PATH": os.environ.get("LLAMA_CPP_LIB_PATH")})
    build.lib_dir = str(loaded_library_dir())
    llama_cpp.llama_backend_init()
    build.supports_gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())
    build.system_info = _text(llama_cpp.llama_print_system_info()).strip()
    build.cpu_features = [f for f in parse_system_info(build.system_info) if f not in ("REPACK", "OPENMP", "LLAMAFILE")]
    try:
        lib = _ggml_library()
        for i in range(lib.ggml_backend_dev_count()):
            dev = lib.ggml_backend_dev_get(i)
            free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
            lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
            reg = lib.ggml_backend_dev_backend_reg(dev)
            build.devices.append(
                LlamaDevice(
                    name=_text(lib.ggml_backend_dev_name(dev) or b""),
                    description=_text(lib.ggml_backend_dev_description(dev) or b""),
                    kind=_DEVICE_TYPES.get(lib.ggml_backend_dev_type(dev), "other"),
                    backend=_text(lib.ggml_backend_reg_name(reg) or b"") if reg else "",
                    memory_total=int(total.value),
                    memory_free=int(free.value),
                )
            )
    except (OSError, AttributeError) as exc:
        build.error = f"llama.cpp's device list could not be read ({exc})."
    return build


def _gpus_from_llama(build: LlamaBuild, start_index: int) -> list[GpuInfo]:
    gpus = []
    for device in build.devices:
        if device.kind not in ("GPU", "integrated GPU"):
            continue
        gpus.append(
            GpuInfo(
                index=start_index + len(gpus),
                name=device.description or device.name,
                backend=device.backend or device.name,
                vram_total=device.memory_total,
                vram_free=device.memory_free,
                source="llama.cpp",
                unified_memory=device.kind == "integrated GPU" or device.backend == "Metal",
            )
        )
    return gpus


def merge_llama_gpus(nvml_gpus: list[GpuInfo], llama_gpus: list[GpuInfo]) -> list[GpuInfo]:
    """One entry per GPU: an NVIDIA card NVML listed (richer data) that llama.cpp also lists (as CUDA or Vulkan)
    is marked used by the engine, with the backend the engine reaches it through."""
    merged = list(nvml_gpus)
    for device in llama_gpus:
        twin = next((g for g in merged if g.source == "nvml" and same_gpu(g.name, device.name)), None)
        if twin is None:
            device.index = len(merged)
            merged.append(device)
        else:
            twin.backend = device.backend
            twin.engine_uses = True
    return merged


def assess_engine_use(gpus: list[GpuInfo], llama: LlamaBuild) -> list[str]:
    """Fill in, for each GPU, whether the selected engine uses it and the fix when not; add GPUs only the PCI bus
    knows of. Returns notes."""
    from desktop.llama.engines import list_engines

    backend = llama.engine.split("-")[0] if llama.engine else "cpu"
    try:
        usable = {e.backend: e.usable for e in list_engines() if e.built}
    except Exception as exc:  # noqa: BLE001 - the report must not fail over the engines folder
        log.info("engines not listed (%s)", exc)
        usable = {}
    notes = []
    for gpu in gpus:
        if gpu.source == "llama.cpp":
            gpu.engine_uses = True
            gpu.software = is_software(gpu.name)
            if gpu.software:
                notes.append(f"{gpu.name} is a software Vulkan device (the CPU): offloading to it is for tests; "
                             "it is slower than the CPU engine.")
        elif gpu.source == "estimate":
            gpu.engine_uses = llama.supports_gpu_offload
        elif gpu.engine_uses is None:
            gpu.engine_uses = False
        if not gpu.engine_uses:
            gpu.fix = fix_for(vendor_of(gpu.name) if gpu.source != "nvml" else "NVIDIA", backend, usable)
    for card in pci_gpus():
        if card.vendor == "Unknown" or any(vendor_of(g.name) == card.vendor or (card.vendor == "NVIDIA" and g.source == "nvml") for g in gpus):
            continue
        gpus.append(GpuInfo(index=len(gpus), name=f"{card.vendor} GPU (PCI {card.pci_id})", backend="",
                            vram_total=0, vram_free=0, source="pci", engine_uses=False,
                            fix=fix_for(card.vendor, backend, usable)))
    return notes


def apple_unified_gpu(memory: MemoryInfo, cpu_model: str) -> GpuInfo:
    """Apple Silicon's GPU shares RAM. Metal lets one process wire about 2/3 of RAM (3/4 above 36 GB) by default;
    without llama.cpp's Metal device to ask, that limit is an estimate."""
    limit = int(memory.total * (0.75 if memory.total > 36 * 2**30 else 2 / 3))
    return GpuInfo(
        index=0,
        name=f"{cpu_model} GPU",
        backend="Metal",
        vram_total=limit,
        vram_free=min(limit, memory.available),
        source="estimate",
        unified_memory=True,
    )


def collect_report(nvml: ModuleType | None = None, include_llama: bool = True) -> HardwareReport:
    cpu = collect_cpu()
    memory = collect_memory()
    notes: list[str] = []
    gpus, nvml_note = collect_nvidia(nvml)
    if nvml_note:
        notes.append(nvml_note)
    llama = collect_llama() if include_llama else LlamaBuild(available=False, error="not checked")
    if llama.available:
        gpus = merge_llama_gpus(gpus, _gpus_from_llama(llama, len(gpus)))
        if not llama.supports_gpu_offload:
            notes.append(
                f"The {llama.engine or 'cpu'} engine runs on the CPU only (pip builds llama.cpp without a GPU "
                "backend); to offload layers to a GPU, build the Vulkan engine: quantdesk engine build vulkan."
            )
    elif llama.error:
        notes.append(llama.error)
    if sys.platform == "darwin" and platform.machine() == "arm64" and not any(g.backend == "Metal" for g in gpus):
        gpus.append(apple_unified_gpu(memory, cpu.model))
    if include_llama:
        notes += assess_engine_use(gpus, llama)
        if any(g.backend == "Vulkan" and g.engine_uses for g in gpus):
            from desktop.hardware.vulkan import storage_buffer_limits

            limits = storage_buffer_limits()
            for gpu in gpus:
                if gpu.backend == "Vulkan":
                    gpu.max_tensor_bytes = next((v for k, v in limits.items() if same_gpu(k, gpu.name)), None)
    os_name = f"{platform.system()} {platform.release()}".strip()
    return HardwareReport(os=os_name, cpu=cpu, memory=memory, gpus=gpus, llama=llama, notes=notes)


def collect_report_on_engine() -> HardwareReport:
    """The report as the selected llama.cpp engine sees it, from a child process started on that engine (the
    calling process may be the GUI, or a CLI that loaded pip's build)."""
    from desktop.process import run_in_child

    report: HardwareReport = run_in_child("desktop.hardware.report:report_job")
    return report


def report_job(*, progress: Any, cancelled: Any) -> HardwareReport:
    """The report as a child-process job (the GUI never loads llama.cpp itself)."""
    progress(0, 1, "Reading hardware")
    report = collect_report()
    progress(1, 1, "Done")
    return report


# ---------------------------------------------------------------- live usage


@dataclass
class GpuUsage:
    index: int
    vram_used: int
    vram_total: int
    utilization: int | None


@dataclass
class UsageSample:
    cpu_percent: float
    ram_used: int
    ram_total: int
    gpus: list[GpuUsage]


class UsageSampler:
    """Samples CPU, RAM and NVIDIA VRAM usage; call :meth:`sample` about once a second from a worker thread."""

    def __init__(self, nvml: ModuleType | None = None) -> None:
        self._nvml = NvmlSession(nvml)
        psutil.cpu_percent(None)  # prime: the first call always returns 0

    def sample(self) -> UsageSample:
        vm = psutil.virtual_memory()
        gpus = [GpuUsage(g.index, g.vram_used, g.vram_total, g.utilization) for g in self._nvml.gpus()]
        return UsageSample(
            cpu_percent=float(psutil.cpu_percent(None)),
            ram_used=int(vm.total - vm.available),
            ram_total=int(vm.total),
            gpus=gpus,
        )

    def close(self) -> None:
        self._nvml.close()
