"""What the converter refuses (one sentence each, before writing anything), and the converter as a job: progress
per tensor, cancel, atomic output, the child process and the ``quantdesk convert`` verb."""

from __future__ import annotations

import json
import pickle
import shutil
import struct
from pathlib import Path

import pytest
from test_convert_support import assemble, load_llama, never, no_progress

from desktop.convert import convert, inspect_checkpoint
from desktop.errors import Cancelled, UserError
from desktop.fileio import partial_path


@pytest.fixture()
def tiny(tmp_path: Path) -> Path:
    """A fresh copy of the small SentencePiece checkpoint (F32 weights, one file)."""
    return assemble("tinyllama", tmp_path / "src")


@pytest.fixture()
def sharded(tmp_path: Path) -> Path:
    return assemble("llama3", tmp_path / "src")


def refuse(src: Path, tmp_path: Path, kind: str, *words: str, outtype: str = "f16") -> UserError:
    out = tmp_path / "out" / "model.gguf"
    with pytest.raises(UserError) as info:
        convert(src, out, outtype, progress=no_progress, cancelled=never)
    err = info.value
    assert err.kind == kind
    assert err.message.endswith(".") and err.message.count(". ") == 0, "one sentence"
    assert err.next_step
    for word in words:
        assert word in err.message
    assert not out.exists() and not partial_path(out).exists()
    return err


def edit_config(src: Path, **changes: object) -> None:
    config = json.loads((src / "config.json").read_text())
    config.update(changes)
    (src / "config.json").write_text(json.dumps(config))


def test_unsupported_architecture_names_the_supported_ones(tiny: Path, tmp_path: Path) -> None:
    edit_config(tiny, architectures=["MambaForCausalLM"], model_type="mamba")
    refuse(tiny, tmp_path, "unsupported_architecture", "MambaForCausalLM", "Llama", "Qwen3", "Gemma 3", "Phi-3")


def test_pickle_only_checkpoint_is_refused_without_unpickling(tiny: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"

    class Boom:
        def __reduce__(self):  # runs on unpickling: would create the marker file
            return (Path.touch, (marker,))

    for f in tiny.glob("*.safetensors"):
        f.unlink()
    (tiny / "pytorch_model.bin").write_bytes(pickle.dumps(Boom()))
    refuse(tiny, tmp_path, "pickle_only", "pytorch_model.bin", "pickle")
    assert not marker.exists()


@pytest.mark.parametrize(("config", "method"), [
    ({"quant_method": "gptq", "bits": 4}, "GPTQ"),
    ({"quant_method": "awq", "bits": 4}, "AWQ"),
    ({"quant_method": "fp8", "activation_scheme": "dynamic"}, "FP8"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes"),
])
def test_already_quantized_checkpoint_names_its_method(tiny: Path, tmp_path: Path, config: dict,
                                                       method: str) -> None:
    edit_config(tiny, quantization_config=config)
    refuse(tiny, tmp_path, "already_quantized", method)


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], bytes]]) -> None:
    header, data, offset = {}, b"", 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def test_quantized_weights_without_a_config_entry_are_recognised(tiny: Path, tmp_path: Path) -> None:
    (tiny / "model.safetensors").unlink()
    _write_safetensors(tiny / "model.safetensors", {
        "model.embed_tokens.weight": ("F8_E4M3", [4, 8], bytes(32)),
        "model.layers.0.self_attn.q_proj.weight_scale": ("F32", [1], bytes(4)),
    })
    refuse(tiny, tmp_path, "already_quantized", "FP8")


def test_missing_tokenizer(tiny: Path, tmp_path: Path) -> None:
    for name in ("tokenizer.json", "tokenizer.model"):
        (tiny / name).unlink()
    refuse(tiny, tmp_path, "missing_tokenizer", "tokenizer")


def test_missing_config(tiny: Path, tmp_path: Path) -> None:
    (tiny / "config.json").unlink()
    refuse(tiny, tmp_path, "missing_config", "config.json")


def test_truncated_safetensors_is_detected_before_writing(tiny: Path, tmp_path: Path) -> None:
    weights = tiny / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 1000])  # an interrupted download
    refuse(tiny, tmp_path, "corrupt_checkpoint", "model.safetensors")


def test_corrupt_safetensors_header(tiny: Path, tmp_path: Path) -> None:
    weights = tiny / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"\x00garbage-not-json-at-all-0123456"
    weights.write_bytes(bytes(data))
    refuse(tiny, tmp_path, "corrupt_checkpoint", "model.safetensors")


def test_missing_shard(sharded: Path, tmp_path: Path) -> None:
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    refuse(sharded, tmp_path, "corrupt_checkpoint", shards[-1].name)


