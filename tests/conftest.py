"""Shared fixtures. Every test runs with its own QuantDesk data folder and Hugging Face cache, so no test reads or
writes the real user's settings, library or downloads."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["mockhub"]  # the mock Hugging Face server and the in-memory keyring fixtures

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
# Session-scoped fixtures run before the per-test home below: give them a throwaway home too, so nothing a test
# starts can write into the real user's data folder.
os.environ["QUANTDESK_HOME"] = tempfile.mkdtemp(prefix="quantdesk-session-")
os.environ["HF_HOME"] = os.path.join(os.environ["QUANTDESK_HOME"], "hf")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path_factory.mktemp("quantdesk-home")
    monkeypatch.setenv("QUANTDESK_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hf" / "hub"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))  # QSettings on Linux
    return home


@pytest.fixture(autouse=True)
def no_real_keyring(memory_keyring: object) -> object:
    """No test may read or write the user's real keyring: every test gets an in-memory one."""
    return memory_keyring


# ------------------------------------------------------------------ llama.cpp engines (GPU paths on a real GPU build)
# Mesa's lavapipe is a Vulkan device on the CPU; llama.cpp skips CPU-type Vulkan devices unless told which to use.
# With a real GPU at index 0 this picks that GPU, which serves the tests just as well.
os.environ.setdefault("GGML_VK_VISIBLE_DEVICES", "0")


@pytest.fixture(scope="session")
def bundled_chat_model() -> Path:
    """The bundled instruct model (SmolLM2 135M, the smoke test's model), unpacked once into the shared test folder."""
    from serve_helpers import instruct_model_path

    return instruct_model_path()


@pytest.fixture(scope="session")
def vulkan_engine_session(tmp_path_factory: pytest.TempPathFactory, bundled_chat_model: Path) -> Path:
    """The Vulkan engine made by the app's own builder (README's test command builds it into the shared cache first,
    so this only installs it), installed into a session data folder and smoke-tested once on this machine's Vulkan
    device (lavapipe in CI). Without a cached build the GPU tests fail with the command that makes one: building
    here would take longer than a test may (about 20 minutes on 2 cores)."""
    from desktop.llama.build import build_engine, cached_build, make_plan
    from desktop.llama.engines import cache_root, load_engine
    from desktop.llama.smoke import run_smoke_test

    if cached_build(make_plan("vulkan")) is None:
        pytest.fail(f"No Vulkan engine in the shared build cache ({cache_root()}). Build it once with: "
                    "python3 -m desktop engine build vulkan --no-test  (README's test command does), then rerun.")
    data = tmp_path_factory.mktemp("engines-data")
    result = build_engine("vulkan", lambda done, total, message: None, lambda: False, data_dir=data)
    engine = load_engine(Path(result["path"]))
    assert engine is not None, result
    run_smoke_test(engine, bundled_chat_model)
    return Path(result["path"])


@pytest.fixture
def vulkan_engine(vulkan_engine_session: Path, isolated_home: Path) -> object:
    """The session's Vulkan engine (with its smoke result) in this test's own data folder, linked, not copied."""
    import shutil

    from desktop.llama.engines import load_engine

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another file system
            shutil.copy2(src, dst)

    target = isolated_home / "engines" / vulkan_engine_session.name
    shutil.copytree(vulkan_engine_session, target, symlinks=True, copy_function=link_or_copy)
    engine = load_engine(target)
    assert engine is not None
    return engine


@pytest.fixture(scope="session", autouse=True)
def gui_thread_collector(qapp):  # type: ignore[no-untyped-def]
    """As in the app: cycles (and the Qt objects in them) are collected on the GUI thread only, never on a job's
    worker thread (a full run once hung in a worker's QObject destructor, see desktop/workers/collector.py)."""
    from desktop.workers.collector import install_gui_thread_collector

    collector = install_gui_thread_collector(qapp)
    yield collector
    collector.stop()


@pytest.fixture(autouse=True)
def collect_after_each_test(gui_thread_collector):  # type: ignore[no-untyped-def]
    """Tests without an event loop never let the collector's timer run: collect on this (the GUI) thread after each."""
    yield
    import gc

    gc.collect()
