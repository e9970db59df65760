"""The real model: Gemma 3 270M (the bundled demo, Q4_K_M) turned back into F16 with allow-requantize, then
quantized to a low-bit type with and without an importance matrix computed from the bundled calibration text.
The imatrix quant must be closer to F16 (lower KL divergence) on a different text; sizes are as predicted; and
cancelling a real quantization mid-run leaves no file and no process."""

from __future__ import annotations

from pathlib import Path

import pytest

from desktop import process
from desktop.errors import Cancelled
from desktop.fileio import partial_path
from desktop.quant.imatrix import compute_imatrix, load_imatrix
from desktop.quant.quantize import QuantizeOptions, plan_quantization, quantize_many
from desktop.resources import read_text
from desktop.quant.sizing import predict_size, tensors_from_gguf
from tests.quant_helpers import demo_f16_path, demo_q4_path, kl_divergences

LOW_BIT = "Q2_K"


@pytest.fixture(scope="session")
def demo_f16() -> Path:
    return demo_f16_path()


def test_imatrix_from_bundled_text_lowers_kl_divergence(demo_f16: Path, tmp_path: Path) -> None:
    imatrix = compute_imatrix(demo_f16, None, tmp_path / "gemma.imatrix.gguf", progress=lambda *a: None,
                              cancelled=lambda: False, n_ctx=256, max_chunks=6, threads=1)
    data = load_imatrix(imatrix)
    assert data.datasets == ["calibration.txt"] and data.chunk_count == 6
    assert len(data) == 18 * 7  # q, k, v, output, gate, up, down in each of the 18 layers

    # The token embedding (tied output) is kept at Q8_0 in both quants: it is the same in both, and Q8_0 is fast
    # to make; the comparison is about the layers the imatrix guides.
    plain_opts = QuantizeOptions(embedding_type="Q8_0")
    imat_opts = QuantizeOptions(embedding_type="Q8_0", imatrix=str(imatrix))
    [plain] = quantize_many(demo_f16, [LOW_BIT], tmp_path / "plain", plain_opts, progress=lambda *a: None,
                            cancelled=lambda: False)
    [guided] = quantize_many(demo_f16, [LOW_BIT], tmp_path / "imatrix", imat_opts, progress=lambda *a: None,
                             cancelled=lambda: False)
    for result in (plain, guided):
        assert abs(result.bytes - result.predicted_bytes) / result.bytes < 0.02

    kld_plain, kld_guided = kl_divergences(demo_f16, [plain.path, guided.path], read_text("texts/eval.txt"),
                                           n_ctx=256, max_chunks=3)
    print(f"KL divergence vs F16 on eval.txt: {LOW_BIT} {kld_plain:.4f}, {LOW_BIT} + imatrix {kld_guided:.4f}")
    assert 0 < kld_guided < kld_plain, (kld_guided, kld_plain)


def test_predicted_sizes_on_the_demo_model(demo_f16: Path) -> None:
    """The F16 we made is predicted to within 2% from the Q4_K_M it came from, and every type's prediction from the
    F16 agrees with llama.cpp's own dry-run size (the sizing tests prove the per-tensor types equal llama.cpp's)."""
    source = demo_q4_path()
    predicted_f16 = predict_size(tensors_from_gguf(source), "F16")
    assert abs(predicted_f16 - demo_f16.stat().st_size) / demo_f16.stat().st_size < 0.02
    tasks = plan_quantization(demo_f16, ["Q8_0", "Q6_K", "Q4_K_M", "IQ4_XS"], check_disk=False)
    sizes = [t.predicted_bytes for t in tasks]
    assert sizes == sorted(sizes, reverse=True)


def test_cancel_mid_run_leaves_no_file(demo_f16: Path, tmp_path: Path) -> None:
    seen: list[str] = []
    with pytest.raises(Cancelled):
        quantize_many(demo_f16, ["Q4_K_M"], tmp_path, progress=lambda d, t, m, **f: seen.append(m),
                      cancelled=lambda: len(seen) >= 4)
    assert any("[3/" in m for m in seen) and not any("done" in m for m in seen)
    out = tmp_path / "gemma-3-270m-Q4_K_M.gguf"
    assert not out.exists() and not partial_path(out).exists()
    assert list(tmp_path.iterdir()) == []
    assert process.live_children() == []
