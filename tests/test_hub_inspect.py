"""Inspecting repos on the mock Hub: classification, sizes, fit, errors, search, offline, and the CLI."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from mockhub import (  # noqa: F401 - fixtures
    MockHub,
    checkpoint_files,
    gguf_files,
    llama_config,
    memory_keyring,
    mock_hub,
    safetensors_bytes,
)

from desktop.errors import UserError
from desktop.memory import GpuBudget, HostBudget, Machine
from desktop.hub.inspect import inspect_repo
from desktop.hub.repo import RepoReport, fit_rows
from desktop.hub.search import cached_repos, search_models

pytestmark = pytest.mark.usefixtures("memory_keyring")

GB = 1024**3


def inspect(repo: str, **kwargs: object) -> RepoReport:
    messages: list[str] = []
    report = inspect_repo(progress=lambda d, t, m: messages.append(m), cancelled=lambda: False, repo=repo,
                          **kwargs)  # type: ignore[arg-type]
    assert messages and all(isinstance(m, str) for m in messages)
    return report


def expect_error(kind: str, repo: str, **kwargs: object) -> UserError:
    with pytest.raises(UserError) as info:
        inspect(repo, **kwargs)
    error = info.value
    assert error.kind == kind, error
    assert error.message.endswith(".") and error.next_step, error
    assert "\n" not in error.message + error.next_step
    return error


def test_checkpoint_architecture_parameters_and_predicted_sizes(mock_hub: MockHub) -> None:  # noqa: F811
    n_layers, hidden, inter, vocab = 4, 256, 512, 1024
    mock_hub.add_repo("org/tiny-llama", checkpoint_files(n_layers, hidden, 8, 2, inter, vocab))
    report = inspect("org/tiny-llama")
    assert report.kind == "checkpoint" and report.reason == ""
    assert (report.architecture, report.gguf_arch, report.dtype) == ("LlamaForCausalLM", "llama", "BF16")
    per_layer = 2 * hidden + hidden * hidden * 2 + 2 * (64 * hidden) + 3 * hidden * inter
    assert report.parameter_count == n_layers * per_layer + 2 * vocab * hidden + hidden
    assert report.attention is not None and report.attention.n_layer == n_layers
    # What `pull` fetches: conversion's files, not README, .gitattributes or the pickle in original/.
    assert report.download_files == sorted([
        "config.json", "generation_config.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "model.safetensors.index.json", "special_tokens_map.json",
        "tokenizer.json", "tokenizer_config.json",
    ])
    sizes = {p.name: p.size_bytes for p in report.predictions}
    assert sizes["Q8_0"] > sizes["Q4_K_M"] > sizes["Q2_K"]
    assert sizes["F16"] > sizes["Q8_0"]
    params = report.parameter_count
    for name, bpw in (("Q8_0", 8.5), ("Q4_K_M", 4.5), ("Q2_K", 2.6)):
        # Within a sane band of params * bpw / 8: llama.cpp keeps norms in F32 and some tensors higher.
        assert params * bpw / 8 * 0.9 < sizes[name] < params * 16 / 8 * 1.1, name
    # Only headers were read: the mock saw Range requests for the weights, never a full GET.
    weight_gets = [r for r in mock_hub.requests if r.filename.endswith(".safetensors") and r.method == "GET"]
    assert weight_gets and all(r.range and r.range.startswith("bytes=") for r in weight_gets)
    # The small JSON files it read are in the cache, but that does not make the model "downloaded".
    assert cached_repos() == [] and [r.repo_id for r in cached_repos(include_partial=True)] == ["org/tiny-llama"]


def test_fit_rows_for_a_checkpoint_follow_the_machine(mock_hub: MockHub) -> None:  # noqa: F811
    mock_hub.add_repo("org/tiny-llama", checkpoint_files())
    report = inspect("org/tiny-llama")
    big_gpu = fit_rows(report, 2048, Machine((GpuBudget("GPU", 24 * GB),), HostBudget(64 * GB)))
    assert {r.fit.where for r in big_gpu} == {"GPU"}
    assert all(r.predicted and r.kv_bytes > 0 for r in big_gpu)
    no_memory = fit_rows(report, 2048, Machine((), HostBudget(0)))
    assert {r.fit.where for r in no_memory} == {"neither"}
    longer = fit_rows(report, 8192, Machine((), HostBudget(64 * GB)))
    assert longer[0].kv_bytes == 4 * big_gpu[0].kv_bytes


def test_gguf_repo_models_quants_and_hparams(mock_hub: MockHub, tmp_path: Path) -> None:  # noqa: F811
    files = {**gguf_files(tmp_path, "tiny-Q4_K_M", "Q4_K_M", shards=2),
             **gguf_files(tmp_path, "tiny-Q8_0", "Q8_0", pad_bytes=64 * 1024),
             **{"mmproj-tiny-F16.gguf": b"GGUF" + bytes(2000), "README.md": "# tiny"}}
    unnamed = gguf_files(tmp_path, "tiny", "Q5_K_M")  # no quant type in its name: read from the header
    files["weights/tiny.gguf"] = unnamed["tiny.gguf"]
    mock_hub.add_repo("org/tiny-GGUF", files, tags=["gguf"])
    report = inspect("https://huggingface.co/org/tiny-GGUF")
    assert report.kind == "gguf"
    by_quant = {m.quant: m for m in report.gguf_models}
    assert set(by_quant) == {"Q4_K_M", "Q8_0", "Q5_K_M"}
    sharded = by_quant["Q4_K_M"]
    assert sharded.files == ["tiny-Q4_K_M-00001-of-00002.gguf", "tiny-Q4_K_M-00002-of-00002.gguf"]
    assert sharded.size_bytes == sum(p.stat().st_size for n, p in files.items() if "Q4_K_M" in n)
    assert report.extras == ["mmproj-tiny-F16.gguf"]
    assert report.architecture == "llama"
    assert report.attention is not None
    assert (report.attention.n_layer, report.attention.n_embd_k_gqa[0], report.attention.n_vocab) == (4, 2 * 32, 512)
    assert report.parameter_count == 4 * 256 * 256 + 512 * 256 + 256
    rows = fit_rows(report, 4096, Machine((), HostBudget(64 * GB)))
    assert {r.quant for r in rows} == {"Q4_K_M", "Q8_0", "Q5_K_M"}
    assert all(not r.predicted and r.fit.where == "RAM" for r in rows)
    assert next(r for r in rows if r.quant == "Q4_K_M").files == tuple(sharded.files)


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ({"pytorch_model.bin": b"\x80\x02" * 600, "config.json": "{}"}, "pickle"),
        ({"model.safetensors": safetensors_bytes({"w": ("F16", (4, 4))})}, "config.json"),
        ({"config.json": json.dumps(llama_config(2, 64, 4, 4, 128, 256, quantization_config={"quant_method": "gptq"})),
          "model.safetensors": safetensors_bytes({"w": ("I32", (4, 4))})}, "GPTQ"),
        ({"config.json": json.dumps(llama_config(2, 64, 4, 4, 128, 256, quantization_config={"quant_method": "awq"})),
          "model.safetensors": safetensors_bytes({"w": ("I32", (4, 4))})}, "AWQ"),
        ({"config.json": json.dumps(llama_config(2, 64, 4, 4, 128, 256)),
          "model.safetensors": safetensors_bytes({"model.embed_tokens.weight": ("F8_E4M3", (256, 64))})}, "FP8"),
        ({"config.json": json.dumps({"architectures": ["MambaForCausalLM"], "num_hidden_layers": 2}),
          "model.safetensors": safetensors_bytes({"w": ("BF16", (4, 4))})}, "MambaForCausalLM"),
        ({"README.md": "nothing here"}, "no model weights"),
    ],
)
def test_unsupported_repos_say_why(mock_hub: MockHub, files: dict, words: str) -> None:  # noqa: F811
    mock_hub.add_repo("org/odd", files)
    report = inspect("org/odd")
    assert report.kind == "unsupported"
    assert words in report.reason and report.reason.endswith(".") and report.next_step
    assert fit_rows(report, 4096, Machine((), HostBudget(64 * GB))) == []


def test_unknown_repo_revision_and_server_errors(mock_hub: MockHub) -> None:  # noqa: F811
    mock_hub.add_repo("org/tiny-llama", checkpoint_files())
    assert "org/missing" in expect_error("not_found", "org/missing").message
    error = expect_error("revision_not_found", "org/tiny-llama", revision="v9")
    assert "v9" in error.message
    mock_hub.fail(503, "org/tiny-llama", route="info")
    assert "503" in expect_error("server_error", "org/tiny-llama").message
    mock_hub.add_repo("org/secret", checkpoint_files(), private=True)
    expect_error("auth_required", "org/secret")


def test_gated_repo_wants_a_token_then_works(mock_hub: MockHub) -> None:  # noqa: F811
    from desktop.hub import tokens

    mock_hub.add_repo("org/gated", checkpoint_files(), gated=True, granted={"hf_granted_token_1"})
    mock_hub.add_token("hf_granted_token_1")
    mock_hub.add_token("hf_other_token_22")
    assert "gated" in expect_error("auth_required", "org/gated").message
    expect_error("access_denied", "org/gated", token="hf_other_token_22")
    expect_error("bad_token", "org/gated", token="hf_unknown_token_3")
    tokens.save_token("hf_granted_token_1")
    assert inspect("org/gated").kind == "checkpoint"


def test_timeout_is_a_sentence(mock_hub: MockHub) -> None:  # noqa: F811
    mock_hub.add_repo("org/tiny-llama", checkpoint_files())
    mock_hub.hang("info")
    try:
        error = expect_error("timeout", "org/tiny-llama", timeout=0.3)
    finally:
        mock_hub.release()
    assert mock_hub.hung.is_set()
    assert "did not answer" in error.message


def test_offline_inspect_uses_the_cache(mock_hub: MockHub, tmp_path: Path) -> None:  # noqa: F811
    from desktop.hub.download import download

    mock_hub.add_repo("org/tiny-GGUF", gguf_files(tmp_path, "tiny-Q4_K_M", "Q4_K_M", shards=2), tags=["gguf"])
    download(progress=lambda *a: None, cancelled=lambda: False, repo="org/tiny-GGUF")
    mock_hub.stop()  # the network is gone: connections are refused
    report = inspect("org/tiny-GGUF")
    assert report.kind == "gguf" and report.from_cache
    assert report.gguf_models[0].quant == "Q4_K_M" and report.attention is not None
    with pytest.raises(UserError) as info:
        inspect("org/never-downloaded")
    assert info.value.kind == "offline"
    result = search_models("tiny")
    assert result.offline and result.hits == [] and "Offline" in result.message


def test_search_with_filters(mock_hub: MockHub) -> None:  # noqa: F811
    mock_hub.add_repo("org/Tiny-GGUF", {"a.gguf": b"x"}, tags=["gguf"], downloads=50)
    mock_hub.add_repo("org/tiny", {"config.json": "{}"}, tags=["transformers"], downloads=500)
    mock_hub.add_repo("org/tiny-embed", {"config.json": "{}"}, pipeline_tag="feature-extraction", downloads=5)
    mock_hub.add_repo("org/hidden-tiny", {"config.json": "{}"}, private=True)
    everything = search_models("TINY")
    assert [h.repo_id for h in everything.hits] == ["org/tiny", "org/Tiny-GGUF", "org/tiny-embed"]
    assert not everything.offline
    assert [h.repo_id for h in search_models("tiny", gguf=True).hits] == ["org/Tiny-GGUF"]
    assert search_models("tiny", gguf=True).hits[0].is_gguf
    assert "org/tiny-embed" not in [h.repo_id for h in search_models("tiny", text_generation=True).hits]


def test_offline_setting_needs_no_server(mock_hub: MockHub, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert search_models("tiny").offline
    expect_error("offline", "org/tiny-llama")
    assert mock_hub.requests == []


def test_cli_inspect_json(mock_hub: MockHub, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    from desktop.cli import main

    mock_hub.add_repo("org/tiny-llama", checkpoint_files())
    assert main(["inspect", "org/tiny-llama", "--context", "2048", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["report"]["kind"] == "checkpoint" and data["context"] == 2048
    assert data["memory"]["ram_available"] > 0
    rows = {row["quant"]: row for row in data["fit"]}
    assert rows["Q4_K_M"]["verdict"] in ("GPU", "RAM", "neither")
    assert rows["Q8_0"]["size_bytes"] > rows["Q4_K_M"]["size_bytes"]
    assert main(["inspect", "org/tiny-llama"]) == 0
    text = capsys.readouterr().out
    assert "Q4_K_M" in text and "LlamaForCausalLM" in text
    assert main(["inspect", "a/b/c"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("quantdesk: 'a/b/c' is not a Hugging Face model id") and "Traceback" not in err


def test_inspect_agrees_with_the_converter_on_architectures() -> None:
    from desktop.convert.checkpoint import SUPPORTED
    from desktop.hub.inspect import convertible_architectures

    mapping, sentence = convertible_architectures()
    assert set(mapping) == set(SUPPORTED)
    assert mapping["MistralForCausalLM"] == "llama" and mapping["Gemma3ForConditionalGeneration"] == "gemma3"
    assert "Qwen3" in sentence


def test_a_server_that_ignores_range_is_read_only_as_far_as_asked(mock_hub: MockHub, tmp_path: Path) -> None:  # noqa: F811
    """13.9: header reads buffered whole responses when a proxy ignored Range (a 200 MB body added 412 MB)."""
    import tracemalloc

    small = gguf_files(tmp_path, "big-Q8_0", "Q8_0")["big-Q8_0.gguf"]
    big = tmp_path / "big-Q8_0.gguf"
    with open(big, "wb") as f:  # the real header, then a 200 MB hole: a big model's file on the server
        f.write(small.read_bytes())
        f.truncate(200 * 1024 * 1024)
    mock_hub.add_repo("org/big-GGUF", {"big-Q8_0.gguf": big})
    mock_hub.ignore_range("org/big-GGUF", "big-Q8_0.gguf", times=10)
    tracemalloc.start()
    try:
        report = inspect("org/big-GGUF")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert report.kind == "gguf" and report.parameter_count == 4 * 256 * 256 + 512 * 256 + 256
    assert any(r.filename == "big-Q8_0.gguf" and r.range for r in mock_hub.requests)
    assert peak < 32 * 1024 * 1024, peak


def safetensors_with_shape(shape: list[int]) -> bytes:
    raw = json.dumps({"w": {"dtype": "BF16", "shape": shape, "data_offsets": [0, 32]}}).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(32)


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ({"config.json": json.dumps({**llama_config(2, 64, 4, 4, 128, 256), "pad": "x" * (5 * 1024 * 1024)}),
          "model.safetensors": safetensors_bytes({"w": ("BF16", (4, 4))})}, "config.json"),
        ({"config.json": json.dumps(llama_config(2, 64, 4, 4, 128, 256)),
          "model.safetensors.index.json": json.dumps({"weight_map": {"w": "../../evil.safetensors"}}),
          "model.safetensors": safetensors_bytes({"w": ("BF16", (4, 4))})}, "evil.safetensors"),
        ({"config.json": json.dumps(llama_config(2, 64, 4, 4, 128, 256)),
          "model.safetensors": safetensors_with_shape([-4, -4])}, "malformed"),
        ({"config.json": json.dumps(llama_config(2, 64, 4, 4, 128, 256)),
          "model.safetensors": safetensors_with_shape([2**32, 2**32, 2**32])}, "too large"),
        ({"config.json": json.dumps(llama_config(2, 64, 4, 4, 128, 256)).replace("2048", "Infinity"),
          "model.safetensors": safetensors_bytes({"w": ("BF16", (4, 4))})}, "Infinity"),
    ],
    ids=["config-over-cap", "index-outside-the-folder", "negative-shape", "shape-over-int64", "infinity"],
)
def test_files_no_model_has_are_one_sentence(mock_hub: MockHub, files: dict, words: str) -> None:  # noqa: F811
    """13.9 (JSON capped) and 13-Low: shard names outside the folder, negative or int64-overflowing shapes,
    ``Infinity`` in config.json: each one sentence, never a traceback or a read outside the repo."""
    mock_hub.add_repo("org/odd", files)
    error = expect_error("bad_repo", "org/odd")
    assert words in error.message, error.message


def test_numbers_from_the_network_are_bounded(mock_hub: MockHub, tmp_path: Path) -> None:  # noqa: F811
    """13.1: a 150-byte config.json with 20,000 layers took 16 s and 951 MB (gguf's tensor map); a GGUF repo's
    tensor dims were multiplied as unbounded integers (9 s, then OverflowError). Each is one sentence now."""
    import time

    from gguf_bytes import gguf, kv_str, tensor

    config = json.dumps({"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 20_000, "hidden_size": 64,
                         "num_attention_heads": 4, "model_type": "gemma3", "sliding_window": 512})
    mock_hub.add_repo("org/deep", {"config.json": config, "model.safetensors": safetensors_bytes({"w": ("BF16", (4, 4))})})
    started = time.monotonic()
    assert "num_hidden_layers is 20000" in expect_error("bad_repo", "org/deep").message
    header = gguf([kv_str("general.architecture", "llama")], [tensor(f"t{i}", (1 << 62,) * 4) for i in range(50)])
    mock_hub.add_repo("org/huge-GGUF", {"huge-Q8_0.gguf": header + bytes(4096)})
    assert "too large" in expect_error("bad_repo", "org/huge-GGUF").message
    assert time.monotonic() - started < 10


def isolated(repo: str, **kwargs: object) -> RepoReport:
    from desktop.hub.sandbox import inspect_repo_isolated

    return inspect_repo_isolated(progress=lambda d, t, m: None, cancelled=lambda: False, repo=repo,
                                 **kwargs)  # type: ignore[arg-type]


def test_isolated_inspection_matches_and_keeps_its_limits(mock_hub: MockHub) -> None:  # noqa: F811
    """13.1: inspect runs in a child process with a wall-clock limit (kept by the parent) and a memory limit
    (RLIMIT_AS in the child); past either, one sentence. The token is resolved in the parent's keyring."""
    from desktop.hub import tokens

    mock_hub.add_repo("org/gated", checkpoint_files(), gated=True, granted={"hf_granted_token_1"})
    mock_hub.add_token("hf_granted_token_1")
    tokens.save_token("hf_granted_token_1")  # in the test's in-memory keyring, which the child cannot see
    child = isolated("org/gated")
    assert child.to_dict() == inspect("org/gated").to_dict()

    mock_hub.hang("info")
    try:
        with pytest.raises(UserError) as info:
            isolated("org/gated", time_limit_s=1.0)
    finally:
        mock_hub.release()
    assert info.value.kind == "timeout" and "longer than 1 s" in info.value.message

    with pytest.raises(UserError) as info:
        isolated("org/gated", memory_limit=64 * 1024 * 1024)  # less than Python itself needs: it cannot finish
    assert info.value.kind in ("out_of_memory", "crash") and info.value.message.endswith("."), info.value


def test_the_converter_decides_what_inspect_predicts_and_refuses(mock_hub: MockHub, tmp_path: Path) -> None:  # noqa: F811
    """10.4: the converter is the one authority on checkpoint -> GGUF. Hub inspect used its own subset of the
    tensor map (a tensor the converter refuses was silently dropped) and sized norms in their stored dtype while
    the converter writes them F32; now both pages predict from the converter's output tensors."""
    from desktop.quant.pipeline import CHECKPOINT, Source, predict_sizes, read_source
    from desktop.quant.quantize import QuantizeOptions

    files = checkpoint_files()
    folder = tmp_path / "tiny-llama"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data.encode() if isinstance(data, str) else data)
    mock_hub.add_repo("org/tiny-llama", files)
    hub = {p.name: p.size_bytes for p in inspect("org/tiny-llama").predictions}
    local = predict_sizes(read_source(Source(folder, CHECKPOINT)), QuantizeOptions(), has_imatrix=False)
    assert hub and all(hub[name] == local[name] for name in hub), (hub, local)

    odd = dict(files)
    config = json.loads(files["config.json"])
    index = json.loads(files["model.safetensors.index.json"])
    first_shard = sorted(n for n in files if n.endswith(".safetensors"))[0]
    odd[first_shard] = safetensors_bytes({**{n: ("BF16", (4,)) for n, s in index["weight_map"].items()
                                             if s == first_shard},
                                          "model.layers.0.mlp.mystery_proj.weight": ("BF16", (4, 4))})
    index["weight_map"]["model.layers.0.mlp.mystery_proj.weight"] = first_shard
    odd["model.safetensors.index.json"] = json.dumps(index)
    odd["config.json"] = json.dumps(config)
    mock_hub.add_repo("org/odd-llama", odd)
    report = inspect("org/odd-llama")
    assert report.kind == "unsupported" and "mystery_proj" in report.reason and report.next_step
