"""The generation loop (desktop.llama.generate) against llama-cpp-python's own completion, on real GGUF files:
the converter's fixture models (random weights, real tokenizers and architectures) and the demo Gemma 3 270M Q4_K_M.

Both sides run in this process with the same context settings; llama-cpp-python loads through the same params patch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from desktop.llama.generate import SamplerSettings, generate
from desktop.llama.params import patched_model_params
from desktop.llama.session import ContextOptions, LlamaSession

from engine_helpers import demo_model_path  # noqa: E402 - tests/ is on sys.path under pytest
from test_convert_support import converted  # noqa: F401 - the session-wide conversion cache (a fixture)

N_CTX = 256
FIXTURES = ["tinyllama", "qwen3", "gemma3"]  # SentencePiece llama, BPE with q/k norms, sliding-window Gemma
PROMPT = "The capital of France is Paris. The capital of Germany is"


def _llama(path: Path) -> Any:
    import llama_cpp

    with patched_model_params():
        return llama_cpp.Llama(str(path), n_ctx=N_CTX, n_threads=1, n_threads_batch=1, flash_attn=False, verbose=False)


def _session(path: Path, **kwargs: Any) -> LlamaSession:
    return LlamaSession(path, ContextOptions(n_ctx=N_CTX, threads=1, flash_attn=False), **kwargs)


def _reference_tokens(llm: Any, prompt: list[int], n: int, **sampling: Any) -> list[int]:
    """llama-cpp-python's own generate loop: tokens until end of generation or ``n``."""
    import llama_cpp

    out: list[int] = []
    for token in llm.generate(prompt, **sampling):
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or len(out) >= n:
            break
        out.append(token)
    return out


@pytest.fixture(scope="module", params=FIXTURES + ["demo"])
def model(request: pytest.FixtureRequest, converted: Any) -> Path:  # noqa: F811
    if request.param == "demo":
        return demo_model_path()
    path, _ = converted.gguf(request.param, "f16")
    return Path(path)


@pytest.fixture(scope="module")
def pair(model: Path) -> Iterator[tuple[LlamaSession, Any]]:
    session = _session(model)
    llm = _llama(model)
    yield session, llm
    llm.close()
    session.close()


