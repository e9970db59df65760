"""Servers for the serve and remote tests: ``quantdesk serve`` and llama-cpp-python's own ``llama_cpp.server``,
each a real child process on 127.0.0.1 with the demo model, plus an in-process engine with its turns."""

from __future__ import annotations

import functools
import os
import queue
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from desktop.chat.engine import Engine, EngineEvent, LoadOptions, Sampling
from desktop.chat.turns import EngineTurns

N_CTX = 512
MAX_TOKENS = 12
GREEDY = Sampling(temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, max_tokens=MAX_TOKENS)
COUNTING = [{"role": "user", "content": "Count from 1 to 100, separated by commas: 1, 2, 3,"}]
RAW_PROMPT = "The days of the week are Monday, Tuesday,"
# One prompt per comparison. A request whose prompt is the whole previous prompt again reuses the cache and
# re-evaluates only its last token in a one-token batch, whose rounding differs from the full prompt's batch, and
# on this small base model that can flip a near-tie in greedy decoding. So no prompt is asked twice of one engine.
PROMPTS = {
    "chat": "Count from 1 to 100, separated by commas: 1, 2, 3,",
    "chat_stream": "List the first ten prime numbers: 2, 3, 5,",
    "client_a": "Name the planets of the solar system in order: Mercury,",
    "client_b": "Spell the alphabet with commas: A, B, C,",
    "remote": "Write the even numbers: 2, 4, 6,",
    "remote_stream": "Name the colours of the rainbow: red, orange,",
}
COMPLETIONS = {
    "completion": "The days of the week are Monday, Tuesday,",
    "completion_stream": "The months of the year are January, February,",
}


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@functools.lru_cache(maxsize=1)
def instruct_model_path() -> Path:
    """The bundled instruct model (SmolLM2 135M Instruct), unpacked once into the shared test folder: it answers
    chat prompts under any server's chat formatting, where the base demo model often ends at once."""
    from desktop.chat_model import ensure_chat_model
    from engine_helpers import in_shared_home

    with in_shared_home():
        return Path(ensure_chat_model())


@functools.lru_cache(maxsize=1)
def fast_model_path() -> Path:
    """A tiny random llama (the quantization tests' gguf-py writer, 4 layers, F16) that generates hundreds of tokens
    a second here, so the engine sends several tokens per batch. Its end-of-text logits row is zeroed: greedy
    decoding never stops early."""
    import gguf

    from engine_helpers import SHARED_HOME
    from quant_helpers import write_tiny_llama

    path = SHARED_HOME / "tiny-llama-4l-f16-no-eos.gguf"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        write_tiny_llama(partial, n_layer=4)
        reader = gguf.GGUFReader(partial, "r+")
        next(t for t in reader.tensors if t.name == "output.weight").data[2] = 0  # </s>
        del reader
        partial.replace(path)
    return path


@dataclass
class ServerProcess:
    """A server in a child process; ``lines`` collects what it prints (stdout and stderr)."""

    process: subprocess.Popen[str]
    url: str = ""
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "\n".join(self.lines)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server_process(command: list[str], ready: str, timeout: float = 240.0) -> Iterator[ServerProcess]:
    """Start ``command``; wait for a printed line containing ``ready``; stop it (SIGTERM, then kill) afterwards."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    server = ServerProcess(process)
    seen: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            server.lines.append(line.rstrip("\n"))
            seen.put(line)
        seen.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while True:
            line = seen.get(timeout=timeout)
            if line is None:
                raise RuntimeError(f"{command[2:4]} ended before it was ready:\n{server.output()[-3000:]}")
            if ready in line:
                server.url = next(w for w in line.split() if w.startswith("http://")).removesuffix("/v1").rstrip(".")
                break
        yield server
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        reader.join(5)


@contextmanager
def quantdesk_serve(model: Path, *extra: str) -> Iterator[ServerProcess]:
    command = [sys.executable, "-m", "desktop", "serve", str(model), "--port", "0", "--ctx", str(N_CTX),
               "--threads", "1", *extra]
    with server_process(command, "Serving ") as server:
        yield server


@contextmanager
def llama_cpp_server(model: Path) -> Iterator[ServerProcess]:
    """llama-cpp-python's own OpenAI-compatible server (its ``server`` extra), on 127.0.0.1."""
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", str(N_CTX), "--n_threads", "1", "--n_threads_batch", "1", "--model_alias", "demo"]
    with server_process(command, "Uvicorn running on") as server:
        yield server


class LocalEngine:
    """An in-process engine client with :class:`EngineTurns`, as the window wires them."""

    def __init__(self, log_path: Path) -> None:
        self.other: queue.Queue[EngineEvent] = queue.Queue()
        self.turns: EngineTurns | None = None
        self.engine = Engine(self._route, log_path=log_path)
        self.turns = EngineTurns(self.engine)

    def _route(self, event: EngineEvent) -> None:
        if self.turns is None or not self.turns.feed(event):
            self.other.put(event)

    def load(self, model: Path) -> None:
        self.engine.load(LoadOptions(str(model), n_ctx=N_CTX, n_threads=1))
        while True:
            event = self.other.get(timeout=240)
            if event.kind == "loaded":
                return
            if event.kind in ("error", "exited"):
                raise RuntimeError(f"the engine did not load the model: {event.data}")

    def ask(self, sampling: Sampling = GREEDY, *, owner: str = "window", **request: Any) -> list[EngineEvent]:
        """Submit through the turns and wait for the reply; returns the request's events."""
        events: queue.Queue[EngineEvent] = queue.Queue()
        assert self.turns is not None
        self.turns.submit(sampling=sampling, listener=events.put, owner=owner, **request)
        seen = []
        while True:
            event = events.get(timeout=240)
            seen.append(event)
            if event.kind in ("reply_done", "error"):
                return seen
