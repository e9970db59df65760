"""ggml's C API beyond what llama-cpp-python binds: the backend registry (devices, their memory, a backend's extra
functions) and ggml-base, opened once per process from the libraries this process loads.

An engine QuantDesk built runs with ``LLAMA_CPP_LIB_PATH`` pointing at its folder; opening libggml from pip's folder
instead would read a second, different copy (the CPU build's registry: no GPU). So every caller comes here, and here
asks :func:`desktop.llama.engines.loaded_library_dir`.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

CPU_DEVICE_TYPE = 0  # GGML_BACKEND_DEVICE_TYPE_CPU


@functools.cache
def ggml() -> Any:
    """libggml with the backend device and registry functions declared."""
    from llama_cpp._ctypes_extensions import load_shared_library

    from desktop.llama.engines import loaded_library_dir

    lib = load_shared_library("ggml", loaded_library_dir())
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    lib.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    for fn in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
        getattr(lib, fn).restype = ctypes.c_char_p
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                            ctypes.POINTER(ctypes.c_size_t)]
    lib.ggml_backend_dev_memory.restype = None
    lib.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_name.restype = ctypes.c_char_p
    lib.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    lib.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    return lib


@functools.cache
def ggml_base() -> Any:
    """libggml-base; callers declare the functions they use."""
    from llama_cpp._ctypes_extensions import load_shared_library

    from desktop.llama.engines import loaded_library_dir

    return load_shared_library("ggml-base", loaded_library_dir())


def cpu_backend_function(name: str) -> int | None:
    """The address of one of the CPU backend's extra functions (``ggml_threadpool_new``...), found through the
    registry as llama.cpp's own tools find it; None when this build's CPU backend does not offer it."""
    lib = ggml()
    device = lib.ggml_backend_dev_by_type(CPU_DEVICE_TYPE)
    reg = lib.ggml_backend_dev_backend_reg(device) if device else None
    address = lib.ggml_backend_reg_get_proc_address(reg, name.encode()) if reg else None
    return int(address) if address else None
