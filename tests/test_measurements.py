"""The measurement store: results come back for the same file, text, context and base, and not for a changed one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from desktop.eval.evaluate import EvalResult
from desktop.eval.measurements import MeasurementStore


def _result(model: Path, base: Path | None = None, **changes: object) -> EvalResult:
    stat = model.stat()
    values: dict[str, object] = dict(
        model_path=str(model.resolve()), model_size=stat.st_size, model_mtime_ns=stat.st_mtime_ns, quant_type="Q4_K_M",
        ppl=12.5, ppl_stderr=0.3, n_tokens=254, n_chunks=2, n_ctx=256, text_name="eval.txt (bundled)",
        text_sha256="a" * 64, hardware="CPU, 2 threads", threads=2, measured_at=1.0, seconds=3.0,
        prompt_tps=100.0, prompt_batch=128, gen_tps=20.0, gen_tokens=32, kld_mean=0.01,
    )
    if base is not None:
        bstat = base.stat()
        values.update(base_path=str(base.resolve()), base_size=bstat.st_size, base_mtime_ns=bstat.st_mtime_ns,
                      base_ppl=12.0)
    values.update(changes)
    return EvalResult(**values)  # type: ignore[arg-type]


def test_a_result_comes_back_for_the_same_file_text_and_context(tmp_path: Path) -> None:
    model, base = tmp_path / "m.gguf", tmp_path / "b.gguf"
    model.write_bytes(b"GGUF model")
    base.write_bytes(b"GGUF base")
    store = MeasurementStore()
    result = _result(model, base)
    store.save(result)
    again = MeasurementStore()  # a new store object, as after a restart
    assert again.find(model, text_sha256="a" * 64, n_ctx=256, base_path=base) == result
    assert again.find(model, text_sha256="b" * 64, n_ctx=256, base_path=base) is None
    assert again.find(model, text_sha256="a" * 64, n_ctx=512, base_path=base) is None
    assert again.find(model, text_sha256="a" * 64, n_ctx=256) is None  # that one had a base
    assert again.results_for([model]) == [result]
    assert result.ppl_increase_pct is not None and round(result.ppl_increase_pct, 3) == 4.167


def test_a_changed_model_or_base_is_measured_again(tmp_path: Path) -> None:
    model, base = tmp_path / "m.gguf", tmp_path / "b.gguf"
    model.write_bytes(b"GGUF model")
    base.write_bytes(b"GGUF base")
    store = MeasurementStore()
    store.save(_result(model, base))
    os.utime(base, ns=(1, 1))
    assert store.find(model, text_sha256="a" * 64, n_ctx=256, base_path=base) is None
    model.write_bytes(b"GGUF model, rewritten")
    assert store.find(model, text_sha256="a" * 64, n_ctx=256) is None
    assert store.results_for() == []
    assert store.forget(model) == 1


def test_a_result_on_part_of_the_text_counts_only_where_enough_was_asked(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF model")
    store = MeasurementStore()
    partial = _result(model, max_chunks=2)
    store.save(partial)
    assert store.find(model, text_sha256="a" * 64, n_ctx=256) is None  # the whole text was asked for
    assert store.find(model, text_sha256="a" * 64, n_ctx=256, min_chunks=2) == partial
    assert store.find(model, text_sha256="a" * 64, n_ctx=256, min_chunks=3) is None
    whole = _result(model, n_chunks=6, measured_at=2.0)
    store.save(whole)  # replaces the partial one
    assert store.find(model, text_sha256="a" * 64, n_ctx=256, min_chunks=3) == whole


def test_cli_eval_measures_in_a_child_then_reuses_the_stored_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from eval_helpers import quantize_file
    from quant_helpers import write_tiny_llama

    from desktop.cli import main

    base = write_tiny_llama(tmp_path / "tiny-F16.gguf")
    quant = quantize_file(base, tmp_path / "tiny-Q4_K_M.gguf", "Q4_K_M")
    argv = ["eval", str(quant), "--base", str(base), "--ctx", "64", "--chunks", "2", "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["quant_type"] == "Q4_K_M" and first["n_tokens"] == 2 * 31 and first["kld_mean"] > 0
    assert first["text_name"] == "eval.txt (bundled)" and first["prompt_tps"] > 0
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == first  # from the store: nothing ran
    assert main(["eval", str(quant), "--ctx", "64", "--chunks", "2"]) == 0  # no base: PPL and speed only
    out = capsys.readouterr().out
    assert "perplexity" in out and "KLD" not in out and "measured on eval.txt" in out
    short = tmp_path / "short.txt"
    short.write_text("the river was long")
    assert main(["eval", str(quant), "--text", str(short), "--ctx", "64"]) == 1
    assert "at least 128" in capsys.readouterr().err
