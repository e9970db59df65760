"""The chat engine's speed against llama.cpp's own llama-bench, built from the same vendored source.

    python bench/chat.py [--threads N] [--runs 40] [--tiny-runs 60] [--prompt-pairs 1] [--tokens 256]
        [--tiny-tokens 1024] [--models demo,tiny] [--gui]

For each model, the same threads, CPU repacking off and flash attention "auto" on every side:

- generation: ``llama-bench -n TOKENS -d PROMPT`` (tg at the depth of the engine's prompt) against the engine
  (child process, protocol and all: tokens per second as the caller receives them, from the first token's arrival
  to the last one's) and, as a second reference, a bare llama-cpp-python ``Llama.generate`` loop in this process.
  Target: engine >= 0.95 of llama-bench.
- time to first token: the engine's prompt tok/s (llama.cpp's own counters over the prefill, abort callback
  included) against ``llama-bench -p N -d D`` at the same prompt length N and depth D: the chat template's start,
  shared with the previous prompt, stays in the KV cache, and even a few tokens there push the first batch's attention
  past a 256-cell boundary (llama-bench's own pp853 at depth 5 ran at 0.83-0.91 of its pp858 at depth 0 on the tiny
  llama); ``--prompt-pairs`` pairs per run, each pair's order alternating. Like llama-bench, which runs the prompt
  once to warm up before it times it, the engine gets a warm-up prompt of the same length first (after the other
  sides ran, its weights and buffers are out of the caches); the cold ratio is printed too. Target: >= 0.90.

Models: (a) the demo model (Gemma 3 270M Q4_K_M) and (b) the quantization tests' tiny llama (gguf-py; 4 layers,
256 wide, a 512-token vocabulary, F16, random weights), fast enough (1,000+ tok/s) that per-token overhead dominates.

llama-bench is built once (CPU, ``-j2``, the ``llama-bench`` target only) from the llama-cpp-python sdist of the
installed version, into ``~/.cache/quantdesk-bench`` (``QUANTDESK_BENCH_CACHE`` to move it); the bench says when it
builds and where. Each run measures the three sides back to back (and llama-bench a second time, as a control), in
an order that rotates from run to run, and the verdict is the median over runs of each run's ratio: on a shared
virtual machine whose speed drifts by 10-20% within a minute, the sides of one run see the same machine, while
medians taken side by side compare different moments. The ratio of the sides' medians and each side's best run (the
closest to its speed on an idle machine) are printed too, and so is the control: llama-bench against itself, whose
spread is how close this machine can tell two speeds apart. The tiny model generates more tokens
(``--tiny-tokens``): 256 of them take 70 ms, too short to time on a shared machine. One run's ratio on this kind of
machine spreads by 10-20% (the middle half of runs spans about 0.15), so a median needs dozens of runs to be within
0.02: 40 of the demo model and 60 of the tiny one by default (about 20 minutes in all), with one prompt pair each
rather than more pairs in fewer runs. Run it on a machine as quiet as you can get. The engine runs its native token loop (desktop/llama/native.py) where it could be built;
``QUANTDESK_NATIVE_LOOP=0`` measures the Python loop instead. ``--gui`` adds the old measurement of the GUI thread's longest stall while a reply streams into the
Chat page (target < 30 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' model helpers

CACHE = Path(os.environ.get("QUANTDESK_BENCH_CACHE") or Path.home() / ".cache" / "quantdesk-bench")
GEN_TARGET = 0.95
PROMPT_TARGET = 0.90


# ----------------------------------------------------------------------------------------------- llama-bench


def llama_bench_binary() -> Path:
    """llama-bench of the installed llama-cpp-python's vendored llama.cpp, built once into the cache."""
    import llama_cpp

    version = llama_cpp.__version__
    build = CACHE / f"build-{version}-cpu"
    binary = build / "bin" / "llama-bench"
    if binary.exists():
        print(f"llama-bench: built earlier from llama-cpp-python {version}'s source, {binary}")
        return binary
    src_root = CACHE / "src"
    src_root.mkdir(parents=True, exist_ok=True)
    source = src_root / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if not source.exists():
        sdist = src_root / f"llama_cpp_python-{version}.tar.gz"
        if not sdist.exists():
            print(f"llama-bench: fetching the llama-cpp-python {version} sdist (pip download, or pip's cache)")
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
                            f"llama-cpp-python=={version}", "-d", str(src_root)], check=True)
        with tarfile.open(sdist) as archive:
            archive.extractall(src_root, filter="data")
    print(f"llama-bench: building it once from {source} into {build} (CPU, -j2; several minutes)")
    started = time.monotonic()
    subprocess.run(["cmake", "-S", str(source), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                    "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                    "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DGGML_NATIVE=ON",
                    *(["-G", "Ninja"] if shutil.which("ninja") else [])], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-bench", "-j2"], check=True,
                   stdout=subprocess.DEVNULL)
    print(f"llama-bench: built in {time.monotonic() - started:.0f} s")
    return binary


