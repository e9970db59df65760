"""Files written so that a crash, a cancel or a second QuantDesk never leaves or replaces something it should not.

* A file is written under a partial name and renamed only when complete (:func:`atomic_path`, :func:`publish`),
  after its bytes reached the disk (fsync), so a crash never leaves a file that looks finished. If the rename
  fails the partial file is removed.
* Partial names carry the app instance (``<name>.<instance>.partial``), so two QuantDesk windows writing the same
  output never share one. The instance is the first QuantDesk process's pid; its child processes inherit it.
  Every folder that got a partial file is remembered, and the next start removes the partial files of instances
  that are gone (:func:`sweep_stale_partials`).
* :func:`free_path` is the collision rule for outputs: a name that exists (a file, a folder or a link, even a
  dangling one, in any letter case) is never reused; the next free ``-2``, ``-3``... is. :func:`publish` never
  replaces a file either, even one that appeared while the output was being written.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
INSTANCE_ENV = "QUANTDESK_INSTANCE"
_PARTIAL_NAME = re.compile(r"^(?P<final>.+)\.(?P<pid>\d+)\.partial$")


def instance_tag() -> str:
    """This app instance's tag (the first QuantDesk process's pid); child processes inherit it."""
    tag = os.environ.get(INSTANCE_ENV, "")
    if not tag.isdigit():
        tag = str(os.getpid())
        os.environ[INSTANCE_ENV] = tag
    return tag


def partial_path(final: Path | str) -> Path:
    """The partial name of ``final`` for this instance; its folder is remembered for the sweep at the next start."""
    final = Path(final)
    _remember_folder(final.parent)
    return final.with_name(f"{final.name}.{instance_tag()}{PARTIAL_SUFFIX}")


def _journal() -> Path:
    from desktop import paths

    return paths.data_dir() / "partial-folders.txt"


def _remember_folder(folder: Path) -> None:
    try:
        journal = _journal()
        line = os.path.abspath(folder)
        known = journal.read_text(encoding="utf-8").splitlines() if journal.is_file() else []
        if line not in known:
            with open(journal, "a", encoding="utf-8") as f:
                f.write(line + "\n")
    except OSError:  # only the sweep would miss this folder
        log.debug("could not remember %s for the partial-file sweep", folder, exc_info=True)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    import psutil

    return bool(psutil.pid_exists(pid))


def sweep_stale_partials(extra_folders: tuple[Path, ...] = ()) -> list[Path]:
    """Remove the partial files left by QuantDesk instances that are no longer running (a crash, a killed window);
    returns what was removed. Called at start, off the GUI thread."""
    removed: list[Path] = []
    journal = _journal()
    folders = journal.read_text(encoding="utf-8").splitlines() if journal.is_file() else []
    keep: list[str] = []  # the remembered folders that still exist
    for folder in dict.fromkeys([*folders, *(os.path.abspath(f) for f in extra_folders)]):
        try:
            names = os.listdir(folder)
        except OSError:
            continue  # gone, or a disk not mounted now: forget it
        if folder in folders:
            keep.append(folder)
        for name in names:
            match = _PARTIAL_NAME.match(name)
            if match is None or int(match.group("pid")) == os.getpid() or _alive(int(match.group("pid"))):
                continue  # not ours, or its instance still runs and may be writing it
            path = Path(folder) / name
            if not path.is_symlink() and path.is_file():
                remove_quietly(path)
                removed.append(path)
    if folders and keep != folders:
        with contextlib.suppress(OSError):
            journal.write_text("".join(f"{f}\n" for f in keep), encoding="utf-8")
    return removed


def _taken(path: Path, extra: set[Path] | None) -> bool:
    if os.path.lexists(path) or (extra is not None and path in extra):
        return True
    try:  # a case-insensitive disk (macOS, Windows) would make "x-q8_0" and "x-Q8_0" one file
        lowered = path.name.lower()
        return any(name.lower() == lowered for name in os.listdir(path.parent))
    except OSError:
        return False


def free_path(path: Path | str, taken: set[Path] | None = None) -> Path:
    """``path`` if nothing is there (no file, folder or link, in any letter case) and it is not in ``taken``; else
    the first free ``<stem>-2<suffix>``, ``<stem>-3<suffix>``..."""
    path = Path(path)
    if not _taken(path, taken):
        return path
    suffix = "".join(path.suffixes[-1:]) if path.suffix.lower() == ".gguf" else path.suffix
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    n = 2
    while True:
        candidate = path.with_name(f"{stem}-{n}{suffix}")
        if not _taken(candidate, taken):
            return candidate
        n += 1


def fsync_file(path: Path | str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_folder(folder: Path) -> None:
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish(partial: Path | str, final: Path | str) -> Path:
    """Give a complete partial file its final name, never replacing anything: if ``final`` exists (it appeared while
    the file was written) the next free name is used. The bytes are on disk first. Returns the name used; on any
    failure the partial file is removed and the error raised."""
    partial, final = Path(partial), Path(final)
    try:
        fsync_file(partial)
        target = free_path(final)
        while True:
            try:
                _rename_no_replace(partial, target)
                break
            except FileExistsError:
                target = free_path(target)
        _fsync_folder(target.parent)
        return target
    except BaseException:
        remove_quietly(partial)
        raise


def _rename_no_replace(src: Path, dst: Path) -> None:
    if os.name == "nt":
        os.rename(src, dst)  # fails with FileExistsError when dst exists
        return
    try:
        os.link(src, dst)  # fails with FileExistsError when dst exists, atomically
    except OSError as exc:
        if exc.errno in (errno.EEXIST,):
            raise FileExistsError(errno.EEXIST, "exists", str(dst)) from exc
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(dst):  # a disk without hard links (FAT, some network shares): check, then rename
            raise FileExistsError(errno.EEXIST, "exists", str(dst)) from exc
        os.rename(src, dst)
        return
    os.unlink(src)


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a partial path next to ``final``; when the block succeeds, its bytes are synced and it replaces
    ``final`` (settings, caches: files this app owns); otherwise, or if the rename fails, it is deleted."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(final)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, final)
        _fsync_folder(final.parent)
    except BaseException:
        remove_quietly(tmp)
        raise


def write_text_atomic(final: Path, text: str) -> None:
    with atomic_path(final) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def remove_quietly(path: Path | str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
