"""The local model library: a SQLite table of the GGUF files QuantDesk knows, with what each one is.

Rows are written when a model is added (demo model, download, import, conversion, quantization: all through
:func:`register` or :meth:`Library.add_file`) and read by the Models and Quantize pages. Each call opens its own
connection, so any worker thread may use a :class:`Library`.

Every change is announced to the callables given to :func:`subscribe` (from the thread that made it), so the pages
follow the library instead of each keeping a list of their own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from desktop.db import Store
from desktop.gguf.reader import read_gguf

log = logging.getLogger(__name__)

_listeners: list[Callable[[], None]] = []
_listeners_lock = threading.Lock()


def subscribe(listener: Callable[[], None]) -> None:
    """Call ``listener()`` after every change to the library (from the thread that made it)."""
    with _listeners_lock:
        _listeners.append(listener)


def unsubscribe(listener: Callable[[], None]) -> None:
    with _listeners_lock, contextlib.suppress(ValueError):
        _listeners.remove(listener)


def _changed() -> None:
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        try:
            listener()
        except Exception:  # noqa: BLE001 - a listener's bug must not undo the change
            log.exception("library listener failed")


def register(path: Path | str, *, source: str, quant_type: str | None = None,
             imatrix: str | None = None) -> ModelEntry | None:
    """Add a file QuantDesk just made to the library: the one registration path of conversion, quantization and
    downloads. A failure only costs the listing (the file is made), so it is logged, not raised."""
    try:
        return Library().add_file(path, source=source, quant_type=quant_type, imatrix=imatrix)
    except Exception:  # noqa: BLE001 - the file is written; the listing can be made later with "Add GGUF"
        log.warning("could not add %s to the library", path, exc_info=True)
        return None

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    architecture TEXT NOT NULL,
    parameters INTEGER NOT NULL,
    quant_type TEXT NOT NULL,
    context_length INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    base_model_id INTEGER REFERENCES models(id) ON DELETE SET NULL,
    imatrix TEXT,
    added_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    architecture TEXT NOT NULL,
    parameters INTEGER NOT NULL,
    dtype TEXT NOT NULL,
    context_length INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    source TEXT NOT NULL DEFAULT '',
    added_at REAL NOT NULL
);
"""


_REFUSED_SNAPSHOTS: dict[str, tuple[int, str]] = {}
"""Cached snapshots the converter refused: folder -> (its mtime_ns then, the sentence). The Models page syncs the
cache at every library change; a refused snapshot is checked again only once its folder changed (a file added)."""


@dataclass(frozen=True)
class ModelEntry:
    id: int
    path: Path
    name: str
    architecture: str
    parameters: int
    quant_type: str
    context_length: int
    size_bytes: int
    source: str
    imatrix: str | None
    added_at: float
    exists: bool
    """Whether the file was on disk when the entry was read: checked where the list is read (a job), so a page
    showing it never stats a file on the GUI thread (a library on a sleeping network drive would freeze it)."""


@dataclass(frozen=True)
class CheckpointEntry:
    """A Hugging Face checkpoint folder (safetensors) that QuantDesk can convert: a cached snapshot or an imported
    folder. It becomes a GGUF on the Quantize page."""

    id: int
    path: Path
    name: str
    architecture: str  # as config.json names it, e.g. "LlamaForCausalLM"
    parameters: int
    dtype: str  # the weights' main dtype, e.g. "BF16"
    context_length: int
    size_bytes: int
    source: str
    added_at: float

    @property
    def exists(self) -> bool:
        return self.path.is_dir()


