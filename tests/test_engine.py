"""The chat engine with the real demo model (Gemma 3 270M, Q4_K_M) in a real child process."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from desktop import process
from desktop import memory as planner
from desktop.chat.engine import SAFE_MODE_STEP, Engine, EngineEvent, LoadOptions, Sampling
from desktop.gguf.reader import GGUFInfo
from desktop.jobs import JobFailed

from engine_helpers import demo_model_info, demo_model_path  # noqa: E402 - tests/ is on sys.path under pytest

N_CTX = 512
# one thread: on a shared 2-core machine, llama.cpp's thread barriers stall badly when oversubscribed
GREEDY = Sampling(temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, max_tokens=12)
COUNTING = [{"role": "user", "content": "Count from 1 to 100, separated by commas: 1, 2, 3,"}]


@pytest.fixture(scope="module")
def model() -> Path:
    return demo_model_path()


@pytest.fixture(scope="module")
def info(model: Path) -> GGUFInfo:
    return demo_model_info()


@pytest.fixture(scope="module")
def engine(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    eng = Engine(log_path=tmp_path_factory.mktemp("engine") / "engine.log")
    eng.start()
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def loaded(engine: Engine, model: Path) -> dict[str, object]:
    progress: list[EngineEvent] = []
    engine.load(LoadOptions(str(model), n_ctx=N_CTX, n_threads=1))
    event = engine.wait_for("loaded", timeout=120, on_event=lambda e: progress.append(e) if e.kind == "load_progress" else None)
    return {"event": event, "progress": progress}


def _drain_until(engine: Engine, kind: str, timeout: float = 120.0) -> list[EngineEvent]:
    events: list[EngineEvent] = []
    engine.wait_for(kind, timeout=timeout, on_event=events.append)
    return events


def test_load_reports_progress_metadata_and_memory(loaded: dict[str, object], info: GGUFInfo) -> None:
    progress = loaded["progress"]
    assert isinstance(progress, list) and len(progress) >= 2
    fractions = [e.data["fraction"] for e in progress]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    event = loaded["event"]
    assert isinstance(event, EngineEvent)
    meta = event.data["metadata"]
    assert meta["architecture"] == "gemma3" and meta["n_ctx"] == N_CTX and meta["n_layer"] == 18
    # the demo GGUF carries no chat template, so the one for its architecture is used
    assert meta["template"] == "gemma" and meta["template_from_model"] is False and meta["cpu_repack"] is False
    assert (meta["token_loop"], meta["token_loop_note"]) == ("native", "")  # built at load, with the C compiler here
    memory = event.data["memory"]
    assert memory["gpus"] == [] and memory["model_size"] > 100_000_000

    # predicted against actual: the planner's KV cache is llama.cpp's to the byte, the weights within 2%
    shape = planner.shape_from_gguf(info)
    plan = planner.plan_offload(shape, gpus=[], host=planner.HostBudget(16 * 10**9), options=planner.PlanOptions(n_ctx=N_CTX))
    actual = memory["host"]
    assert actual["kv_cache"] == plan.host.breakdown.kv_cache
    assert abs(actual["weights"] - plan.host.breakdown.weights) <= 0.02 * actual["weights"]
    assert actual["compute"] > 0
    assert 0.5 * actual["compute"] <= plan.host.breakdown.compute <= 2.0 * actual["compute"]


def test_a_reply_streams_and_its_metrics_are_llama_cpps_counters(
    engine: Engine, loaded: object, model: Path, info: GGUFInfo
) -> None:
    import time

    texts: list[str] = []
    asked_at = time.perf_counter()
    reply = engine.ask(COUNTING, GREEDY, on_token=texts.append)
    answered_at = time.perf_counter()
    assert "".join(texts) == reply.text and reply.text.strip()
    # one stamp per token, taken in the engine process on the same clock as this one
    assert len(reply.stamps) == len(reply.tokens) == GREEDY.max_tokens
    assert list(reply.stamps) == sorted(reply.stamps) and asked_at < reply.stamps[0] <= reply.stamps[-1] < answered_at
    m = reply.metrics
    counters = m.llama_perf
    assert m.prompt_tokens == counters["n_p_eval"] and m.generated_tokens == counters["n_eval"]
    assert m.prompt_ms == counters["t_p_eval_ms"] and m.generation_ms == counters["t_eval_ms"]
    assert m.prompt_tokens_per_s == pytest.approx(counters["n_p_eval"] / counters["t_p_eval_ms"] * 1000)
    assert m.generation_tokens_per_s == pytest.approx(counters["n_eval"] / counters["t_eval_ms"] * 1000)
    # the counters describe this request: the whole rendered prompt was evaluated once, and one decode per token
    assert m.prompt_tokens == m.prompt_tokens_total == _prompt_length(model, info, COUNTING)
    assert m.completion_tokens == GREEDY.max_tokens and m.finish_reason == "length"
    assert m.generated_tokens == m.completion_tokens - 1  # the last sampled token is not decoded
    assert m.ttft_s is not None and 0 < m.ttft_s < m.total_s


def test_a_greedy_reply_is_llama_cpp_pythons_own_completion(model: Path, info: GGUFInfo, tmp_path: Path) -> None:
    import llama_cpp

    from desktop.chat.templates import choose_template, render
    from desktop.llama.params import patched_model_params

    sampling = Sampling(temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, max_tokens=40)
    messages = [{"role": "user", "content": "Write a short poem about the sea."}]
    with Engine(log_path=tmp_path / "e.log") as fresh:  # an empty KV cache, as llama-cpp-python's below
        fresh.load_and_wait(LoadOptions(str(model), n_ctx=N_CTX, n_threads=1, flash_attn="off"))  # as Llama() below
        reply = fresh.ask(messages, sampling)
    with patched_model_params():
        llm = llama_cpp.Llama(str(model), n_ctx=N_CTX, n_threads=1, n_threads_batch=1, swa_full=False, verbose=False)
    try:
        prompt = render(choose_template(info.chat_template, info.architecture), messages, bos_token="<bos>")
        tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        theirs: list[int] = []
        for token in llm.generate(tokens, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or len(theirs) == sampling.max_tokens:
                break
            theirs.append(token)
        completion = llm.create_completion(tokens, max_tokens=40, temperature=0.0, top_k=1, top_p=1.0, min_p=0.0,
                                           repeat_penalty=1.0, stop=["<end_of_turn>"])
    finally:
        llm.close()
    assert list(reply.tokens) == theirs and len(theirs) >= 10
    assert reply.text == completion["choices"][0]["text"]


def _prompt_length(model: Path, info: GGUFInfo, messages: list[dict[str, str]]) -> int:
    """Tokenize the prompt independently: the GGUF's template rendered here, a vocabulary-only llama.cpp model."""
    import llama_cpp

    from desktop.chat.templates import choose_template, render

    vocab_only = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    try:
        prompt = render(choose_template(info.chat_template, info.architecture), messages, bos_token="<bos>")
        return len(vocab_only.tokenize(prompt.encode(), add_bos=False, special=True))
    finally:
        vocab_only.close()