def llama_bench(binary: Path, model: Path, threads: int, *, n_prompt: int = 0, n_gen: int = 0, depth: int = 0,
                runs: int = 5) -> float:
    """llama-bench's average tok/s for one test (pp when ``n_prompt``, tg when ``n_gen``)."""
    args = [str(binary), "-m", str(model), "-t", str(threads), "-p", str(n_prompt), "-n", str(n_gen),
            "-d", str(depth), "-b", "512", "-ub", "512", "-fa", "auto", "--repack", "0", "-r", str(runs),
            "-o", "json"]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)
    return float(rows[0]["avg_ts"])


# ----------------------------------------------------------------------------------------------- the models


def demo_model() -> Path:
    """The demo GGUF, unpacked once into the tests' shared folder under the temp dir (never the user's data)."""
    from engine_helpers import demo_model_path

    return demo_model_path()


def tiny_llama(path: Path) -> Path:
    """The quantization tests' tiny random llama (gguf-py, F16, a 512-token SentencePiece-style vocabulary), with 4
    layers; its end-of-text row of the output matrix is zeroed, so greedy decoding never ends early."""
    import gguf
    from quant_helpers import write_tiny_llama

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        write_tiny_llama(partial, n_layer=4)
        reader = gguf.GGUFReader(partial, "r+")
        output = next(t for t in reader.tensors if t.name == "output.weight")
        output.data[2] = 0  # </s>: logit 0 against 500 random ones
        del reader
        partial.rename(path)
    return path


# ----------------------------------------------------------------------------------------------- the engine side


def _greedy(max_tokens: int) -> Any:
    from desktop.chat.engine import Sampling

    return Sampling(temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, max_tokens=max_tokens)


def engine_generation(engine: Any, messages: list[dict[str, str]], n_tokens: int) -> tuple[float, int, int]:
    """Tokens per second as the caller receives them: the first token's arrival to the last one's; also the
    tokens generated and the prompt length (the depth the generation ran at)."""
    arrivals: list[tuple[float, int]] = []
    request_id = engine.chat(messages, _greedy(n_tokens))
    while True:
        event = engine.wait_for("tokens", "reply_done", timeout=600)
        if event.request_id != request_id:
            continue
        if event.kind == "tokens":
            if event.data.get("stamps"):
                arrivals.append((time.perf_counter(), len(event.data["stamps"])))
            continue
        metrics = event.metrics
        break
    count = sum(n for _, n in arrivals)
    first, last = arrivals[0][0], arrivals[-1][0]
    return (count - 1) / (last - first), count, metrics.prompt_tokens_total


def engine_prompt(engine: Any, prompt_words: int, run: int) -> tuple[float, int, float, int]:
    """The prompt's tok/s by llama.cpp's counters, the tokens it decoded, the time to first token, and the depth it
    decoded them at (the start the chat template shares with the previous prompt stays in the KV cache)."""
    words = " ".join(f"w{(run * 7919 + i) % 1000}" for i in range(prompt_words))
    reply = engine.ask([{"role": "user", "content": f"{run} {words}"}], _greedy(1))
    m = reply.metrics
    return m.prompt_tokens_per_s, m.prompt_tokens, float(m.ttft_s or 0.0), m.prompt_tokens_total - m.prompt_tokens