class Library(Store):
    schema = SCHEMA

    def add_file(
        self,
        path: Path | str,
        source: str = "imported",
        quant_type: str | None = None,
        imatrix: str | None = None,
    ) -> ModelEntry:
        """Read a GGUF's header and add it (or refresh it, if the path is known). Raises UserError if unreadable."""
        path = Path(os.path.abspath(path))  # not resolve(): the HF cache links names to blobs/<sha>, and shards need their names
        info = read_gguf(path)
        with self._connect() as db:
            db.execute(
                """INSERT INTO models (path, name, architecture, parameters, quant_type, context_length,
                                       size_bytes, source, imatrix, added_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(path) DO UPDATE SET name=excluded.name, architecture=excluded.architecture,
                       parameters=excluded.parameters, quant_type=excluded.quant_type,
                       context_length=excluded.context_length, size_bytes=excluded.size_bytes,
                       source=excluded.source, imatrix=excluded.imatrix""",
                (
                    str(path),
                    info.name,
                    info.architecture,
                    info.parameter_count,
                    quant_type or info.quant_type,
                    info.context_length,
                    info.size_bytes,
                    source,
                    imatrix,
                    time.time(),
                ),
            )
        entry = self.get_by_path(path)
        assert entry is not None
        _changed()
        return entry

    def models(self) -> list[ModelEntry]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, path, name, architecture, parameters, quant_type, context_length, size_bytes, source,"
                " imatrix, added_at FROM models ORDER BY name COLLATE NOCASE, quant_type"
            ).fetchall()
        return [_entry(row) for row in rows]

    def get_by_path(self, path: Path | str) -> ModelEntry | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT id, path, name, architecture, parameters, quant_type, context_length, size_bytes, source,"
                " imatrix, added_at FROM models WHERE path = ?",
                (str(Path(os.path.abspath(path))),),
            ).fetchone()
        return _entry(row) if row else None

    def remove(self, model_id: int, *, delete_file: bool = False) -> None:
        """Forget a model; with ``delete_file`` first delete it (and its shards) from disk (see
        :func:`delete_model_files`). The row goes only once the files are gone: a failed delete keeps it listed."""
        with self._connect() as db:
            row = db.execute("SELECT path FROM models WHERE id = ?", (model_id,)).fetchone()
        if row is None:
            return
        if delete_file:
            delete_model_files(Path(row[0]))
        with self._connect() as db:
            db.execute("DELETE FROM models WHERE id = ?", (model_id,))
        _changed()

    # ---- checkpoint folders
    def add_checkpoint(self, folder: Path | str, source: str = "imported folder", name: str | None = None) -> CheckpointEntry:
        """Check a checkpoint folder as the converter would and list it. Raises UserError if it cannot be converted."""
        from collections import Counter

        from desktop.convert import inspect_checkpoint

        folder = Path(os.path.abspath(folder))
        checkpoint = inspect_checkpoint(folder)
        weights = list(checkpoint.tensors.values())
        dtype = Counter(ref.dtype for ref in weights).most_common(1)[0][0] if weights else "?"
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        context = int(checkpoint.hparams.get("max_position_embeddings") or 0)
        with self._connect() as db:
            db.execute(
                """INSERT INTO checkpoints (path, name, architecture, parameters, dtype, context_length, size_bytes,
                                            source, added_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(path) DO UPDATE SET name=excluded.name, architecture=excluded.architecture,
                       parameters=excluded.parameters, dtype=excluded.dtype, context_length=excluded.context_length,
                       size_bytes=excluded.size_bytes, source=excluded.source""",
                (
                    str(folder),
                    name or folder.name,
                    checkpoint.architecture,
                    sum(ref.n_elements for ref in weights),
                    dtype,
                    context,
                    size,
                    source,
                    time.time(),
                ),
            )
            row = db.execute(f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE path = ?", (str(folder),)).fetchone()
        _changed()
        return CheckpointEntry(row[0], Path(row[1]), *row[2:])

    def checkpoints(self) -> list[CheckpointEntry]:
        with self._connect() as db:
            rows = db.execute(f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY name COLLATE NOCASE").fetchall()
        return [CheckpointEntry(row[0], Path(row[1]), *row[2:]) for row in rows]

    def remove_checkpoint(self, checkpoint_id: int) -> None:
        """Forget a checkpoint folder; the folder itself is never deleted from here."""
        with self._connect() as db:
            db.execute("DELETE FROM checkpoints WHERE id = ?", (checkpoint_id,))
        _changed()

    def sync_hf_cache(self) -> list[str]:
        """List every convertible checkpoint in the Hugging Face cache (offline); returns sentences for the
        snapshots that cannot be converted, so the page can say why they are missing."""
        from desktop.errors import UserError
        from desktop.hub.search import cached_repos

        skipped = []
        known = {str(e.path) for e in self.checkpoints()}
        for repo in cached_repos():
            snapshot = os.path.abspath(repo.snapshot_dir)
            if repo.kind != "checkpoint" or snapshot in known:
                continue  # listed already: no change, no notification (the pages reload on one)
            try:
                stamp = os.stat(snapshot).st_mtime_ns
            except OSError:
                continue  # removed since the scan
            refused = _REFUSED_SNAPSHOTS.get(snapshot)
            if refused is not None and refused[0] == stamp:
                skipped.append(refused[1])  # unchanged since it was refused: not read again at every reload
                continue
            try:
                self.add_checkpoint(snapshot, source=f"Hugging Face: {repo.repo_id}",
                                    name=repo.repo_id.rsplit("/", 1)[-1])
            except UserError as exc:
                sentence = f"{repo.repo_id}: {exc.message}"
                _REFUSED_SNAPSHOTS[snapshot] = (stamp, sentence)
                skipped.append(sentence)
        return skipped


def in_models_folder(path: Path | str, models_dir: Path | str | None = None) -> bool:
    """Whether ``path`` (not resolved) lies in QuantDesk's models folder; anything else is deleted only after a
    second confirmation. ``models_dir``: that folder as already read (a page reads it off the GUI thread)."""
    from desktop import settings

    folder = os.path.abspath(models_dir if models_dir is not None else settings.models_dir())
    return os.path.abspath(path).startswith(folder.rstrip(os.sep) + os.sep)


def delete_model_files(path: Path) -> int:
    """Delete a model's files (every shard) and return the bytes freed. In the Hugging Face cache a model file is
    a link to a shared blob: the link goes, and the blob too once no snapshot of the repo links to it any more
    (otherwise the gigabytes would stay). Raises UserError when a file cannot be deleted; nothing is forgotten
    then."""
    from desktop.errors import UserError
    from desktop.gguf.reader import shard_paths
    from desktop.naming import hf_cache_repo

    freed = 0
    for shard in shard_paths(Path(path)):
        try:
            if hf_cache_repo(shard) is not None and shard.is_symlink():
                freed += _delete_cache_link(shard)
            elif os.path.lexists(shard):
                freed += shard.lstat().st_size
                shard.unlink()
        except OSError as exc:
            raise UserError(f"QuantDesk could not delete {shard.name} ({exc.strerror or exc}).",
                            "Check that no other program uses it and that you may change its folder.",
                            kind="delete_failed") from exc
    return freed


def _delete_cache_link(link: Path) -> int:
    """Unlink a snapshot link; delete its blob when no other snapshot of the repo links to it."""
    repo_root = next(p.parent for p in link.parents if p.name == "snapshots")
    blob = Path(os.path.realpath(link))
    link.unlink()
    blobs = os.path.realpath(repo_root / "blobs")
    if not str(blob).startswith(blobs + os.sep) or not blob.is_file():
        return 0  # not a blob of this repo: never follow a link out of it
    for other in (repo_root / "snapshots").rglob("*"):
        if other.is_symlink() and os.path.realpath(other) == str(blob):
            return 0  # another revision still uses it
    size = blob.stat().st_size
    blob.unlink()
    return size


_CHECKPOINT_COLUMNS = (
    "id, path, name, architecture, parameters, dtype, context_length, size_bytes, source, added_at"
)


def _entry(row: tuple) -> ModelEntry:  # type: ignore[type-arg]
    return ModelEntry(
        id=row[0],
        path=Path(row[1]),
        name=row[2],
        architecture=row[3],
        parameters=row[4],
        quant_type=row[5],
        context_length=row[6],
        size_bytes=row[7],
        source=row[8],
        imatrix=row[9],
        added_at=row[10],
        exists=os.path.exists(row[1]),
    )
