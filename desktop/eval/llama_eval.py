"""The llama.cpp side of an evaluation: perplexity chunks and generation speed, on a :class:`desktop.llama.LlamaSession`.

Runs inside the evaluation's child process. The context is ``n_ctx`` tokens with batch = micro-batch = ``n_ctx``, as
llama-perplexity uses; logits are read straight from llama.cpp's buffer. Generation speed is measured with the same
loop chat uses (:func:`desktop.llama.generate`), so Compare's tok/s is what a chat reply gets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from desktop.llama.generate import SamplerSettings, generate
from desktop.llama.log import llama_log
from desktop.llama.session import ContextOptions, LlamaSession, default_threads

ABORT_POLL_S = 0.05  # ``cancelled`` may ask another process: ask at most this often from inside a decode


def quiet_llama() -> None:
    """Send only llama.cpp's errors to stderr (the child's log); its info chatter is dropped."""
    llama_log.install()


@dataclass(frozen=True)
class DecodeTiming:
    """Seconds spent decoding and the tokens decoded there."""

    tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


class EvalSession:
    """One model and one context of ``n_ctx`` tokens for perplexity and speed. ``cancelled`` is polled from
    llama.cpp's abort callback while a chunk decodes, so a cancel stops a long decode
    (:class:`~desktop.errors.Cancelled` is raised)."""

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
        quiet_llama()
        self.n_ctx = n_ctx
        self.session = LlamaSession(
            path,
            ContextOptions(n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, threads=threads or default_threads(), perf=False),
            n_gpu_layers=n_gpu_layers,
            cpu_repack=cpu_repack,
            should_abort=cancelled,
            abort_poll_s=ABORT_POLL_S,
        )
        self.threads = self.session.threads
        self.n_vocab = self.session.n_vocab
        self.bos = self.session.bos
        self.add_bos = self.session.add_bos

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> EvalSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tokenize(self, text: str) -> list[int]:
        """The whole text with BOS first when the model wants one (``add_special``, as llama-perplexity does)."""
        return self.session.tokenize(text)

    def decode_chunk(self, chunk: np.ndarray) -> tuple[np.ndarray, DecodeTiming]:
        """Decode one chunk of ``n_ctx`` tokens at positions 0.. after clearing the cache.

        Returns the logits of positions ``n_ctx/2 .. n_ctx-1`` (a view into llama.cpp's buffer, valid until the
        next decode) and the timing of the first half. The chunk goes in as two batches, the context half and
        the scored half: the result equals one batch of ``n_ctx`` (llama-perplexity itself splits chunks into
        ``n_batch`` pieces), and the first half, which asks only for its last token's logits, is a genuine
        prompt-processing measurement that costs nothing extra.
        """
        import time

        import llama_cpp

        session = self.session
        n_ctx, first = self.n_ctx, self.n_ctx // 2
        session.clear()
        session.set_abortable(True)
        try:
            session.fill(chunk[:first].tolist(), 0, first)
            started = time.perf_counter()
            session.decode()
            seconds = time.perf_counter() - started
            session.fill(chunk[first:].tolist(), first, 0)
            session.decode()
        finally:
            session.set_abortable(False)
        rows = np.ctypeslib.as_array(llama_cpp.llama_get_logits(session.ctx), shape=(n_ctx - first, self.n_vocab))
        return rows, DecodeTiming(first, seconds)

    def time_generation(self, prompt: list[int], n_tokens: int) -> DecodeTiming:
        """Generate ``n_tokens`` greedily after ``prompt`` with chat's own loop (end-of-generation tokens do not
        end it) and time them as a chat reply is timed: ``n_tokens`` intervals from the first token to the last."""
        self.session.clear()
        result = generate(self.session, prompt, SamplerSettings.greedy(), max_tokens=n_tokens + 1, ignore_eog=True)
        stamps = result.stamps
        seconds = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
        return DecodeTiming(max(0, len(stamps) - 1), seconds)