def bare_generation(llm: Any, prompt: list[int], n_tokens: int) -> float:
    """llama-cpp-python's own generate loop, greedy: tokens per second from the first token to the last."""
    llm.reset()
    count, first, last = 0, 0.0, 0.0
    generator = llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    for _token in generator:
        now = time.perf_counter()
        count += 1
        if count == 1:
            first = now
        last = now
        if count >= n_tokens:
            break
    generator.close()
    return (count - 1) / (last - first)


def measure(name: str, model: Path, binary: Path, args: argparse.Namespace) -> dict[str, Any]:
    import llama_cpp

    from desktop.chat.engine import Engine, LoadOptions
    from desktop.chat.templates import choose_template, render
    from desktop.llama.params import patched_model_params

    messages = [{"role": "user", "content": "Count from 1 to 1000, separated by commas: 1, 2, 3,"}]
    n_tokens = args.tiny_tokens if name.startswith("tiny") else args.tokens
    runs = args.tiny_runs if name.startswith("tiny") else args.runs
    n_ctx = max(1024, args.prompt + 64, n_tokens + 256)
    engine = Engine()
    loaded = engine.load_and_wait(LoadOptions(str(model), n_ctx=n_ctx, n_threads=args.threads, flash_attn="auto"))
    meta = loaded.data["metadata"]
    token_loop = meta.get("token_loop", "python") + (f" ({meta['token_loop_note']})" if meta.get("token_loop_note") else "")
    with patched_model_params():
        llm = llama_cpp.Llama(str(model), n_ctx=n_ctx, n_threads=args.threads, n_threads_batch=args.threads,
                              swa_full=False, flash_attn=bool(meta.get("flash_attn")), verbose=False)
    template = choose_template(llm.metadata.get("tokenizer.chat_template"), meta["architecture"], meta["template"])
    text = render(template, messages, bos_token=meta["bos_token"], eos_token=meta["eos_token"])
    add_bos = meta["add_bos"] and not text.startswith(meta["bos_token"])
    prompt = llm.tokenize(text.encode(), add_bos=add_bos, special=True)

    engine_tg: list[float] = []
    bare_tg: list[float] = []
    bench_tg: list[float] = []
    control_tg: list[float] = []  # llama-bench measured a second time in the same run: the machine's noise floor
    engine_pp: list[float] = []
    cold_pp: list[float] = []  # the engine's warm-up prompt: caches cold after the other sides ran
    bench_pp: list[float] = []
    ttft: list[float] = []
    pp_tokens: list[int] = []
    pp_depths: list[int] = []
    try:
        engine_generation(engine, messages, 16)  # warm-up
        bare_generation(llm, prompt, 16)
        depth = engine_generation(engine, messages, 2)[2]  # the prompt as the engine decodes it
        for run in range(runs):
            sides = [
                lambda: engine_tg.append(engine_generation(engine, messages, n_tokens)[0]),
                lambda: bare_tg.append(bare_generation(llm, prompt, n_tokens)),
                lambda: bench_tg.append(llama_bench(binary, model, args.threads, n_gen=n_tokens, depth=depth, runs=1)),
                lambda: control_tg.append(llama_bench(binary, model, args.threads, n_gen=n_tokens, depth=depth,
                                                      runs=1)),
            ]
            for k in range(len(sides)):  # engine first, then bare first, then llama-bench first, ...
                sides[(run + k) % len(sides)]()
            for repeat in range(args.prompt_pairs):  # a prompt pair is short: several per run
                pair = run * args.prompt_pairs + repeat
                bench_first = pair % 2 == 1  # llama-bench's prompt length is the engine's from the pair before
                if bench_first:
                    bench_pp.append(llama_bench(binary, model, args.threads, n_prompt=pp_tokens[-1],
                                                depth=pp_depths[-1], runs=1))
                cold_pp.append(engine_prompt(engine, args.prompt_words, 100_000 + pair)[0])  # as llama-bench warms up
                pp, n_pp, first, pp_depth = engine_prompt(engine, args.prompt_words, pair)
                pp_depths.append(pp_depth)
                engine_pp.append(pp)
                pp_tokens.append(n_pp)
                ttft.append(first)
                if not bench_first:
                    bench_pp.append(llama_bench(binary, model, args.threads, n_prompt=n_pp, depth=pp_depth, runs=1))
    finally:
        engine.close()
        llm.close()
    tg = {"engine": statistics.median(engine_tg), "bare": statistics.median(bare_tg),
          "llama_bench": statistics.median(bench_tg)}

    def paired(ours: list[float], theirs: list[float]) -> float:
        return round(statistics.median(a / b for a, b in zip(ours, theirs)), 3)

    def middle_half(ours: list[float], theirs: list[float]) -> list[float]:
        ratios = sorted(a / b for a, b in zip(ours, theirs))
        if len(ratios) < 4:
            return [round(ratios[0], 3), round(ratios[-1], 3)]
        quartiles = statistics.quantiles(ratios, n=4)
        return [round(quartiles[0], 3), round(quartiles[2], 3)]

    return {
        "model": name,
        "path": str(model),
        "token_loop": token_loop,
        "threads": args.threads,
        "tokens": n_tokens,
        "depth": depth,
        "runs": runs,
        # the verdicts: each run measured the sides back to back, so their ratio is the least disturbed by the
        # machine's drift; the median over runs
        "tg_engine_vs_llama_bench": paired(engine_tg, bench_tg),
        "tg_bare_vs_llama_bench": paired(bare_tg, bench_tg),
        "tg_engine_vs_bare": paired(engine_tg, bare_tg),
        "pp_engine_vs_llama_bench": paired(engine_pp, bench_pp),
        "pp_engine_vs_llama_bench_middle_half": middle_half(engine_pp, bench_pp),
        "pp_cold_engine_vs_llama_bench": paired(cold_pp, bench_pp),
        # the spread of those per-run ratios (their middle half), and llama-bench against itself: a ratio closer to
        # 1 than this control's spread is as close as this machine can tell
        "tg_engine_vs_llama_bench_middle_half": middle_half(engine_tg, bench_tg),
        "tg_control_llama_bench_vs_itself": paired(control_tg, bench_tg),
        "tg_control_middle_half": middle_half(control_tg, bench_tg),
        "tg_tok_s": {k: round(v, 1) for k, v in tg.items()},
        "tg_medians_engine_vs_llama_bench": round(tg["engine"] / tg["llama_bench"], 3),
        # other programs only ever slow a run down: each side's best run is the closest to its unloaded speed
        "tg_best_tok_s": {"engine": round(max(engine_tg), 1), "bare": round(max(bare_tg), 1),
                          "llama_bench": round(max(bench_tg), 1)},
        "tg_best_engine_vs_llama_bench": round(max(engine_tg) / max(bench_tg), 3),
        "tg_runs": {"engine": [round(r, 1) for r in engine_tg], "bare": [round(r, 1) for r in bare_tg],
                    "llama_bench": [round(r, 1) for r in bench_tg], "llama_bench_again": [round(r, 1) for r in control_tg]},
        "prompt_tokens": int(statistics.median(pp_tokens)),
        "prompt_depth": int(statistics.median(pp_depths)),
        "pp_tok_s": {"engine": round(statistics.median(engine_pp), 1),
                     "llama_bench": round(statistics.median(bench_pp), 1)},
        "pp_medians_engine_vs_llama_bench": round(statistics.median(engine_pp) / statistics.median(bench_pp), 3),
        "pp_best_engine_vs_llama_bench": round(max(engine_pp) / max(bench_pp), 3),
        "pp_runs": {"engine": [round(r, 1) for r in engine_pp], "llama_bench": [round(r, 1) for r in bench_pp]},
        "ttft_s": round(statistics.median(ttft), 3),
    }


