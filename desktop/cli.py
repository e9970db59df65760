"""``quantdesk``: with no verb it opens the window; ``quantdesk VERB`` does one thing headless."""

from __future__ import annotations

import argparse
import importlib
import logging
import multiprocessing
import pkgutil
import sys

from desktop import __version__, verbs
from desktop.errors import Cancelled, UserError
from desktop.jobs import JobFailed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantdesk",
        description="See what your machine can run, make GGUF quants, measure them, chat with them. "
        "Without a command, the window opens.",
    )
    parser.add_argument("--version", action="version", version=f"QuantDesk {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail to stderr")
    sub = parser.add_subparsers(dest="verb", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(verbs.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{verbs.__name__}.{info.name}")
        module.register(sub)
    gui = sub.add_parser("gui", help="open the window (the default)")
    gui.set_defaults(func=_run_gui)
    return parser


def _run_gui(args: argparse.Namespace) -> int:
    from desktop.app import run_app

    return run_app()


def main(argv: list[str] | None = None) -> int:
    multiprocessing.freeze_support()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    func = getattr(args, "func", _run_gui)
    try:
        return int(func(args) or 0)
    except UserError as exc:
        print(f"quantdesk: {exc}", file=sys.stderr)
        return 1
    except JobFailed as exc:
        print(f"quantdesk: {exc.error.sentence()}", file=sys.stderr)
        logging.getLogger("quantdesk").info("%s", exc.error.detail)
        return 1
    except Cancelled:
        print("Cancelled.", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("Stopped.", file=sys.stderr)
        return 130
