"""Build a llama.cpp engine (Vulkan or CUDA) from the source of the installed llama-cpp-python version.

Why build at all: llama-cpp-python is published as source, and ``pip install`` compiles llama.cpp without a GPU
backend. Its Python files work with any libllama built from the same vendored source (``LLAMA_CPP_LIB_PATH``), so an
engine is just a folder of shared libraries built here, next to pip's CPU build, never replacing it.

Steps: the toolchain check (desktop.llama.toolchain), the sdist of the same version (found in the shared cache or
fetched with pip, never pip's wheel cache, which is keyed on the source and not on the CMake flags), CMake configure
and build of the ``llama`` target as shared libraries, the libraries copied into the shared cache, then installed
into ``<data>/engines/<name>/``. Progress comes from Ninja's ``[done/total]`` or Make's ``[ NN%]`` lines; cancel
kills the build's whole process group; every line goes to a log under the data folder.

The shared cache (``QUANTDESK_ENGINE_CACHE``, default the user's cache folder ``.../quantdesk/engines``) is keyed on
backend, llama-cpp-python version, platform and, for CUDA, the GPU architecture, so CI runs and test sessions reuse
one build.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from desktop import paths
from desktop.errors import Cancelled, UserError
from desktop.jobs import CancelledFn, ProgressFn
from desktop.llama.build_run import BuildProgress, run_logged
from desktop.llama.build_source import fetch_sdist, unpack_source
from desktop.llama.engines import MANIFEST, cache_root, engine_name, engines_dir, library_version
from desktop.llama.toolchain import Toolchain, check_toolchain, machine_tag

try:
    import fcntl
except ImportError:  # Windows: no flock; two builds of one engine at once are then the user's own doing
    fcntl = None  # type: ignore[assignment]

BACKENDS = ("vulkan", "cuda")
RECIPE = 1  # bump when cmake_arguments change: a cached build made with other flags is then built again


def cache_key(backend: str, version: str, cuda_arch: str = "") -> str:
    key = f"{machine_tag()}/{engine_name(backend, version)}"
    return f"{key}-sm{cuda_arch}" if cuda_arch else key


def shared_libraries(folder: Path) -> list[Path]:
    """The shared libraries a build left in ``folder`` (symlinks included, so sonames resolve)."""
    patterns = ("*.dll",) if sys.platform == "win32" else ("*.dylib",) if sys.platform == "darwin" else ("*.so", "*.so.*")
    return sorted({p for pattern in patterns for p in folder.glob(pattern)})


# ---------------------------------------------------------------- the source




def cmake_arguments(backend: str, chain: Toolchain, cuda_arch: str = "") -> list[str]:
    args = [
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=ON",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_BUILD_COMMON=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_TOOLS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_SERVER=OFF",
        "-DLLAMA_BUILD_APP=OFF",
        # Each library finds its siblings in its own folder, wherever the engine is installed.
        "-DCMAKE_BUILD_RPATH=$ORIGIN" if sys.platform.startswith("linux") else "-DCMAKE_MACOSX_RPATH=ON",
    ]
    if chain.generator:
        args[:0] = ["-G", chain.generator]
    if backend == "vulkan":
        args.append("-DGGML_VULKAN=ON")
        if chain.vulkan_include:
            args.append(f"-DVulkan_INCLUDE_DIR={chain.vulkan_include}")
        if chain.spirv_headers_dir:
            args.append(f"-DSPIRV-Headers_DIR={chain.spirv_headers_dir}")
    elif backend == "cuda":
        arch = f"{cuda_arch}-real" if cuda_arch else "native"
        args += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={arch}", "-DGGML_CUDA_NCCL=OFF"]
        if chain.nvcc:
            args.append(f"-DCMAKE_CUDA_COMPILER={chain.nvcc}")
    return args


@dataclass
class BuildPlan:
    backend: str
    version: str
    cuda_arch: str
    key: str
    jobs: int

    @property
    def name(self) -> str:
        return engine_name(self.backend, self.version)


def nvml_cuda_arch() -> str:
    """The compute capability of the first NVIDIA GPU as CMake spells it ("90" for 9.0), or "" with no driver."""
    from desktop.hardware.report import collect_nvidia

    gpus, _ = collect_nvidia()
    capability = next((g.compute_capability for g in gpus if g.compute_capability), "")
    return capability.replace(".", "")


def make_plan(backend: str, jobs: int | None = None, cuda_arch: str | None = None) -> BuildPlan:
    if backend not in BACKENDS:
        raise UserError(f"There is no {backend!r} engine to build.", f"Choose one of: {', '.join(BACKENDS)}.")
    arch = ""
    if backend == "cuda":
        arch = cuda_arch if cuda_arch is not None else nvml_cuda_arch()
        if not arch:
            raise UserError("No NVIDIA GPU was found, so there is nothing to build the CUDA engine for.",
                            "Build the Vulkan engine instead: it runs on NVIDIA, AMD and Intel GPUs.")
    version = library_version()
    return BuildPlan(backend, version, arch, cache_key(backend, version, arch), jobs or os.cpu_count() or 2)


class _Lock:
    """An exclusive lock on one cache entry, so two processes never build the same engine into the same folder."""

    def __init__(self, path: Path, cancelled: CancelledFn) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "a+")  # noqa: SIM115 - closed in __exit__
        self.cancelled = cancelled

    def __enter__(self) -> _Lock:
        while fcntl is not None:
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except BlockingIOError:
                if self.cancelled():
                    self.file.close()
                    raise Cancelled() from None
                time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        if fcntl is not None:
            fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def cached_build(plan: BuildPlan) -> Path | None:
    """The cache entry for ``plan`` when it holds a complete build made with today's recipe (CMake flags)."""
    entry = cache_root() / plan.key
    try:
        manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8")[:65536])
    except (OSError, ValueError):
        return None
    return entry if isinstance(manifest, dict) and manifest.get("recipe", 1) == RECIPE else None


