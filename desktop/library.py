"""The local model library: a SQLite table of the GGUF files QuantDesk knows, with what each one is.

Rows are written when a model is added (demo model, download, import, conversion, quantization) and read by the
Models page. Each call opens its own connection, so any worker thread may use a :class:`Library`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from desktop import paths
from desktop.db import transaction
from desktop.gguf.reader import read_gguf

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

    @property
    def exists(self) -> bool:
        return self.path.exists()


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


class Library:
    def __init__(self, db_path: Path | None = None) -> None:
        self.db_path = db_path or paths.database_path()
        with self._connect() as db:
            db.executescript(SCHEMA)

    def _connect(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        return transaction(self.db_path)

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
        """Forget a model; with ``delete_file`` also delete it (and its shards) from disk."""
        with self._connect() as db:
            row = db.execute("SELECT path FROM models WHERE id = ?", (model_id,)).fetchone()
            db.execute("DELETE FROM models WHERE id = ?", (model_id,))
        if row and delete_file:
            from desktop.gguf.reader import shard_paths

            for shard in shard_paths(Path(row[0])):
                with contextlib.suppress(FileNotFoundError):
                    shard.unlink()

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
        return CheckpointEntry(row[0], Path(row[1]), *row[2:])

    def checkpoints(self) -> list[CheckpointEntry]:
        with self._connect() as db:
            rows = db.execute(f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY name COLLATE NOCASE").fetchall()
        return [CheckpointEntry(row[0], Path(row[1]), *row[2:]) for row in rows]

    def remove_checkpoint(self, checkpoint_id: int) -> None:
        """Forget a checkpoint folder; the folder itself is never deleted from here."""
        with self._connect() as db:
            db.execute("DELETE FROM checkpoints WHERE id = ?", (checkpoint_id,))

    def sync_hf_cache(self) -> list[str]:
        """List every convertible checkpoint in the Hugging Face cache (offline); returns sentences for the
        snapshots that cannot be converted, so the page can say why they are missing."""
        from desktop.errors import UserError
        from desktop.hub.search import cached_repos

        skipped = []
        for repo in cached_repos():
            if repo.kind != "checkpoint":
                continue
            try:
                self.add_checkpoint(repo.snapshot_dir, source=f"Hugging Face: {repo.repo_id}",
                                    name=repo.repo_id.rsplit("/", 1)[-1])
            except UserError as exc:
                skipped.append(f"{repo.repo_id}: {exc.message}")
        return skipped

    def is_empty(self) -> bool:
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM models").fetchone()[0] == 0


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
    )
