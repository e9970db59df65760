"""One library the pages follow (issues 10.6, 13.4, 13-Low, 15): a checkpoint imported or downloaded shows on the
Models page and in the Quantize sources at once; the folder chooser opens in the Hugging Face cache; deleting a
cached model frees its blob, asks twice outside the models folder, and forgets nothing when the delete fails."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from mockhub import MockHub, checkpoint_files  # noqa: F401 - fixtures
from PySide6.QtCore import QDir, Qt, QTimer
from PySide6.QtWidgets import QApplication, QMessageBox
from pytestqt.qtbot import QtBot

from desktop.errors import UserError
from desktop.library import Library, delete_model_files
from desktop.workers import JobManager
from tests.quant_helpers import write_tiny_llama
from tests.test_convert_support import assemble
from tests.test_output_names import cache_file
from tests.test_quantize_page import jobs  # noqa: F401 - the JobManager fixture, stopped after each test


@pytest.fixture
def pages(qtbot: QtBot, jobs: JobManager):  # type: ignore[no-untyped-def]
    from desktop.ui.models.page import ModelsPage
    from desktop.ui.quantize.page import QuantizePage

    models, quantize = ModelsPage(jobs), QuantizePage(jobs)
    qtbot.addWidget(models)
    qtbot.addWidget(quantize)
    models.sig_models_changed.connect(quantize.set_models)  # as the main window wires them
    models.reload()
    qtbot.waitUntil(lambda: models.checkpoints.status.text().startswith("None yet"), timeout=30_000)
    return models, quantize


def offered(quantize, path: Path) -> bool:  # type: ignore[no-untyped-def]
    combo = quantize.source.combo
    return any(getattr(combo.itemData(i), "path", None) == path for i in range(combo.count()))


def test_an_imported_folder_is_offered_by_both_pages_at_once(qtbot: QtBot, pages, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """It showed on the Models page but not in the Quantize picker (two lists)."""
    models, quantize = pages
    folder = assemble("gemma3", tmp_path)
    worker = threading.Thread(target=Library().add_checkpoint, args=(folder,))  # from any thread, as a job would
    worker.start()
    worker.join()
    qtbot.waitUntil(lambda: models.checkpoints.table.rowCount() == 1 and offered(quantize, folder), timeout=30_000)
    assert models.checkpoints.table.item(0, 0).text() == "gemma3"


def test_a_downloaded_checkpoint_appears_without_a_restart(qtbot: QtBot, pages, mock_hub: MockHub) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from desktop.ui.models.hub_jobs import DownloadRequest, download_job

    models, quantize = pages
    mock_hub.add_repo("org/tiny-llama", checkpoint_files())
    outcome = download_job(lambda *a: None, lambda: False,
                           request=DownloadRequest("org/tiny-llama", None, None, "org/tiny-llama checkpoint"))
    snapshot = Path(outcome.snapshot_dir)
    qtbot.waitUntil(lambda: models.checkpoints.table.rowCount() == 1 and offered(quantize, snapshot),
                    timeout=30_000)
    assert models.checkpoints.table.item(0, 0).text() == "tiny-llama"
    combo = quantize.source.combo
    labels = [combo.itemText(i) for i in range(combo.count())]
    assert "tiny-llama (Hugging Face checkpoint)" in labels


def test_the_folder_chooser_opens_in_the_hugging_face_cache_with_hidden_folders(qtbot: QtBot, jobs: JobManager) -> None:
    from desktop.hub.repo import default_cache_dir
    from desktop.ui.quantize.source import SourcePicker

    Path(default_cache_dir()).mkdir(parents=True, exist_ok=True)
    picker = SourcePicker()
    qtbot.addWidget(picker)
    dialog = picker.folder_dialog()
    assert Path(dialog.directory().absolutePath()) == Path(default_cache_dir())
    assert dialog.filter() & QDir.Filter.Hidden


# ---- deleting


def test_deleting_a_cached_model_frees_its_blob_unless_another_revision_uses_it(tmp_path: Path) -> None:
    """"Delete file" unlinked the snapshot link and left the multi-GB blob."""
    source = write_tiny_llama(tmp_path / "m.gguf", n_layer=1)
    cache = tmp_path / "hub"
    only = cache_file(cache, "a/foo", "1111", "foo-Q8_0.gguf", source)
    blob = Path(os.path.realpath(only))
    freed = delete_model_files(only)
    assert freed == source.stat().st_size and not os.path.lexists(only) and not blob.exists()

    first = cache_file(cache, "b/bar", "1111", "bar-Q8_0.gguf", source)
    second = cache_file(cache, "b/bar", "2222", "bar-Q8_0.gguf", source)  # the same blob in another revision
    shared = Path(os.path.realpath(first))
    assert delete_model_files(first) == 0 and shared.exists() and second.exists()
    assert delete_model_files(second) == source.stat().st_size and not shared.exists()


def test_a_failed_delete_keeps_the_library_row(tmp_path: Path) -> None:
    """The row was removed before the file delete, so a failed delete lost the listing of a file still there."""
    model = write_tiny_llama(tmp_path / "m.gguf", n_layer=1)
    entry = Library().add_file(model)
    model.unlink()
    model.mkdir()  # something that cannot be deleted as a file
    (model / "keep").write_text("x")
    with pytest.raises(UserError, match="could not delete m.gguf"):
        Library().remove(entry.id, delete_file=True)
    assert Library().get_by_path(model) is not None


def _answer_dialogs(answers: list[str], seen: list[str]) -> None:
    """Click the button named ``answers[0]`` in the next modal dialog, and so on, as a user would."""

    def poll() -> None:
        box = QApplication.activeModalWidget()
        if isinstance(box, QMessageBox) and answers:
            seen.append(box.text() + " " + box.informativeText())
            name = answers.pop(0)
            button = next(b for b in box.buttons() if b.text().replace("&", "") == name)
            button.click()
        if answers:
            QTimer.singleShot(20, poll)

    QTimer.singleShot(20, poll)


def test_deleting_outside_the_models_folder_asks_a_second_time(qtbot: QtBot, pages, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    models, _ = pages
    source = write_tiny_llama(tmp_path / "m.gguf", n_layer=1)
    link = cache_file(tmp_path / "hub", "a/foo", "1111", "foo-Q8_0.gguf", source)
    Library().add_file(link, source="Hugging Face: a/foo")
    qtbot.waitUntil(lambda: models.table.rowCount() == 1, timeout=30_000)
    models.table.selectRow(0)

    seen: list[str] = []
    _answer_dialogs(["Delete file", "Cancel"], seen)  # the second question is declined: nothing happens
    models.remove_selected()
    assert len(seen) == 2 and "Hugging Face cache (a/foo)" in seen[1] and "other tools" in seen[1]
    assert os.path.lexists(link) and Library().get_by_path(link) is not None

    _answer_dialogs(["Delete file", "Delete it"], seen)
    models.remove_selected()
    qtbot.waitUntil(lambda: models.table.rowCount() == 0, timeout=30_000)
    assert not os.path.lexists(link) and not list((tmp_path / "hub").rglob("blobs/*"))
    assert Library().get_by_path(link) is None


def test_deleting_inside_the_models_folder_asks_once(qtbot: QtBot, pages) -> None:  # type: ignore[no-untyped-def]
    from desktop import settings

    models, _ = pages
    folder = Path(settings.models_dir())
    folder.mkdir(parents=True, exist_ok=True)
    model = write_tiny_llama(folder / "m-F16.gguf", n_layer=1)
    Library().add_file(model)
    qtbot.waitUntil(lambda: models.table.rowCount() == 1, timeout=30_000)
    models.table.selectRow(0)
    seen: list[str] = []
    _answer_dialogs(["Delete file"], seen)
    models.remove_selected()
    qtbot.waitUntil(lambda: models.table.rowCount() == 0, timeout=30_000)
    assert len(seen) == 1 and not model.exists()


def test_the_models_page_never_stats_a_model_file_on_the_gui_thread(qtbot: QtBot, jobs: JobManager,  # noqa: F811
                                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whether a library file is still on disk was asked on the GUI thread for every row of every reload and every
    selection (a library on a sleeping network drive froze the window); it is read with the list, in the job."""
    from desktop.ui.models.page import ModelsPage

    kept = write_tiny_llama(tmp_path / "kept.gguf", n_layer=1)
    gone = write_tiny_llama(tmp_path / "gone.gguf", n_layer=1)
    Library().add_file(kept)
    Library().add_file(gone)
    gone.unlink()
    on_gui_thread: list[str] = []
    real_exists = os.path.exists

    def exists(path) -> bool:  # type: ignore[no-untyped-def]
        if threading.current_thread() is threading.main_thread() and str(path).startswith(str(tmp_path)):
            on_gui_thread.append(str(path))
        return real_exists(path)

    monkeypatch.setattr(os.path, "exists", exists)
    monkeypatch.setattr(Path, "exists", lambda self, **kw: exists(self))
    page = ModelsPage(jobs)
    qtbot.addWidget(page)
    page.reload()
    qtbot.waitUntil(lambda: page.table.rowCount() == 2, timeout=30_000)
    rows = {page.table.item(r, 0).data(Qt.ItemDataRole.UserRole): r for r in range(page.table.rowCount())}
    missing = next(e for e in page.entries if e.path == gone)
    assert page.table.item(rows[missing.id], 0).toolTip() == "The file is missing from disk."
    page.table.selectRow(rows[missing.id])
    assert page.details_grid.value("Path").endswith("(missing)")
    assert on_gui_thread == []