def compile_into_cache(plan: BuildPlan, progress: ProgressFn, cancelled: CancelledFn, log: IO[str]) -> Path:
    """Build ``plan`` into the shared cache unless it is there already; returns the cache entry."""
    entry = cache_root() / plan.key
    with _Lock(entry.parent / f"{entry.name}.lock", cancelled):
        if cached_build(plan) is not None:
            log.write(f"Using the cached build in {entry}\n")
            return entry
        chain = check_toolchain(plan.backend)
        if not chain.ok:
            raise UserError(f"This machine cannot build the {plan.backend.upper()} engine yet.\n{chain.advice()}",
                            "Install what is listed, then build again.", kind="toolchain")
        started = time.monotonic()
        progress(0, 100, "Fetching llama.cpp's source")
        work = cache_root() / "work" / plan.key
        work.mkdir(parents=True, exist_ok=True)
        source = unpack_source(fetch_sdist(plan.version, log, cancelled), work, plan.version)
        build = work / "build"
        progress(2, 100, "Configuring")
        env = dict(os.environ, NINJA_STATUS="[%f/%t] ")
        code = run_logged(["cmake", "-S", str(source), "-B", str(build), *cmake_arguments(plan.backend, chain,
                           plan.cuda_arch)], log, cancelled, env=env)
        if code != 0:
            raise _build_failed(plan, "configure", log)
        tracker = BuildProgress()

        def on_line(line: str) -> None:
            share = tracker.feed(line)
            if share is not None:
                progress(5 + 93 * share, 100, line[:200])  # the build's own status line: "[123/402] Building ..."

        argv = ["cmake", "--build", str(build), "--config", "Release", "--target", "llama", "-j", str(plan.jobs)]
        code = run_logged(argv, log, cancelled, on_line=on_line, env=env)
        if code != 0:
            raise _build_failed(plan, "build", log)
        progress(98, 100, "Storing the engine")
        libs = shared_libraries(build / "bin") or shared_libraries(build / "bin" / "Release")
        if not any(p.name.startswith(("libllama", "llama")) for p in libs):
            raise _build_failed(plan, "build", log)
        partial = entry.with_name(entry.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        (partial / "lib").mkdir(parents=True)
        for lib in libs:
            shutil.copy2(lib, partial / "lib" / lib.name, follow_symlinks=False)
        manifest = {
            "name": plan.name,
            "backend": plan.backend,
            "llama_cpp_python": plan.version,
            "cuda_arch": plan.cuda_arch,
            "platform": machine_tag(),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - started, 1),
            "jobs": plan.jobs,
            "recipe": RECIPE,
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        shutil.rmtree(entry, ignore_errors=True)
        partial.rename(entry)
        shutil.rmtree(build, ignore_errors=True)  # hundreds of MB of objects; the source stays for a rebuild
        log.write(f"Built in {manifest['build_seconds']} s into {entry}\n")
        return entry


def build_llama_bench(plan: BuildPlan, progress: ProgressFn, cancelled: CancelledFn, log: IO[str]) -> Path:
    """llama.cpp's ``llama-bench`` from the same source and flags as the engine (for bench/gpu.py's reference), in
    its own build folder next to the engine's. Returns the program's path; it finds its libraries beside it."""
    work = cache_root() / "work" / plan.key
    source = unpack_source(fetch_sdist(plan.version, log, cancelled), work, plan.version)
    build = work / "build-bench"
    program = build / "bin" / ("llama-bench.exe" if sys.platform == "win32" else "llama-bench")
    chain = check_toolchain(plan.backend)
    if not chain.ok:
        raise UserError(f"This machine cannot build llama-bench for {plan.backend.upper()}.\n{chain.advice()}")
    args = [a for a in cmake_arguments(plan.backend, chain, plan.cuda_arch)
            if a not in ("-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_COMMON=OFF")]
    env = dict(os.environ, NINJA_STATUS="[%f/%t] ")
    if run_logged(["cmake", "-S", str(source), "-B", str(build), *args, "-DLLAMA_BUILD_TOOLS=ON",
                   "-DLLAMA_BUILD_COMMON=ON"], log, cancelled, env=env) != 0:
        raise _build_failed(plan, "configure", log)
    tracker = BuildProgress()

    def on_line(line: str) -> None:
        share = tracker.feed(line)
        if share is not None:
            progress(share, 1, line[:200])

    if run_logged(["cmake", "--build", str(build), "--config", "Release", "--target", "llama-bench", "-j",
                   str(plan.jobs)], log, cancelled, on_line=on_line, env=env) != 0 or not program.exists():
        raise _build_failed(plan, "build", log)
    return program


def _build_failed(plan: BuildPlan, stage: str, log: IO[str]) -> UserError:
    log.flush()
    name = getattr(log, "name", "")
    detail = ""
    try:
        text = Path(name).read_text(encoding="utf-8", errors="replace")[-2_000_000:] if name else ""
        this_run = text[text.rfind("\n=== ") + 1:]  # the log keeps earlier builds above this one
        errors = [ln.strip() for ln in this_run.splitlines()
                  if not ln.startswith("$ ") and re.search(r"\berror\b|CMake Error", ln)]
        detail = errors[0][:300] if errors else ""
    except OSError:
        pass
    what = "configure" if stage == "configure" else "compile"
    message = f"The {plan.backend.upper()} engine did not {what}" + (f": {detail}" if detail else ".")
    return UserError(message, f"The whole build log is in {name}." if name else "", kind="build")


def install_engine(entry: Path, data_dir: Path | None = None) -> Path:
    """Put a cached build into ``<data>/engines/<name>/`` (hard links where the file system allows, else copies)."""
    manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
    target = engines_dir(data_dir) / str(manifest["name"])
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / "lib").mkdir(parents=True)
    for lib in sorted((entry / "lib").iterdir()):
        dest = partial / "lib" / lib.name
        if lib.is_symlink():
            os.symlink(os.readlink(lib), dest)
            continue
        try:
            os.link(lib, dest)
        except OSError:
            shutil.copy2(lib, dest)
    manifest["source_cache"] = str(entry)
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def build_log_path(backend: str, version: str | None = None) -> Path:
    """The log every build of ``backend``'s engine (default: for the installed llama-cpp-python) appends to; the
    Hardware page opens it while the build runs."""
    return paths.logs_dir() / f"engine-build-{engine_name(backend, version or library_version())}.log"


def build_engine(
    backend: str,
    progress: ProgressFn,
    cancelled: CancelledFn,
    *,
    data_dir: Path | None = None,
    jobs: int | None = None,
    cuda_arch: str | None = None,
) -> dict[str, Any]:
    """The job: build (or reuse from the cache) and install the ``backend`` engine. Returns its manifest plus
    ``path`` and ``log``. Raises :class:`UserError` with the one thing to do when it cannot."""
    plan = make_plan(backend, jobs, cuda_arch)
    log_path = build_log_path(plan.backend, plan.version)
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} building {plan.name} ({plan.key}), {plan.jobs} jobs\n")
        entry = compile_into_cache(plan, progress, cancelled, log)
        target = install_engine(entry, data_dir)
        log.write(f"Installed into {target}\n")
    progress(100, 100, "Built")
    manifest = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
    return {**manifest, "path": str(target), "log": str(log_path)}