def test_greedy_reply_is_llama_cpp_pythons_completion_token_for_token(pair: tuple[LlamaSession, Any]) -> None:
    session, llm = pair
    prompt = session.tokenize(PROMPT)
    assert prompt == llm.tokenize(PROMPT.encode(), add_bos=session.add_bos)
    ours = generate(session, prompt, SamplerSettings.greedy(), max_tokens=40)
    theirs = _reference_tokens(llm, prompt, 40, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    assert ours.tokens == theirs and len(ours.tokens) >= 5
    python_loop = generate(session, prompt, SamplerSettings.greedy(), max_tokens=40, native=False)
    assert (python_loop.tokens, python_loop.text, python_loop.finish) == (ours.tokens, ours.text, ours.finish)
    assert ours.finish == ("length" if len(theirs) == 40 else "stop")
    completion = llm.create_completion(prompt, max_tokens=40, temperature=0.0, top_k=1, top_p=1.0, min_p=0.0,
                                       repeat_penalty=1.0)
    # llama-cpp-python drops bytes that are not UTF-8; the engine shows them as U+FFFD, as it always has
    assert ours.text.replace("\ufffd", "") == completion["choices"][0]["text"]
    assert len(ours.stamps) == len(ours.tokens) and ours.stamps == sorted(ours.stamps)


def test_every_sampling_setting_is_honoured(pair: tuple[LlamaSession, Any]) -> None:
    """Temperature, top-k, top-p, min-p, the repeat penalty and the seed drive llama.cpp's sampler exactly as in
    llama-cpp-python: with the same seed, the same tokens."""
    session, llm = pair
    prompt = session.tokenize(PROMPT)
    for settings in (
        SamplerSettings(temperature=0.9, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.1, seed=1234),
        SamplerSettings(temperature=1.5, top_k=8, top_p=0.8, min_p=0.0, repeat_penalty=1.3, seed=7),
        SamplerSettings(temperature=0.7, top_k=0, top_p=1.0, min_p=0.2, repeat_penalty=1.0, seed=99),
    ):
        ours = generate(session, prompt, settings, max_tokens=24)
        llm.set_seed(settings.seed)
        theirs = _reference_tokens(llm, prompt, 24, temp=settings.temperature, top_k=settings.top_k,
                                   top_p=settings.top_p, min_p=settings.min_p, repeat_penalty=settings.repeat_penalty)
        assert ours.tokens == theirs, settings
    hot = SamplerSettings(temperature=2.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, seed=5)
    assert generate(session, prompt, hot, max_tokens=16).tokens == generate(session, prompt, hot, max_tokens=16).tokens


def test_another_seed_gives_another_reply() -> None:
    """The seed reaches the sampler (on the demo model: the random fixtures are too sure of their next token)."""
    with _session(demo_model_path()) as session:
        prompt = session.tokenize(PROMPT)
        hot = SamplerSettings(temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, seed=5)
        replies = {tuple(generate(session, prompt, SamplerSettings(**{**hot.__dict__, "seed": seed}),
                                  max_tokens=12, ignore_eog=True).tokens) for seed in (5, 6, 7)}
        assert len(replies) > 1


def test_a_stop_string_ends_the_reply_at_the_token_that_completes_it(pair: tuple[LlamaSession, Any]) -> None:
    session, _ = pair
    prompt = session.tokenize(PROMPT)
    full = generate(session, prompt, SamplerSettings.greedy(), max_tokens=40, ignore_eog=True)
    pieces = [session.piece(t).decode("utf-8", "replace") for t in full.tokens]
    # a stop string made of the end of the 6th token's text and the start of the 7th one's
    k = next(i for i in range(5, 30) if pieces[i].strip() and pieces[i + 1].strip())
    stop = pieces[k][-1] + pieces[k + 1][:1]
    text_before = "".join(pieces)[: "".join(pieces).find(stop)]
    cut = generate(session, prompt, SamplerSettings.greedy(), max_tokens=40, stops=[stop], ignore_eog=True)
    assert cut.finish == "stop" and cut.text == text_before
    assert len(cut.tokens) <= k + 2 and cut.tokens == full.tokens[: len(cut.tokens)]


def test_stop_lands_before_the_next_decode(pair: tuple[LlamaSession, Any]) -> None:
    session, _ = pair
    prompt = session.tokenize(PROMPT)
    asked: list[int] = []

    def stop_on_third_ask() -> bool:
        asked.append(1)
        return len(asked) > 3  # the first ask is before the prompt; then one before each token's decode

    result = generate(session, prompt, SamplerSettings.greedy(), max_tokens=40, ignore_eog=True,
                      should_stop=stop_on_third_ask, native=False)  # the Python loop asks before every decode
    assert result.finish == "stopped" and len(result.tokens) == 3
    # a consumer that asks to stop once it has seen 3 tokens gets at most the one being decoded on top
    for native in (True, False):
        seen: list[float] = []
        result = generate(session, prompt, SamplerSettings.greedy(), max_tokens=40, ignore_eog=True,
                          should_stop=lambda: len(seen) >= 3, on_text=lambda text, stamps: seen.extend(stamps),
                          flush_s=0.0, native=native)
        assert result.finish == "stopped" and 3 <= len(result.tokens) <= 4


def test_a_stop_from_another_thread_lands_within_one_token_of_the_native_loop() -> None:
    """The engine's request reader sets the stop flag while the native loop is inside a long chunk, with no Python
    running between tokens: the loop reads the flag before each decode, so at most one token is picked after it."""
    import ctypes
    import threading
    import time

    from desktop.llama.native import native_loop

    assert native_loop() is not None, "the native loop should build here (a C compiler is installed)"
    flag = ctypes.c_int32(0)
    set_at: list[float] = []
    started = threading.Event()

    def stop_soon() -> None:
        started.wait(10)
        threading.Event().wait(0.05)  # into the chunk
        set_at.append(time.perf_counter())
        flag.value = 1

    with LlamaSession(demo_model_path(), ContextOptions(n_ctx=N_CTX, threads=1, flash_attn=False)) as session:
        prompt = session.tokenize(PROMPT)
        stopper = threading.Thread(target=stop_soon)
        stopper.start()
        result = generate(session, prompt, SamplerSettings.greedy(), max_tokens=N_CTX - len(prompt) - 1,
                          ignore_eog=True, stop_flag=flag, flush_s=3600, flush_tokens=10**6,
                          on_text=lambda text, stamps: started.set())
        stopper.join()
        assert result.finish == "stopped" and len(result.tokens) < N_CTX - len(prompt) - 1
        assert sum(1 for stamp in result.stamps if stamp > set_at[0]) <= 1
        assert session.history[: len(prompt)] == prompt and len(session.history) == len(prompt) + len(result.tokens) - 1


def test_batches_keep_every_token_its_stamp_and_the_text(pair: tuple[LlamaSession, Any]) -> None:
    session, _ = pair
    prompt = session.tokenize(PROMPT)
    batches: list[tuple[str, list[float]]] = []
    result = generate(session, prompt, SamplerSettings.greedy(), max_tokens=23, ignore_eog=True,
                      on_text=lambda text, stamps: batches.append((text, list(stamps))), flush_s=3600, flush_tokens=5)
    sizes = [len(stamps) for _, stamps in batches]
    assert sizes[0] == 1 and all(n <= 5 for n in sizes) and sum(sizes) == 23  # first token at once, then <= 5
    assert [s for _, stamps in batches for s in stamps] == result.stamps
    assert "".join(text for text, _ in batches) == result.text



def test_no_garbage_collection_runs_between_two_tokens(pair: tuple[LlamaSession, Any]) -> None:
    """A full collection in a child that imported numpy and jinja2 takes ~20 ms, a dozen tokens on a GPU: the loop
    pauses automatic collection while it runs and restores the caller's setting after, even when it stops early."""
    import gc

    session, _ = pair
    prompt = session.tokenize(PROMPT)
    was_enabled = gc.isenabled()  # the test session runs collections from a GUI-thread timer instead (conftest)
    seen: list[bool] = []
    try:
        gc.enable()
        generate(session, prompt, SamplerSettings.greedy(), max_tokens=6, ignore_eog=True, flush_s=0.0,
                 on_text=lambda text, stamps: seen.append(gc.isenabled()))
        assert seen and not any(seen)
        assert gc.isenabled()
        generate(session, prompt, SamplerSettings.greedy(), max_tokens=6, ignore_eog=True,
                 should_stop=lambda: len(seen) > 8, on_text=lambda text, stamps: seen.append(gc.isenabled()))
        assert gc.isenabled()
        gc.disable()
        generate(session, prompt, SamplerSettings.greedy(), max_tokens=3, ignore_eog=True)
        assert not gc.isenabled()  # a caller that collects on its own keeps doing so
    finally:
        (gc.enable if was_enabled else gc.disable)()

def _last_logits(session: LlamaSession) -> Any:
    import llama_cpp

    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(session.ctx, -1), shape=(session.n_vocab,)).copy()


