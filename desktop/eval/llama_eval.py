"""The llama.cpp side of an evaluation: load a model, tokenize a text, decode perplexity chunks, time generation.

Low-level llama-cpp-python API throughout, because the high-level ``Llama`` class cannot switch off CPU
repacking (``use_extra_bufts``, which crashes K-quant prompt decoding on some CPUs: see shared notes), has no
abort callback and copies every logit row into Python. Runs inside the evaluation's child process.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from desktop.errors import Cancelled, UserError

_LOG_CALLBACK: list[Any] = []


def quiet_llama() -> None:
    """Send only llama.cpp's errors to stderr (the child's log); its info chatter is dropped."""
    import llama_cpp

    if _LOG_CALLBACK:
        return

    def on_log(level: int, text: bytes | None, _user_data: Any) -> None:
        if level == 4 and text:  # GGML_LOG_LEVEL_ERROR
            sys.stderr.write(text.decode("utf-8", errors="replace"))

    callback = llama_cpp.llama_log_callback(on_log)
    _LOG_CALLBACK.append(callback)  # C keeps only the pointer
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def default_threads() -> int:
    try:
        import psutil

        return max(1, psutil.cpu_count(logical=False) or os.cpu_count() or 1)
    except ImportError:  # pragma: no cover - psutil is a dependency
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class DecodeTiming:
    """Wall-clock seconds spent in ``llama_decode`` and the tokens decoded there."""

    tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class LlamaSession:
    """One model and one context of ``n_ctx`` tokens (batch = micro-batch = ``n_ctx``, as llama-perplexity uses).

    ``cancelled`` is polled from llama.cpp's abort callback (at most every 50 ms) while a chunk decodes, so a
    cancel stops a long decode; :meth:`decode_chunk` then raises :class:`Cancelled`.
    """

    def __init__(
        self,
        path: Path,
        n_ctx: int,
        *,
        threads: int = 0,
        n_gpu_layers: int = 0,
        cpu_repack: bool = False,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> None:
        import llama_cpp

        quiet_llama()
        llama_cpp.llama_backend_init()
        self.path = Path(path)
        self.n_ctx = n_ctx
        self.threads = threads or default_threads()
        self.cpu_repack = cpu_repack
        self.n_gpu_layers = n_gpu_layers
        self._cancelled = cancelled
        self._last_poll = 0.0
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        mp = llama_cpp.llama_model_default_params()
        mp.use_extra_bufts = cpu_repack
        mp.n_gpu_layers = n_gpu_layers
        self._model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), mp)
        if not self._model:
            raise UserError(
                f"llama.cpp could not load {self.path.name} (an unsupported architecture or a damaged file).",
                "Check the file with 'quantdesk inspect', or pick another model.",
                kind="load_failed",
            )
        try:
            cp = llama_cpp.llama_context_default_params()
            cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx
            cp.n_seq_max = 1
            cp.n_threads = cp.n_threads_batch = self.threads
            cp.no_perf = True
            self._ctx = llama_cpp.llama_init_from_model(self._model, cp)
            if not self._ctx:
                raise UserError(f"llama.cpp could not create a context of {n_ctx} tokens for {self.path.name}.",
                                "Try a smaller context.", kind="load_failed")
            self._abort_cb = llama_cpp.ggml_abort_callback(self._should_abort)
            self._no_abort_cb = llama_cpp.ggml_abort_callback()  # NULL: no Python call per graph node
            self.vocab = llama_cpp.llama_model_get_vocab(self._model)
            self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
            self.bos = int(llama_cpp.llama_vocab_bos(self.vocab))
            self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
            self._batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
        except BaseException:
            self.close()
            raise

    # -- lifecycle ------------------------------------------------------------------------------------------
    def close(self) -> None:
        import llama_cpp

        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> LlamaSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- work -----------------------------------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """The whole text with BOS first when the model wants one (``add_special``, as llama-perplexity does)."""
        import llama_cpp

        data = text.encode("utf-8")
        size = len(data) + 16
        buf = (llama_cpp.llama_token * size)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, size, True, False)
        if n < 0:
            size = -n
            buf = (llama_cpp.llama_token * size)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, size, True, False)
        return list(buf[:n])

    def _should_abort(self, _user_data: Any) -> bool:
        now = time.monotonic()
        if now - self._last_poll < 0.05:
            return False
        self._last_poll = now
        try:
            return bool(self._cancelled())
        except Exception:  # noqa: BLE001 - an exception must never escape into C
            return False

    def _fill(self, tokens: list[int] | np.ndarray, start_pos: int, logits_from: int, logits_last: bool) -> None:
        batch = self._batch
        for k, tok in enumerate(tokens):
            batch.token[k] = int(tok)
            batch.pos[k] = start_pos + k
            batch.n_seq_id[k] = 1
            batch.seq_id[k][0] = 0
            batch.logits[k] = k >= logits_from
        if logits_last:
            batch.logits[len(tokens) - 1] = True
        batch.n_tokens = len(tokens)

    def _decode(self, abortable: bool) -> float:
        import llama_cpp

        llama_cpp.llama_set_abort_callback(self._ctx, self._abort_cb if abortable else self._no_abort_cb, None)
        started = time.perf_counter()
        rc = llama_cpp.llama_decode(self._ctx, self._batch)
        seconds = time.perf_counter() - started
        if rc == 2:
            raise Cancelled()
        if rc != 0:
            raise UserError(f"llama.cpp failed to decode a batch (code {rc}).",
                            "Try a smaller context, or check the log.", kind="decode_failed")
        return seconds

    def decode_chunk(self, chunk: np.ndarray) -> tuple[np.ndarray, DecodeTiming]:
        """Decode one chunk of ``n_ctx`` tokens at positions 0.. after clearing the cache.

        Returns the logits of positions ``n_ctx/2 .. n_ctx-1`` (a view into llama.cpp's buffer, valid until the
        next decode) and the timing of the first half. The chunk goes in as two batches, the context half and
        the scored half: the result equals one batch of ``n_ctx`` (llama-perplexity itself splits chunks into
        ``n_batch`` pieces), and the first half, which asks only for its last token's logits, is a genuine
        prompt-processing measurement that costs nothing extra.
        """
        import llama_cpp

        n_ctx, first = self.n_ctx, self.n_ctx // 2
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)
        self._fill(chunk[:first], 0, first, logits_last=True)
        seconds = self._decode(abortable=True)
        self._fill(chunk[first:], first, 0, logits_last=False)
        self._decode(abortable=True)
        rows = np.ctypeslib.as_array(llama_cpp.llama_get_logits(self._ctx), shape=(n_ctx - first, self.n_vocab))
        return rows, DecodeTiming(first, seconds)

    def time_generation(self, tokens: list[int]) -> DecodeTiming:
        """Decode ``tokens`` one at a time from an empty cache, as generation does (logits for every token), and
        time the single-token decodes. Greedy sampling would cost the same per token; feeding the text's own
        tokens keeps the measurement deterministic."""
        import llama_cpp

        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)
        total = 0.0
        for pos, tok in enumerate(tokens):
            self._fill([tok], pos, 0, logits_last=True)
            total += self._decode(abortable=False)
        return DecodeTiming(len(tokens), total)
