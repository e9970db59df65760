"""One model and one context, loaded through llama.cpp's low-level API: the only way QuantDesk's children open a GGUF.

The chat engine, the evaluation and the importance-matrix collection all run on a :class:`LlamaSession`: model
parameters from :mod:`desktop.llama.params` (CPU repacking off unless asked for), a context described by
:class:`ContextOptions`, one batch allocated once and reused for every decode, tokenizing and token pieces, and
llama.cpp's abort callback switched on only for the decodes that can take long (a prompt, a chunk): a call on every
graph node (in C when the native helper reads an abort flag, else in Python). Like llama.cpp's own tools, it attaches
persistent CPU thread pools (:mod:`desktop.llama.threadpool`) instead of letting ggml make one per graph.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from desktop.errors import Cancelled, UserError
from desktop.llama.log import llama_log
from desktop.llama.native import native_loop
from desktop.llama.params import model_params
from desktop.llama.threadpool import attach_threadpools

KV_TYPE_IDS = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30, "iq4_nl": 20}
SMALL_MACHINE_CORES = 8  # up to this many physical cores, the window leaves one free for itself


def physical_cores() -> int:
    try:
        import psutil

        return max(1, psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except ImportError:  # pragma: no cover - psutil is a dependency
        return max(1, os.cpu_count() or 1)


def default_threads(*, interactive: bool = False) -> int:
    """Threads for llama.cpp: all physical cores for command-line work; the window keeps one free on small machines."""
    cores = physical_cores()
    if interactive and 1 < cores <= SMALL_MACHINE_CORES:
        return cores - 1
    return cores


@dataclass(frozen=True)
class ContextOptions:
    n_ctx: int
    n_batch: int = 512
    n_ubatch: int = 512
    threads: int = 0  # 0: default_threads()
    threads_batch: int = 0  # 0: the same as threads
    flash_attn: bool | None = None  # None: llama.cpp decides
    type_k: str = "f16"
    type_v: str = "f16"
    swa_full: bool | None = None  # None: llama.cpp's default
    perf: bool = True  # keep llama.cpp's timing counters (llama_perf_context)
    cb_eval: Any = None  # a ggml_backend_sched_eval_callback (the caller keeps it alive)

    def params(self) -> Any:
        import llama_cpp

        for name in (self.type_k, self.type_v):
            if name not in KV_TYPE_IDS:
                raise UserError(f"{name} is not a KV cache type llama.cpp supports.", "Choose f16, q8_0 or q4_0.")
        threads = self.threads or default_threads()
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = self.n_ctx
        cp.n_batch = min(self.n_batch, self.n_ctx) if self.n_ctx else self.n_batch
        cp.n_ubatch = min(self.n_ubatch, cp.n_batch)
        cp.n_seq_max = 1
        cp.n_threads = threads
        cp.n_threads_batch = self.threads_batch or threads
        if self.flash_attn is not None:
            cp.flash_attn_type = (
                llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
        cp.type_k = KV_TYPE_IDS[self.type_k]
        cp.type_v = KV_TYPE_IDS[self.type_v]
        if self.swa_full is not None:
            cp.swa_full = self.swa_full
        cp.no_perf = not self.perf
        if self.cb_eval is not None:
            cp.cb_eval = self.cb_eval
            cp.cb_eval_user_data = None
        return cp


class LlamaSession:
    """A loaded model with its context; close it (or use ``with``) to free both.

    ``load_progress(fraction) -> bool`` sees the load and may cancel it (then :class:`Cancelled` is raised);
    ``should_abort()`` is asked by llama.cpp's abort callback during abortable decodes, at most every
    ``abort_poll_s`` seconds, and a decode it aborts raises :class:`Cancelled`; given ``abort_flag`` (a c_int32 set
    with it), the native helper's callback reads that instead, with no Python call per graph node.
    """

    def __init__(
        self,
        path: Path | str,
        context: ContextOptions,
        *,
        n_gpu_layers: int = 0,
        cpu_repack: bool = False,
        load_progress: Callable[[float], bool] | None = None,
        should_abort: Callable[[], bool] | None = None,
        abort_poll_s: float = 0.0,
        abort_flag: ctypes.c_int32 | None = None,
    ) -> None:
        import llama_cpp

        if not llama_log.installed:
            llama_log.install()
        llama_cpp.llama_backend_init()
        self.path = Path(path)
        self.options = context
        self.cpu_repack = cpu_repack
        self.n_gpu_layers = n_gpu_layers
        self._should_abort = should_abort or (lambda: False)
        self._abort_poll_s = abort_poll_s
        self._last_poll = 0.0
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        self._threadpools: Any = None
        self._pieces: dict[int, bytes] = {}
        self.history: list[int] = []  # the tokens in the KV cache, position 0 on (kept by whoever decodes)
        self.load_cancelled = False

        progress_cb = None
        if load_progress is not None:

            def on_progress(fraction: float, _user_data: Any) -> bool:
                try:
                    if load_progress(float(fraction)):
                        return True
                except Exception:  # noqa: BLE001 - never let an exception cross into C
                    return True
                self.load_cancelled = True
                return False

            progress_cb = llama_cpp.llama_progress_callback(on_progress)
        if not self.path.exists():
            raise UserError(f"The model file {self.path} does not exist.", "Pick the model again in the library.")
        params = model_params(cpu_repack=cpu_repack, n_gpu_layers=n_gpu_layers, progress=progress_cb)
        self._model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), params)
        del progress_cb
        if not self._model:
            if self.load_cancelled:
                raise Cancelled()
            raise UserError(
                f"llama.cpp could not load {self.path.name} ({llama_log.last_error('no message')}).",
                "Check that the file is a complete GGUF of an architecture this llama.cpp supports; the log has details.",
                kind="load_failed",
            )
        try:
            self._ctx = llama_cpp.llama_init_from_model(self._model, context.params())
            if not self._ctx:
                raise UserError(
                    f"llama.cpp could not create a context of {context.n_ctx} tokens for {self.path.name} "
                    f"({llama_log.last_error('no message')}).",
                    "Try a smaller context or fewer GPU layers.",
                    kind="load_failed",
                )
            self.vocab = llama_cpp.llama_model_get_vocab(self._model)
            self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
            self.n_ctx = int(llama_cpp.llama_n_ctx(self._ctx))
            self.n_batch = int(llama_cpp.llama_n_batch(self._ctx))
            self.threads = int(llama_cpp.llama_n_threads(self._ctx))
            threads_batch = int(llama_cpp.llama_n_threads_batch(self._ctx))
            self._threadpools = attach_threadpools(self._ctx, self.threads, threads_batch)
            self.bos = int(llama_cpp.llama_vocab_bos(self.vocab))
            self.eos = int(llama_cpp.llama_vocab_eos(self.vocab))
            self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
            self.n_swa = 0 if context.swa_full else int(llama_cpp.llama_model_n_swa(self._model))
            self.recurrent = bool(
                llama_cpp.llama_model_is_recurrent(self._model) or llama_cpp.llama_model_is_hybrid(self._model)
            )
            self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
            for k in range(self.n_batch):  # one sequence, set once: decodes only write tokens, positions, logits
                self._batch.n_seq_id[k] = 1
                self._batch.seq_id[k][0] = 0
            loop, self._abort_flag = (native_loop() if abort_flag is not None else None), abort_flag  # C reads it
            self._abort_data = ctypes.c_void_p(ctypes.addressof(abort_flag)) if loop else None
            self._abort_cb = loop.abort_callback if loop else llama_cpp.ggml_abort_callback(self._abort)
            self._no_abort_cb = llama_cpp.ggml_abort_callback()  # NULL: no Python call per graph node
            self._abortable = False
            llama_cpp.llama_set_abort_callback(self._ctx, self._no_abort_cb, None)
        except BaseException:
            self.close()
            raise

    # -- lifecycle ------------------------------------------------------------------------------------------
    def close(self) -> None:
        import llama_cpp

        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._threadpools is not None:
            self._threadpools.detach()  # the context must not keep pointing at pools freed below
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._threadpools is not None:
            self._threadpools.free()
            self._threadpools = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> LlamaSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def model(self) -> Any:
        return self._model

    @property
    def ctx(self) -> Any:
        return self._ctx

    @property
    def batch(self) -> Any:
        return self._batch

    def pool_threads(self) -> list[int]:
        """The threads of the CPU pools attached to the context, generation's first ([]: the build has none)."""
        return list(self._threadpools.threads) if self._threadpools is not None else []

    # -- the model ------------------------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as text, or None when the model has no such key."""
        import llama_cpp

        size = 256
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_model_meta_val_str(self._model, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", errors="replace")
            size = n + 1

    def info(self) -> dict[str, int]:
        import llama_cpp

        return {
            "n_ctx_train": int(llama_cpp.llama_model_n_ctx_train(self._model)),
            "n_layer": int(llama_cpp.llama_model_n_layer(self._model)),
            "model_size": int(llama_cpp.llama_model_size(self._model)),
            "n_params": int(llama_cpp.llama_model_n_params(self._model)),
        }

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        import llama_cpp

        data = text.encode("utf-8")
        size = len(data) + 16
        buf = (llama_cpp.llama_token * size)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, size, add_special, parse_special)
        if n < 0:
            size = -n
            buf = (llama_cpp.llama_token * size)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, size, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a generated token adds to the text (special tokens render as nothing); cached per token."""
        cached = self._pieces.get(token)
        if cached is None:
            cached = self._pieces[token] = self._token_bytes(token, special=False)
        return cached

    def token_text(self, token: int) -> str:
        """A token's own text, special tokens included ("<bos>"); "" for no token."""
        if token < 0:
            return ""
        return self._token_bytes(token, special=True).decode("utf-8", errors="replace")

    def _token_bytes(self, token: int, *, special: bool) -> bytes:
        import llama_cpp

        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        return buf.raw[:n]

    def is_eog(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    # -- decoding -------------------------------------------------------------------------------------------
    def clear(self) -> None:
        """Empty the KV cache."""
        import llama_cpp

        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)
        self.history = []

    def keep_prefix(self, n: int) -> int:
        """Drop the KV cache after the first ``n`` tokens; returns how many stay usable (0 when it cannot keep a
        prefix: recurrent models, or sliding-window layers that forgot the tokens the next ones need)."""
        import llama_cpp

        memory = llama_cpp.llama_get_memory(self._ctx)
        if n <= 0 or self.recurrent or not llama_cpp.llama_memory_seq_rm(memory, 0, n, -1):
            self.clear()
            return 0
        if self.n_swa > 0 and llama_cpp.llama_memory_seq_pos_min(memory, 0) > max(0, n - self.n_swa):
            self.clear()
            return 0
        del self.history[n:]
        return n

    def fill(self, tokens: Sequence[int], start_pos: int, logits_from: int, *, logits_last: bool = True) -> None:
        """Put ``tokens`` at positions ``start_pos``.. into the batch, asking for logits from index ``logits_from``."""
        batch = self._batch
        for k, tok in enumerate(tokens):
            batch.token[k] = tok
            batch.pos[k] = start_pos + k
            batch.logits[k] = k >= logits_from
        if logits_last and tokens:
            batch.logits[len(tokens) - 1] = True
        batch.n_tokens = len(tokens)

    def set_abortable(self, abortable: bool) -> None:
        import llama_cpp

        if abortable != self._abortable:
            self._abortable = abortable
            if abortable:
                llama_cpp.llama_set_abort_callback(self._ctx, self._abort_cb, self._abort_data)
            else:
                llama_cpp.llama_set_abort_callback(self._ctx, self._no_abort_cb, None)

    def _abort(self, _user_data: Any) -> bool:
        try:
            if self._abort_poll_s:
                now = time.monotonic()
                if now - self._last_poll < self._abort_poll_s:
                    return False
                self._last_poll = now
            return bool(self._should_abort())
        except Exception:  # noqa: BLE001 - an exception must never escape into C
            return False

    def decode(self) -> None:
        """Decode the batch; :class:`Cancelled` when the abort callback stopped it, UserError on a failure."""
        import llama_cpp

        rc = llama_cpp.llama_decode(self._ctx, self._batch)
        if rc != 0:
            self.check(rc)

    def check(self, rc: int) -> None:
        if rc == 2:
            raise Cancelled()
        if rc == 1:
            raise UserError("The context is full: llama.cpp found no room for the next tokens.",
                            "Start a new conversation, or reload the model with a longer context.", kind="context_full")
        raise UserError(f"llama.cpp failed to decode a batch (code {rc}: {llama_log.last_error('no message')}).",
                        "Try a smaller context, or check the log.", kind="decode_failed")

    def decode_prompt(self, tokens: Sequence[int], start_pos: int, *, abortable: bool = True) -> None:
        """Decode ``tokens`` after ``start_pos`` in batches of ``n_batch``, logits for the last token only."""
        self.set_abortable(abortable)
        try:
            for i in range(0, len(tokens), self.n_batch):
                part = tokens[i : i + self.n_batch]
                self.fill(part, start_pos + i, len(part))
                self.decode()
                self.history.extend(part)
        finally:
            self.set_abortable(False)

    def perf(self) -> dict[str, float]:
        import llama_cpp

        data = llama_cpp.llama_perf_context(self._ctx)
        return {
            "t_p_eval_ms": float(data.t_p_eval_ms),
            "n_p_eval": int(data.n_p_eval),
            "t_eval_ms": float(data.t_eval_ms),
            "n_eval": int(data.n_eval),
        }

    def perf_reset(self) -> None:
        import llama_cpp

        llama_cpp.llama_perf_context_reset(self._ctx)
