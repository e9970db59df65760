"""``quantdesk quantize IN.gguf TYPE [TYPE...] [-o DIR] [--imatrix F] [--output-type T] [--embedding-type T]``."""

from __future__ import annotations

import argparse
import sys

from desktop.jobs import ProgressPrinter, format_bytes


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from desktop.quant.types import QUANT_TYPES

    types = "\n".join(
        f"  {t.name:<9} {t.bpw:5.2f} bpw  {t.description}{'  [needs --imatrix]' if t.needs_imatrix else ''}"
        for t in QUANT_TYPES
    )
    p = subparsers.add_parser(
        "quantize",
        help="quantize a GGUF to one or more types",
        description="Quantize a GGUF (best an F16/BF16/F32 one) with llama.cpp. Outputs are named <model>-<TYPE>.gguf; "
        "an existing file is never replaced (the output becomes <model>-<TYPE>-2.gguf instead).",
        epilog=f"types (bits per weight as on a Llama-3-8B-shaped model):\n{types}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", help="the GGUF to quantize")
    p.add_argument("types", nargs="+", metavar="TYPE", help="target types, e.g. Q4_K_M Q6_K (listed below)")
    p.add_argument("-o", "--out-dir", help="output folder (default: next to the source; the models folder when the source is in the "
                   "Hugging Face cache)")
    p.add_argument("--imatrix", help="importance matrix file (from 'quantdesk imatrix' or llama.cpp)")
    p.add_argument("--output-type", help="ggml type for output.weight, e.g. Q8_0")
    p.add_argument("--embedding-type", help="ggml type for token_embd.weight, e.g. Q8_0")
    p.add_argument("--tensor-type", action="append", default=[], metavar="REGEX=TYPE",
                   help="force a ggml type on tensors matching REGEX (repeatable)")
    p.add_argument("--pure", action="store_true", help="no per-tensor mixture: every tensor gets the main type")
    p.add_argument("--allow-requantize", action="store_true",
                   help="accept an already-quantized source (the errors compound)")
    p.add_argument("--threads", type=int, default=0, help="threads (default: all cores)")
    p.add_argument("--dry-run", action="store_true", help="only print the predicted sizes")
    p.set_defaults(func=run)


def _overrides(items: list[str]) -> tuple[tuple[str, str], ...]:
    from desktop.errors import UserError

    pairs = []
    for item in items:
        pattern, sep, type_name = item.rpartition("=")
        if not sep or not pattern:
            raise UserError(f"'{item}' is not REGEX=TYPE.", "For example --tensor-type 'ffn_down=Q6_K'.")
        pairs.append((pattern, type_name))
    return tuple(pairs)


def run(args: argparse.Namespace) -> int:
    from desktop.quant.quantize import REQUANTIZE_WARNING, QuantizeOptions, plan_quantization, quantize_many

    options = QuantizeOptions(
        imatrix=args.imatrix,
        output_type=args.output_type,
        embedding_type=args.embedding_type,
        overrides=_overrides(args.tensor_type),
        pure=args.pure,
        allow_requantize=args.allow_requantize,
        threads=args.threads,
    )
    if args.allow_requantize:
        print(f"Warning: {REQUANTIZE_WARNING}", file=sys.stderr)
    tasks = plan_quantization(args.source, args.types, args.out_dir, options, check_disk=not args.dry_run)
    for task in tasks:
        print(f"{task.quant.name:>9}  predicted {format_bytes(task.predicted_bytes):>9}  -> {task.output}")
    if args.dry_run:
        return 0
    progress = ProgressPrinter()
    try:
        results = quantize_many(args.source, args.types, args.out_dir, options, progress=progress,
                                cancelled=lambda: False)
    finally:
        progress.end()
    for r in results:
        print(f"{r.quant_type:>9}  {format_bytes(r.bytes):>9}  {r.seconds:6.1f} s  {r.path}")
    return 0
