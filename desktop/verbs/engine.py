"""``quantdesk engine list|build|test|use``: the llama.cpp builds QuantDesk runs on.

``build vulkan|cuda`` builds from the installed llama-cpp-python's own source (or reuses the shared build cache),
installs into the data folder and runs the smoke test, so the engine is offered only once it passed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from desktop.jobs import ProgressPrinter, format_duration


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("engine", help="list, build, test and choose llama.cpp engines (CPU, Vulkan, CUDA)")
    sub = parser.add_subparsers(dest="engine_verb", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="the engines here, which one is selected, and whether each passed its test")
    listing.add_argument("--json", action="store_true", help="print as JSON")
    listing.set_defaults(func=run_list)
    build = sub.add_parser("build", help="build a GPU engine from llama-cpp-python's source (minutes; cached)")
    build.add_argument("backend", choices=("vulkan", "cuda"))
    build.add_argument("--jobs", type=int, default=0, help="parallel compile jobs (default: all cores)")
    build.add_argument("--cuda-arch", default=None, help="CUDA compute capability as 86, 90 (default: from NVML)")
    build.add_argument("--no-test", action="store_true", help="do not run the smoke test after building")
    build.add_argument("--check", action="store_true", help="only check the toolchain and say what is missing")
    build.set_defaults(func=run_build)
    test = sub.add_parser("test", help="smoke-test an engine: all layers on the GPU, tokens compared with the CPU's")
    test.add_argument("name", help="engine name or backend (vulkan, cuda)")
    test.add_argument("--model", default="", help="a GGUF to test with (default: the bundled demo model)")
    test.set_defaults(func=run_test)
    use = sub.add_parser("use", help="choose the engine every model runs on ('auto': the best one that passed)")
    use.add_argument("name", help="engine name, backend (cpu, vulkan, cuda) or auto")
    use.set_defaults(func=run_use)


def _printer() -> object:
    return ProgressPrinter()  # the one CLI printer: percent, ETA and wording as every verb shows them


def run_list(args: argparse.Namespace) -> int:
    from desktop.llama.engines import describe_engines

    engines = describe_engines()
    if args.json:
        print(json.dumps(engines, indent=2))
        return 0
    for engine in engines:
        print(f"{'*' if engine['selected'] else ' '} {engine['name']:<16} {engine['label']:<7} {engine['status']}")
    selected = next(e for e in engines if e["selected"])
    how = "chosen by you" if selected["chosen"] else "the best one that passed its test"
    print(f"\nSelected: {selected['name']} ({how}).")
    return 0


def run_build(args: argparse.Namespace) -> int:
    from desktop.llama.build import build_engine
    from desktop.llama.toolchain import check_toolchain

    if args.check:
        chain = check_toolchain(args.backend)
        for tool in chain.tools:
            print(f"{'ok' if tool.ok else 'MISSING':<8} {tool.name}: {tool.found or tool.problem or 'not found'}")
        if not chain.ok:
            print("\n" + chain.advice())
        return 0 if chain.ok else 1
    started = time.monotonic()
    result = build_engine(args.backend, _printer(), lambda: False, jobs=args.jobs or None, cuda_arch=args.cuda_arch)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(f"Built {result['name']} in {format_duration(time.monotonic() - started)} (compile "
          f"{format_duration(float(result.get('build_seconds', 0)))}): {result['path']}")
    if args.no_test:
        return 0
    return _test(str(result["name"]), "")


def _test(name: str, model: str) -> int:
    from desktop.llama.smoke import smoke_job

    result = smoke_job(name, _printer(), lambda: False, model=model)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    print(result["sentence"])
    return 0 if result["ok"] else 1


def run_test(args: argparse.Namespace) -> int:
    return _test(args.name, args.model)


def run_use(args: argparse.Namespace) -> int:
    from desktop.llama.engines import select_engine

    engine = select_engine(args.name)
    print(f"Models now run on the {engine.label} engine ({engine.name}).")
    return 0
