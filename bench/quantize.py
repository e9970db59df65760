"""Benchmark: QuantDesk's quantization path (a child process with per-tensor progress through llama.cpp's log
callback) against a bare in-process ``llama_model_quantize`` call, on the same input, type and thread count.

The input is the demo model (Gemma 3 270M) turned back into F16, as the tests make it. Prints both times and the
ratio app/bare; the target is at most 1.10.

    python bench/quantize.py [--type Q4_K_M] [--threads N] [--repeats 2]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def bare(source: Path, out: Path, type_name: str, threads: int) -> float:
    import llama_cpp

    from desktop.quant.types import by_name

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = by_name(type_name).ftype
    params.nthread = threads
    started = time.perf_counter()
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    elapsed = time.perf_counter() - started
    assert rc == 0, "llama_model_quantize failed"
    out.unlink()
    return elapsed


def app(source: Path, out_dir: Path, type_name: str, threads: int) -> tuple[float, int]:
    from desktop.quant.quantize import QuantizeOptions, quantize_many

    messages = [0]

    def progress(done: float, total: float, message: str) -> None:
        messages[0] += 1

    started = time.perf_counter()
    [result] = quantize_many(source, [type_name], out_dir, QuantizeOptions(threads=threads), progress=progress,
                             cancelled=lambda: False, register=False)
    elapsed = time.perf_counter() - started
    result.path.unlink()
    return elapsed, messages[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--type", default="Q4_K_M")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from tests.quant_helpers import demo_f16_path, quiet_llama

    work = Path(tempfile.mkdtemp(prefix="quantdesk-bench-"))
    os.environ["QUANTDESK_HOME"] = str(work / "home")  # logs of the child jobs; never the user's data
    source = demo_f16_path()
    quiet_llama()
    bare_times, app_times = [], []
    n_messages = 0
    for _ in range(args.repeats):  # interleaved, so a change in machine load hits both
        bare_times.append(bare(source, work / "bare.gguf", args.type, args.threads))
        elapsed, n_messages = app(source, work, args.type, args.threads)
        app_times.append(elapsed)
    best_bare, best_app = min(bare_times), min(app_times)
    print(f"input: {source.name} ({source.stat().st_size / 1e6:.0f} MB), type {args.type}, threads {args.threads}")
    print(f"bare llama_model_quantize in-process: {', '.join(f'{t:.2f}' for t in bare_times)} s (best {best_bare:.2f})")
    print(f"QuantDesk (child process, {n_messages} progress messages): "
          f"{', '.join(f'{t:.2f}' for t in app_times)} s (best {best_app:.2f})")
    print(f"ratio app/bare: {best_app / best_bare:.3f} (target <= 1.10)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
