"""Engines without a GPU: the builder's pieces (toolchain advice, progress, cancel, cache, install), the registry
(what is offered, what is selected) and the child environment. The GPU paths on a real Vulkan build are in
test_engines_gpu.py."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from desktop.errors import Cancelled, UserError
from desktop.llama import build, build_run, engines, toolchain
from desktop.llama.engines import SmokeResult
from desktop.process import run_in_child


def test_progress_counts_the_outer_build_only_and_never_goes_back() -> None:
    tracker = build_run.BuildProgress()
    seen = [tracker.feed(line) for line in (
        "-- Configuring done",
        "[1/400] Building C object ggml/src/ggml.c.o",
        "[100/400] Building CXX object ggml-vulkan.cpp.o",
        "[1/2] Building CXX object vulkan-shaders-gen.cpp.o",  # the nested shader-generator build
        "[2/2] Linking CXX executable vulkan-shaders-gen",
        "[100/400] again",
        "[400/400] Linking CXX shared library bin/libllama.so",
    )]
    assert seen == [None, 1 / 400, 0.25, None, None, None, 1.0]
    make = build_run.BuildProgress()
    assert make.feed("[ 45%] Building CXX object src/llama.cpp.o") == pytest.approx(0.45)


def test_missing_tools_are_named_with_the_install_command_for_this_os(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH at all
    monkeypatch.delenv(toolchain.VULKAN_INCLUDE_ENV, raising=False)
    monkeypatch.delenv("VULKAN_SDK", raising=False)
    chain = toolchain.check_toolchain("vulkan")
    assert not chain.ok
    names = {t.name for t in chain.missing()}
    assert {"C/C++ compiler", "CMake", "glslc (Vulkan shader compiler)"} <= names
    advice = chain.advice()
    assert "sudo apt install build-essential" in advice and "sudo apt install glslc" in advice  # Debian here
    assert toolchain.install_hint("compiler", "fedora") == "sudo dnf install gcc-c++"
    assert "winget install KhronosGroup.VulkanSDK" in toolchain.install_hint("glslc", "windows")
    cuda = toolchain.check_toolchain("cuda")
    assert any(t.name == "CUDA compiler (nvcc)" for t in cuda.missing()) or cuda.nvcc  # a CUDA_HOME may hold one


def _headers(root: Path, version: int, spirv: bool = True) -> Path:
    include = root / "usr" / "include"
    (include / "vulkan").mkdir(parents=True)
    (include / "vulkan" / "vulkan_core.h").write_text(f"#define VK_HEADER_VERSION {version}\n")
    if spirv:
        (root / "usr" / "share" / "cmake" / "SPIRV-Headers").mkdir(parents=True)
        (root / "usr" / "share" / "cmake" / "SPIRV-Headers" / "SPIRV-HeadersConfig.cmake").write_text("")
    return include


def test_new_enough_private_vulkan_headers_are_passed_to_cmake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    include = _headers(tmp_path / "trixie", 309)
    monkeypatch.setenv(toolchain.VULKAN_INCLUDE_ENV, str(include))
    chain = toolchain.check_toolchain("vulkan")
    headers = next(t for t in chain.tools if t.name == "Vulkan headers")
    assert headers.ok and chain.vulkan_include == str(include)
    args = build.cmake_arguments("vulkan", chain)
    assert f"-DVulkan_INCLUDE_DIR={include}" in args
    assert f"-DSPIRV-Headers_DIR={tmp_path / 'trixie' / 'usr/share/cmake/SPIRV-Headers'}" in args
    assert {"-DGGML_VULKAN=ON", "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF",
            "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"} <= set(args)


def test_headers_too_old_are_refused_with_the_version_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    include = _headers(tmp_path / "old", 200, spirv=False)
    monkeypatch.setenv(toolchain.VULKAN_INCLUDE_ENV, str(include))
    monkeypatch.setattr(toolchain, "_vulkan_include_candidates", lambda: [include])
    monkeypatch.setattr(toolchain, "_spirv_config_candidates", lambda chain: [])
    chain = toolchain.check_toolchain("vulkan")
    headers = next(t for t in chain.tools if t.name == "Vulkan headers")
    assert not headers.ok and "version 200" in headers.problem and "too old" in headers.problem
    assert "SPIR-V headers: not found" in chain.advice()


def test_cuda_is_built_for_the_gpu_nvml_reports_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import fake_nvml

    nvml = fake_nvml.make_module([fake_nvml.FakeGpu("NVIDIA H200", total=141 * 2**30, used=0, capability=(9, 0))])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    plan = build.make_plan("cuda")
    assert plan.cuda_arch == "90" and plan.key.endswith(f"cuda-{engines.library_version()}-sm90")
    args = build.cmake_arguments("cuda", toolchain.Toolchain("cuda", nvcc="/usr/local/cuda/bin/nvcc"), plan.cuda_arch)
    assert "-DCMAKE_CUDA_ARCHITECTURES=90-real" in args and "-DGGML_CUDA=ON" in args


def test_cuda_without_an_nvidia_gpu_says_to_build_vulkan(monkeypatch: pytest.MonkeyPatch) -> None:
    import fake_nvml

    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml.make_module([], init_error=fake_nvml.NVML_ERROR_LIBRARY_NOT_FOUND))
    with pytest.raises(UserError, match="No NVIDIA GPU") as info:
        build.make_plan("cuda")
    assert "Vulkan" in info.value.next_step


def test_cancel_kills_the_whole_process_group(tmp_path: Path) -> None:
    """A build is CMake -> Ninja -> compilers: cancel must stop the grandchildren too, not only CMake."""
    pid_file = tmp_path / "grandchild.pid"
    script = f"sleep 600 & echo $! > {pid_file}; echo '[1/10] started'; wait"
    lines: list[str] = []
    stop = threading.Event()
    log_path = tmp_path / "build.log"
    with open(log_path, "w") as log:
        def cancelled() -> bool:
            if pid_file.exists() and pid_file.read_text().strip() and lines:
                stop.set()
            return stop.is_set()

        started = time.monotonic()
        with pytest.raises(Cancelled):
            build_run.run_logged(["/bin/sh", "-c", script], log, cancelled, on_line=lines.append)
    assert time.monotonic() - started < 30
    grandchild = int(pid_file.read_text())
    try:
        psutil.Process(grandchild).wait(timeout=5)
    except psutil.NoSuchProcess:
        pass  # already gone
    except psutil.TimeoutExpired:
        pytest.fail("the grandchild survived the cancel")
    assert "[1/10] started" in log_path.read_text() and lines == ["[1/10] started"]


def test_a_failed_compile_names_the_first_error_and_the_log(tmp_path: Path) -> None:
    log_path = tmp_path / "engine-build.log"
    with open(log_path, "w") as log:
        code = build_run.run_logged(["/bin/sh", "-c", "echo 'x.cpp:3:1: error: vk::LayerSettingEXT is not a member'; "
                                 "exit 1"], log, lambda: False)
        assert code == 1
        failure = build._build_failed(build.BuildPlan("vulkan", "0.3.36", "", "k", 2), "build", log)
    assert failure.message == "The VULKAN engine did not compile: x.cpp:3:1: error: vk::LayerSettingEXT is not a member"
    assert str(log_path) in failure.next_step


def _fake_cache_entry(root: Path, backend: str = "vulkan") -> Path:
    entry = root / toolchain.machine_tag() / f"{backend}-{engines.library_version()}"
    (entry / "lib").mkdir(parents=True)
    (entry / "lib" / "libllama.so.0.5.0").write_bytes(b"\x7fELF fake")
    os.symlink("libllama.so.0.5.0", entry / "lib" / "libllama.so")
    (entry / engines.MANIFEST).write_text(json.dumps({"name": f"{backend}-{engines.library_version()}",
                                                      "backend": backend,
                                                      "llama_cpp_python": engines.library_version()}))
    return entry


def test_a_cached_build_is_reused_and_installed_by_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(engines.CACHE_ENV, str(tmp_path / "cache"))
    entry = _fake_cache_entry(tmp_path / "cache")
    steps: list[str] = []
    result = build.build_engine("vulkan", lambda d, t, m: steps.append(m), lambda: False, data_dir=tmp_path / "data")
    installed = Path(result["path"])
    assert installed == tmp_path / "data" / "engines" / f"vulkan-{engines.library_version()}"
    assert os.readlink(installed / "lib" / "libllama.so") == "libllama.so.0.5.0"
    assert (installed / "lib" / "libllama.so.0.5.0").stat().st_ino == (entry / "lib" / "libllama.so.0.5.0").stat().st_ino
    assert steps == ["Built"]  # nothing compiled, nothing fetched
    assert "Using the cached build" in Path(result["log"]).read_text()
    plan = build.make_plan("vulkan")
    assert build.cached_build(plan) == entry
    manifest = json.loads((entry / engines.MANIFEST).read_text())
    (entry / engines.MANIFEST).write_text(json.dumps({**manifest, "recipe": build.RECIPE + 1}))
    assert build.cached_build(plan) is None  # made with other CMake flags: built again, not reused


def _install(data: Path, backend: str, smoke: SmokeResult | None, version: str | None = None) -> engines.Engine:
    folder = data / "engines" / f"{backend}-{version or engines.library_version()}"
    (folder / "lib").mkdir(parents=True)
    (folder / engines.MANIFEST).write_text(json.dumps({"backend": backend,
                                                       "llama_cpp_python": version or engines.library_version()}))
    if smoke is not None:
        (folder / engines.SMOKE).write_text(json.dumps(smoke.__dict__))
    loaded = engines.load_engine(folder)
    assert loaded is not None
    return loaded


def test_only_engines_that_passed_their_smoke_test_are_chosen(tmp_path: Path) -> None:
    assert engines.selected_engine(tmp_path).name == "cpu"
    failed = _install(tmp_path, "cuda", SmokeResult(False, "The CUDA engine failed its test: it crashed."))
    untested = _install(tmp_path, "vulkan", None)
    assert engines.selected_engine(tmp_path).name == "cpu"  # never a failed or untested engine, silently
    with pytest.raises(UserError, match="it crashed") as info:
        engines.select_engine(failed.name, tmp_path)
    assert info.value.next_step == f"Run: quantdesk engine test {failed.name}"
    with pytest.raises(UserError, match="not tested yet"):
        engines.select_engine("vulkan", tmp_path)
    engines.save_smoke(untested, SmokeResult(True, "Passed: all 19 layers on llvmpipe.", 19, 19, ["Vulkan0"], True))
    assert engines.selected_engine(tmp_path).name == untested.name  # the best engine that passed
    assert engines.select_engine("cpu", tmp_path).name == "cpu"
    assert engines.selected_engine(tmp_path).name == "cpu"  # the user's choice is remembered
    engines.select_engine("auto", tmp_path)
    assert engines.selected_engine(tmp_path).name == untested.name


def test_an_engine_built_for_another_version_is_stale(tmp_path: Path) -> None:
    old = _install(tmp_path, "vulkan", SmokeResult(True, "Passed."), version="0.0.1")
    assert old.stale and not old.usable and "build it again" in old.status()
    assert engines.selected_engine(tmp_path).name == "cpu"


def test_child_environment_points_llama_cpp_at_the_engine_and_cpu_clears_it(tmp_path: Path) -> None:
    vulkan = _install(tmp_path, "vulkan", SmokeResult(True, "Passed."))
    env = engines.child_environment(vulkan)
    assert env["LLAMA_CPP_LIB_PATH"] == str(vulkan.lib_dir)
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == str(vulkan.lib_dir)
    assert engines.child_environment(engines.cpu_engine()) == {"LLAMA_CPP_LIB_PATH": None}
    assert engines.environment_engine_name(env) == vulkan.name
    assert engines.environment_engine_name(engines.cpu_environment()) == "cpu"


def child_sees_environment(*, progress: object, cancelled: object) -> dict[str, str | None]:
    return {k: os.environ.get(k) for k in ("LLAMA_CPP_LIB_PATH", "LD_LIBRARY_PATH")}


def test_children_start_on_the_selected_engine_and_the_parent_does_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUANTDESK_HOME", str(tmp_path))
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", "/somewhere/else")  # a user's own setting never leaks into a CPU child
    assert run_in_child("test_engines:child_sees_environment")["LLAMA_CPP_LIB_PATH"] is None
    vulkan = _install(tmp_path, "vulkan", SmokeResult(True, "Passed."))
    seen = run_in_child("test_engines:child_sees_environment")
    assert seen["LLAMA_CPP_LIB_PATH"] == str(vulkan.lib_dir)
    assert str(vulkan.lib_dir) in (seen["LD_LIBRARY_PATH"] or "").split(os.pathsep)
    assert os.environ["LLAMA_CPP_LIB_PATH"] == "/somewhere/else"  # restored in the parent
    forced = run_in_child("test_engines:child_sees_environment", env=engines.cpu_environment())
    assert forced["LLAMA_CPP_LIB_PATH"] is None


def test_the_engine_verbs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from desktop.cli import main

    monkeypatch.setenv("QUANTDESK_HOME", str(tmp_path))
    assert main(["engine", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(e["name"], e["selected"], e["usable"]) for e in listed] == [("cpu", True, True)]
    untested = _install(tmp_path, "vulkan", None)
    assert main(["engine", "use", "vulkan"]) == 1
    assert capsys.readouterr().err == (f"quantdesk: The Vulkan engine cannot be used: Built, not tested yet: run its "
                                       f"smoke test before it is offered. Run: quantdesk engine test {untested.name}\n")
    engines.save_smoke(untested, SmokeResult(True, "Passed: all 31 layers on Vulkan0."))
    assert main(["engine", "use", "vulkan"]) == 0
    assert capsys.readouterr().out == f"Models now run on the Vulkan engine ({untested.name}).\n"
    assert main(["engine", "list"]) == 0
    out = capsys.readouterr().out
    assert f"* {untested.name}" in out and "Selected: " + untested.name + " (chosen by you)." in out
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["engine", "build", "cuda", "--check"]) == 1
    assert "MISSING  CMake: not found" in capsys.readouterr().out
