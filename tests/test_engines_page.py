"""The Hardware page's engine section with real widgets: the engines listed, a build (from the shared cache), its
smoke test, a refused engine, the toolchain advice, and cancel."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from desktop.llama import engines, toolchain
from desktop.ui.hardware.engine_card import EngineCard
from desktop.workers import JobManager


@pytest.fixture
def card(qtbot: QtBot) -> EngineCard:
    jobs = JobManager()
    widget = EngineCard(jobs)
    qtbot.addWidget(widget)
    widget._test_jobs = jobs  # keep the manager alive as long as the card
    return widget


def _combo_names(card: EngineCard) -> list[str]:
    return [str(card.choice.itemData(i)) for i in range(card.choice.count())]


def test_only_the_cpu_engine_at_first_and_build_buttons_offered(card: EngineCard, qtbot: QtBot) -> None:
    card.refresh()
    qtbot.waitUntil(lambda: card.choice.count() == 2, timeout=10_000)
    assert _combo_names(card) == ["auto", "cpu"]
    assert card.status.text().startswith("Now: CPU (cpu).")
    assert card.build_vulkan.isEnabled() and not card.cancel_button.isEnabled()
    card.set_has_nvidia(False)
    assert card.build_cuda.isHidden()


def test_a_cached_build_is_installed_then_tested_and_a_failing_engine_is_not_offered(
    card: EngineCard, qtbot: QtBot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    """The build comes from the shared cache (here one whose library is broken); the smoke test runs right after and
    its failure is shown; the engine never appears in the choice."""
    monkeypatch.setenv(engines.CACHE_ENV, str(tmp_path / "cache"))
    name = f"vulkan-{engines.library_version()}"
    entry = tmp_path / "cache" / toolchain.machine_tag() / name
    (entry / "lib").mkdir(parents=True)
    (entry / "lib" / "libllama.so").write_bytes(b"not a library")
    (entry / engines.MANIFEST).write_text(json.dumps({"name": name, "backend": "vulkan",
                                                      "llama_cpp_python": engines.library_version()}))
    from desktop.chat_model import ensure_chat_model

    ensure_chat_model()  # the smoke test's model, in this test's data folder
    card.build("vulkan")
    assert card.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: "Built vulkan" in card.log_view.toPlainText(), timeout=30_000)
    assert card.cancel_button.isEnabled() and not card.build_vulkan.isEnabled()  # the smoke test is running now
    qtbot.waitUntil(lambda: "failed its test" in card.log_view.toPlainText(), timeout=180_000)
    qtbot.waitUntil(lambda: not card.cancel_button.isEnabled(), timeout=10_000)
    assert (isolated_home / "engines" / name / engines.SMOKE).exists()
    qtbot.waitUntil(lambda: "failed its test" in card.status.text(), timeout=10_000)
    assert name not in _combo_names(card)
    assert engines.selected_engine().name == "cpu"


def test_a_missing_toolchain_is_said_with_what_to_install(
    card: EngineCard, qtbot: QtBot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(engines.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no compiler, no cmake, no glslc
    card.build("vulkan")
    qtbot.waitUntil(lambda: "cannot build the VULKAN engine yet" in card.status.text(), timeout=30_000)
    assert "CMake: not found. Install: sudo apt install cmake ninja-build" in card.status.text()
    assert not card.cancel_button.isEnabled()


def test_cancel_stops_a_build_waiting_for_another_one(
    card: EngineCard, qtbot: QtBot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process is building the same engine (it holds the cache entry's lock): cancel ends the wait."""
    monkeypatch.setenv(engines.CACHE_ENV, str(tmp_path / "cache"))
    lock = tmp_path / "cache" / toolchain.machine_tag() / f"vulkan-{engines.library_version()}.lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        card.build("vulkan")
        qtbot.waitUntil(card.cancel_button.isEnabled, timeout=5_000)
        card.cancel()
        qtbot.waitUntil(lambda: card.status.text().startswith("Build cancelled"), timeout=15_000)
    assert not card.cancel_button.isEnabled() and card.build_vulkan.isEnabled()
    assert not os.path.exists(tmp_path / "cache" / toolchain.machine_tag() / f"vulkan-{engines.library_version()}")


def test_choosing_an_engine_reads_the_engine_list_once(qtbot: QtBot, monkeypatch: pytest.MonkeyPatch) -> None:
    """A choice re-read the engine list twice (the card after its job, then the page's whole refresh, card included)."""
    from desktop.ui.hardware.page import HardwarePage

    real_describe = engines.describe_engines
    calls: list[int] = []

    def describe_engines(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        return real_describe(*args, **kwargs)

    monkeypatch.setattr(engines, "describe_engines", describe_engines)
    jobs = JobManager()
    page = HardwarePage(jobs)
    qtbot.addWidget(page)
    page.refresh()
    qtbot.waitUntil(lambda: page.report is not None and not jobs.active_jobs(), timeout=120_000)
    assert calls == [1] and page.engine_card.choice.count() == 2
    first_report = page.report
    page.engine_card.choice.setCurrentIndex(page.engine_card.choice.findData("cpu"))
    qtbot.waitUntil(lambda: page.report is not first_report and not jobs.active_jobs(), timeout=120_000)
    assert calls == [1, 1]  # the hardware was read again (the device list is the engine's), the engine list once
    assert jobs.stop_all(timeout_s=10)
