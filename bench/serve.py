"""Generation speed through ``quantdesk serve`` with a streaming OpenAI client, against the engine's own rate.

``quantdesk serve`` runs as the user runs it (a child process: CLI, HTTP server, engine child); the client is the
official ``openai`` package, streaming. The reference is the chat engine itself in this process (the same engine
child code, the same model, threads, prompt, greedy sampling and number of tokens), measured as the caller sees
it: tokens received per second between the first and the last token. Through the server that is the first and
last streamed chunk, with the token count from the stream's ``usage``. Runs alternate, engine then server; the
ratio is the median of the per-pair ratios (robust to load from other programs; which side goes first alternates); llama.cpp's own counters of both
sides are printed too (the server's arrive as llama-server's ``timings``). On a shared machine the two engine
children get different shares of the CPU from run to run; the third line divides that out: each side's delivered
rate over llama.cpp's own rate in the same request, server against engine.

    python bench/serve.py [--model M.gguf] [--tokens 128] [--threads N] [--runs 5]

Target: ratio (server / engine) >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "Count from 1 to 500, separated by commas: 1, 2, 3,"


def demo_model() -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from engine_helpers import demo_model_path

    return demo_model_path()


def start_server(model: Path, threads: int, ctx: int) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "desktop", "serve", str(model), "--port", "0", "--ctx", str(ctx),
               "--threads", str(threads)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert server.stdout is not None
        for line in server.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    while True:
        line = lines.get(timeout=300)
        if not line:
            raise SystemExit("quantdesk serve ended before it was ready")
        if line.startswith("Serving "):
            return server, next(w for w in line.split() if w.startswith("http://"))


def server_run(client: object, n_tokens: int) -> tuple[int, float, float]:
    """Tokens, seconds from the first to the last streamed token, and llama.cpp's generation tok/s (``timings``)."""
    stamps: list[float] = []
    tokens, counter_rate = 0, 0.0
    stream = client.chat.completions.create(  # type: ignore[attr-defined]
        model="bench", messages=[{"role": "user", "content": PROMPT}], stream=True, max_tokens=n_tokens,
        temperature=0, top_p=1.0, stream_options={"include_usage": True},
        extra_body={"top_k": 1, "min_p": 0.0, "repeat_penalty": 1.0},  # the engine side's exact sampling settings
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            stamps.append(time.perf_counter())
        if chunk.choices and chunk.choices[0].finish_reason:
            counter_rate = float((chunk.model_extra or {}).get("timings", {}).get("predicted_per_second", 0.0))
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return tokens, stamps[-1] - stamps[0], counter_rate


def engine_run(engine: object, n_tokens: int) -> tuple[int, float, float]:
    from desktop.chat.engine import Sampling

    stamps: list[float] = []
    sampling = Sampling(temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, max_tokens=n_tokens)
    reply = engine.ask([{"role": "user", "content": PROMPT}], sampling,  # type: ignore[attr-defined]
                       on_token=lambda _text: stamps.append(time.perf_counter()))
    return reply.metrics.completion_tokens, stamps[-1] - stamps[0], reply.metrics.generation_tokens_per_s


def rate(tokens: int, span: float) -> float:
    """Tokens per second as received: the first token opens the span, so it is not counted."""
    return (tokens - 1) / span if span > 0 else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    import openai

    from desktop.chat.engine import Engine, LoadOptions

    model = args.model or demo_model()
    server, url = start_server(model, args.threads, args.ctx)
    engine = Engine()
    pairs: list[dict[str, float]] = []
    try:
        engine.load_and_wait(LoadOptions(str(model), n_ctx=args.ctx, n_threads=args.threads))
        client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=600)
        engine_run(engine, 8)  # warm both sides (first decode, page cache)
        server_run(client, 8)
        for run in range(args.runs):
            if run % 2:  # alternate which side goes first, so a trend in the machine's load favours neither
                s_tokens, s_span, s_counter = server_run(client, args.tokens)
                e_tokens, e_span, e_counter = engine_run(engine, args.tokens)
            else:
                e_tokens, e_span, e_counter = engine_run(engine, args.tokens)
                s_tokens, s_span, s_counter = server_run(client, args.tokens)
            pairs.append({"engine": rate(e_tokens, e_span), "server": rate(s_tokens, s_span),
                          "engine_counter": e_counter, "server_counter": s_counter,
                          "engine_tokens": e_tokens, "server_tokens": s_tokens})
    finally:
        engine.close()
        server.terminate()
        server.wait(30)
    ratio = statistics.median(p["server"] / p["engine"] for p in pairs)
    result = {
        "model": str(model), "threads": args.threads, "tokens": args.tokens, "runs": args.runs,
        "server_tok_s": round(statistics.median(p["server"] for p in pairs), 2),
        "engine_tok_s": round(statistics.median(p["engine"] for p in pairs), 2),
        "ratio": round(ratio, 3),
        "counter_ratio": round(statistics.median(p["server_counter"] / p["engine_counter"] for p in pairs), 3),
        "server_delivery": round(statistics.median(p["server"] / p["server_counter"] for p in pairs), 3),
        "engine_delivery": round(statistics.median(p["engine"] / p["engine_counter"] for p in pairs), 3),
        "delivery_ratio": round(statistics.median((p["server"] / p["server_counter"]) / (p["engine"] / p["engine_counter"])
                                                  for p in pairs), 3),
        "server_llama_counter_tok_s": round(statistics.median(p["server_counter"] for p in pairs), 2),
        "engine_llama_counter_tok_s": round(statistics.median(p["engine_counter"] for p in pairs), 2),
        "tokens_per_run": sorted({int(p["server_tokens"]) for p in pairs} | {int(p["engine_tokens"]) for p in pairs}),
        "target": 0.95,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"streamed through quantdesk serve: {result['server_tok_s']} tok/s, the engine itself: "
          f"{result['engine_tok_s']} tok/s, ratio {ratio:.3f} (median of {args.runs} pairs; target >= 0.95); "
          f"tokens per run {result['tokens_per_run']}, threads {args.threads}")
    print(f"llama.cpp's own counters: server {result['server_llama_counter_tok_s']} tok/s, "
          f"engine {result['engine_llama_counter_tok_s']} tok/s, ratio {result['counter_ratio']:.3f} "
          "(what the two engine children got from the CPU, before any HTTP)")
    print(f"delivered / llama.cpp's rate in the same request: server {result['server_delivery']}, "
          f"engine {result['engine_delivery']}, ratio {result['delivery_ratio']:.3f} (the serving path's own cost, "
          "free of the CPU share each child got)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
