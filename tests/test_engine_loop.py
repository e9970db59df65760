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
                      should_stop=stop_on_third_ask)
    assert result.finish == "stopped" and len(result.tokens) == 3
    # a consumer that asks to stop once it has seen 3 tokens gets at most the one being decoded on top
    seen: list[float] = []
    result = generate(session, prompt, SamplerSettings.greedy(), max_tokens=40, ignore_eog=True,
                      should_stop=lambda: len(seen) >= 3, on_text=lambda text, stamps: seen.extend(stamps),
                      flush_s=0.0)
    assert result.finish == "stopped" and 3 <= len(result.tokens) <= 4


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
