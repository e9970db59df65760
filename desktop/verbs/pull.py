"""``quantdesk pull REPO [--revision R] [--file PATTERN] [--json]``: download a model into the Hugging Face cache.

Without ``--file`` a checkpoint is fetched with what conversion needs; with it, the matching files (a GGUF model
with all its shards). ``HF_ENDPOINT`` is honoured. When the Hub asks for a token and this is a terminal, the token
is asked for (hidden), kept in the system keyring and the download retried.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import sys
from typing import Any

from desktop.errors import UserError
from desktop.jobs import ProgressPrinter


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("pull", help="download a model from Hugging Face (progress, Ctrl-C to stop)")
    p.add_argument("repo", help="owner/name or a huggingface.co address")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")
    p.add_argument("--file", help="a file name or pattern, e.g. Q4_K_M or '*Q4_K_M*.gguf' (all shards come along)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def _ask_token(error: UserError) -> str | None:
    from desktop.hub import tokens

    if not sys.stdin.isatty():
        return None
    print(f"{error.message}", file=sys.stderr)
    token = getpass.getpass("Hugging Face access token (input hidden, empty to give up): ").strip()
    if not token:
        return None
    try:
        tokens.save_token(token)
        print("The token is kept in the system keyring.", file=sys.stderr)
    except UserError as exc:
        print(f"{exc} It is used for this download only.", file=sys.stderr)
    return token


def run(args: argparse.Namespace) -> int:
    from desktop.hub.download import download
    from desktop.hub.errors import TOKEN_KINDS

    printer = ProgressPrinter(quiet=args.json)
    kwargs: dict[str, Any] = {"repo": args.repo, "revision": args.revision, "file": args.file}
    try:
        result = download(progress=printer, cancelled=lambda: False, **kwargs)
    except UserError as error:
        printer.end()
        if error.kind not in TOKEN_KINDS:
            raise
        token = _ask_token(error)
        if token is None:
            raise UserError(error.message, "Run this in a terminal to enter a token, or set HF_TOKEN.",
                            kind=error.kind) from None
        result = download(progress=printer, cancelled=lambda: False, token=token, **kwargs)
    printer.end()
    if args.json:
        print(json.dumps(dataclasses.asdict(result), indent=2))
    else:
        print(result.message)
        print(result.model_path)
    return 0
