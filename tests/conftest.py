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