def test_stop_ends_a_reply_within_one_token(engine: Engine, loaded: object) -> None:
    """Text arrives in batches, so what counts is when each token was picked (stamped in the engine, on the same
    monotonic clock as this process): after the stop is sent, the token being decoded finishes and at most one more is
    picked before the loop reads the flag (plus one, should the stop's own trip outlast a token on a busy machine)."""
    import time

    sent_at: list[float] = []
    long = Sampling(temperature=0.0, top_k=1, repeat_penalty=1.0, max_tokens=200)

    def on_token(_text: str) -> None:
        if not sent_at:
            sent_at.append(time.perf_counter())
            engine.stop()

    reply = engine.ask(COUNTING, long, on_token=on_token)
    assert reply.metrics.finish_reason == "stopped" and reply.metrics.completion_tokens < 200
    assert len(reply.stamps) == reply.metrics.completion_tokens
    assert sum(1 for stamp in reply.stamps if stamp > sent_at[0]) <= 2


def test_stop_during_prompt_prefill_aborts_the_decode(engine: Engine, loaded: object) -> None:
    long_prompt = [{"role": "user", "content": " ".join(f"word{i}" for i in range(120))}]
    request_id = engine.chat(long_prompt, GREEDY)
    started = engine.wait_for("prompt_started", timeout=60)
    assert started.request_id == request_id and started.data["prompt_tokens"] > 300
    engine.stop()
    done = engine.wait_for("reply_done", timeout=60)
    assert done.request_id == request_id
    metrics = done.metrics
    assert metrics is not None and metrics.finish_reason == "stopped" and metrics.completion_tokens == 0
    assert metrics.prompt_tokens < metrics.prompt_tokens_total  # llama_decode was aborted mid-prompt
    # the engine is fine afterwards
    assert engine.ask(COUNTING, GREEDY).metrics.finish_reason == "length"


def test_regenerate_with_the_same_seed_gives_the_same_reply(engine: Engine, loaded: object) -> None:
    sampling = Sampling(temperature=0.9, max_tokens=10, seed=1234)
    first = engine.ask(COUNTING, sampling)
    again = engine.ask(COUNTING, sampling)
    assert first.text == again.text and first.request_id != again.request_id
    request_id = engine.regenerate()
    done = engine.wait_for("reply_done", timeout=60)
    assert done.request_id == request_id and done.data["text"] == first.text
    other = engine.ask(COUNTING, Sampling(temperature=0.9, max_tokens=10, seed=99))
    assert other.metrics.finish_reason in ("length", "stop")


