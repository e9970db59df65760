"""``quantdesk convert SRC_DIR -o OUT.gguf [--outtype f16|bf16|f32|q8_0]``: a Hugging Face folder to one GGUF."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from desktop.jobs import ProgressPrinter, format_bytes, format_duration



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

    import os

    from desktop.errors import UserError

    # Never resolved: a path in the Hugging Face cache is a link to a shared blob, and the resolved path would
    # write onto the blob. Never an existing name (a file, or a link) either: this run did not make it.
    out = Path(os.path.abspath(args.output))
    if out.suffix.lower() != ".gguf":
        out = out.with_name(out.name + ".gguf")
    if os.path.lexists(out):
        raise UserError(f"{out} already exists{' (a link)' if out.is_symlink() else ''}; QuantDesk does not replace "
                        "files it did not make.", "Choose another output name, or delete that file first.",
                        kind="exists")
    progress = ProgressPrinter()

    kwargs = {"src_dir": os.path.abspath(args.source), "out_path": str(out), "outtype": args.outtype}
    if args.in_process:
        from desktop.convert.job import run as job

        result = job(progress=progress, cancelled=lambda: False, **kwargs)
    else:
        result = run_in_child("desktop.convert.job:run", kwargs, progress=progress, cleanup=cleanup_paths(out))
    progress.end()
    print(f"{result['name']} ({result['size_label']}, {result['architecture']}) -> {result['path']}: "
          f"{format_bytes(result['size'])}, {result['tensors']} tensors, {format_duration(result['seconds'])}")
    from desktop.library import register

    register(Path(result["path"]), source=f"converted from {os.path.abspath(args.source)}")
    return 0