def report(row: dict[str, Any]) -> None:
    tg, pp = row["tg_tok_s"], row["pp_tok_s"]
    ok_tg = "ok" if row["tg_engine_vs_llama_bench"] >= GEN_TARGET else "BELOW TARGET"
    ok_pp = "ok" if row["pp_engine_vs_llama_bench"] >= PROMPT_TARGET else "BELOW TARGET"
    print(f"{row['model']}: {row['threads']} threads, {row['tokens']} tokens at depth {row['depth']}, "
          f"{row['runs']} runs (ratios: median over runs of each run's ratio); the engine's token loop: "
          f"{row['token_loop']}")
    print(f"  generation  engine/llama-bench {row['tg_engine_vs_llama_bench']:.3f} (target >= {GEN_TARGET}; {ok_tg}); "
          f"bare llama-cpp-python loop/llama-bench {row['tg_bare_vs_llama_bench']:.3f}; engine/bare "
          f"{row['tg_engine_vs_bare']:.3f}")
    print(f"              spread: engine/llama-bench middle half of runs {row['tg_engine_vs_llama_bench_middle_half']}; "
          f"noise floor: llama-bench against itself {row['tg_control_llama_bench_vs_itself']:.3f}, middle half "
          f"{row['tg_control_middle_half']}")
    print(f"              medians: engine {tg['engine']}, llama-bench tg {tg['llama_bench']}, bare {tg['bare']} tok/s "
          f"(ratio of medians {row['tg_medians_engine_vs_llama_bench']:.3f})")
    print(f"  prompt      engine/llama-bench pp{row['prompt_tokens']} @ d{row['prompt_depth']} "
          f"{row['pp_engine_vs_llama_bench']:.3f} (target >= "
          f"{PROMPT_TARGET}; {ok_pp}); middle half of {len(row['pp_runs']['engine'])} pairs "
          f"{row['pp_engine_vs_llama_bench_middle_half']}; medians: engine {pp['engine']}, llama-bench "
          f"{pp['llama_bench']} tok/s; time to first token {row['ttft_s']} s")
    print(f"              without a warm-up (caches cold after the other sides ran; llama-bench always warms up): "
          f"engine/llama-bench {row['pp_cold_engine_vs_llama_bench']:.3f}")
    best = row["tg_best_tok_s"]
    print(f"  best runs   generation engine {best['engine']}, llama-bench {best['llama_bench']}, bare {best['bare']} "
          f"tok/s: engine/llama-bench {row['tg_best_engine_vs_llama_bench']:.3f}; prompt engine/llama-bench "
          f"{row['pp_best_engine_vs_llama_bench']:.3f}")
    print(f"  runs        tg {json.dumps(row['tg_runs'])}")
    print(f"              pp {json.dumps(row['pp_runs'])}")


