"""Size prediction: the per-tensor types QuantDesk predicts equal llama.cpp's own choice (its dry-run mode), for
every type it offers, and the predicted file size is within 2% of the real file."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from desktop.quant import types as quant_types
from desktop.errors import UserError
from desktop.quant.sizing import TensorSpec, predict_size, predict_tensor_types, tensors_from_gguf, tensors_needing_imatrix
from tests.quant_helpers import llama_dry_run_types, write_tiny_llama


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("sizing") / "tiny-F16.gguf")


@pytest.fixture(scope="module")
def odd_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rows of 320 and 640 values (not multiples of 256) and GQA 4: exercises the fallbacks and the GQA rules."""
    return write_tiny_llama(tmp_path_factory.mktemp("sizing-odd") / "odd-F32.gguf", embd=320, ff=640, heads=4,
                            kv_heads=1, n_layer=12, dtype="F32")


def test_ggml_type_table_matches_gguf_py() -> None:
    for qtype, (block, size) in gguf.GGML_QUANT_SIZES.items():
        if qtype.name in quant_types.GGML_TYPE_SIZES:
            assert quant_types.GGML_TYPE_SIZES[qtype.name] == (block, size), qtype.name
            assert quant_types.GGML_TYPE_IDS[qtype.name] == int(qtype), qtype.name


def test_quant_type_list_matches_llama_cpp_ftypes() -> None:
    import llama_cpp

    for quant in quant_types.QUANT_TYPES:
        constant = "LLAMA_FTYPE_ALL_F32" if quant.name == "F32" else f"LLAMA_FTYPE_MOSTLY_{quant.name}"
        assert getattr(llama_cpp, constant) == quant.ftype, quant.name
        assert quant.description and "\n" not in quant.description
        assert 1.0 < quant.bpw <= 32.0
    needs = {q.name for q in quant_types.QUANT_TYPES if q.needs_imatrix}
    assert needs == {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "IQ3_XS", "Q2_K_S"}
    assert "NVFP4" not in {q.name for q in quant_types.QUANT_TYPES}
    assert not any(q.needs_imatrix for q in quant_types.offered_types(has_imatrix=False))


def test_by_name_is_case_insensitive_and_refuses_unknown_names() -> None:
    assert quant_types.by_name("q4_k_m").ftype == 15
    assert quant_types.by_name("Q4_K").name == "Q4_K_M"
    with pytest.raises(UserError) as err:
        quant_types.by_name("Q4_K_XL")
    assert "Q4_K_XL" in str(err.value) and "Q6_K" in str(err.value)


@pytest.mark.parametrize("model", ["tiny", "odd_tiny"])
def test_predicted_tensor_types_equal_llama_cpp_for_every_type(model: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(model)
    tensors = tensors_from_gguf(path)
    for quant in quant_types.QUANT_TYPES:
        if quant.name == "Q1_0" and model == "odd_tiny":
            continue  # see test_a_type_whose_blocks_cannot_fit_is_refused_like_llama_cpp
        expected = llama_dry_run_types(path, quant.name)
        assert predict_tensor_types(tensors, quant.name) == expected, quant.name


def test_a_type_whose_blocks_cannot_fit_is_refused_like_llama_cpp(odd_tiny: Path) -> None:
    """Rows of 320 values: Q1_0 packs 128 and llama.cpp has no fallback for it, so it fails; so do we."""
    with pytest.raises(AssertionError):
        llama_dry_run_types(odd_tiny, "Q1_0")
    with pytest.raises(UserError):
        predict_tensor_types(tensors_from_gguf(odd_tiny), "Q1_0")


def test_advanced_options_follow_llama_cpp(tiny: Path) -> None:
    tensors = tensors_from_gguf(tiny)
    cases = [
        ("Q4_K_M", {"output_type": "Q8_0", "embedding_type": "Q4_0"}),
        ("Q3_K_M", {"pure": True}),
        ("Q5_K_M", {"overrides": [("ffn_down", "Q8_0"), (r"blk\.[0-3]\.attn_v", "F16")]}),
        ("IQ4_XS", {"output_type": "F16"}),
    ]
    for type_name, options in cases:
        expected = llama_dry_run_types(tiny, type_name, **options)
        predicted = predict_tensor_types(tensors, type_name, **options)
        assert predicted == expected, (type_name, options)


def test_one_dimensional_and_norm_tensors_stay_as_they_are() -> None:
    tensors = [
        TensorSpec("token_embd.weight", (1000, 512)),
        TensorSpec("blk.0.attn_norm.weight", (512,), "F32"),
        TensorSpec("blk.0.attn_q.weight", (512, 512)),
        TensorSpec("blk.0.attn_q.bias", (512,), "F32"),
        TensorSpec("blk.0.ffn_down.weight", (512, 1024)),
    ]
    types = predict_tensor_types(tensors, "Q4_K_M")
    assert types["blk.0.attn_norm.weight"] == "F32" and types["blk.0.attn_q.bias"] == "F32"
    assert types["token_embd.weight"] == "Q6_K"  # tied embeddings are quantized like the output
    assert types["blk.0.attn_q.weight"] == "Q4_K"


def test_needing_an_imatrix_is_known_per_model(tiny: Path) -> None:
    tensors = tensors_from_gguf(tiny)
    assert tensors_needing_imatrix(tensors, "IQ2_XS")
    assert tensors_needing_imatrix(tensors, "IQ3_XS")  # attn_q/attn_k become IQ3_XXS
    assert not tensors_needing_imatrix(tensors, "Q4_K_M")
    assert not tensors_needing_imatrix(tensors, "IQ3_S")


def test_size_of_an_f16_copy_is_predicted_to_the_byte(tiny: Path, tmp_path: Path) -> None:
    """F16 to F16 copies every tensor: the prediction must match llama.cpp's output byte for byte, header included
    (llama.cpp adds general.quantization_version, which gguf-py did not write)."""
    from desktop.quant.quantize import quantize_many

    [result] = quantize_many(tiny, ["F16"], tmp_path, progress=lambda *a: None, cancelled=lambda: False)
    assert result.bytes == predict_size(tensors_from_gguf(tiny), "F16") == result.predicted_bytes
    assert result.bytes > tiny.stat().st_size
