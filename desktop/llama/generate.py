"""The generation loop: llama.cpp samples and decodes, and no Python runs between two tokens.

The tokens come from the native loop (:mod:`desktop.llama.native`): in C, over one reused batch, it picks a token
(the reply's sampler chain, built once, sampled by llama.cpp, which also accepts the token into the chain; or, for a
plain greedy reply, the highest logit), stamps it and decodes it, a chunk of tokens per call. Python then handles the
chunk: a cached piece lookup, the incremental UTF-8 decode, the stop strings, the batch of text for the caller.
Chunks are sized to the flush interval from the measured speed (the first token alone, for the time to first
token), so text reaches the caller in small batches (every ``flush_s`` seconds or ``flush_tokens`` tokens) with one
stamp per token taken in C. Where the helper cannot be built, the same steps run in a Python loop, one token at a
time (numpy's argmax stands in for the greedy pick on a large vocabulary: :func:`greedy_picker`). Automatic garbage
collection waits while a reply runs (it makes no cycles, and a full pass in a child with numpy and jinja2 loaded
takes ~20 ms: a dozen tokens on a GPU).

The chain mirrors llama-cpp-python's ``Llama`` sampling (penalties over the last 64 tokens, then greedy for
temperature 0, else top-k, typical, top-p, min-p, temperature and the seeded distribution), so a greedy reply here is
token for token llama-cpp-python's own completion. The prompt decode is abortable (llama.cpp's abort callback asks
``should_stop``). During generation a stop lands within one token: the native loop reads ``stop_flag`` before each
decode (the engine's request reader sets it), and ``should_stop`` is asked between chunks (every token in the Python
loop). A stop string found inside a chunk ends the reply there; the few tokens decoded past it stay in the KV cache
and in ``session.history``, which always agree, and the next prompt's prefix match drops them.
"""

from __future__ import annotations

import codecs
import gc
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from desktop.errors import Cancelled
from desktop.llama.native import DECODE_FAILED, NO_LOGITS, STOPPED, native_loop
from desktop.llama.session import LlamaSession

DEFAULT_SEED = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: a random seed
# Text goes to the caller every 50 ms (the Chat page's engine worker batches its signals at that rate too) or every
# 256 tokens: with every core computing, each message costs the reply about twice the reader's own CPU time (it
# preempts a compute thread, and the other one waits at the next barrier); at 15 ms a fast reply lost 3.5%, at 50 ms
# about 1% (bench/chat.py's notes).
FLUSH_S = 0.05
FLUSH_TOKENS = 256
GREEDY_ARGMAX_MIN_VOCAB = 4096  # from here up, numpy's argmax beats llama.cpp's greedy sampler (see greedy_picker)

_UNSEEN: Any = object()  # no piece looked up yet for this token
OnText = Callable[[str, list[float]], None]  # (visible text, one stamp per token since the last call)


@dataclass(frozen=True)
class SamplerSettings:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.1
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    penalty_last_n: int = 64
    seed: int | None = None  # None or negative: random

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> SamplerSettings:
        known = {k: data[k] for k in cls.__dataclass_fields__ if data.get(k) is not None}
        return cls(**known)

    @classmethod
    def greedy(cls) -> SamplerSettings:
        return cls(temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)

    def is_plain_greedy(self) -> bool:
        """Temperature 0 and no penalties: the reply is the highest logit at every step, with no state to keep."""
        return (self.temperature == 0 and self.repeat_penalty == 1.0 and not self.frequency_penalty
                and not self.presence_penalty)


