"""The llama-cpp-python source an engine is built from: its sdist, fetched once into the shared cache and unpacked
into a work folder with bounds (the archive is untrusted input)."""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
from pathlib import Path
from typing import IO

from desktop.errors import UserError
from desktop.jobs import CancelledFn
from desktop.llama.build_run import run_logged
from desktop.llama.engines import cache_root

SDIST_ENV = "QUANTDESK_LLAMA_SDIST"  # a llama_cpp_python-<version>.tar.gz to use instead of fetching one
_MAX_SOURCE_BYTES = 2 * 2**30  # unpacked sdist bound; the real one is ~300 MB


def _safe_members(tar: tarfile.TarFile, root: str) -> list[tarfile.TarInfo]:
    """Members under ``root/``, regular files and folders only, bounded in total size (the archive is untrusted)."""
    members, total = [], 0
    for member in tar:
        if not (member.name == root or member.name.startswith(root + "/")) or ".." in Path(member.name).parts:
            continue
        if not (member.isfile() or member.isdir()):
            continue
        total += member.size
        if total > _MAX_SOURCE_BYTES:
            raise UserError("The llama-cpp-python source archive is larger than expected.", "Delete it and retry.")
        members.append(member)
    return members


def fetch_sdist(version: str, log: IO[str], cancelled: CancelledFn) -> Path:
    """The sdist of ``version``: ``QUANTDESK_LLAMA_SDIST``, the shared cache, or ``pip download`` into the cache."""
    if os.environ.get(SDIST_ENV):
        return Path(os.environ[SDIST_ENV])
    folder = cache_root() / "sources"
    archive = folder / f"llama_cpp_python-{version}.tar.gz"
    if archive.exists():
        return archive
    folder.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
            f"llama-cpp-python=={version}", "-d", str(folder)]
    code = run_logged(argv, log, cancelled)
    if code != 0 or not archive.exists():
        raise UserError(
            f"pip could not fetch the source of llama-cpp-python {version}.",
            f"Check the internet connection, or download llama_cpp_python-{version}.tar.gz and set {SDIST_ENV} to it.",
        )
    return archive


def unpack_source(archive: Path, work: Path, version: str) -> Path:
    """Unpack the sdist into ``work/src`` once; returns the vendored llama.cpp folder."""
    root = f"llama_cpp_python-{version}"
    source = work / "src" / root / "vendor" / "llama.cpp"
    if (source / "CMakeLists.txt").exists():
        return source
    shutil.rmtree(work / "src", ignore_errors=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(work / "src", members=_safe_members(tar, root), filter="data")
    except (OSError, tarfile.TarError) as exc:
        shutil.rmtree(work / "src", ignore_errors=True)
        raise UserError(f"The llama-cpp-python source archive could not be unpacked ({exc}).",
                        f"Delete {archive} and retry.") from exc
    if not (source / "CMakeLists.txt").exists():
        raise UserError(f"{archive.name} does not contain llama.cpp's source.", f"Delete {archive} and retry.")
    return source
