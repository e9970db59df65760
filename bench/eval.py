"""The evaluation's time against a bare llama-cpp-python loop computing the same perplexity, and peak memory.

Both sides score the same model on the same text at the same context with the same threads, each in a fresh
process (so peak RSS is each side's own): the bare loop tokenizes, decodes each chunk in one batch with logits for
the second half, and takes ``-log_softmax`` of the next token with numpy; QuantDesk runs
:func:`desktop.eval.evaluate.evaluate` without a base (perplexity plus its speed measurements: the prompt timing is
free, generation adds ``--gen-tokens`` single-token decodes). Runs alternate (ours, bare); the ratio reported is
the median of the per-pair ratios, robust to load from other programs.

    python bench/eval.py [--model M.gguf] [--ctx 512] [--chunks 4] [--threads N] [--runs 3] [--gen-tokens 32]

Target: ratio (ours / bare) <= 1.10.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def demo_model() -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from engine_helpers import demo_model_path  # the demo unpacked in a shared temp folder, not the user's data

    return demo_model_path()


def peak_rss() -> int:
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def bare(model: str, ctx: int, chunks: int, threads: int) -> dict[str, float]:
    import llama_cpp
    import numpy as np

    from desktop.eval.evaluate import load_text
    from desktop.eval.llama_eval import quiet_llama

    quiet_llama()
    started = time.perf_counter()
    mp = llama_cpp.llama_model_default_params()
    mp.use_extra_bufts = False
    m = llama_cpp.llama_model_load_from_file(model.encode(), mp)
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = cp.n_batch = cp.n_ubatch = ctx
    cp.n_threads = cp.n_threads_batch = threads
    c = llama_cpp.llama_init_from_model(m, cp)
    vocab = llama_cpp.llama_model_get_vocab(m)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    data = load_text().content.encode()
    buf = (llama_cpp.llama_token * (len(data) + 16))()
    tokens = list(buf[: llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(buf), True, False)])
    n_chunks = min(chunks, len(tokens) // ctx) if chunks else len(tokens) // ctx
    first = ctx // 2
    batch = llama_cpp.llama_batch_init(ctx, 0, 1)
    nll: list[float] = []
    for i in range(n_chunks):
        piece = tokens[i * ctx : (i + 1) * ctx]
        piece[0] = llama_cpp.llama_vocab_bos(vocab)
        for k, tok in enumerate(piece):
            batch.token[k], batch.pos[k], batch.n_seq_id[k] = tok, k, 1
            batch.seq_id[k][0] = 0
            batch.logits[k] = k >= first
        batch.n_tokens = ctx
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(c), True)
        assert llama_cpp.llama_decode(c, batch) == 0
        rows = np.ctypeslib.as_array(llama_cpp.llama_get_logits(c), shape=(ctx - first, n_vocab))[:-1]
        top = rows.max(axis=1)
        lse = top + np.log(np.exp(rows - top[:, None]).sum(axis=1))
        nll.extend((lse - rows[np.arange(len(rows)), piece[first + 1 :]]).tolist())
    ppl = float(np.exp(np.mean(nll)))
    seconds = time.perf_counter() - started
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(c)
    llama_cpp.llama_model_free(m)
    return {"seconds": seconds, "ppl": ppl, "peak_rss": peak_rss()}


def ours(model: str, ctx: int, chunks: int, threads: int, gen_tokens: int) -> dict[str, float]:
    from desktop.eval.evaluate import evaluate

    started = time.perf_counter()
    result = evaluate(model, n_ctx=ctx, max_chunks=chunks, threads=threads, gen_tokens=gen_tokens)
    return {"seconds": time.perf_counter() - started, "ppl": result.ppl, "peak_rss": peak_rss(),
            "prompt_tps": result.prompt_tps or 0.0, "gen_tps": result.gen_tps or 0.0}


def run_side(side: str, args: argparse.Namespace) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--side", side, "--model", str(args.model), "--ctx", str(args.ctx),
           "--chunks", str(args.chunks), "--threads", str(args.threads), "--gen-tokens", str(args.gen_tokens)]
    env = {**os.environ, "QUANTDESK_HOME": str(Path(os.environ.get("TMPDIR", "/tmp")) / "quantdesk-bench-eval")}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model")
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--gen-tokens", type=int, default=32)
    parser.add_argument("--side", choices=("ours", "bare"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.threads:
        from desktop.eval.llama_eval import default_threads

        args.threads = default_threads()
    if args.side:
        model = str(args.model)
        data = (ours(model, args.ctx, args.chunks, args.threads, args.gen_tokens) if args.side == "ours"
                else bare(model, args.ctx, args.chunks, args.threads))
        print(json.dumps(data))
        return 0
    args.model = Path(args.model) if args.model else demo_model()
    ratios, mine, theirs = [], [], []
    for run in range(args.runs):
        a = run_side("ours", args)
        b = run_side("bare", args)
        assert abs(a["ppl"] / b["ppl"] - 1) < 1e-3, (a, b)
        ratios.append(a["seconds"] / b["seconds"])
        mine.append(a)
        theirs.append(b)
        print(f"run {run + 1}: ours {a['seconds']:.2f} s, bare {b['seconds']:.2f} s, ratio {ratios[-1]:.3f}",
              file=sys.stderr, flush=True)
    report = {
        "model": args.model.name, "ctx": args.ctx, "chunks": args.chunks, "threads": args.threads,
        "gen_tokens": args.gen_tokens,
        "ppl": mine[0]["ppl"],
        "ours_s_median": statistics.median(m["seconds"] for m in mine),
        "bare_s_median": statistics.median(t["seconds"] for t in theirs),
        "ratio_median": statistics.median(ratios),
        "ours_peak_rss_mb": max(m["peak_rss"] for m in mine) / 1e6,
        "bare_peak_rss_mb": max(t["peak_rss"] for t in theirs) / 1e6,
        "prompt_tps": statistics.median(m["prompt_tps"] for m in mine),
        "gen_tps": statistics.median(m["gen_tps"] for m in mine),
        "target": "ratio_median <= 1.10",
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
