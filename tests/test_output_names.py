"""Output names and collisions (issues 10.6, 13.3, 13-Low, 15): one naming function, unique names, the repo's name
in the stem, never a replaced file, never a write through a Hugging Face cache link, partial names per instance,
outputs synced before their rename, no partial left by a failed rename."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from desktop import cli, fileio
from desktop.fileio import PARTIAL_SUFFIX, free_path, partial_path, publish, sweep_stale_partials
from desktop.library import Library
from desktop.naming import model_name, output_path
from desktop.quant.quantize import plan_quantization, quantize_many
from tests.quant_helpers import write_tiny_llama


def cache_file(cache: Path, repo: str, sha: str, name: str, source: Path) -> Path:
    """Lay ``source`` out as huggingface_hub does: a blob, and a snapshot link to it."""
    import hashlib

    root = cache / f"models--{repo.replace('/', '--')}"
    blob = root / "blobs" / hashlib.sha256(source.read_bytes()).hexdigest()  # one blob per content, as the Hub's
    blob.parent.mkdir(parents=True, exist_ok=True)
    if not blob.exists():
        blob.write_bytes(source.read_bytes())
    link = root / "snapshots" / sha / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))
    return link


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("names") / "ggml-model-f16.gguf", n_layer=2)


def test_model_names() -> None:
    cache = Path("/c/hub")
    assert model_name(Path("/m/gemma-3-270m-F16.gguf")) == "gemma-3-270m"
    assert model_name(cache / "models--a--foo/snapshots/cf4b2a62/ggml-model-f16.gguf") == "foo-ggml-model"
    assert model_name(cache / "models--u--Qwen3-0.6B-GGUF/snapshots/1/Qwen3-0.6B-BF16.gguf") == "Qwen3-0.6B"
    assert model_name(cache / "models--org--tinyllama/snapshots/cf4b2a62") == "tinyllama"  # not the commit hash
    assert model_name(Path("/data/My Model (v2)")) == "My-Model-v2"
    assert output_path(Path("/m/tiny-F32.gguf"), "q4_k_m", Path("/o")) == Path("/o/tiny-Q4_K_M.gguf")


def test_two_repos_same_file_name_get_two_outputs(tiny: Path, tmp_path: Path) -> None:
    """Two repos' ggml-model-f16.gguf both became ggml-model-Q8_0.gguf: the second replaced the first and its row."""
    cache, out = tmp_path / "hub", tmp_path / "out"
    a = cache_file(cache, "a/foo", "1111", "ggml-model-f16.gguf", tiny)
    b = cache_file(cache, "b/bar", "2222", "ggml-model-f16.gguf", tiny)
    [qa] = quantize_many(a, ["Q8_0"], out, progress=lambda *x: None, cancelled=lambda: False)
    [qb] = quantize_many(b, ["Q8_0"], out, progress=lambda *x: None, cancelled=lambda: False)
    assert (qa.path.name, qb.path.name) == ("foo-ggml-model-Q8_0.gguf", "bar-ggml-model-Q8_0.gguf")
    rows = {e.path: e.source for e in Library().models()}
    assert rows[qa.path] == str(a) and rows[qb.path] == str(b)


