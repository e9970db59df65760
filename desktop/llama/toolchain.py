"""What a llama.cpp engine build needs on this machine, and exactly what to install when something is missing.

Checks, per backend: a C/C++ compiler and CMake for all; ``glslc`` and Vulkan headers new enough for the vendored
llama.cpp (it uses ``vk::LayerSettingEXT``) for Vulkan; ``nvcc`` for CUDA. The advice names the packages of this OS
(Debian/Ubuntu, Fedora, Arch, openSUSE, macOS, Windows) so a user can copy one command.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

# The vendored llama.cpp's Vulkan backend needs VK_EXT_layer_settings in the C++ headers (Debian 12's 1.3.239 lack
# it; 1.3.275 and later have it).
MIN_VULKAN_HEADER = 275
MIN_CMAKE = (3, 14)

# Where a user (or CI) can point the builder at newer Vulkan headers than the system's.
VULKAN_INCLUDE_ENV = "QUANTDESK_VULKAN_INCLUDE_DIR"


@dataclass
class Tool:
    name: str  # "C/C++ compiler", "CMake", ...
    found: str  # path or version found; empty when missing
    problem: str = ""  # why it does not do, when found but unusable
    install: str = ""  # the one thing to install on this OS

    @property
    def ok(self) -> bool:
        return bool(self.found) and not self.problem


@dataclass
class Toolchain:
    backend: str
    tools: list[Tool] = field(default_factory=list)
    vulkan_include: str = ""  # the headers folder to pass to CMake, when not the system default
    spirv_headers_dir: str = ""  # the folder holding SPIRV-HeadersConfig.cmake, when not found by CMake itself
    nvcc: str = ""
    generator: str = ""  # "Ninja" when ninja is there

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tools)

    def missing(self) -> list[Tool]:
        return [t for t in self.tools if not t.ok]

    def advice(self) -> str:
        """One paragraph: what is missing and the command that installs it."""
        lines = []
        for tool in self.missing():
            why = tool.problem or "not found"
            lines.append(f"{tool.name}: {why}. Install: {tool.install}")
        return "\n".join(lines)


def os_family() -> str:
    """"debian", "fedora", "arch", "suse", "macos", "windows" or "linux"."""
    if sys.platform == "win32":
        return "windows"
    if sys.platform == "darwin":
        return "macos"
    try:
        text = Path("/etc/os-release").read_text(encoding="utf-8", errors="replace")[:4096]
    except OSError:
        return "linux"
    ids = " ".join(re.findall(r"^(?:ID|ID_LIKE)=\"?([^\"\n]*)", text, re.MULTILINE)).lower().split()
    for family, names in (
        ("debian", ("debian", "ubuntu")),
        ("fedora", ("fedora", "rhel", "centos")),
        ("arch", ("arch",)),
        ("suse", ("suse", "opensuse")),
    ):
        if any(n in ids for n in names):
            return family
    return "linux"


_PACKAGES = {
    # what: {os family: install command}
    "compiler": {
        "debian": "sudo apt install build-essential",
        "fedora": "sudo dnf install gcc-c++",
        "arch": "sudo pacman -S base-devel",
        "suse": "sudo zypper install gcc-c++",
        "macos": "xcode-select --install",
        "windows": "Visual Studio Build Tools with 'Desktop development with C++' "
        "(winget install Microsoft.VisualStudio.2022.BuildTools)",
        "linux": "your distribution's GCC or Clang C++ compiler",
    },
    "cmake": {
        "debian": "sudo apt install cmake ninja-build",
        "fedora": "sudo dnf install cmake ninja-build",
        "arch": "sudo pacman -S cmake ninja",
        "suse": "sudo zypper install cmake ninja",
        "macos": "brew install cmake ninja",
        "windows": "winget install Kitware.CMake",
        "linux": "CMake 3.14 or newer",
    },
    "glslc": {
        "debian": "sudo apt install glslc",
        "fedora": "sudo dnf install glslc",
        "arch": "sudo pacman -S shaderc",
        "suse": "sudo zypper install shaderc",
        "macos": "brew install shaderc",
        "windows": "the Vulkan SDK (winget install KhronosGroup.VulkanSDK)",
        "linux": "shaderc's glslc",
    },
    "vulkan": {
        "debian": "sudo apt install libvulkan-dev spirv-headers (Debian 13 / Ubuntu 24.04 or newer; on Debian 12 unpack "
        f"Debian 13's libvulkan-dev and spirv-headers packages into one folder with dpkg -x and set {VULKAN_INCLUDE_ENV} "
        "to its usr/include)",
        "fedora": "sudo dnf install vulkan-headers vulkan-loader-devel",
        "arch": "sudo pacman -S vulkan-headers vulkan-icd-loader",
        "suse": "sudo zypper install vulkan-devel",
        "macos": "brew install vulkan-headers vulkan-loader molten-vk",
        "windows": "the Vulkan SDK (winget install KhronosGroup.VulkanSDK)",
        "linux": f"Vulkan headers 1.3.{MIN_VULKAN_HEADER} or newer and the Vulkan loader",
    },
    "spirv": {
        "debian": "sudo apt install spirv-headers",
        "fedora": "sudo dnf install spirv-headers-devel",
        "arch": "sudo pacman -S spirv-headers",
        "suse": "sudo zypper install spirv-headers",
        "macos": "brew install spirv-headers",
        "windows": "the Vulkan SDK (winget install KhronosGroup.VulkanSDK)",
        "linux": "the SPIR-V headers (spirv-headers)",
    },
    "nvcc": {
        "debian": "NVIDIA's CUDA toolkit (sudo apt install nvidia-cuda-toolkit, or the toolkit from NVIDIA)",
        "fedora": "NVIDIA's CUDA toolkit (the cuda-toolkit package from NVIDIA's repository)",
        "arch": "sudo pacman -S cuda",
        "suse": "NVIDIA's CUDA toolkit (the cuda-toolkit package from NVIDIA's repository)",
        "macos": "nothing: CUDA does not exist on macOS; use the CPU (Metal) engine",
        "windows": "NVIDIA's CUDA toolkit (winget install Nvidia.CUDA)",
        "linux": "NVIDIA's CUDA toolkit",
    },
}


def install_hint(what: str, family: str | None = None) -> str:
    table = _PACKAGES[what]
    return table.get(family or os_family(), table["linux"])


def _run_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return ""
    return (out.stdout or out.stderr)[:2000]


def _check_compiler(family: str) -> Tool:
    names = ("cl",) if family == "windows" else ("c++", "g++", "clang++")
    found = next((p for p in map(shutil.which, names) if p), "")
    return Tool("C/C++ compiler", found or "", install=install_hint("compiler", family))


def _check_cmake(family: str) -> Tool:
    path = shutil.which("cmake") or ""
    tool = Tool("CMake", path, install=install_hint("cmake", family))
    if path:
        match = re.search(r"cmake version (\d+)\.(\d+)", _run_version([path, "--version"]))
        if not match:
            tool.problem = "it did not report its version"
        elif (int(match.group(1)), int(match.group(2))) < MIN_CMAKE:
            tool.problem = f"version {match.group(1)}.{match.group(2)} is older than 3.14"
    return tool


def vulkan_header_version(include_dir: Path) -> int | None:
    """VK_HEADER_VERSION of ``include_dir/vulkan/vulkan_core.h`` (the patch number of 1.3.x / 1.4.x: it only ever
    grows), or None when there are no headers."""
    try:
        head = (include_dir / "vulkan" / "vulkan_core.h").read_text(encoding="utf-8", errors="replace")[:200_000]
    except OSError:
        return None
    match = re.search(r"#define\s+VK_HEADER_VERSION\s+(\d+)", head)
    return int(match.group(1)) if match else None


def _vulkan_include_candidates() -> list[Path]:
    found = []
    if os.environ.get(VULKAN_INCLUDE_ENV):
        found.append(Path(os.environ[VULKAN_INCLUDE_ENV]))
    if os.environ.get("VULKAN_SDK"):
        found.append(Path(os.environ["VULKAN_SDK"]) / "Include")
        found.append(Path(os.environ["VULKAN_SDK"]) / "include")
    found += [Path("/usr/include"), Path("/usr/local/include"), Path("/opt/homebrew/include")]
    return found


def _check_vulkan(family: str, chain: Toolchain) -> list[Tool]:
    glslc = shutil.which("glslc") or ""
    if not glslc and os.environ.get("VULKAN_SDK"):
        candidate = Path(os.environ["VULKAN_SDK"]) / "Bin" / "glslc.exe"
        glslc = str(candidate) if candidate.exists() else ""
    tools = [Tool("glslc (Vulkan shader compiler)", glslc, install=install_hint("glslc", family))]
    headers = Tool("Vulkan headers", "", install=install_hint("vulkan", family))
    best: tuple[int, Path] | None = None
    for folder in _vulkan_include_candidates():
        version = vulkan_header_version(folder)
        if version is not None and (best is None or version > best[0]):
            best = (version, folder)
    if best is None:
        headers.problem = "not found"
    else:
        headers.found = f"version {best[0]} in {best[1]}"
        if best[0] < MIN_VULKAN_HEADER:
            headers.problem = f"version {best[0]} in {best[1]} is too old (this llama.cpp needs 1.3.{MIN_VULKAN_HEADER} or newer)"
        elif best[1] not in (Path("/usr/include"), Path("/usr/local/include")):
            chain.vulkan_include = str(best[1])
    tools.append(headers)
    spirv = Tool("SPIR-V headers", "", install=install_hint("spirv", family))
    for folder in _spirv_config_candidates(chain):
        if (folder / "SPIRV-HeadersConfig.cmake").exists():
            spirv.found = str(folder)
            if not str(folder).startswith(("/usr/share/", "/usr/lib/", "/usr/local/")):
                chain.spirv_headers_dir = str(folder)
            break
    tools.append(spirv)
    return tools


def _spirv_config_candidates(chain: Toolchain) -> list[Path]:
    prefixes = []
    if chain.vulkan_include:  # an unpacked package tree: <root>/usr/include next to <root>/usr/share
        prefixes.append(Path(chain.vulkan_include).parent)
    if os.environ.get("VULKAN_SDK"):
        prefixes.append(Path(os.environ["VULKAN_SDK"]))
    prefixes += [Path("/usr"), Path("/usr/local"), Path("/opt/homebrew")]
    found = []
    for prefix in prefixes:
        found.append(prefix / "share" / "cmake" / "SPIRV-Headers")
        found += sorted(prefix.glob("lib*/cmake/SPIRV-Headers")) + sorted(prefix.glob("lib/*/cmake/SPIRV-Headers"))
    return found


def find_nvcc() -> str:
    found = shutil.which("nvcc")
    if found:
        return found
    for root in (os.environ.get("CUDA_PATH", ""), os.environ.get("CUDA_HOME", ""), "/usr/local/cuda"):
        if root:
            candidate = Path(root) / "bin" / ("nvcc.exe" if sys.platform == "win32" else "nvcc")
            if candidate.exists():
                return str(candidate)
    return ""


def check_toolchain(backend: str) -> Toolchain:
    """What building ``backend`` ("vulkan" or "cuda") needs and what of it is here."""
    family = os_family()
    chain = Toolchain(backend=backend, generator="Ninja" if shutil.which("ninja") else "")
    chain.tools += [_check_compiler(family), _check_cmake(family)]
    if backend == "vulkan":
        chain.tools += _check_vulkan(family, chain)
    elif backend == "cuda":
        chain.nvcc = find_nvcc()
        chain.tools.append(Tool("CUDA compiler (nvcc)", chain.nvcc, install=install_hint("nvcc", family)))
    else:
        raise ValueError(f"unknown backend {backend!r}")
    return chain


def machine_tag() -> str:
    """The platform part of a build's cache key: a build is only reused on the same OS and CPU architecture."""
    return f"{sys.platform}-{platform.machine().lower()}"