def sampler_chain(settings: SamplerSettings, n_vocab: int) -> Any:
    """A llama.cpp sampler chain for ``settings``; free it with ``llama_sampler_free``."""
    import llama_cpp

    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())

    def add(sampler: Any) -> None:
        llama_cpp.llama_sampler_chain_add(chain, sampler)

    seed = DEFAULT_SEED if settings.seed is None or settings.seed < 0 else int(settings.seed) & 0xFFFFFFFF
    if settings.repeat_penalty != 1.0 or settings.frequency_penalty or settings.presence_penalty:
        add(llama_cpp.llama_sampler_init_penalties(
            n_vocab, settings.penalty_last_n, settings.repeat_penalty, settings.frequency_penalty,
            settings.presence_penalty,
        ))
    if settings.temperature < 0:
        add(llama_cpp.llama_sampler_init_dist(seed))
    elif settings.temperature == 0:
        add(llama_cpp.llama_sampler_init_greedy())
    else:
        add(llama_cpp.llama_sampler_init_top_k(int(settings.top_k)))
        if settings.typical_p < 1.0:
            add(llama_cpp.llama_sampler_init_typical(settings.typical_p, 1))
        add(llama_cpp.llama_sampler_init_top_p(settings.top_p, 1))
        add(llama_cpp.llama_sampler_init_min_p(settings.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(settings.temperature))
        add(llama_cpp.llama_sampler_init_dist(seed))
    return chain


def greedy_picker(session: LlamaSession) -> Callable[[], int] | None:
    """For a plain greedy reply on a large vocabulary, the highest logit found by numpy over llama.cpp's logits
    (about 30 us for 262k tokens, where llama.cpp's sampler first copies every logit into a candidate array:
    about 480 us, a token's worth of decode on a fast GPU). Ties go to the lowest id, as in llama.cpp's greedy
    sampler. None for a small vocabulary, where the sampler is cheaper than the numpy call."""
    if session.n_vocab < GREEDY_ARGMAX_MIN_VOCAB:
        return None
    import ctypes

    import llama_cpp
    import numpy as np

    row_type = ctypes.c_float * session.n_vocab
    logits_of, ctx, as_address = llama_cpp.llama_get_logits_ith, session.ctx, ctypes.c_void_p
    argmax, frombuffer, float32 = np.argmax, np.frombuffer, np.float32

    def pick() -> int:
        row = ctypes.cast(logits_of(ctx, -1), as_address).value
        if not row:
            raise RuntimeError("llama.cpp returned no logits for the last token")
        return int(argmax(frombuffer(row_type.from_address(row), dtype=float32)))  # type: ignore[call-overload]

    return pick


class StopMatcher:
    """Holds back streamed text that may be the start of a stop string, and cuts the reply at a full one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._firsts = "".join(sorted({s[0] for s in self.stops}))
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add text; return what can be shown now. After a stop string, ``stopped`` is True."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        pending = self._pending + text
        for first in self._firsts:  # most pieces hold no stop's first character: no stop starts in them
            if first in pending:
                break
        else:
            self._pending = ""
            return pending
        cut = -1
        for stop in self.stops:
            i = pending.find(stop)
            if i >= 0 and (cut < 0 or i < cut):
                cut = i
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return pending[:cut]
        hold = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(pending)), hold, -1):
                if pending.endswith(stop[:length]):
                    hold = length
                    break
        if hold:
            self._pending = pending[-hold:]
            return pending[:-hold]
        self._pending = ""
        return pending

    def flush(self) -> str:
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out


@dataclass
class Generation:
    """What one reply produced."""

    tokens: list[int] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)  # perf_counter when each token was sampled
    text: str = ""
    finish: str = "length"  # "stop" (end of generation or a stop string), "length", "stopped" (asked to stop)
    prompt_decoded: int = 0  # prompt tokens decoded for this reply (a reused prefix is not decoded again)
    prompt_reused: int = 0

    def tokens_per_second(self) -> float:
        """Tokens as the caller received them: from the first token's stamp to the last one's."""
        if len(self.stamps) < 2 or self.stamps[-1] <= self.stamps[0]:
            return 0.0
        return (len(self.stamps) - 1) / (self.stamps[-1] - self.stamps[0])


def prefill(session: LlamaSession, prompt: Sequence[int], should_stop: Callable[[], bool]) -> tuple[int, int]:
    """Bring the KV cache to ``prompt``, reusing the longest prefix already there; the decode is abortable.
    Returns (tokens decoded, tokens reused). Raises :class:`Cancelled` when stopped."""
    common = 0
    for a, b in zip(session.history, prompt):
        if a != b:
            break
        common += 1
    reused = session.keep_prefix(min(common, len(prompt) - 1))  # at least one token to decode, for its logits
    rest = prompt[reused:]
    if should_stop():
        raise Cancelled()
    session.decode_prompt(rest, reused, abortable=True)
    return len(rest), reused


class _Stream:
    """The text side of a reply, fed one token at a time: pieces, UTF-8, stop strings, batches for the caller."""

    def __init__(self, session: LlamaSession, result: Generation, stops: Sequence[str], on_text: OnText | None,
                 ignore_eog: bool, flush_s: float, flush_tokens: int) -> None:
        self.result = result
        self.matcher = StopMatcher(stops)
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self.parts: list[str] = []
        self.pending: list[str] = []
        self.pending_stamps: list[float] = []
        self.pieces: dict[int, bytes | None] = {}
        self.session = session
        self.on_text = on_text
        self.ignore_eog = ignore_eog
        self.flush_s = flush_s
        self.flush_tokens = flush_tokens
        self.last_flush = float("-inf")  # the first token goes out at once (time to first token)

    def take(self, token: int, stamp: float) -> str | None:
        """Add one picked token; "stop" when the reply ends with it (end of generation, or a stop string)."""
        piece = self.pieces.get(token, _UNSEEN)
        if piece is _UNSEEN:
            session = self.session
            piece = self.pieces[token] = None if (not self.ignore_eog and session.is_eog(token)) else session.piece(token)
        if piece is None:  # an end-of-generation token
            return "stop"
        self.result.tokens.append(token)
        self.result.stamps.append(stamp)
        self.pending.append(self.matcher.feed(self.utf8.decode(piece)))
        self.pending_stamps.append(stamp)
        if self.matcher.stopped:
            return "stop"
        if self.on_text is not None and (stamp - self.last_flush >= self.flush_s
                                         or len(self.pending_stamps) >= self.flush_tokens):
            self._send()
            self.last_flush = stamp
        return None

    def _send(self) -> None:
        chunk = "".join(self.pending)
        self.parts.append(chunk)
        if self.on_text is not None and (chunk or self.pending_stamps):
            self.on_text(chunk, self.pending_stamps)
        self.pending, self.pending_stamps = [], []

    def close(self) -> str:
        """Send what is held back; the reply's whole text."""
        self.pending.append(self.matcher.feed(self.utf8.decode(b"", final=True)))
        self.pending.append(self.matcher.flush())
        self._send()
        return "".join(self.parts)


CHUNK_MAX = 512  # tokens per native call, at most


def _run_native(loop: Any, session: LlamaSession, chain: Any, stream: _Stream, *, argmax: bool, max_tokens: int,
                should_stop: Callable[[], bool], stop_flag: Any) -> str:
    """Generate in chunks through the native loop; returns the finish reason."""
    import ctypes

    history, tokens = session.history, stream.result.tokens
    params = loop.params(session, chain, argmax=argmax, check_eog=not stream.ignore_eog, pos=len(history),
                         stop_flag=stop_flag)
    picked_buf = (ctypes.c_int32 * CHUNK_MAX)()
    stamps_buf = (ctypes.c_double * CHUNK_MAX)()
    limit = max(1, min(CHUNK_MAX, stream.flush_tokens))
    pending, chunk = -1, 1  # the first token alone: it goes out at once
    while True:
        offset = time.perf_counter() - loop.now()  # the helper's clock to perf_counter's
        started = time.perf_counter()
        n, status, decoded, rc = loop.run(params, pending, min(chunk, max_tokens - len(tokens)), picked_buf,
                                          stamps_buf)
        took = time.perf_counter() - started
        picked = picked_buf[:n]
        history.extend((([pending] if pending >= 0 else []) + picked)[:decoded])  # what the KV cache holds now
        for token, stamp in zip(picked, stamps_buf[:n]):
            if stream.take(token, stamp + offset) is not None:
                return "stop"
            if len(tokens) >= max_tokens:
                return "length"
        if status == STOPPED or should_stop():
            return "stopped"
        if status == DECODE_FAILED:
            session.check(rc)
        if status == NO_LOGITS:
            raise RuntimeError("llama.cpp returned no logits for the last token")
        pending = picked[-1]
        if decoded and stream.flush_s > 0:  # about one flush interval's worth of tokens per call
            chunk = max(1, min(limit, int(stream.flush_s * decoded / took)))
        else:
            chunk = 1 if stream.flush_s <= 0 else 2


def _run_python(session: LlamaSession, chain: Any, stream: _Stream, *, pick: Callable[[], int] | None,
                max_tokens: int, should_stop: Callable[[], bool]) -> str:
    """One token at a time in Python: the loop where the native helper is unavailable."""
    import llama_cpp

    tokens, history = stream.result.tokens, session.history
    sample, decode, now = llama_cpp.llama_sampler_sample, llama_cpp.llama_decode, time.perf_counter
    ctx, batch = session.ctx, session.batch
    batch_token, batch_pos = batch.token, batch.pos
    batch.logits[0] = True
    pos = len(history)
    take = stream.take
    while True:
        token = pick() if pick is not None else sample(chain, ctx, -1)
        if take(token, now()) is not None:
            return "stop"
        if len(tokens) >= max_tokens:
            return "length"
        if should_stop():  # before the next decode: a stop lands within one token
            return "stopped"
        batch_token[0] = token
        batch_pos[0] = pos
        batch.n_tokens = 1
        rc = decode(ctx, batch)
        if rc != 0:
            session.check(rc)
        history.append(token)
        pos += 1


def generate(
    session: LlamaSession,
    prompt: Sequence[int],
    settings: SamplerSettings,
    *,
    max_tokens: int,
    stops: Sequence[str] = (),
    should_stop: Callable[[], bool] = lambda: False,
    stop_flag: Any = None,
    on_text: OnText | None = None,
    ignore_eog: bool = False,
    flush_s: float = FLUSH_S,
    flush_tokens: int = FLUSH_TOKENS,
    native: bool = True,
) -> Generation:
    """Answer ``prompt`` (token ids) with at most ``max_tokens`` tokens; see the module docstring. ``stop_flag``
    (a ``ctypes.c_int32`` another thread sets to 1) stops the native loop before its next decode; ``native=False``
    runs the Python loop."""
    import ctypes

    import llama_cpp

    result = Generation()
    try:
        result.prompt_decoded, result.prompt_reused = prefill(session, prompt, should_stop)
    except Cancelled:
        result.finish = "stopped"
        return result
    if max_tokens <= 0:
        return result

    loop = native_loop() if native else None
    chain = sampler_chain(settings, session.n_vocab)
    argmax = settings.is_plain_greedy() and session.n_vocab >= GREEDY_ARGMAX_MIN_VOCAB
    stream = _Stream(session, result, stops, on_text, ignore_eog, flush_s, flush_tokens)
    collecting = gc.isenabled()
    gc.disable()  # no collection lands between two tokens: the loop makes no cycles, a full pass can take 20 ms
    try:
        if loop is not None:
            flag = stop_flag if stop_flag is not None else ctypes.c_int32(0)
            result.finish = _run_native(loop, session, chain, stream, argmax=argmax, max_tokens=max_tokens,
                                        should_stop=should_stop, stop_flag=flag)
        else:
            pick = greedy_picker(session) if settings.is_plain_greedy() else None
            result.finish = _run_python(session, chain, stream, pick=pick, max_tokens=max_tokens,
                                        should_stop=should_stop)
    finally:
        llama_cpp.llama_sampler_free(chain)
        try:
            result.text = stream.close()
        finally:
            if collecting:
                gc.enable()
    return result