def test_deleting_reads_the_models_folder_off_the_gui_thread(qtbot: QtBot, pages,  # type: ignore[no-untyped-def]
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove… asked settings.models_dir() (settings.json read, folder made) on the GUI thread at every delete."""
    from desktop import settings

    real_models_dir = settings.models_dir
    on_gui_thread: list[str] = []

    def models_dir() -> Path:
        if threading.current_thread() is threading.main_thread():
            on_gui_thread.append("models_dir")
        return real_models_dir()

    monkeypatch.setattr(settings, "models_dir", models_dir)
    models, _ = pages
    model = write_tiny_llama(real_models_dir() / "m-F16.gguf", n_layer=1)
    Library().add_file(model)
    qtbot.waitUntil(lambda: models.table.rowCount() == 1, timeout=30_000)
    models.table.selectRow(0)
    seen: list[str] = []
    _answer_dialogs(["Delete file"], seen)
    models.remove_selected()
    qtbot.waitUntil(lambda: models.table.rowCount() == 0, timeout=30_000)
    assert len(seen) == 1 and not model.exists()
    assert on_gui_thread == []


def test_the_library_shows_when_the_models_folder_cannot_be_made(qtbot: QtBot, jobs: JobManager,  # noqa: F811
                                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from desktop import settings
    from desktop.ui.models.page import ModelsPage

    def models_dir() -> Path:
        raise PermissionError(13, "Permission denied", "/media/gone/models")

    Library().add_file(write_tiny_llama(tmp_path / "m.gguf", n_layer=1))
    monkeypatch.setattr(settings, "models_dir", models_dir)
    page = ModelsPage(jobs)
    qtbot.addWidget(page)
    page.reload()
    qtbot.waitUntil(lambda: page.table.rowCount() == 1, timeout=30_000)
    assert page.models_dir is None
