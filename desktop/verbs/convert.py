"""``quantdesk convert SRC_DIR -o OUT.gguf [--outtype f16|bf16|f32|q8_0]``: a Hugging Face folder to one GGUF."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from desktop.jobs import ProgressPrinter, format_bytes, format_duration

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "convert",
        help="convert a Hugging Face checkpoint folder to GGUF",
        description="Convert a Hugging Face model folder (config.json, safetensors weights, tokenizer) to GGUF, "
        "without torch. Supports Llama (Llama 2/3, Mistral, TinyLlama, SmolLM), Qwen2, Qwen3, Gemma 3 and Phi-3.",
    )
    p.add_argument("source", metavar="SRC_DIR", help="the checkpoint folder")
    p.add_argument("-o", "--output", required=True, metavar="OUT.gguf", help="the GGUF file to write")
    p.add_argument("--outtype", default="f16", choices=["f16", "bf16", "f32", "q8_0"],
                   help="tensor type of the weights (default: f16; norms always stay f32)")
    p.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)  # for debugging
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from desktop.convert.job import cleanup_paths
    from desktop.process import run_in_child

    out = Path(args.output)
    if out.suffix.lower() != ".gguf":
        out = out.with_name(out.name + ".gguf")
    progress = ProgressPrinter()

    kwargs = {"src_dir": str(Path(args.source).resolve()), "out_path": str(out.resolve()), "outtype": args.outtype}
    if args.in_process:
        from desktop.convert.job import run as job

        result = job(progress=progress, cancelled=lambda: False, **kwargs)
    else:
        result = run_in_child("desktop.convert.job:run", kwargs, progress=progress, cleanup=cleanup_paths(out))
    progress.end()
    print(f"{result['name']} ({result['size_label']}, {result['architecture']}) -> {result['path']}: "
          f"{format_bytes(result['size'])}, {result['tensors']} tensors, {format_duration(result['seconds'])}")
    _register(Path(result["path"]), str(Path(args.source).resolve()))
    return 0


def _register(path: Path, source: str) -> None:
    """Add the new file to the library when the library module is there; a failure only costs the listing."""
    try:
        from desktop.library import Library
    except ImportError:
        return
    try:
        Library().add_file(path, source=f"converted from {source}")
    except Exception:  # noqa: BLE001 - the GGUF is written; the listing can be refreshed later
        log.warning("could not add %s to the library", path, exc_info=True)
