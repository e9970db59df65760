"""``quantdesk recommend BASE.gguf [--max-memory 2GB] [--max-kld X] [--max-ppl-increase PCT] [--json]``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    from desktop.errors import UserError

    match = re.fullmatch(r"\s*([\d.]+)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in _UNITS:
        raise UserError(f"'{text}' is not a size.", "Write it like 1.5GB or 800MB.")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from desktop.eval.recommend import DEFAULT_TYPES

    p = subparsers.add_parser(
        "recommend",
        help="find my quant: make, measure and pick the smallest quant within memory and quality limits",
        description="Quantizes BASE to the types that can fit, measures each against BASE, and recommends the "
        "smallest (or fastest) that meets the limits, with the runners-up.",
    )
    p.add_argument("base", help="the F16/BF16 GGUF to quantize and compare against")
    p.add_argument("--max-memory", type=parse_size,
                   help="memory to stay within at --ctx, e.g. 6GB (1 GB = 10^9 bytes; GiB = 2^30)")
    p.add_argument("--ctx", type=int, default=4096, help="context the memory limit applies at (default 4096)")
    p.add_argument("--max-kld", type=float, help="largest acceptable mean KL divergence")
    p.add_argument("--max-ppl-increase", type=float, metavar="PCT", help="largest perplexity increase, percent")
    p.add_argument("--prefer", choices=("smallest", "fastest"), default="smallest")
    p.add_argument("--types", nargs="+", default=list(DEFAULT_TYPES), help="types to consider")
    p.add_argument("--text", help="evaluation text (default: the bundled eval.txt)")
    p.add_argument("--eval-ctx", type=int, default=512, help="context for the measurements (default 512)")
    p.add_argument("--chunks", type=int, default=0, help="score at most N chunks of the text")
    p.add_argument("-o", "--out-dir", help="where the quants go (default: next to BASE)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from desktop.eval.recommend import Limits, find_quant
    from desktop.jobs import ProgressPrinter

    limits = Limits(max_memory_bytes=args.max_memory, max_kld=args.max_kld,
                    max_ppl_increase_pct=args.max_ppl_increase, n_ctx=args.ctx, prefer=args.prefer)
    rec = find_quant(args.base, limits, types=args.types, text_path=args.text, eval_ctx=args.eval_ctx,
                     max_chunks=args.chunks, out_dir=args.out_dir, progress=(progress := ProgressPrinter()),
                     cancelled=lambda: False)
    progress.end()
    if args.json:
        data = dataclasses.asdict(rec)
        data["rejected"] = [{"candidate": c, "reason": r} for c, r in data["rejected"]]
        print(json.dumps(data, indent=2))
    else:
        print("\n".join(rec.lines()))
    return 0 if rec.chosen is not None else 2
