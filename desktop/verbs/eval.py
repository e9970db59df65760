"""``quantdesk eval MODEL.gguf [--base BASE.gguf] [--text FILE] [--ctx N] [--chunks N] [--json]``."""

from __future__ import annotations

import argparse
import json

from desktop.jobs import ProgressPrinter


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "eval",
        help="measure a model: perplexity, KL divergence against its base, speed on this machine",
        description="Perplexity as llama.cpp's llama-perplexity computes it; with --base (the F16/BF16 the quant was "
        "made from) also KL divergence and top-1 agreement; prompt and generation tok/s on this machine. "
        "Results are stored and reused while the files are unchanged.",
    )
    p.add_argument("model", help="the GGUF to measure")
    p.add_argument("--base", help="the F16/BF16 GGUF to compare against")
    p.add_argument("--text", help="a UTF-8 text file (default: the bundled eval.txt)")
    p.add_argument("--ctx", type=int, default=512, help="context per chunk (default 512)")
    p.add_argument("--chunks", type=int, default=0, help="score at most N chunks (default: the whole text)")
    p.add_argument("--threads", type=int, default=0, help="threads (default: physical cores)")
    p.add_argument("--gpu-layers", type=int, default=None,
                   help="layers on the GPU (default: as many as fit on the GPUs the selected engine uses)")
    p.add_argument("--force", action="store_true", help="measure again even if a stored result exists")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def format_result(r: object) -> str:
    from desktop.eval.evaluate import EvalResult

    assert isinstance(r, EvalResult)
    lines = [f"{r.quant_type}  {r.model_path}",
             f"  perplexity   {r.ppl:.4f} ± {r.ppl_stderr:.4f}"]
    if r.base_ppl is not None:
        lines[-1] += f"   (base {r.base_ppl:.4f}, {r.ppl_increase_pct:+.2f}%)"
    if r.kld_mean is not None:
        lines.append(f"  KLD          {r.kld_mean:.6f} ± {r.kld_stderr or 0:.6f}   (99th percentile {r.kld_p99:.4f})")
        lines.append(f"  same top-1   {100 * (r.top1_agreement or 0):.2f}%")
    if r.prompt_tps:
        lines.append(f"  prompt       {r.prompt_tps:.1f} tok/s (batches of {r.prompt_batch})")
    if r.gen_tps:
        lines.append(f"  generation   {r.gen_tps:.1f} tok/s ({r.gen_tokens} tokens)")
    lines.append(f"  {r.provenance()}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from desktop.eval.measurements import measure

    from desktop.llama.gpu_layers import planned_gpu_layers

    gpu_layers = args.gpu_layers if args.gpu_layers is not None else planned_gpu_layers(args.model, args.ctx)
    progress = ProgressPrinter()
    try:
        result = measure(args.model, base_path=args.base, text_path=args.text, n_ctx=args.ctx,
                         max_chunks=args.chunks, threads=args.threads, n_gpu_layers=gpu_layers, force=args.force,
                         progress=progress, cancelled=lambda: False)
    finally:
        progress.end()
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_result(result))
    return 0
