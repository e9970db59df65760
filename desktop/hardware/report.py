"""What this machine has: CPU, memory, GPUs, and what the installed llama.cpp build can use.

Sources: psutil (CPU and RAM), ``/proc/cpuinfo`` or sysctl (CPU name and SIMD flags), NVML through the
``pynvml`` module (NVIDIA GPUs), llama.cpp's own backend registry (every device this build can offload to,
Metal and Vulkan included) and its system-info string (the CPU features it was built to use).

No NVIDIA driver is a normal state: it becomes a plain note in the report, not an error.
"""

from __future__ import annotations

import ctypes
import logging
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

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
    import llama_cpp

    from llama_cpp._ctypes_extensions import load_shared_library

    lib = load_shared_library("ggml", Path(llama_cpp.__file__).parent / "lib")
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    for fn in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
        getattr(lib, fn).restype = ctypes.c_char_p
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
    lib.ggml_backend_dev_memory.restype = None
    lib.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_name.restype = ctypes.c_char_p
    return lib


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
        llama_gpus = _gpus_from_llama(llama, len(gpus))
        if gpus:  # NVML already listed NVIDIA cards with richer data; keep llama.cpp's non-CUDA devices
            llama_gpus = [g for g in llama_gpus if g.backend.upper() != "CUDA"]
        gpus.extend(llama_gpus)
        if not llama.supports_gpu_offload:
            notes.append(
                "This llama-cpp-python build runs on the CPU only; a build with CUDA, Metal or Vulkan is needed "
                "to offload layers to a GPU."
            )
    elif llama.error:
        notes.append(llama.error)
    if sys.platform == "darwin" and platform.machine() == "arm64" and not any(g.backend == "Metal" for g in gpus):
        gpus.append(apple_unified_gpu(memory, cpu.model))
    os_name = f"{platform.system()} {platform.release()}".strip()
    return HardwareReport(os=os_name, cpu=cpu, memory=memory, gpus=gpus, llama=llama, notes=notes)


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