def test_a_follow_up_reuses_the_cached_prefix_and_sees_what_a_fresh_prompt_sees(pair: tuple[LlamaSession, Any]) -> None:
    """The next turn decodes only what is new; its logits are those of the whole prompt decoded from scratch
    (to rounding: one token at a time and a batch take different kernels)."""
    from desktop.llama.generate import prefill

    session, _ = pair
    prompt = session.tokenize(PROMPT)
    session.clear()
    first = generate(session, prompt, SamplerSettings.greedy(), max_tokens=8, ignore_eog=True)
    assert first.prompt_decoded == len(prompt) and first.prompt_reused == 0
    longer = prompt + first.tokens + session.tokenize(" and", add_special=False)
    decoded, reused = prefill(session, longer, lambda: False)
    assert reused == len(prompt) + len(first.tokens) - 1 and decoded == len(longer) - reused
    follow = _last_logits(session)
    session.clear()
    prefill(session, longer, lambda: False)
    fresh = _last_logits(session)
    assert follow.argmax() == fresh.argmax()
    log_p, log_q = _log_softmax(fresh), _log_softmax(follow)
    kld = float((np.exp(log_p) * (log_p - log_q)).sum())
    assert kld < 0.01, kld  # a cache that lost the window's tokens would give another distribution altogether