def test_a_conversation_that_outgrows_the_context_asks_before_dropping_turns(engine: Engine, loaded: object) -> None:
    turn = " ".join(["apple banana cherry"] * 25)
    messages = [{"role": "system", "content": "You are terse."}]
    for i in range(4):
        messages += [{"role": "user", "content": f"{i} {turn}"}, {"role": "assistant", "content": turn}]
    messages.append({"role": "user", "content": "Say hi."})
    with pytest.raises(JobFailed) as info:
        engine.ask(messages, GREEDY)
    error = info.value.error
    assert error.kind == "context_full"
    assert "no longer fits the context of 512 tokens" in error.message and "Drop the oldest turns" in error.next_step
    reply = engine.ask(messages, GREEDY, on_overflow="drop_oldest")
    assert reply.metrics.dropped_messages >= 2 and reply.metrics.dropped_messages % 2 == 0
    assert reply.metrics.prompt_tokens_total + GREEDY.max_tokens <= N_CTX


def test_chat_before_load_is_a_sentence(model: Path, tmp_path: Path) -> None:
    with Engine(log_path=tmp_path / "e.log") as eng:
        with pytest.raises(JobFailed) as info:
            eng.ask(COUNTING, GREEDY, timeout=60)
        assert info.value.error.kind == "not_loaded"
        with pytest.raises(JobFailed) as info:
            eng.load_and_wait(tmp_path / "missing.gguf", timeout=60)
        assert "does not exist" in info.value.error.message


@pytest.mark.parametrize(("sig", "words"), [(signal.SIGKILL, "being killed"), (signal.SIGSEGV, "segmentation fault")])
def test_killing_the_engine_mid_reply_is_survived_and_reported(model: Path, tmp_path: Path, sig: int, words: str) -> None:
    received: list[EngineEvent] = []
    import threading

    done = threading.Event()
    first_token = threading.Event()

    def on_event(event: EngineEvent) -> None:
        received.append(event)
        if event.kind == "tokens":
            first_token.set()
        if event.kind in ("exited", "loaded") or (event.kind == "error"):
            done.set()

    eng = Engine(on_event, log_path=tmp_path / "engine.log")
    try:
        eng.load(LoadOptions(str(model), n_ctx=N_CTX, n_threads=1, n_gpu_layers=8))
        assert done.wait(120) and received[-1].kind == "loaded"
        done.clear()
        eng.chat(COUNTING, Sampling(temperature=0.0, top_k=1, max_tokens=200))
        assert first_token.wait(60)
        pid = eng.pid
        assert pid is not None
        os.kill(pid, sig)
        assert done.wait(30)
        errors = [e for e in received if e.kind == "error"]
        assert len(errors) == 1
        error = errors[0].error
        assert error is not None and error.kind == "crash"
        assert words in error.message and "while writing a reply" in error.message
        assert error.next_step == SAFE_MODE_STEP
        assert eng.state == "crashed" and not eng.alive

        # retry in safe mode: a fresh process, repacking off, half the GPU layers
        done.clear()
        options = eng.retry_safe_mode()
        assert options.cpu_repack is False and options.n_gpu_layers == 4
        assert done.wait(120) and received[-1].kind == "loaded", [e.kind for e in received[-3:]]
    finally:
        eng.close()
    assert not eng.alive


def test_unload_frees_the_memory_and_close_leaves_no_process(model: Path, info: GGUFInfo, tmp_path: Path) -> None:
    import psutil

    eng = Engine(log_path=tmp_path / "e.log")
    loaded = eng.load_and_wait(LoadOptions(str(model), n_ctx=2048, n_threads=1))
    # at 2048 the sliding-window layers keep only their window: the planner predicts llama.cpp's KV cache exactly
    shape = planner.shape_from_gguf(info)
    assert loaded.data["memory"]["host"]["kv_cache"] == planner.kv_cache_bytes(shape, 2048)
    assert planner.kv_cache_bytes(shape, 2048) < planner.kv_cache_bytes(shape, 2048, swa_full=True)
    eng.ask(COUNTING, Sampling(max_tokens=4))
    child = psutil.Process(eng.pid)
    loaded_rss = child.memory_info().rss
    eng.unload()
    eng.wait_for("unloaded", timeout=60)
    assert child.memory_info().rss < loaded_rss - 150_000_000
    assert any(c is eng._child for c in process.live_children())
    process.terminate_all(grace_s=5)  # what the window does on close
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    eng.close()
