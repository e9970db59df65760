"""``quantdesk imatrix MODEL.gguf --text FILE -o OUT.imatrix.gguf``: compute an importance matrix."""

from __future__ import annotations

import argparse
from pathlib import Path

from desktop.jobs import ProgressPrinter


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "imatrix",
        help="compute an importance matrix from a calibration text",
        description="Run MODEL over a calibration text and save llama.cpp's GGUF importance matrix, which the "
        "low-bit types (IQ1_*, IQ2_*, IQ3_XXS, IQ3_XS, Q2_K_S) need and every other type benefits from.",
    )
    p.add_argument("model", help="the GGUF to calibrate (best the F16/BF16 one you quantize from)")
    p.add_argument("--text", help="calibration text file (default: QuantDesk's bundled general sample)")
    p.add_argument("-o", "--output", help="output file (default: <model>.imatrix.gguf next to the model)")
    p.add_argument("--ctx", type=int, default=512, help="tokens per chunk (default 512)")
    p.add_argument("--chunks", type=int, help="use at most this many chunks")
    p.add_argument("--threads", type=int, help="threads (default: all cores)")
    p.add_argument("--gpu-layers", type=int, default=None,
                   help="layers on the GPU (default: as many as fit on the GPUs the selected engine uses)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from desktop.quant.imatrix import compute_imatrix

    model = Path(args.model)
    out = Path(args.output) if args.output else model.with_name(model.name.removesuffix(".gguf") + ".imatrix.gguf")

    from desktop.llama.gpu_layers import planned_gpu_layers

    gpu_layers = args.gpu_layers if args.gpu_layers is not None else planned_gpu_layers(model, args.ctx)
    progress = ProgressPrinter(prefix="importance matrix: ")
    try:
        compute_imatrix(model, args.text, out, progress=progress, cancelled=lambda: False, n_ctx=args.ctx,
                        max_chunks=args.chunks, threads=args.threads, n_gpu_layers=gpu_layers)
    finally:
        progress.end()
    print(out)
    return 0
