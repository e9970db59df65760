"""Quantization through the app's path (child process, per-tensor progress) on a tiny random LLaMA model: the
outputs load and generate in llama.cpp, have the predicted types and sizes, and are registered in the library;
what must be refused is refused before work starts."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from desktop import cli
from desktop.quant import types as quant_types
from desktop.errors import UserError
from desktop.fileio import partial_path
from desktop.jobs import JobFailed, Progress
from desktop.quant.quantize import (
    QuantizeOptions,
    TensorLineParser,
    model_stem,
    output_path,
    plan_quantization,
    quantize_many,
)
from desktop.quant.sizing import predict_tensor_types, tensors_from_gguf
from tests.quant_helpers import TINY_TEXT, greedy_generate, write_tiny_llama

SPREAD = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "IQ4_XS"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("quant-src") / "tiny-F16.gguf")


@pytest.fixture(scope="module")
def tiny2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two layers only: IQ2 quantization searches a large grid per block and is slow even on tiny models."""
    return write_tiny_llama(tmp_path_factory.mktemp("quant-src2") / "tiny-F16.gguf", n_layer=2)


@pytest.fixture(scope="module")
def tiny2_imatrix(tiny2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from desktop.quant.imatrix import compute_imatrix

    folder = tmp_path_factory.mktemp("quant-imatrix")
    text = folder / "text.txt"
    text.write_text(TINY_TEXT * 6)
    return compute_imatrix(tiny2, text, folder / "tiny.imatrix.gguf", progress=lambda *a: None,
                           cancelled=lambda: False, n_ctx=64, threads=1)


def _file_types(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def _check_output(path: Path, source: Path, type_name: str, predicted: int, has_imatrix: bool) -> None:
    quant = quant_types.by_name(type_name)
    assert path.name == f"tiny-{quant.name}.gguf"
    assert not partial_path(path).exists()
    reader = gguf.GGUFReader(str(path))
    assert reader.get_field("general.file_type").contents() == quant.ftype
    # every tensor has the type we predicted before running, and the size is within 2%
    assert _file_types(path) == predict_tensor_types(tensors_from_gguf(source), type_name, has_imatrix=has_imatrix)
    assert abs(path.stat().st_size - predicted) / path.stat().st_size < 0.02
    if not has_imatrix:  # without the imatrix keys (whose text we only estimate) the header is known exactly
        assert path.stat().st_size == predicted
    tokens = greedy_generate(path, "the river was long and", n_new=6)
    assert len(tokens) == 6


def test_a_spread_of_types_load_and_generate(tiny: Path, tmp_path: Path) -> None:
    reports: list[Progress] = []
    seen: list[str] = []
    results = quantize_many(tiny, SPREAD, tmp_path, progress=lambda d, t, m, **f: reports.append(Progress.of(d, t, m, **f)),
                            cancelled=lambda: False, on_result=lambda r: seen.append(r.quant_type))
    assert [r.quant_type for r in results] == SPREAD == seen
    for r in results:
        _check_output(r.path, tiny, r.quant_type, r.predicted_bytes, has_imatrix=False)
    # per-tensor progress as data: each type is a step of six, counted in the source's tensor elements
    n_elements = sum(t.n_elements for t in tensors_from_gguf(tiny))
    assert {(p.step, p.index, p.count) for p in reports} == {(name, i, 6) for i, name in enumerate(SPREAD)}
    assert all(p.total == n_elements for p in reports)
    assert reports[-1].fraction == 1.0
    per_tensor = [p for p in reports if "] blk.3.ffn_down.weight → " in p.note]
    assert any(p.step == "Q4_K_M" and p.note.split("→ ")[1].startswith("q6_K") for p in per_tensor)
    assert not any(" left" in p.note or "/s" in p.note for p in reports)  # speed and ETA are not the domain's
    fractions = [p.fraction for p in reports]
    assert fractions == sorted(fractions)
    # registered in the library with source, type and imatrix
    from desktop.library import Library

    entries = {e.path.name: e for e in Library().models()}
    for r in results:
        entry = entries[r.path.name]
        assert entry.quant_type == r.quant_type and entry.source == str(tiny) and entry.imatrix is None


def test_iq2_xs_with_an_imatrix_loads_and_generates(tiny2: Path, tiny2_imatrix: Path, tmp_path: Path) -> None:
    options = QuantizeOptions(imatrix=str(tiny2_imatrix))
    [result] = quantize_many(tiny2, ["IQ2_XS"], tmp_path, options, progress=lambda *a: None, cancelled=lambda: False)
    _check_output(result.path, tiny2, "IQ2_XS", result.predicted_bytes, has_imatrix=True)
    assert _file_types(result.path)["blk.0.ffn_up.weight"] == "IQ2_XS"
    reader = gguf.GGUFReader(str(result.path))
    assert reader.get_field("quantize.imatrix.file").contents() == tiny2_imatrix.name
    assert reader.get_field("quantize.imatrix.entries_count").contents() == 7 * 2
    from desktop.library import Library

    assert Library().get_by_path(result.path).imatrix == str(tiny2_imatrix)  # type: ignore[union-attr]


def test_advanced_options_reach_llama_cpp(tiny: Path, tmp_path: Path) -> None:
    options = QuantizeOptions(output_type="Q8_0", embedding_type="F16", overrides=(("ffn_down", "Q8_0"),))
    [result] = quantize_many(tiny, ["Q4_K_S"], tmp_path, options, progress=lambda *a: None, cancelled=lambda: False)
    types = _file_types(result.path)
    assert types["output.weight"] == "Q8_0" and types["token_embd.weight"] == "F16"
    assert all(types[f"blk.{i}.ffn_down.weight"] == "Q8_0" for i in range(8))
    assert types["blk.0.ffn_up.weight"] == "Q4_K"
    [pure] = quantize_many(tiny, ["Q3_K_M"], tmp_path, QuantizeOptions(pure=True), progress=lambda *a: None,
                           cancelled=lambda: False)
    assert {t for n, t in _file_types(pure.path).items() if n.startswith("blk.") and "norm" not in n} == {"Q3_K"}


def test_a_type_that_needs_an_imatrix_is_refused_before_work_starts(tiny: Path, tmp_path: Path) -> None:
    progress: list[str] = []
    with pytest.raises(UserError) as err:
        quantize_many(tiny, ["Q4_K_M", "IQ2_XS"], tmp_path, progress=lambda d, t, m, **f: progress.append(m),
                      cancelled=lambda: False)
    assert err.value.kind == "needs_imatrix" and "IQ2_XS" in err.value.message
    assert progress == [] and list(tmp_path.iterdir()) == []
    for name in ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S"):
        with pytest.raises(UserError):
            plan_quantization(tiny, [name], tmp_path)


def test_llama_cpp_itself_refuses_what_we_refuse(tiny: Path, tmp_path: Path) -> None:
    """Our refusal is not stricter than llama.cpp's: skipping the check, llama.cpp fails in the child too."""
    from desktop.quant.quantize import QuantizeTask, quantize_one

    quant = quant_types.by_name("Q2_K_S")
    task = QuantizeTask(tiny, quant, tmp_path / "tiny-Q2_K_S.gguf", 1, 75)
    with pytest.raises(JobFailed) as err:
        quantize_one(task, progress=lambda *a: None, cancelled=lambda: False)
    assert err.value.error.kind == "needs_imatrix"
    assert list(tmp_path.iterdir()) == []


def test_requantizing_is_refused_unless_allowed(tiny: Path, tmp_path: Path) -> None:
    [q8] = quantize_many(tiny, ["Q8_0"], tmp_path, progress=lambda *a: None, cancelled=lambda: False)
    with pytest.raises(UserError) as err:
        plan_quantization(q8.path, ["Q4_K_M"], tmp_path / "out")
    assert err.value.kind == "requantize" and "Q8_0" in err.value.message
    [again] = quantize_many(q8.path, ["Q4_K_M"], tmp_path / "out", QuantizeOptions(allow_requantize=True),
                            progress=lambda *a: None, cancelled=lambda: False)
    assert again.path.name == "tiny-Q4_K_M.gguf"
    assert len(greedy_generate(again.path, "the ship", n_new=3)) == 3


def test_sources_that_are_not_usable_are_explained(tmp_path: Path) -> None:
    not_gguf = tmp_path / "model.safetensors"
    not_gguf.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match="not a GGUF"):
        plan_quantization(not_gguf, ["Q4_K_M"])
    with pytest.raises(UserError, match="does not exist"):
        plan_quantization(tmp_path / "missing.gguf", ["Q4_K_M"])
    # a GGUF of an architecture llama.cpp does not know: refused by llama.cpp in the child, one sentence back
    writer = gguf.GGUFWriter(str(tmp_path / "alien-F16.gguf"), "alienformer")
    import numpy as np

    writer.add_tensor("blk.0.attn_q.weight", np.ones((256, 256), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(JobFailed) as err:
        quantize_many(tmp_path / "alien-F16.gguf", ["Q8_0"], tmp_path / "out", progress=lambda *a: None,
                      cancelled=lambda: False)
    assert err.value.error.kind == "unsupported_source"
    assert err.value.error.message.count(". ") == 0 and err.value.error.message.endswith(".")
    assert not (tmp_path / "out" / "alien-Q8_0.gguf").exists()
    assert not partial_path(tmp_path / "out" / "alien-Q8_0.gguf").exists()


def test_not_enough_disk_space_is_refused_up_front(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1_000_000))
    with pytest.raises(UserError) as err:
        plan_quantization(tiny, ["Q8_0"], tmp_path)
    assert err.value.kind == "disk_full"


def test_output_names() -> None:
    assert model_stem(Path("gemma-3-270m-F16.gguf")) == "gemma-3-270m"
    assert model_stem(Path("Llama-3.2-1B-Instruct-bf16.gguf")) == "Llama-3.2-1B-Instruct"
    assert model_stem(Path("qwen3-0.6b.Q8_0.gguf")) == "qwen3-0.6b"
    assert model_stem(Path("phi3.gguf")) == "phi3"
    assert output_path(Path("/m/tiny-F32.gguf"), "q4_k_m", Path("/o")) == Path("/o/tiny-Q4_K_M.gguf")


def test_tensor_line_parser_handles_split_log_pieces() -> None:
    calls: list[tuple[float, float, str]] = []
    parser = TensorLineParser(lambda d, t, m: calls.append((d, t, m)))
    pieces = [
        "[  12/ 201] blk.3.ffn_down.weight                - [  2048,    640,     1,     1], type =    f16, ",
        "converting to q4_K .. ",
        "size =     2.50 MiB ->     0.70 MiB\n",
        "[  13/ 201] blk.3.ffn_norm.weight                - [   640,      1,     1,     1], type =    f32, ",
        "size =    0.002 MiB\n",
        "llama_model_quantize_impl: model size  =   100.00 MiB (16.00 BPW)\n",
    ]
    for piece in pieces:
        parser.feed(2, piece)
    parser.feed(4, "llama_model_quantize: failed to quantize: boom\n")
    assert calls == [
        (12, 201, "[12/201] blk.3.ffn_down.weight → q4_K"),
        (13, 201, "[13/201] blk.3.ffn_norm.weight → f32 (kept)"),
    ]
    assert parser.errors == ["llama_model_quantize: failed to quantize: boom"]
    # with the source's element count, progress counts elements (the shape in each line), which track time
    counted: list[tuple[float, float, str]] = []
    by_elements = TensorLineParser(lambda d, t, m: counted.append((d, t, m)), n_elements=2048 * 640 + 640 + 1000)
    for piece in pieces:
        by_elements.feed(2, piece)
    assert [(d, t) for d, t, _ in counted] == [(2048 * 640, 2048 * 640 + 1640), (2048 * 640 + 640, 2048 * 640 + 1640)]
    assert counted[0][2] == "[12/201] blk.3.ffn_down.weight → q4_K"


def test_cli_quantize_and_dry_run(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["quantize", str(tiny), "Q8_0", "q6_k", "-o", str(tmp_path), "--output-type", "F16"]) == 0
    out = capsys.readouterr().out
    assert "tiny-Q8_0.gguf" in out and "tiny-Q6_K.gguf" in out
    assert _file_types(tmp_path / "tiny-Q6_K.gguf")["output.weight"] == "F16"
    assert cli.main(["quantize", str(tiny), "IQ2_XS", "-o", str(tmp_path)]) == 1
    assert "importance matrix" in capsys.readouterr().err
    assert cli.main(["quantize", str(tiny), "Q5_K_M", "--dry-run", "-o", str(tmp_path / "dry")]) == 0
    assert not (tmp_path / "dry" / "tiny-Q5_K_M.gguf").exists()


def test_an_output_differing_from_the_source_only_in_case_gets_another_name(tmp_path: Path) -> None:
    """On macOS and Windows file names ignore case: writing x-Q8_0.gguf next to x-q8_0.gguf would replace it."""
    source = write_tiny_llama(tmp_path / "tiny-q8_0.gguf")
    [task] = plan_quantization(source, ["Q8_0"])
    assert task.output == tmp_path / "tiny-Q8_0-2.gguf"


def test_types_after_a_cancel_never_start(tiny2: Path, tmp_path: Path) -> None:
    """Cancel lands while one type is being written: that file stays (it was finished), and no later type starts,
    however quickly it would run (each starts a child; a quick one finished before it read the cancel)."""
    from desktop.errors import Cancelled

    out = tmp_path / "out"
    done: list[str] = []
    with pytest.raises(Cancelled):
        quantize_many(tiny2, ["Q8_0", "Q6_K", "Q4_K_M", "Q2_K"], out, QuantizeOptions(), progress=lambda *a, **k: None,
                      cancelled=lambda: bool(done), on_result=lambda r: done.append(r.quant_type), register=False)
    assert done == ["Q8_0"]
    assert sorted(p.name for p in out.iterdir()) == ["tiny-Q8_0.gguf"]