def _log_softmax(x: Any) -> Any:
    x = x.astype(np.float64) - x.max()
    return x - np.log(np.exp(x).sum())


def test_the_greedy_shortcut_picks_llama_cpps_greedy_token_ties_included(pair: tuple[LlamaSession, Any]) -> None:
    """A plain greedy reply on a large vocabulary takes numpy's argmax of the logits instead of llama.cpp's sampler;
    on the same logits both pick the same token, and of two equal highest logits both pick the lower id."""
    import llama_cpp

    from desktop.llama.generate import greedy_picker, sampler_chain

    session, _ = pair
    pick = greedy_picker(session)
    if session.n_vocab < 4096:  # the tinyllama fixture's tokenizer: the sampler stays (the next test's case)
        assert pick is None
        return
    assert pick is not None
    session.clear()
    session.decode_prompt(session.tokenize(PROMPT), 0, abortable=False)
    chain = sampler_chain(SamplerSettings.greedy(), session.n_vocab)
    try:
        assert pick() == llama_cpp.llama_sampler_sample(chain, session.ctx, -1)
        row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(session.ctx, -1), shape=(session.n_vocab,))
        top = float(row.max())
        row[[session.n_vocab - 3, 17]] = top + 1.0  # a tie between a high id and a low one
        assert pick() == 17 == llama_cpp.llama_sampler_sample(chain, session.ctx, -1)
    finally:
        llama_cpp.llama_sampler_free(chain)
    assert not SamplerSettings(temperature=0.0, repeat_penalty=1.1).is_plain_greedy()  # penalties keep the chain
    assert SamplerSettings.greedy().is_plain_greedy()



def test_the_native_greedy_pick_is_the_highest_logit_and_the_lowest_id_of_a_tie(pair: tuple[LlamaSession, Any]) -> None:
    """The native loop's own argmax (eight lanes, then the rest) against numpy's, which keeps the first of equal
    maxima, as llama.cpp's greedy sampler does: ties inside one lane, across lanes, in the first eight and the last."""
    import ctypes

    from desktop.llama.native import CHUNK, native_loop

    loop = native_loop()
    assert loop is not None
    session, _ = pair
    session.clear()
    session.decode_prompt(session.tokenize(PROMPT), 0, abortable=False)
    import llama_cpp

    row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(session.ctx, -1), shape=(session.n_vocab,))
    original = row.copy()
    params = loop.params(session, None, argmax=True, check_eog=False, pos=len(session.history),
                         stop_flag=ctypes.c_int32(0))
    picked, stamps = (ctypes.c_int32 * 1)(), (ctypes.c_double * 1)()
    n = session.n_vocab
    rng = np.random.default_rng(3)
    ties = [[25, 17], [17, n - 3], [5, 0], [n - 1, n - 9], [7, 8], [n - 1]]
    ties += [list(rng.choice(n, size=int(rng.integers(2, 6)), replace=False)) for _ in range(20)]
    try:
        assert loop.run(params, -1, 1, picked, stamps)[:3] == (1, CHUNK, 0)
        assert picked[0] == int(np.argmax(original))
        for ids in ties:
            row[:] = original
            row[ids] = original.max() + 1.0
            assert loop.run(params, -1, 1, picked, stamps)[:3] == (1, CHUNK, 0)  # one pick, nothing decoded
            assert picked[0] == min(ids) == int(np.argmax(row)), ids
    finally:
        row[:] = original


