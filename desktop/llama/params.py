"""Model parameters for every llama.cpp load in QuantDesk, with CPU repacking off unless asked for.

llama.cpp's AMX/repack "extra buffer types" segfault in ``llama_decode`` on Q4_K models on some CPUs (batches of more
than one token, AVX-512/AMX Xeons with a native build; see the shared notes), so every load sets
``use_extra_bufts = False`` unless the user turned CPU repacking on. The low-level loads take :func:`model_params`;
code that must use llama-cpp-python's ``Llama`` class (benchmark references, tests comparing against it) wraps the
call in :func:`patched_model_params`, because ``Llama()`` has no argument for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

LoadProgress = Callable[[float], bool]  # fraction loaded -> keep going


def model_params(
    *, cpu_repack: bool = False, n_gpu_layers: int = 0, progress: Any = None, vocab_only: bool = False
) -> Any:
    """``llama_model_params`` with QuantDesk's defaults; ``progress`` is a ``llama_progress_callback`` (the caller
    keeps it alive for the whole load)."""
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.use_extra_bufts = bool(cpu_repack)
    params.n_gpu_layers = int(n_gpu_layers)
    params.vocab_only = bool(vocab_only)
    if progress is not None:
        params.progress_callback = progress
        params.progress_callback_user_data = None
    return params


@contextlib.contextmanager
def patched_model_params(*, cpu_repack: bool = False) -> Iterator[None]:
    """Make llama-cpp-python's ``Llama()`` load with QuantDesk's ``use_extra_bufts`` while the block runs."""
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params

    def patched() -> Any:
        params = original()
        params.use_extra_bufts = bool(cpu_repack)
        return params

    low.llama_model_default_params = patched
    try:
        yield
    finally:
        low.llama_model_default_params = original
