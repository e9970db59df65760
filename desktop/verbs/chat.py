"""``quantdesk chat [MODEL.gguf] --prompt TEXT [--json]``: one answer from the chat engine, with its metrics; without
MODEL, the default chat model (:mod:`desktop.chat_model`). ``quantdesk chat --server URL [--model NAME]``: the same
from an OpenAI-compatible server (:class:`desktop.chat.remote.RemoteEngine`, same events, same output)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "chat",
        help="answer one prompt with a GGUF model and print the reply and its speed",
        description="Load MODEL in the chat engine (a child process), answer PROMPT once, and print the reply "
        "with prompt and generation tokens/second and time to first token, as llama.cpp measured them.",
    )
    parser.add_argument("model", nargs="?", default=None,
                        help="a .gguf file (default: the bundled chat model, SmolLM2 135M Instruct)")
    parser.add_argument("--server", default=None, metavar="URL",
                        help="ask an OpenAI-compatible server instead (llama-server, vLLM, Ollama, quantdesk serve); "
                        "its API key, if it needs one, is read from the system keyring for that address")
    parser.add_argument("--model", dest="server_model", default=None, metavar="NAME",
                        help="with --server: the model to ask (default: the server's only model)")
    parser.add_argument("--set-key", action="store_true",
                        help="with --server: read the server's API key from the terminal (not echoed) or stdin and "
                        "keep it in the system keyring for that address")
    parser.add_argument("--prompt", required=True, help="the user's message")
    parser.add_argument("--system", default="", help="a system prompt (the default model has one of its own)")
    parser.add_argument("--ctx", type=int, default=2048, help="context length (default 2048)")
    parser.add_argument("--gpu-layers", type=int, default=0, help="layers to offload to the GPU (default 0)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all physical cores)")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--min-p", type=float, default=0.05)
    parser.add_argument("--repeat-penalty", type=float, default=1.1)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--template", default=None, help="a built-in chat template instead of the model's own")
    parser.add_argument("--cpu-repack", action="store_true", help="use llama.cpp's CPU repacking (crashes some CPUs)")
    parser.add_argument("--json", action="store_true", help="print the reply and metrics as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from desktop.chat.engine import Engine, LoadOptions, Sampling
    from desktop.chat_model import ensure_chat_model, system_prompt_for
    from desktop.errors import UserError
    from desktop.llama.session import default_threads
    from desktop.settings import load_settings

    if args.server:
        from desktop.chat.remote import RemoteEngine

        if args.model:
            raise UserError("Give either a model file or --server, not both.", kind="bad_arguments")
        if args.set_key:
            _set_key(args.server)
        engine: Engine = RemoteEngine(args.server)
        model, system = args.server_model or "", args.system
    elif args.server_model:
        raise UserError("--model names a model on a server: give --server URL too, or the .gguf file alone.",
                        kind="bad_arguments")
    else:
        engine = Engine()
        model = args.model or str(ensure_chat_model())
        system = system_prompt_for(model, args.system)
    options = LoadOptions(
        path=model,
        n_ctx=args.ctx,
        n_gpu_layers=args.gpu_layers,
        n_threads=args.threads or default_threads(),  # no window to keep responsive: every physical core
        cpu_repack=args.cpu_repack or load_settings().cpu_repack,
        template=args.template,
    )
    sampling = Sampling(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        repeat_penalty=args.repeat_penalty,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": args.prompt}
    ]
    try:
        loaded = engine.load_and_wait(model if args.server else options)
        stream = None if args.json else (lambda text: (sys.stdout.write(text), sys.stdout.flush()))
        try:
            reply = engine.ask(messages, sampling, on_token=stream)
        except KeyboardInterrupt:
            engine.stop()
            raise
    finally:
        engine.close()
    metrics = reply.metrics
    if args.json:
        print(
            json.dumps(
                {"reply": reply.text, "metrics": dataclasses.asdict(metrics), "model": loaded.data.get("metadata", {})},
                indent=2,
            )
        )
    else:
        ttft = f"{metrics.ttft_s:.2f} s" if metrics.ttft_s is not None else "n/a"
        print()
        print(
            f"[prompt {metrics.prompt_tokens} tokens at {metrics.prompt_tokens_per_s:.1f} tok/s; "
            f"generated {metrics.generated_tokens} tokens at {metrics.generation_tokens_per_s:.1f} tok/s; "
            f"first token after {ttft}; {metrics.finish_reason}]",
            file=sys.stderr,
        )
    return 0


def _set_key(url: str) -> None:
    """Keep the API key for the server at ``url`` in the keyring; it is never echoed, printed or logged."""
    import getpass

    from desktop.chat import api_keys
    from desktop.chat.remote import ServerAddress

    address = ServerAddress.parse(url).url
    key = getpass.getpass(f"API key for {address}: ") if sys.stdin.isatty() else sys.stdin.readline()
    api_keys.save_remote_key(address, key)
