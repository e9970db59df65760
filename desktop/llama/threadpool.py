"""A persistent CPU thread pool for a llama.cpp context, as llama.cpp's own tools attach one.

Without one, ggml makes a throw-away thread pool for every graph it computes: on a build without OpenMP (Apple
clang, or a build made so) that starts and joins the worker threads once per generated token, a cost llama-bench
never pays. With OpenMP (pip's Linux and Windows builds) the pool only carries the polling setting, and attaching it
costs nothing. The pool's functions live in the CPU backend; like llama-bench, they are looked up through ggml's
backend registry, in the libraries this process loaded (:mod:`desktop.llama.ggml`). Anything missing means no pool,
never an error: generation works without one, only slower.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Any

log = logging.getLogger(__name__)

GGML_MAX_N_THREADS = 512


class ThreadpoolParams(ctypes.Structure):
    """``struct ggml_threadpool_params`` (ggml.h)."""

    _fields_ = [
        ("cpumask", ctypes.c_bool * GGML_MAX_N_THREADS),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


_NewFn = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(ThreadpoolParams))
_FreeFn = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class Threadpools:
    """The pools attached to one context (one for generation, one for batches when their thread counts differ).
    Call :meth:`detach` before the context is freed and :meth:`free` after."""

    def __init__(self, ctx: Any, pools: list[int], threads: list[int], free_fn: Any, lib: Any) -> None:
        self._ctx = ctx
        self._pools = pools
        self.threads = threads  # each pool's threads, generation's first
        self._free_fn = free_fn
        self._lib = lib

    def detach(self) -> None:
        if self._ctx is not None:
            self._lib.llama_detach_threadpool(self._ctx)
            self._ctx = None

    def free(self) -> None:
        self.detach()
        for pool in self._pools:
            self._free_fn(pool)
        self._pools = []


def attach_threadpools(ctx: Any, n_threads: int, n_threads_batch: int) -> Threadpools | None:
    """Attach persistent pools of ``n_threads`` (generation) and ``n_threads_batch`` (prompt batches) to ``ctx``;
    None when this build does not offer them."""
    try:
        return _attach(ctx, n_threads, n_threads_batch)
    except (OSError, AttributeError, FileNotFoundError, RuntimeError) as exc:
        log.info("no persistent thread pool (%s); ggml makes one per graph", exc)
        return None


def _attach(ctx: Any, n_threads: int, n_threads_batch: int) -> Threadpools | None:
    import llama_cpp

    from desktop.llama.ggml import cpu_backend_function, ggml_base

    base = ggml_base()
    base.ggml_threadpool_params_init.argtypes = [ctypes.POINTER(ThreadpoolParams), ctypes.c_int]
    base.ggml_threadpool_params_init.restype = None
    lib = llama_cpp.llama_cpp._lib
    lib.llama_attach_threadpool.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.llama_attach_threadpool.restype = None
    lib.llama_detach_threadpool.argtypes = [ctypes.c_void_p]
    lib.llama_detach_threadpool.restype = None

    new_addr = cpu_backend_function("ggml_threadpool_new")
    free_addr = cpu_backend_function("ggml_threadpool_free")
    if not new_addr or not free_addr:
        log.info("this build's CPU backend offers no thread pool")
        return None
    new_fn, free_fn = _NewFn(new_addr), _FreeFn(free_addr)

    pools: list[int] = []
    counts = list(dict.fromkeys((int(n_threads), int(n_threads_batch))))  # one pool when both counts agree
    for threads in counts:  # one pool when both counts agree
        params = ThreadpoolParams()
        base.ggml_threadpool_params_init(ctypes.byref(params), threads)
        pool = new_fn(ctypes.byref(params))
        if not pool:
            for made in pools:
                free_fn(made)
            log.info("ggml could not make a pool of %d threads", threads)
            return None
        pools.append(pool)
    lib.llama_attach_threadpool(ctx, pools[0], pools[-1])
    return Threadpools(ctx, pools, counts, free_fn, lib)