def test_without_a_compiler_the_native_loop_says_why_and_leaves_nothing(tmp_path: Path, monkeypatch: Any) -> None:
    """No compiler, or one that fails: a sentence saying so, no file left behind; generation then takes the Python
    loop (the greedy test above shows both loops give the same reply)."""
    from desktop.llama import native

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CC", raising=False)
    reason = native.compile_loop(tmp_path / "out" / native.LIB_NAME)
    assert "no C compiler" in reason
    failing = tmp_path / "cc"
    failing.write_text("#!/bin/sh\necho 'cc: error: out of cheese' >&2\nexit 1\n")
    failing.chmod(0o755)
    reason = native.compile_loop(tmp_path / "out" / native.LIB_NAME, [str(failing)])
    assert "exited with 1" in reason and "out of cheese" in reason
    assert list((tmp_path / "out").iterdir()) == []

def test_a_small_vocabulary_keeps_llama_cpps_sampler_and_the_same_greedy_reply(tmp_path: Path) -> None:
    """Under 4,096 tokens the sampler is cheaper than the numpy call, and the reply is still llama-cpp-python's."""
    from desktop.llama.generate import greedy_picker
    from quant_helpers import write_tiny_llama

    path = write_tiny_llama(tmp_path / "tiny.gguf", n_layer=2)
    with _session(path) as session:
        assert session.n_vocab < 4096 and greedy_picker(session) is None
        llm = _llama(path)
        try:
            prompt = session.tokenize("hello world")
            ours = generate(session, prompt, SamplerSettings.greedy(), max_tokens=20, ignore_eog=True)
            theirs = []
            for token in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
                theirs.append(token)
                if len(theirs) == 20:
                    break
            assert ours.tokens == theirs
        finally:
            llm.close()


def test_the_context_runs_on_persistent_thread_pools() -> None:
    """Like llama-bench, the session attaches its own CPU thread pools (generation's, and the prompt's when its
    thread count differs) instead of letting ggml make one per graph; a reply on them is the same reply."""
    path = demo_model_path()
    with LlamaSession(path, ContextOptions(n_ctx=N_CTX, threads=2, threads_batch=1, flash_attn=False)) as session:
        assert session.pool_threads() == [2, 1]
        pooled = generate(session, session.tokenize(PROMPT), SamplerSettings.greedy(), max_tokens=8, ignore_eog=True)
    with _session(path) as session:
        assert session.pool_threads() == [1]
        assert generate(session, session.tokenize(PROMPT), SamplerSettings.greedy(), max_tokens=8,
                        ignore_eog=True).tokens == pooled.tokens


def test_a_long_prompt_stops_on_the_native_abort_flag_without_asking_python() -> None:
    """With an abort flag, llama.cpp's abort callback is the native helper's: it reads the flag after each graph node,
    so the Python ``should_abort`` is never called, and a flag set by another thread stops the prompt's decode."""
    import ctypes
    import threading

    from desktop.errors import Cancelled

    flag = ctypes.c_int32(0)
    asked: list[int] = []
    started = threading.Event()

    def set_flag() -> None:
        started.wait(10)
        threading.Event().wait(0.05)
        flag.value = 1

    with LlamaSession(demo_model_path(), ContextOptions(n_ctx=2048, threads=1, flash_attn=False),
                      should_abort=lambda: bool(asked.append(1)), abort_flag=flag) as session:
        prompt = session.tokenize("The quick brown fox jumps over the lazy dog. " * 180)[:2000]
        setter = threading.Thread(target=set_flag)
        setter.start()
        started.set()
        with pytest.raises(Cancelled):
            session.decode_prompt(prompt, 0)  # ~2,000 tokens on one thread: seconds, were it not stopped
        setter.join()
        assert asked == [] and len(session.history) < len(prompt)
        flag.value = 0
        session.clear()
        session.decode_prompt(prompt[:20], 0)
        assert session.history == prompt[:20]