def main(argv: list[str] | None = None) -> int:
    from desktop.llama.session import default_threads

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--runs", type=int, default=40, help="runs (the demo model: about 15 s each)")
    parser.add_argument("--tiny-runs", type=int, default=60, help="runs (the tiny model: a few seconds each)")
    parser.add_argument("--tokens", type=int, default=256, help="tokens generated per run (the demo model)")
    parser.add_argument("--tiny-tokens", type=int, default=1024, help="tokens generated per run (the tiny model)")
    parser.add_argument("--prompt-words", type=int, default=200, help="words in the prompt test (~2 tokens each)")
    parser.add_argument("--prompt-pairs", type=int, default=1, help="prompt tests (engine, llama-bench) per run")
    parser.add_argument("--models", default="demo,tiny")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--gui", action="store_true", help="also measure the GUI thread's stall while streaming")
    args = parser.parse_args(argv)
    args.prompt = args.prompt_words * 2
    binary = llama_bench_binary()
    models = {"demo": ("demo (Gemma 3 270M Q4_K_M)", demo_model),
              "tiny": ("tiny llama (F16, 512-token vocabulary)", lambda: tiny_llama(CACHE / "tiny-llama-4l-f16.gguf"))}
    rows = []
    for key in args.models.split(","):
        label, make = models[key]
        row = measure(label, make(), binary, args)
        rows.append(row)
        if not args.json:
            report(row)
    if args.gui:
        from bench.chat_gui import gui_stall

        rows.append(gui_stall(demo_model(), 128, args.threads, 1024))
        if not args.json:
            print(json.dumps(rows[-1]))
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
