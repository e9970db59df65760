"""``quantdesk search [QUERY] [--gguf] [--text-generation] [--limit N] [--cached] [--json]``: find models on
Hugging Face by name, or list the models already in the local Hugging Face cache (works offline)."""

from __future__ import annotations

import argparse
import dataclasses
import json

from desktop.jobs import format_bytes


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("search", help="search Hugging Face for models, or list downloaded ones (--cached)")
    p.add_argument("query", nargs="?", default="", help="part of the model's name")
    p.add_argument("--gguf", action="store_true", help="only repos with GGUF files")
    p.add_argument("--text-generation", action="store_true", help="only text-generation models")
    p.add_argument("--limit", type=int, default=30, help="at most this many results (default 30)")
    p.add_argument("--cached", action="store_true", help="list the models in the local Hugging Face cache instead")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from desktop.hub.search import cached_repos, search_models

    if args.cached:
        repos = [r for r in cached_repos() if args.query.lower() in r.repo_id.lower()]
        if args.json:
            print(json.dumps([dataclasses.asdict(r) for r in repos], indent=2))
        elif not repos:
            print("No models in the Hugging Face cache yet.")
        for r in repos if not args.json else []:
            print(f"{r.repo_id:<50} {r.kind:<10} {format_bytes(r.size_bytes):>9}  {r.snapshot_dir}")
        return 0
    result = search_models(args.query, gguf=args.gguf, text_generation=args.text_generation, limit=args.limit)
    if args.json:
        print(json.dumps(dataclasses.asdict(result), indent=2))
        return 1 if result.offline else 0
    if result.offline:
        print(result.message)
        return 1
    if not result.hits:
        print("No models found.")
    for hit in result.hits:
        print(f"{hit.repo_id:<50} {hit.downloads:>10} downloads  {'GGUF' if hit.is_gguf else ''}")
    return 0
