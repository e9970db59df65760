"""For each GPU: does the selected llama.cpp engine use it, and if not, the one action that fixes it.

The report runs in a child process started on the selected engine, so llama.cpp's device list there is that
engine's (see :func:`desktop.hardware.report.collect_llama`). GPUs llama.cpp does not list are still found: NVIDIA's
through NVML, others on Linux through the PCI display devices in sysfs, so a CPU-only engine on an AMD card says
"build the Vulkan engine" rather than "no GPU".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_VENDORS = {"0x10de": "NVIDIA", "0x1002": "AMD", "0x8086": "Intel", "0x5143": "Qualcomm", "0x13b5": "Arm"}
_SOFTWARE = ("llvmpipe", "lavapipe", "swiftshader", "software")
_MAX_CARDS = 16


@dataclass
class PciGpu:
    vendor: str  # "AMD", "Intel", "NVIDIA", ...
    pci_id: str  # "1002:73bf"


def pci_gpus(sysfs: Path = Path("/sys/bus/pci/devices")) -> list[PciGpu]:
    """Display controllers on the PCI bus (Linux); empty elsewhere or when sysfs is not readable."""
    found: list[PciGpu] = []
    try:
        devices = sorted(sysfs.iterdir())
    except OSError:
        return found
    for device in devices:
        try:
            cls = (device / "class").read_text()[:16].strip()
            if not cls.startswith("0x03"):  # display controller
                continue
            vendor = (device / "vendor").read_text()[:16].strip().lower()
            product = (device / "device").read_text()[:16].strip().lower()
        except OSError:
            continue
        found.append(PciGpu(_VENDORS.get(vendor, "Unknown"), f"{vendor[2:]}:{product[2:]}"))
        if len(found) >= _MAX_CARDS:
            break
    return found


def is_software(name: str) -> bool:
    """A Vulkan device that is really the CPU (Mesa's lavapipe, SwiftShader): fine for tests, slow for work."""
    return any(word in name.lower() for word in _SOFTWARE)


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", name.lower()).strip()


def same_gpu(a: str, b: str) -> bool:
    """NVML's "NVIDIA GeForce RTX 4090" and Vulkan's "NVIDIA GeForce RTX 4090" (or a longer form of it)."""
    x, y = _norm(a), _norm(b)
    return bool(x and y) and (x in y or y in x)


def fix_for(vendor: str, engine_backend: str, engine_names: dict[str, bool]) -> str:
    """The one action that gets a GPU of ``vendor`` used. ``engine_names``: backend -> usable (built and tested)."""
    if engine_backend == "cpu":
        if engine_names.get("vulkan"):
            return "Switch to the Vulkan engine: quantdesk engine use vulkan (or on the Hardware page)."
        if engine_names.get("cuda") and vendor == "NVIDIA":
            return "Switch to the CUDA engine: quantdesk engine use cuda (or on the Hardware page)."
        if "vulkan" in engine_names:
            return "Test the Vulkan engine you built: quantdesk engine test vulkan."
        return "Build the Vulkan engine: quantdesk engine build vulkan (or Build on the Hardware page)."
    if engine_backend == "cuda" and vendor != "NVIDIA":
        return "CUDA runs on NVIDIA GPUs only: switch to the Vulkan engine (quantdesk engine build vulkan)."
    if engine_backend == "vulkan":
        drivers = {
            "NVIDIA": "NVIDIA's driver with its Vulkan part (and libglvnd on Linux)",
            "AMD": "the Vulkan driver (Mesa's mesa-vulkan-drivers, or AMD's driver)",
            "Intel": "the Vulkan driver (Mesa's mesa-vulkan-drivers, or Intel's driver)",
        }.get(vendor, "this GPU's Vulkan driver")
        return f"Install {drivers}, then restart QuantDesk."
    return "Install this GPU's driver, then restart QuantDesk."


def vendor_of(name: str) -> str:
    lowered = name.lower()
    for vendor, words in (("NVIDIA", ("nvidia", "geforce", "quadro", "tesla")), ("AMD", ("amd", "radeon")),
                          ("Intel", ("intel", "arc "))):
        if any(w in lowered for w in words):
            return vendor
    return "Unknown"


def engine_use_sentence(gpu: object, engine: str) -> str:
    """For a report's GPU: whether the selected engine uses it, and if not the one action that fixes it."""
    name = engine or "cpu"
    if getattr(gpu, "engine_uses", None):
        slow = " (a software device: for tests; slower than the CPU engine)" if getattr(gpu, "software", False) else ""
        return f"used by the {name} engine{slow}"
    return f"NOT used by the {name} engine. {getattr(gpu, 'fix', '')}".strip()
