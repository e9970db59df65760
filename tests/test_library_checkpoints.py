"""Hugging Face checkpoint folders in the library: imported folders and cached snapshots, listed offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mockhub import MockHub, checkpoint_files
from pytestqt.qtbot import QtBot

from desktop.errors import UserError
from desktop.hub.download import download
from desktop.library import Library
from tests.test_convert_support import assemble


def test_an_imported_folder_is_checked_and_listed(tmp_path: Path) -> None:
    folder = assemble("qwen3", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    entry = Library().add_checkpoint(folder)
    assert entry.path == folder and entry.name == "qwen3" and entry.source == "imported folder"
    assert entry.architecture == config["architectures"][0]
    assert entry.context_length == config["max_position_embeddings"]
    assert entry.size_bytes == sum(p.stat().st_size for p in folder.iterdir())
    assert entry.dtype in ("BF16", "F16", "F32") and entry.parameters > 0
    assert Library().checkpoints() == [entry]


def test_a_folder_the_converter_cannot_use_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(UserError, match="only PyTorch pickle weights"):
        Library().add_checkpoint(folder)
    assert Library().checkpoints() == []


def test_cached_snapshots_are_listed_without_the_network(mock_hub: MockHub) -> None:
    mock_hub.add_repo("org/tiny-llama", checkpoint_files())
    result = download(progress=lambda *a: None, cancelled=lambda: False, repo="org/tiny-llama")
    mock_hub.stop()
    assert Library().sync_hf_cache() == []
    (entry,) = Library().checkpoints()
    assert (entry.name, entry.source) == ("tiny-llama", "Hugging Face: org/tiny-llama")
    assert entry.path == Path(result.snapshot_dir)


def test_models_page_lists_checkpoints_and_adds_folders(qtbot: QtBot, tmp_path: Path) -> None:
    from desktop.ui.models.page import ModelsPage
    from desktop.workers import JobManager

    page = ModelsPage(JobManager())
    qtbot.addWidget(page)
    page.reload()
    qtbot.waitUntil(lambda: page.checkpoints.status.text().startswith("None yet"), timeout=30_000)
    job = page.checkpoints.add_folders([assemble("gemma3", tmp_path)])
    with qtbot.waitSignal(job.sig_finished, timeout=30_000):
        pass
    qtbot.waitUntil(lambda: page.checkpoints.table.rowCount() == 1, timeout=30_000)
    assert page.checkpoints.table.item(0, 0).text() == "gemma3"
    assert page.checkpoints.status.text().startswith("1 on this computer")
    page.checkpoints.table.selectRow(0)
    assert page.checkpoints.forget_button.isEnabled()


def test_a_refused_cached_snapshot_is_not_read_again_until_it_changes(mock_hub: MockHub,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Every library reload (one per change anywhere) re-read the config and safetensors headers of every cached
    snapshot the converter had refused already."""
    import os

    import desktop.convert

    mock_hub.add_repo("org/tiny-llama", checkpoint_files())
    result = download(progress=lambda *a: None, cancelled=lambda: False, repo="org/tiny-llama")
    mock_hub.stop()
    snapshot = Path(result.snapshot_dir)
    config = json.loads((snapshot / "config.json").read_text())
    (snapshot / "config.json").unlink()  # a link to the blob; the blob itself is left alone
    (snapshot / "config.json").write_text(json.dumps({**config, "architectures": ["MambaForCausalLM"],
                                                      "model_type": "mamba"}))
    real_inspect = desktop.convert.inspect_checkpoint
    inspected: list[Path] = []

    def inspect_checkpoint(folder, *args, **kwargs):  # type: ignore[no-untyped-def]
        inspected.append(Path(folder))
        return real_inspect(folder, *args, **kwargs)

    monkeypatch.setattr(desktop.convert, "inspect_checkpoint", inspect_checkpoint)
    first = Library().sync_hf_cache()
    assert len(first) == 1 and first[0].startswith("org/tiny-llama: ") and "MambaForCausalLM" in first[0]
    assert Library().sync_hf_cache() == first and inspected == [snapshot]
    stamp = snapshot.stat().st_mtime_ns
    os.utime(snapshot, ns=(stamp, stamp + 1_000_000_000))  # the folder changed (say, a file was added)
    assert Library().sync_hf_cache() == first and inspected == [snapshot, snapshot]
    assert Library().checkpoints() == []


def _drop(page: object, paths: list[Path]) -> bool:
    """Drag ``paths`` over the page and drop them, as a file manager would: Qt's own drag and drop events."""
    from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    enter = QDragEnterEvent(QPoint(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    enter.ignore()
    page.dragEnterEvent(enter)  # type: ignore[attr-defined]
    if not enter.isAccepted():
        return False
    drop = QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)
    drop.ignore()
    page.dropEvent(drop)  # type: ignore[attr-defined]
    return drop.isAccepted()


def test_dropped_folders_and_ggufs_join_the_library_and_other_files_are_passed_over(qtbot: QtBot,
                                                                                   tmp_path: Path) -> None:
    """Which dropped paths are folders is found out in a job, not on the window's thread: a checkpoint folder and a
    GGUF dropped together join the library, a text file with them is passed over, and a text file alone is a
    sentence."""
    from desktop.ui.models.checkpoints_view import NOTHING_DROPPED
    from desktop.ui.models.page import ModelsPage
    from desktop.workers import JobManager
    from tests.quant_helpers import write_tiny_llama

    jobs = JobManager()
    page = ModelsPage(jobs)
    qtbot.addWidget(page)
    page.reload()
    qtbot.waitUntil(lambda: page.checkpoints.status.text().startswith("None yet"), timeout=30_000)
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model", encoding="utf-8")
    assert _drop(page, [notes])
    qtbot.waitUntil(lambda: page.checkpoints.status.text() == NOTHING_DROPPED, timeout=30_000)

    folder = assemble("gemma3", tmp_path)
    gguf = write_tiny_llama(tmp_path / "dropped-F16.gguf", n_layer=1)
    assert _drop(page, [folder, notes, gguf])
    qtbot.waitUntil(lambda: page.checkpoints.table.rowCount() == 1
                    and any(e.path == gguf for e in page.entries), timeout=30_000)
    assert page.checkpoints.table.item(0, 0).text() == "gemma3"
    assert page.checkpoints.status.text().startswith("1 on this computer")
    assert jobs.stop_all(timeout_s=10)
