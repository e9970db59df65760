"""``quantdesk serve MODEL.gguf [--port P] [--host H]``: the model as an OpenAI-compatible API until Ctrl+C."""

from __future__ import annotations

import argparse
import queue
import signal
import sys
import threading
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    from desktop.chat.server import DEFAULT_HOST, DEFAULT_PORT, ServeLimits

    limits = ServeLimits()
    parser = subparsers.add_parser(
        "serve",
        help="serve a GGUF model as an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models)",
        description="Load MODEL in the chat engine (a child process) and answer OpenAI-compatible requests on "
        f"http://HOST:PORT/v1 until Ctrl+C. Only this machine can connect unless --host names another address; "
        "then clients need the API key, which QuantDesk generates once, shows once and keeps in the system keyring.",
    )
    parser.add_argument("model", help="a .gguf file")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this "
                        "machine only; 0.0.0.0: every interface, needs the API key)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free one)")
    parser.add_argument("--ctx", type=int, default=4096, help="context length (default 4096)")
    parser.add_argument("--gpu-layers", type=int, default=0, help="layers to offload to the GPU (default 0)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all physical cores)")
    parser.add_argument("--name", default=None, help="the model name clients see (default: the file name)")
    parser.add_argument("--require-key", action="store_true", help="ask for the API key on 127.0.0.1 too")
    parser.add_argument("--new-key", action="store_true", help="replace the stored API key with a new one (shown once)")
    parser.add_argument("--max-tokens", type=int, default=limits.max_tokens,
                        help=f"the most tokens one request may generate (default {limits.max_tokens})")
    parser.add_argument("--max-connections", type=int, default=limits.max_connections,
                        help=f"open connections at once; more are answered 503 (default {limits.max_connections})")
    parser.set_defaults(func=run)


def _api_key(args: argparse.Namespace, loopback: bool) -> str | None:
    """The key clients must send, or None on loopback without --require-key. A new key is printed once."""
    from desktop.chat import api_keys

    if loopback and not args.require_key and not args.new_key:
        return None
    if args.new_key:
        key, is_new = api_keys.new_serve_key(), True
    else:
        key, is_new = api_keys.ensure_serve_key()
    if is_new:
        print(f"API key (shown this once; QuantDesk keeps it in the system keyring): {key}", flush=True)
    else:
        print("Clients need the API key kept in the system keyring (quantdesk serve --new-key makes a new one).",
              flush=True)
    return key


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from desktop.chat.engine import Engine, EngineEvent, LoadOptions
    from desktop.chat.server import ChatServer, ServeEvent, ServeLimits, is_loopback, log_line
    from desktop.chat.turns import EngineTurns
    from desktop.errors import UserError
    from desktop.jobs import JobFailed
    from desktop.llama.session import default_threads
    from desktop.settings import load_settings

    if args.max_tokens < 1 or args.max_connections < 1 or not 0 <= args.port <= 65535:
        raise UserError("--max-tokens and --max-connections must be at least 1, --port between 0 and 65535.")
    model = Path(args.model)
    if not model.is_file():
        raise UserError(f"{model} does not exist.", "Give the path of a .gguf file.", kind="not_found")
    key = _api_key(args, is_loopback(args.host))
    limits = replace(ServeLimits(), max_tokens=args.max_tokens, max_connections=args.max_connections)

    engine_events: queue.Queue[EngineEvent] = queue.Queue()
    turns: EngineTurns | None = None

    def on_engine_event(event: EngineEvent) -> None:
        if turns is None or not turns.feed(event):
            engine_events.put(event)

    def on_serve_event(event: ServeEvent) -> None:
        if event.kind == "request_done":
            print(log_line(event), file=sys.stderr, flush=True)

    engine = Engine(on_engine_event)
    turns = EngineTurns(engine)
    server = ChatServer(turns, model_name=args.name or model.stem, host=args.host, port=args.port, api_key=key,
                        limits=limits, on_event=on_serve_event)
    options = LoadOptions(path=str(model), n_ctx=args.ctx, n_gpu_layers=args.gpu_layers,
                          n_threads=args.threads or default_threads(),  # headless: every physical core, as chat
                          cpu_repack=load_settings().cpu_repack)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if threading.current_thread() is threading.main_thread() else None
    try:
        url = server.start()  # first: a taken port is a sentence before any model is loaded
        engine.load(options)
        _wait_loaded(engine_events)
        print(f"Serving {server.model_name} at {url}/v1 (OpenAI-compatible). Ctrl+C stops.", flush=True)
        while True:
            event = _next(engine_events)
            if event.kind == "error" and event.error is not None and event.data.get("request") == "engine":
                raise JobFailed(event.error)
            if event.kind == "exited":
                return 1
    finally:
        server.close()
        engine.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _wait_loaded(events: Any) -> None:
    from desktop.jobs import JobFailed

    while True:
        event = _next(events)
        if event.kind == "loaded":
            return
        if event.kind == "error" and event.error is not None:
            raise JobFailed(event.error)
        if event.kind in ("load_cancelled", "exited"):
            raise JobFailed(_gone())


def _next(events: Any) -> Any:
    """The next engine event; waits in short steps so Ctrl+C and SIGTERM land at once."""
    while True:
        try:
            return events.get(timeout=0.5)
        except queue.Empty:
            continue


def _gone() -> Any:
    from desktop.jobs import JobError

    return JobError("engine_unavailable", "The chat engine stopped before the model was loaded.", "Try again.")


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