def test_an_existing_file_is_never_replaced(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    theirs = out / "ggml-model-Q8_0.gguf"
    theirs.write_bytes(b"someone else's file")
    dangling = out / "ggml-model-Q6_K.gguf"
    dangling.symlink_to(tmp_path / "nowhere.gguf")
    results = quantize_many(tiny, ["Q8_0", "Q6_K"], out, progress=lambda *x: None, cancelled=lambda: False)
    assert [r.path.name for r in results] == ["ggml-model-Q8_0-2.gguf", "ggml-model-Q6_K-2.gguf"]
    assert theirs.read_bytes() == b"someone else's file" and dangling.is_symlink()
    # planning the same twice in one run never hands out one name twice
    tasks = plan_quantization(tiny, ["Q8_0", "q8_0", "Q4_K_M"], out)
    assert len({t.output for t in tasks}) == len(tasks)


def test_cli_default_never_writes_into_the_hugging_face_cache(tiny: Path, tmp_path: Path) -> None:
    """The CLI wrote next to the source: in the cache, a second run replaced the snapshot link with a file."""
    cache = tmp_path / "hub"
    source = cache_file(cache, "a/foo", "1111", "ggml-model-f16.gguf", tiny)
    q8 = cache_file(cache, "a/foo", "1111", "ggml-model-q8_0.gguf", tiny)  # the repo's own Q8_0, a link
    assert cli.main(["quantize", str(source), "Q8_0"]) == 0
    from desktop import settings

    assert (Path(settings.models_dir()) / "foo-ggml-model-Q8_0.gguf").is_file()
    assert q8.is_symlink() and sorted(p.name for p in source.parent.iterdir()) == [
        "ggml-model-f16.gguf", "ggml-model-q8_0.gguf"]


def test_convert_output_through_a_cache_link_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`convert -o` resolved the path: through a cache link it wrote onto the shared blob."""
    from tests.test_convert_support import assemble

    folder = assemble("tinyllama", tmp_path / "src")
    blob_source = tmp_path / "blob.gguf"
    blob_source.write_bytes(b"GGUF shared blob")
    link = cache_file(tmp_path / "hub", "a/foo", "1111", "model-f16.gguf", blob_source)
    blob = Path(os.path.realpath(link))
    assert cli.main(["convert", str(folder), "-o", str(link)]) == 1
    assert "already exists (a link)" in capsys.readouterr().err
    assert blob.read_bytes() == b"GGUF shared blob" and link.is_symlink()


def test_free_path_and_publish_never_replace(tmp_path: Path) -> None:
    target = tmp_path / "m-Q8_0.gguf"
    assert free_path(target) == target
    target.write_text("x")
    (tmp_path / "m-Q8_0-2.gguf").write_text("y")
    assert free_path(target) == tmp_path / "m-Q8_0-3.gguf"
    assert free_path(tmp_path / "M-q8_0.GGUF") != tmp_path / "M-q8_0.GGUF"  # one file on a case-blind disk
    partial = partial_path(target)
    partial.write_text("new")
    assert publish(partial, target) == tmp_path / "m-Q8_0-3.gguf"
    assert target.read_text() == "x" and not partial.exists()


def test_publish_syncs_before_the_rename_and_cleans_up_when_it_fails(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    real_link = os.link
    monkeypatch.setattr(os, "link", lambda a, b: (events.append("rename"), real_link(a, b))[1])
    partial = partial_path(tmp_path / "a.gguf")
    partial.write_text("data")
    publish(partial, tmp_path / "a.gguf")
    assert events[:2] == ["fsync", "rename"]

    def refuse(src: Path, dst: Path) -> None:
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(fileio, "_rename_no_replace", refuse)
    partial = partial_path(tmp_path / "b.gguf")
    partial.write_text("data")
    with pytest.raises(PermissionError):
        publish(partial, tmp_path / "b.gguf")
    assert not partial.exists()


def test_a_failed_final_rename_leaves_no_partial(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: Path, dst: Path) -> None:
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(fileio, "_rename_no_replace", refuse)
    with pytest.raises(PermissionError):
        quantize_many(tiny, ["Q8_0"], tmp_path / "out", progress=lambda *x: None, cancelled=lambda: False)
    assert list((tmp_path / "out").iterdir()) == []


def test_two_instances_never_share_a_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])  # an instance that has ended
    gone.wait()
    final = tmp_path / "m-Q4_K_M.gguf"
    monkeypatch.setenv(fileio.INSTANCE_ENV, str(gone.pid))
    first = partial_path(final)
    monkeypatch.setenv(fileio.INSTANCE_ENV, str(os.getpid()))
    second = partial_path(final)
    assert first != second and first.name.endswith(PARTIAL_SUFFIX) and second.name.endswith(PARTIAL_SUFFIX)
    first.write_text("a dead instance's")
    second.write_text("mine, still being written")
    assert sweep_stale_partials() == [first]
    assert second.exists() and not first.exists()
