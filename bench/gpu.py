"""GPU memory and speed on an NVIDIA GPU: the planner against NVML, the app's engine against llama-bench.

For full and partial offload of one model (the demo Gemma 3 270M unless ``--model``) on the CUDA engine (or
``--engine vulkan``), built by the app's own builder (shared cache):

* memory: the planner's prediction for the GPU (weights + KV cache + compute + the backend's fixed overhead, what
  ``quantdesk plan`` says) against the GPU memory NVML saw taken by the load (used after - used before).
  Target: the total within 10%.
* speed: generation tok/s through QuantDesk's chat engine (child process, tokens as received) against
  ``llama-bench -n 128`` built from the same source with the same flags, measured in the same run.
  The ratio engine / llama-bench is printed.

With no NVIDIA GPU it says so and exits 0: there is nothing to measure.

    python bench/gpu.py [--model M.gguf] [--engine cuda|vulkan] [--ctx 4096] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def nvidia_gpus() -> list[Any]:
    from desktop.hardware.report import collect_nvidia

    gpus, note = collect_nvidia()
    if not gpus:
        print(f"No NVIDIA GPU here ({note or 'NVML lists none'}); nothing to measure. "
              "On a machine with one, this builds the CUDA engine and compares the planner with NVML.")
    return gpus


def model_path(given: str) -> Path:
    if given:
        return Path(given)
    from desktop.demo_model import ensure_demo_model

    return Path(ensure_demo_model())


def ensure_engine(backend: str) -> tuple[Any, Path]:
    """The engine (built, installed, smoke-tested, selected) and llama-bench from the same source."""
    from desktop import paths
    from desktop.llama import build, engines
    from desktop.llama.smoke import run_smoke_test

    def progress(done: float, total: float, message: str) -> None:
        print(f"  {int(100 * done / total) if total else 0:3d}% {message[:100]}", file=sys.stderr, flush=True)

    started = time.monotonic()
    result = build.build_engine(backend, progress, lambda: False)
    print(f"engine {result['name']}: ready in {time.monotonic() - started:.0f} s "
          f"(compiled in {result.get('build_seconds', 0)} s when it was built)")
    engine = engines.load_engine(Path(result["path"]))
    assert engine is not None
    if not engine.usable:
        smoke = run_smoke_test(engine)
        print(f"smoke test: {smoke.sentence}")
        if not smoke.ok:
            raise SystemExit(1)
    engines.select_engine(engine.name)
    plan = build.make_plan(backend)
    with open(paths.logs_dir() / f"engine-build-{plan.name}-bench.log", "a", encoding="utf-8") as log:
        bench = build.build_llama_bench(plan, progress, lambda: False, log)
    return engine, bench


def planned(model: Path, n_ctx: int, layers: int) -> Any:
    from desktop import memory
    from desktop.gguf.reader import read_gguf

    machine = memory.this_machine()  # the GPUs the selected engine uses, read in a child on it
    shape = memory.shape_from_gguf(read_gguf(model))
    return memory.plan_offload(shape, gpus=machine.gpus, host=machine.host,
                               options=memory.PlanOptions(n_ctx=n_ctx), n_gpu_layers=layers)


def engine_run(model: Path, n_ctx: int, layers: int, tokens: int) -> tuple[dict[str, Any], float]:
    """Load in the app's chat engine on the selected engine; NVML before/after the load and generation tok/s."""
    from desktop.chat.engine import Engine, LoadOptions, Sampling

    chat = Engine()
    try:
        chat.start()
        loaded = chat.load_and_wait(LoadOptions(str(model), n_ctx=n_ctx, n_gpu_layers=layers), timeout=900)
        memory = loaded.data["memory"]
        prompt = [{"role": "user", "content": "Count from 1 to 500, separated by commas."}]
        chat.ask(prompt, Sampling(temperature=0, top_k=1, max_tokens=8, seed=1))  # warm-up
        reply = chat.ask(prompt, Sampling(temperature=0, top_k=1, max_tokens=tokens, seed=1, stop=()))
        return memory, reply.metrics.generation_tokens_per_s
    finally:
        chat.close()


def llama_bench(program: Path, model: Path, layers: int, tokens: int) -> float:
    out = subprocess.run([str(program), "-m", str(model), "-ngl", str(layers), "-p", "0", "-n", str(tokens),
                          "-r", "3", "-o", "json"], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"llama-bench failed: {out.stderr[-2000:]}")
    rows = json.loads(out.stdout)
    return float(rows[-1]["avg_ts"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="")
    parser.add_argument("--engine", default="cuda", choices=("cuda", "vulkan"))
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()
    if not nvidia_gpus():
        return 0
    model = model_path(args.model)
    _engine, bench = ensure_engine(args.engine)
    full = planned(model, args.ctx, 0).total_layers
    print(f"model {model.name}, context {args.ctx}, {full} layers, engine {args.engine}")
    print(f"{'offload':<14}{'predicted GPU':>15}{'NVML taken':>14}{'ratio':>8}   {'engine tok/s':>12}{'llama-bench':>12}"
          f"{'ratio':>8}")
    ok = True
    for layers in (full, full // 2):
        plan = planned(model, args.ctx, layers)
        predicted = sum(d.breakdown.used for d in plan.gpus)  # buffers + the backend's overhead, not the margin
        memory, engine_tps = engine_run(model, args.ctx, layers, args.tokens)
        taken = sum(int(n["delta"]) for n in memory.get("nvml") or [])
        reference = llama_bench(bench, model, layers, args.tokens)
        ratio = predicted / taken if taken else float("nan")
        ok = ok and taken > 0 and abs(ratio - 1) <= 0.10
        print(f"{layers:>3}/{full:<10}{predicted / 2**20:>12.1f} MiB{taken / 2**20:>10.1f} MiB{ratio:>8.3f}   "
              f"{engine_tps:>12.1f}{reference:>12.1f}{engine_tps / reference:>8.3f}")
    print("memory target (predicted within 10% of NVML): " + ("met" if ok else "NOT met"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
