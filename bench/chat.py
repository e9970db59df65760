"""Generation speed through the app's chat engine (child process + protocol) against a bare llama-cpp-python loop.

Both sides use the same model (the demo Gemma 3 270M unless ``--model``), the same threads, the same prompt
(rendered by the same chat template, tokenized the same way), greedy sampling and the same number of tokens.
The reference is llama-cpp-python's own ``Llama.generate`` loop in this process; the engine's rate is what the
caller sees: tokens received per second between the first and the last token event. Runs alternate, engine then
bare; the reported ratio is the median of the per-pair ratios (robust to load from other programs), and the
medians of each side are printed too.

    python bench/chat.py [--model M.gguf] [--tokens 128] [--threads N] [--runs 3]

Target: ratio (engine / bare) >= 0.97.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "Count from 1 to 500, separated by commas: 1, 2, 3,"


def demo_model() -> Path:
    try:
        from desktop.demo_model import ensure_demo_model  # type: ignore[import-not-found]

        return Path(ensure_demo_model())
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from engine_helpers import demo_model_path

        return demo_model_path()


def bare_run(llm: object, tokens: list[int], n_tokens: int) -> tuple[int, float, float]:
    """Tokens, seconds from the first to the last token, and llama.cpp's generation tok/s."""
    import llama_cpp

    llm.reset()  # type: ignore[attr-defined]
    llama_cpp.llama_perf_context_reset(llm._ctx.ctx)  # type: ignore[attr-defined]
    vocab = llm._model.vocab  # type: ignore[attr-defined]
    count = 0
    first = last = 0.0
    generator = llm.generate(tokens, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)  # type: ignore[attr-defined]
    for token in generator:
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        now = time.perf_counter()
        count += 1
        if count == 1:
            first = now
        last = now
        if count >= n_tokens:
            break
    generator.close()
    perf = llama_cpp.llama_perf_context(llm._ctx.ctx)  # type: ignore[attr-defined]
    llama_rate = perf.n_eval / perf.t_eval_ms * 1000 if perf.t_eval_ms else 0.0
    return count, last - first, llama_rate


def engine_run(engine: object, messages: list[dict[str, str]], n_tokens: int) -> tuple[int, float, float]:
    from desktop.engine import Sampling

    stamps: list[float] = []
    sampling = Sampling(temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, max_tokens=n_tokens)
    reply = engine.ask(messages, sampling, on_token=lambda _text: stamps.append(time.perf_counter()))  # type: ignore[attr-defined]
    return reply.metrics.completion_tokens, stamps[-1] - stamps[0], reply.metrics.generation_tokens_per_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    import llama_cpp

    from desktop.chat_templates import choose_template, render
    from desktop.engine import Engine, LoadOptions
    from desktop.engine_child import _patched_model_params

    model = args.model or demo_model()
    messages = [{"role": "user", "content": PROMPT}]

    engine = Engine()
    loaded = engine.load_and_wait(LoadOptions(str(model), n_ctx=args.ctx, n_threads=args.threads))
    meta = loaded.data["metadata"]

    with _patched_model_params(use_extra_bufts=False, progress=None):
        llm = llama_cpp.Llama(
            str(model),
            n_ctx=args.ctx,
            n_threads=args.threads,
            n_threads_batch=args.threads,
            swa_full=bool(meta.get("swa_full", False)),  # the engine's context settings
            verbose=False,
        )
    template = choose_template(llm.metadata.get("tokenizer.chat_template"), meta["architecture"], None)
    prompt = render(template, messages, bos_token=meta["bos_token"], eos_token=meta["eos_token"])
    add_bos = meta["add_bos"] and not prompt.startswith(meta["bos_token"])
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)

    engine_rates: list[float] = []
    bare_rates: list[float] = []
    engine_llama: list[float] = []
    bare_llama: list[float] = []
    counts: list[int] = []
    try:
        engine_run(engine, messages, 8)  # warm-up both sides
        bare_run(llm, tokens, 8)
        for _ in range(args.runs):
            n_engine, s_engine, l_engine = engine_run(engine, messages, args.tokens)
            n_bare, s_bare, l_bare = bare_run(llm, tokens, args.tokens)
            counts.append(min(n_engine, n_bare))
            engine_rates.append((n_engine - 1) / s_engine)
            bare_rates.append((n_bare - 1) / s_bare)
            engine_llama.append(l_engine)
            bare_llama.append(l_bare)
    finally:
        engine.close()
        llm.close()

    engine_rate = statistics.median(engine_rates)
    bare_rate = statistics.median(bare_rates)
    # each pair ran back to back, so its ratio is the least disturbed by other load on the machine
    pair_ratio = statistics.median(e / b for e, b in zip(engine_rates, bare_rates))
    result = {
        "model": str(model),
        "threads": args.threads,
        "tokens": counts,
        "engine_tok_s": round(engine_rate, 2),
        "bare_tok_s": round(bare_rate, 2),
        "ratio": round(pair_ratio, 3),
        "ratio_of_medians": round(engine_rate / bare_rate, 3),
        "engine_llama_counter_tok_s": round(statistics.median(engine_llama), 2),
        "bare_llama_counter_tok_s": round(statistics.median(bare_llama), 2),
        "runs_engine": [round(r, 2) for r in engine_rates],
        "runs_bare": [round(r, 2) for r in bare_rates],
        "target": 0.97,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"generation through the engine: {engine_rate:.1f} tok/s, bare llama-cpp-python loop: {bare_rate:.1f} tok/s, "
            f"ratio {result['ratio']:.3f} (median of pairs; target >= 0.97); tokens per run {counts}, "
            f"threads {args.threads}"
        )
        print(
            f"llama.cpp's own counters: engine {result['engine_llama_counter_tok_s']} tok/s, "
            f"bare {result['bare_llama_counter_tok_s']} tok/s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