def test_too_little_disk_space(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Filling a real disk is not possible here; this imitates shutil.disk_usage reporting 10 MB free.
    import desktop.convert.writer as writer

    monkeypatch.setattr(writer, "free_bytes", lambda folder: 10_000_000)
    refuse(tiny, tmp_path, "disk_full", "disk space")


def test_unknown_pre_tokenizer_is_refused(tmp_path: Path) -> None:
    src = assemble("qwen3", tmp_path / "src")
    tok = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\p{N}{1,5}|\s+"
    (src / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    refuse(src, tmp_path, "unsupported_tokenizer", "pre-processes")


def test_unsupported_output_type(tiny: Path, tmp_path: Path) -> None:
    refuse(tiny, tmp_path, "bad_outtype", "q4_k", outtype="q4_k")


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_predicted_size_is_close_to_the_written_size(tiny: Path, tmp_path: Path, outtype: str) -> None:
    from desktop.convert import predict_size

    predicted = predict_size(tiny, outtype)
    result = convert(tiny, tmp_path / "t.gguf", outtype, progress=no_progress, cancelled=never)
    assert predicted < result["size"] < predicted + 200_000  # the vocabulary and header: 2000 tokens here


def test_inspect_checkpoint_accepts_a_good_folder(sharded: Path) -> None:
    ckpt = inspect_checkpoint(sharded)
    assert ckpt.architecture == "LlamaForCausalLM"
    assert "model.embed_tokens.weight" in ckpt.tensors
    assert len({ref.file for ref in ckpt.tensors.values()}) > 1


# ------------------------------------------------------------------------------------------------ the job
def test_progress_per_tensor_and_result(tiny: Path, tmp_path: Path) -> None:
    seen: list[tuple[float, float, str]] = []
    out = tmp_path / "tiny.gguf"
    result = convert(tiny, out, "f16", progress=lambda d, t, m: seen.append((d, t, m)), cancelled=never)
    per_tensor = [s for s in seen if "→" in s[2]]
    assert len(per_tensor) == result["tensors"] == 3 * 9 + 3
    assert [s[0] for s in per_tensor] == list(range(result["tensors"]))
    assert any(m == "blk.2.ffn_down.weight → f16" for _, _, m in per_tensor)
    assert any(m == "blk.0.attn_norm.weight → f32" for _, _, m in per_tensor)
    assert seen[-1][0] == seen[-1][1] == result["tensors"]
    assert result["path"] == str(out) and result["size"] == out.stat().st_size
    assert not partial_path(out).exists()


def test_cancel_removes_the_partial_file(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny.gguf"
    calls = []

    def progress(done: float, total: float, message: str) -> None:
        calls.append(message)
        if "→" in message:
            assert partial_path(out).exists() and not out.exists()

    with pytest.raises(Cancelled):
        convert(tiny, out, "f16", progress=progress, cancelled=lambda: len(calls) > 5)
    assert not out.exists() and not partial_path(out).exists()


def test_existing_output_survives_a_failed_conversion(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny.gguf"
    out.write_bytes(b"previous file")
    with pytest.raises(Cancelled):
        convert(tiny, out, "f16", progress=no_progress, cancelled=lambda: True)
    assert out.read_bytes() == b"previous file"


def test_child_process_job(tiny: Path, tmp_path: Path) -> None:
    from desktop.convert.job import cleanup_paths
    from desktop.process import run_in_child

    out = tmp_path / "child.gguf"
    seen: list[str] = []
    result = run_in_child("desktop.convert.job:run", {"src_dir": str(tiny), "out_path": str(out), "outtype": "f32"},
                          progress=lambda d, t, m: seen.append(m), cleanup=cleanup_paths(out))
    assert result["tensors"] == 30 and out.is_file()
    assert "blk.0.attn_q.weight → f32" in seen
    llm = load_llama(out, vocab_only=True)
    try:
        assert llm.tokenize(b"hello", add_bos=True)[0] == 1
    finally:
        llm.close()


def test_child_process_job_cancel(tiny: Path, tmp_path: Path) -> None:
    from desktop.convert.job import cleanup_paths
    from desktop.process import run_in_child

    out = tmp_path / "child.gguf"
    seen: list[str] = []
    with pytest.raises(Cancelled):
        run_in_child("desktop.convert.job:run", {"src_dir": str(tiny), "out_path": str(out), "outtype": "f16"},
                     progress=lambda d, t, m: seen.append(m), cancelled=lambda: any("→" in m for m in seen),
                     cleanup=cleanup_paths(out))
    assert not out.exists() and not partial_path(out).exists()


def test_child_process_job_refusal_crosses_as_a_job_error(tiny: Path, tmp_path: Path) -> None:
    from desktop.jobs import JobFailed
    from desktop.process import run_in_child

    (tiny / "config.json").unlink()
    with pytest.raises(JobFailed) as info:
        run_in_child("desktop.convert.job:run", {"src_dir": str(tiny), "out_path": str(tmp_path / "x.gguf")})
    assert info.value.error.kind == "missing_config"


# ------------------------------------------------------------------------------------------------ the verb
def test_cli_convert(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from desktop.cli import main

    out = tmp_path / "cli" / "tiny.gguf"
    assert main(["convert", str(tiny), "-o", str(out), "--outtype", "q8_0"]) == 0
    assert out.is_file()
    printed = capsys.readouterr().out
    assert str(out) in printed and "llama" in printed


def test_cli_convert_refusal(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from desktop.cli import main

    shutil.rmtree(tiny)
    tiny.mkdir()
    (tiny / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    assert main(["convert", str(tiny), "-o", str(tmp_path / "x.gguf")]) == 1
    err = capsys.readouterr().err
    assert "GPT2LMHeadModel" in err and "Llama" in err


# ------------------------------------------------------------------------------------- pre-tokenizer names
@pytest.mark.parametrize(("pre_tokenizer", "name"), [
    ({"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}, "gpt-2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                            {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}]},
     "smollm"),  # SmolLM / SmolLM2
])
def test_pre_tokenizer_names_from_configuration(pre_tokenizer: dict, name: str) -> None:
    from desktop.convert.pretokenizer import identify_pretokenizer

    assert identify_pretokenizer({"pre_tokenizer": pre_tokenizer, "normalizer": None}) == name


def test_real_tokenizers_map_to_llama_cpp_names(tmp_path: Path) -> None:
    from desktop.convert.pretokenizer import identify_pretokenizer

    for fixture, name in (("llama3", "llama-bpe"), ("qwen3", "qwen2")):
        folder = assemble(fixture, tmp_path)
        assert identify_pretokenizer(json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))) == name


def test_index_shard_names_outside_the_folder_are_refused(sharded: Path, tmp_path: Path) -> None:
    """13-Low: an index naming ``../x.safetensors`` made the converter read a file outside the model's folder."""
    outside = tmp_path / "outside.safetensors"
    shutil.copy(next(sharded.glob("model-*.safetensors")), outside)
    index = next(sharded.glob("*.safetensors.index.json"))
    data = json.loads(index.read_text())
    name = next(iter(data["weight_map"]))
    data["weight_map"][name] = "../outside.safetensors"
    index.write_text(json.dumps(data))
    refuse(sharded, tmp_path, "corrupt_checkpoint", "outside.safetensors", "not a safetensors file in")


@pytest.mark.parametrize(("shape", "words"), [([-1, 4], "malformed"), ([2**40, 2**40], "too large")])
def test_shapes_negative_or_past_int64_are_refused(tiny: Path, tmp_path: Path, shape: list[int],
                                                   words: str) -> None:
    """13-Low: a negative shape or one whose product overflows int64 passed the size check (numpy's int64
    product wrapped around to the stored size)."""
    weights = tiny / "model.safetensors"
    data = weights.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = shape
    raw = json.dumps(header).encode()
    weights.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    refuse(tiny, tmp_path, "corrupt_checkpoint", words)


@pytest.mark.parametrize("value", ["Infinity", "NaN", "-Infinity"])
def test_infinity_in_config_is_one_sentence(tiny: Path, tmp_path: Path, value: str) -> None:
    """13-Low: ``Infinity`` in config.json is valid JSON to Python and ended in OverflowError."""
    config = tiny / "config.json"
    text = config.read_text()
    config.write_text(text.replace('"num_hidden_layers": ', f'"num_hidden_layers": {value}, "was": '))
    refuse(tiny, tmp_path, "corrupt_checkpoint", value)


def test_a_config_with_20000_layers_is_refused_at_once(tiny: Path, tmp_path: Path) -> None:
    """13.1: numbers from a config are bounded before anything loops over them."""
    config = tiny / "config.json"
    data = json.loads(config.read_text())
    data["num_hidden_layers"] = 20_000
    config.write_text(json.dumps(data))
    refuse(tiny, tmp_path, "corrupt_checkpoint", "num_hidden_layers is 20000")


def test_model_card_yaml_aliases_are_refused(tmp_path: Path) -> None:
    """13-Low: model-card YAML aliases expanded without bound (nine of nine of ... 'lol': billions of items where
    write_general walks the tags); a card with aliases is now ignored, a plain one still read."""
    from desktop.convert.metadata import model_card

    lines = ["---", 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    (tmp_path / "README.md").write_text("\n".join([*lines, "tags: *i", "license: mit", "---", "# A model"]))
    ignored = model_card(tmp_path) == {}  # not asserted on the card itself: printing it would expand it
    assert ignored
    (tmp_path / "README.md").write_text("---\nlicense: mit\ntags: [chat, small]\n---\n# A model\n" + "x" * 3_000_000)
    assert model_card(tmp_path) == {"license": "mit", "tags": ["chat", "small"]}
