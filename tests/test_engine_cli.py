"""``quantdesk chat MODEL --prompt TEXT [--json]`` with the real demo model."""

from __future__ import annotations

import json

import pytest

from desktop import cli, process

from engine_helpers import demo_model_path  # noqa: E402 - tests/ is on sys.path under pytest


def test_chat_cli_answers_once_with_metrics_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["chat", str(demo_model_path()), "--prompt", "Count to five: 1, 2,", "--json", "--max-tokens", "6"]
    code = cli.main([*args, "--ctx", "512", "--threads", "1", "--temperature", "0", "--repeat-penalty", "1.0"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["reply"].strip()
    metrics = data["metrics"]
    assert metrics["completion_tokens"] == 6 and metrics["finish_reason"] == "length"
    assert metrics["generated_tokens"] == metrics["llama_perf"]["n_eval"] == 5
    assert metrics["prompt_tokens"] == metrics["prompt_tokens_total"] > 5
    assert metrics["generation_tokens_per_s"] > 0 and metrics["ttft_s"] > 0
    assert data["model"]["architecture"] == "gemma3"
    assert not process.live_children()  # the engine process is gone


def test_chat_cli_prints_the_reply_then_a_metrics_line(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["chat", str(demo_model_path()), "--prompt", "Count to five: 1, 2,", "--max-tokens", "4"]
    assert cli.main([*args, "--ctx", "512", "--threads", "1", "--seed", "7"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip()
    assert "generated 3 tokens at" in captured.err and "tok/s" in captured.err and "first token after" in captured.err


def test_chat_cli_reports_a_missing_model_in_a_sentence(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert cli.main(["chat", str(tmp_path / "nope.gguf"), "--prompt", "hi"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_the_cli_uses_every_physical_core_and_the_window_keeps_one_free(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    import psutil

    from desktop.chat.engine import Engine, LoadOptions

    cores = psutil.cpu_count(logical=False) or 1
    args = ["chat", str(demo_model_path()), "--prompt", "Hi", "--json", "--max-tokens", "1", "--ctx", "256"]
    assert cli.main(args) == 0
    assert json.loads(capsys.readouterr().out)["model"]["n_threads"] == cores
    with Engine(log_path=tmp_path / "e.log") as engine:  # the window leaves threads to the engine's default
        loaded = engine.load_and_wait(LoadOptions(str(demo_model_path()), n_ctx=256))
    assert loaded.data["metadata"]["n_threads"] == (cores - 1 if 1 < cores <= 8 else cores)
