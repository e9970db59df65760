"""``quantdesk selfcheck``: start the window headless and check what an installed or bundled app needs."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "selfcheck", help="check that resources, Qt plugins, llama.cpp and child processes work in this install"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from desktop.app import selfcheck

    result = selfcheck()
    from desktop.llama.engines import selected_engine

    engine = selected_engine()
    result["engine"] = f"{engine.name}: {engine.status()}"  # the llama.cpp build child processes run on
    print(json.dumps(result, indent=2))
    return 0 if all(result["checks"].values()) else 1
