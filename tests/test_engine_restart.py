"""An engine that does not answer Stop is restarted; a chat template that would render forever is stopped at its
deadline, in the real engine process, and the engine keeps serving."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from desktop.chat.engine import Engine, EngineEvent, LoadOptions, Sampling
from desktop.chat.templates import RENDER_TIMEOUT_S
from desktop.jobs import JobFailed

from engine_helpers import demo_model_path  # noqa: E402 - tests/ is on sys.path under pytest
from test_convert_support import assemble, never, no_progress

COUNTING = [{"role": "user", "content": "Count from 1 to 500, separated by commas: 1, 2, 3,"}]
NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}{{ messages[0]['content'] }}"


def test_an_engine_that_does_not_answer_stop_is_restarted_and_reloads(tmp_path: Path) -> None:
    events: list[EngineEvent] = []
    arrived = threading.Condition()

    def on_event(event: EngineEvent) -> None:
        with arrived:
            events.append(event)
            arrived.notify_all()

    def wait_for(predicate, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
        with arrived:
            assert arrived.wait_for(lambda: predicate(events), timeout), [e.kind for e in events[-5:]]

    engine = Engine(on_event, log_path=tmp_path / "engine.log", stop_grace_s=1.0)
    try:
        engine.load(LoadOptions(str(demo_model_path()), n_ctx=512, n_threads=1))
        wait_for(lambda ev: any(e.kind == "loaded" for e in ev))
        request_id = engine.chat(COUNTING, Sampling(temperature=0.0, top_k=1, max_tokens=400))
        wait_for(lambda ev: any(e.kind == "tokens" for e in ev))
        stuck = engine.pid
        assert stuck is not None
        os.kill(stuck, signal.SIGSTOP)  # the child hangs: it cannot answer the stop
        engine.stop()
        wait_for(lambda ev: any(e.kind == "restarted" for e in ev), timeout=30)
        error = next(e for e in events if e.kind == "error")
        assert error.error is not None and error.error.kind == "unresponsive" and error.request_id == request_id
        assert "did not answer Stop within 1 s" in error.error.message
        restarted = next(e for e in events if e.kind == "restarted")
        assert restarted.request_id == request_id and restarted.data["reloading"] is True
        assert not any(e.kind == "error" and e.error and e.error.kind == "crash" for e in events)
        assert engine.pid != stuck and not _alive(stuck)
        wait_for(lambda ev: sum(e.kind == "loaded" for e in ev) == 2)  # the model is back
        assert engine.state == "ready"
        events.clear()
        again = engine.chat(COUNTING, Sampling(temperature=0.0, top_k=1, max_tokens=4))
        wait_for(lambda ev: any(e.kind == "reply_done" and e.request_id == again for e in ev))
    finally:
        engine.close()


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def endless_template_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tinyllama fixture converted with a chat template of two nested loops of 100,000."""
    from desktop.convert import convert

    root = tmp_path_factory.mktemp("endless")
    folder = assemble("tinyllama", root / "src")
    (folder / "chat_template.jinja").write_text(NESTED_LOOPS, encoding="utf-8")
    out = root / "endless.gguf"
    convert(folder, out, "f16", progress=no_progress, cancelled=never)
    return out


def test_a_template_that_would_render_forever_is_stopped_and_the_engine_keeps_serving(
    endless_template_model: Path, tmp_path: Path
) -> None:
    import time

    with Engine(log_path=tmp_path / "engine.log") as engine:
        loaded = engine.load_and_wait(LoadOptions(str(endless_template_model), n_ctx=256, n_threads=1))
        assert loaded.data["metadata"]["template_from_model"] is True
        started = time.monotonic()
        with pytest.raises(JobFailed) as info:
            engine.ask([{"role": "user", "content": "Hi"}], Sampling(max_tokens=4), timeout=60)
        assert time.monotonic() - started < RENDER_TIMEOUT_S + 10
        assert info.value.error.kind == "template" and "took more than" in info.value.error.message
        # the engine answers the next request; with a built-in template the model replies
        engine.load_and_wait(LoadOptions(str(endless_template_model), n_ctx=256, n_threads=1, template="llama2"))
        reply = engine.ask([{"role": "user", "content": "Hi"}], Sampling(temperature=0.0, top_k=1, max_tokens=4))
        assert reply.metrics.finish_reason in ("length", "stop")
