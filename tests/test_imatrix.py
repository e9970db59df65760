"""Importance matrices computed by QuantDesk: the collected statistics are right (checked against numpy on the first
layer, whose input we can compute by hand), the file is llama.cpp's GGUF imatrix format and reads back exactly,
and cancel leaves nothing behind."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from desktop import cli
from desktop.errors import Cancelled, UserError
from desktop.fileio import partial_path
from desktop.quant.imatrix import ImatrixData, compute_imatrix, default_calibration_text, load_imatrix, save_imatrix
from desktop.jobs import JobFailed
from tests.quant_helpers import TINY_TEXT, loaded_model, tokenize, write_tiny_llama

N_CTX = 32


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("imatrix-src") / "tiny-F16.gguf", n_layer=3)


@pytest.fixture(scope="module")
def text(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("imatrix-text") / "calib.txt"
    path.write_text(TINY_TEXT * 3)
    return path


def _chunks(model: Path, text: Path) -> list[list[int]]:
    with loaded_model(model) as (_m, _ctx, vocab):
        tokens = tokenize(vocab, text.read_text())
    chunks = [tokens[i * N_CTX : (i + 1) * N_CTX] for i in range(len(tokens) // N_CTX)]
    for chunk in chunks:
        chunk[0] = 1  # BOS, as llama.cpp's imatrix tool does
    return chunks


def test_collected_statistics_match_a_hand_computation(tiny: Path, text: Path, tmp_path: Path) -> None:
    messages: list[tuple[float, float, str]] = []
    out = compute_imatrix(tiny, text, tmp_path / "tiny.imatrix.gguf", progress=lambda d, t, m: messages.append((d, t, m)),
                          cancelled=lambda: False, n_ctx=N_CTX, threads=1)
    data = load_imatrix(out)
    chunks = _chunks(tiny, text)
    assert data.chunk_count == len(chunks) >= 3 and data.chunk_size == N_CTX
    assert messages[-1][:2] == (len(chunks), len(chunks)) and messages[-1][2].startswith(f"chunk {len(chunks)}/")
    expected_names = {f"blk.{i}.{n}.weight" for i in range(3)
                      for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(data.sums) == expected_names
    for name in expected_names:
        assert data.counts[name].tolist() == [len(chunks) * N_CTX]  # all logits requested: every token counts
        assert data.sums[name].shape == (1, 512 if "ffn_down" in name else 256)
        assert np.all(data.sums[name] > 0)

    # layer 0's attention input is RMSNorm(embedding) * attn_norm: compute its column sums of squares in numpy
    reader = gguf.GGUFReader(str(tiny))
    weights = {t.name: np.array(t.data) for t in reader.tensors}
    embd = weights["token_embd.weight"].astype(np.float64)
    gain = weights["blk.0.attn_norm.weight"].astype(np.float64)
    x = embd[np.array([tok for chunk in chunks for tok in chunk])]
    normed = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + 1e-5) * gain
    expected = (normed * normed).sum(axis=0)
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"):
        np.testing.assert_allclose(data.sums[name][0], expected, rtol=2e-3)


def test_file_is_llama_cpp_gguf_imatrix_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = ImatrixData(
        sums={"blk.0.attn_q.weight": rng.random((1, 64)).astype(np.float32),
              "blk.0.ffn_up_exps.weight": rng.random((4, 32)).astype(np.float32)},
        counts={"blk.0.attn_q.weight": np.array([128.0], np.float32),
                "blk.0.ffn_up_exps.weight": np.array([10.0, 0.0, 7.0, 3.0], np.float32)},
        datasets=["calibration.txt"], chunk_count=4, chunk_size=32,
    )
    path = save_imatrix(tmp_path / "x.imatrix.gguf", data)
    assert not partial_path(path).exists()
    reader = gguf.GGUFReader(str(path))
    assert reader.get_field("general.type").contents() == "imatrix"
    assert reader.get_field("general.architecture") is None
    assert reader.get_field("imatrix.datasets").contents() == ["calibration.txt"]
    assert reader.get_field("imatrix.chunk_count").contents() == 4
    assert reader.get_field("imatrix.chunk_size").contents() == 32
    shapes = {t.name: (t.tensor_type.name, t.shape.tolist()) for t in reader.tensors}
    assert shapes["blk.0.attn_q.weight.in_sum2"] == ("F32", [64, 1])  # ggml order: {ne0, n_mat}
    assert shapes["blk.0.attn_q.weight.counts"] == ("F32", [1, 1])
    assert shapes["blk.0.ffn_up_exps.weight.in_sum2"] == ("F32", [32, 4])
    back = load_imatrix(path)
    assert back.datasets == data.datasets and (back.chunk_count, back.chunk_size) == (4, 32)
    for name in data.sums:
        np.testing.assert_array_equal(back.sums[name], data.sums[name])
        np.testing.assert_array_equal(back.counts[name], data.counts[name])
    normalized = back.normalized()
    np.testing.assert_allclose(normalized["blk.0.attn_q.weight"], data.sums["blk.0.attn_q.weight"][0] / 128.0, rtol=1e-6)
    experts = normalized["blk.0.ffn_up_exps.weight"].reshape(4, 32)
    np.testing.assert_allclose(experts[0], data.sums["blk.0.ffn_up_exps.weight"][0] / 10.0, rtol=1e-6)
    assert np.all(experts[1] == 1.0)  # an expert that saw no tokens: 1.0, as llama.cpp's loader does


def test_legacy_dat_format_is_read(tmp_path: Path) -> None:
    values = np.arange(1, 9, dtype=np.float32)
    name = b"blk.0.attn_q.weight"
    dataset = b"wiki.train.raw"
    raw = struct.pack("<i", 1) + struct.pack("<i", len(name)) + name + struct.pack("<ii", 5, 8) + values.tobytes()
    raw += struct.pack("<i", 12) + struct.pack("<i", len(dataset)) + dataset
    (tmp_path / "old.dat").write_bytes(raw)
    data = load_imatrix(tmp_path / "old.dat")
    assert data.chunk_count == 12 and data.datasets == ["wiki.train.raw"]
    np.testing.assert_allclose(data.normalized()["blk.0.attn_q.weight"], values / 5)


def test_cancel_leaves_no_file(tiny: Path, tmp_path: Path) -> None:
    long_text = tmp_path / "long.txt"
    long_text.write_text(TINY_TEXT * 200)
    out = tmp_path / "cancelled.imatrix.gguf"
    seen: list[float] = []

    with pytest.raises(Cancelled):
        compute_imatrix(tiny, long_text, out, progress=lambda d, t, m: seen.append(d), cancelled=lambda: len(seen) >= 3,
                        n_ctx=16, threads=1)
    assert 3 <= len(seen) and seen[-1] < 100
    assert not out.exists() and not partial_path(out).exists()


def test_too_short_a_text_is_explained(tiny: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("the river")
    with pytest.raises(JobFailed) as err:
        compute_imatrix(tiny, short, tmp_path / "x.gguf", progress=lambda *a: None, cancelled=lambda: False, n_ctx=64)
    assert "too short" in err.value.error.message
    with pytest.raises(UserError):
        compute_imatrix(tiny, tmp_path / "missing.txt", tmp_path / "x.gguf", progress=lambda *a: None,
                        cancelled=lambda: False)


def test_bundled_texts_exist_and_differ() -> None:
    calibration = default_calibration_text().read_text(encoding="utf-8")
    from desktop.resources import read_text

    evaluation = read_text("texts/eval.txt")
    assert len(calibration) > 20_000 and len(evaluation) > 12_000
    calibration_lines = {line for line in calibration.splitlines() if len(line) > 40}
    assert not calibration_lines.intersection(evaluation.splitlines())


def test_cli_imatrix(tiny: Path, text: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.imatrix.gguf"
    assert cli.main(["imatrix", str(tiny), "--text", str(text), "-o", str(out), "--ctx", str(N_CTX),
                     "--threads", "1"]) == 0
    assert str(out) in capsys.readouterr().out
    assert len(load_imatrix(out)) == 21
