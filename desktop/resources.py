"""One place to find bundled files, in a source checkout, an installed wheel and the PyInstaller bundle alike."""

from __future__ import annotations

import sys
from pathlib import Path


def resources_dir() -> Path:
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        return Path(bundle) / "resources"
    import resources

    return Path(resources.__file__).resolve().parent


def path(name: str) -> Path:
    """The absolute path of a bundled resource such as ``"icons/chat.svg"`` or ``"texts/sample.txt"``."""
    return resources_dir() / name


def read_text(name: str) -> str:
    return path(name).read_text(encoding="utf-8")
