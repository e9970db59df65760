"""``quantdesk inspect REPO [--revision R] [--context N] [--json]``: what a Hugging Face repo is and which of its
quant types (or GGUF files) fit this machine, before downloading anything."""

from __future__ import annotations

import argparse
import json
from typing import Any

from desktop.jobs import format_bytes


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "inspect",
        help="see what a Hugging Face model is and what fits this machine, before downloading",
        description="List a Hugging Face repo's files, classify it (safetensors checkpoint, GGUF, unsupported) "
        "and say, for a context length, which quant types or GGUF files fit this machine's GPU memory or RAM.",
    )
    p.add_argument("repo", help="owner/name or a huggingface.co address")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")
    p.add_argument("--context", type=int, default=4096, help="context length in tokens for the fit (default 4096)")
    p.add_argument("--json", action="store_true", help="print the report and fit table as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from desktop.memory import this_machine
    from desktop.hub.inspect import inspect_repo
    from desktop.hub.repo import fit_rows

    if args.context <= 0:
        from desktop.errors import UserError

        raise UserError("The context length must be a positive number of tokens.", "For example --context 4096.")

    from desktop.jobs import ProgressPrinter

    progress = ProgressPrinter(quiet=args.json)
    report = inspect_repo(progress=progress, cancelled=lambda: False, repo=args.repo, revision=args.revision)
    progress.end()
    memory = this_machine()
    rows = fit_rows(report, args.context, memory)
    if args.json:
        data: dict[str, Any] = {
            "report": report.to_dict(),
            "context": args.context,
            "memory": {"ram_available": memory.host.available_bytes,
                       "gpus": [{"name": g.name, "backend": g.backend, "free": g.free_bytes} for g in memory.gpus],
                       "gpus_left_out": list(memory.left_out)},
            "fit": [row.to_dict() for row in rows],
        }
        print(json.dumps(data, indent=2))
        return 0
    print(format_report(report, rows, args.context, memory))
    return 0 if report.kind != "unsupported" else 1


def format_report(report: Any, rows: list[Any], context: int, memory: Any) -> str:
    from desktop.gguf.reader import format_parameters
    from desktop.hub.repo import describe

    lines = [f"{report.repo_id}  (revision {report.revision}, commit {report.sha[:10]})", describe(report)]
    if report.kind == "unsupported":
        lines.append(report.next_step)
        return "\n".join(lines)
    lines.append(f"Files: {len(report.files)}, {format_bytes(report.total_bytes)}"
                 + (f"; trained context {report.context_length} tokens" if report.context_length else ""))
    if report.download_files:
        lines.append(f"`quantdesk pull` fetches {len(report.download_files)} files, "
                     f"{format_bytes(report.download_bytes)}.")
    lines.append(memory.describe())
    lines.extend(memory.left_out)
    if rows:
        lines.append(f"At a context of {context} tokens (KV cache {format_bytes(rows[0].kv_bytes)}):")
        width = max(len(r.label.rsplit('/', 1)[-1]) for r in rows)
        size_head = "predicted" if report.kind == "checkpoint" else "size"
        lines.append(f"  {'type' if report.kind == 'checkpoint' else 'file':<{width}}  {size_head:>10}  runs in")
        for r in rows:
            label = r.label.rsplit("/", 1)[-1]
            lines.append(f"  {label:<{width}}  {format_bytes(r.size_bytes):>10}  {r.fit.where}")
    if report.parameter_count:
        lines.append(f"{format_parameters(report.parameter_count)} parameters.")
    lines.extend(report.notes)
    return "\n".join(lines)
