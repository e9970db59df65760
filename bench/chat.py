"""Generation speed through the app's chat engine (child process + protocol) against a bare llama-cpp-python loop.

Both sides use the same model (the demo Gemma 3 270M unless ``--model``), the same threads, the same prompt
(rendered by the same chat template, tokenized the same way), greedy sampling and the same number of tokens.
The reference is llama-cpp-python's own ``Llama.generate`` loop in this process; the engine's rate is what the
caller sees: tokens received per second between the first and the last token event. Runs alternate, engine then
bare; the reported ratio is the median of the per-pair ratios (robust to load from other programs), and the
medians of each side are printed too.

    python bench/chat.py [--model M.gguf] [--tokens 128] [--threads N] [--runs 3] [--only engine|gui]

Target: ratio (engine / bare) >= 0.97.

The second measurement is the GUI thread's longest stall while a reply streams into the Chat page with the
live graph running (offscreen Qt, the real page and engine): a 5 ms QTimer on the GUI thread records the gap
between its ticks; the reference is the same probe on the same page, idle, just before. Target: under 30 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "Count from 1 to 500, separated by commas: 1, 2, 3,"


def demo_model() -> Path:
    try:
        from desktop.demo_model import ensure_demo_model  # type: ignore[import-not-found]

        return Path(ensure_demo_model())
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from engine_helpers import demo_model_path

        return demo_model_path()


def bare_run(llm: object, tokens: list[int], n_tokens: int) -> tuple[int, float, float]:
    """Tokens, seconds from the first to the last token, and llama.cpp's generation tok/s."""
    import llama_cpp

    llm.reset()  # type: ignore[attr-defined]
    llama_cpp.llama_perf_context_reset(llm._ctx.ctx)  # type: ignore[attr-defined]
    vocab = llm._model.vocab  # type: ignore[attr-defined]
    count = 0
    first = last = 0.0
    generator = llm.generate(tokens, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)  # type: ignore[attr-defined]
    for token in generator:
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        now = time.perf_counter()
        count += 1
        if count == 1:
            first = now
        last = now
        if count >= n_tokens:
            break
    generator.close()
    perf = llama_cpp.llama_perf_context(llm._ctx.ctx)  # type: ignore[attr-defined]
    llama_rate = perf.n_eval / perf.t_eval_ms * 1000 if perf.t_eval_ms else 0.0
    return count, last - first, llama_rate


def engine_run(engine: object, messages: list[dict[str, str]], n_tokens: int) -> tuple[int, float, float]:
    from desktop.chat.engine import Sampling

    stamps: list[float] = []
    sampling = Sampling(temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, max_tokens=n_tokens)
    reply = engine.ask(messages, sampling, on_token=lambda _text: stamps.append(time.perf_counter()))  # type: ignore[attr-defined]
    return reply.metrics.completion_tokens, stamps[-1] - stamps[0], reply.metrics.generation_tokens_per_s


def gui_stall(model: Path, n_tokens: int, threads: int, ctx: int, idle_s: float = 2.0) -> dict[str, object]:
    """The longest gap between 5 ms ticks on the GUI thread: idle, then while a reply streams into the page."""
    import tempfile

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    os.environ["QUANTDESK_HOME"] = tempfile.mkdtemp(prefix="quantdesk-bench-")  # never the user's conversations
    from PySide6.QtCore import QEventLoop, Qt, QTimer
    from PySide6.QtWidgets import QApplication

    from desktop.demo_model import DEMO_SOURCE
    from desktop.gguf.reader import read_gguf
    from desktop.library import ModelEntry
    from desktop.ui.chat.page import ChatPage
    from desktop.workers import JobManager

    app = QApplication.instance() or QApplication(["bench"])
    info = read_gguf(model)
    entry = ModelEntry(1, model, info.name, info.architecture, info.parameter_count, info.quant_type,
                       info.context_length, info.size_bytes, DEMO_SOURCE, None, 0.0)
    jobs = JobManager()
    page = ChatPage(jobs)
    page.resize(1180, 780)
    page.show()
    page.set_models([entry])
    page.offload.context.setValue(ctx)
    page.offload.threads.setValue(threads)
    page.settings.temperature.setValue(0.0)
    page.settings.top_k.setValue(1)
    page.settings.repeat_penalty.setValue(1.0)
    page.settings.max_tokens.setValue(n_tokens)

    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    probe = QTimer()
    probe.setTimerType(Qt.TimerType.PreciseTimer)
    probe.setInterval(5)
    probe.timeout.connect(tick)

    def run_until(condition, timeout_s: float) -> None:  # type: ignore[no-untyped-def]
        loop = QEventLoop()
        check = QTimer()
        check.timeout.connect(lambda: loop.quit() if condition() else None)
        check.start(20)
        QTimer.singleShot(int(timeout_s * 1000), loop.quit)
        loop.exec()
        check.stop()

    try:
        page.load_model()
        run_until(lambda: bool(page.loaded_metadata), 300)
        run_until(lambda: False, 0.5)  # let the page settle after loading
        last[0] = time.perf_counter()
        probe.start()
        run_until(lambda: False, idle_s)
        idle = gaps[1:]
        gaps.clear()
        finished: list[object] = []
        page.sig_reply_finished.connect(lambda text, metrics: finished.append(metrics))
        page.send(PROMPT)
        run_until(lambda: page.reply is not None and bool(page.reply.stamps), 300)
        gaps.clear()  # from the first token to the end of the reply
        last[0] = time.perf_counter()
        run_until(lambda: bool(finished), 600)
        streaming = gaps[1:]
        probe.stop()
        metrics = finished[0] if finished else None
    finally:
        page.shutdown()
        jobs.stop_all(timeout_s=5.0)
    idle_max = max(idle) * 1000 if idle else 0.0
    stream_max = max(streaming) * 1000 if streaming else 0.0
    return {
        "gui_idle_max_gap_ms": round(idle_max, 1),
        "gui_streaming_max_gap_ms": round(stream_max, 1),
        "gui_streaming_p99_gap_ms": round(statistics.quantiles(streaming, n=100)[98] * 1000, 1) if len(streaming) > 100 else None,
        "gui_stall_over_idle": round(stream_max / idle_max, 2) if idle_max else None,
        "gui_gaps_over_30ms": sum(g > 0.030 for g in streaming),
        "gui_reply_tokens": getattr(metrics, "completion_tokens", 0),
        "gui_reply_tok_s": round(getattr(metrics, "generation_tokens_per_s", 0.0), 2),
        "gui_graph_redraws": page.graph.redraws,
        "gui_target_ms": 30,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", choices=("engine", "gui"), default=None, help="run one of the two measurements")
    args = parser.parse_args(argv)
    model = args.model or demo_model()
    result: dict[str, object] = {"model": str(model), "threads": args.threads}
    if args.only != "gui":
        result.update(engine_against_bare(args, model))
    if args.only != "engine":
        result.update(gui_stall(model, args.tokens, args.threads, args.ctx))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if "ratio" in result:
        print(
            f"generation through the engine: {result['engine_tok_s']} tok/s, bare llama-cpp-python loop: "
            f"{result['bare_tok_s']} tok/s, ratio {result['ratio']:.3f} (median of pairs; target >= 0.97); "
            f"tokens per run {result['tokens']}, threads {args.threads}"
        )
        print(
            f"llama.cpp's own counters: engine {result['engine_llama_counter_tok_s']} tok/s, "
            f"bare {result['bare_llama_counter_tok_s']} tok/s"
        )
    if "gui_streaming_max_gap_ms" in result:
        print(
            f"GUI thread's longest stall while a reply streams into the Chat page with the graph running: "
            f"{result['gui_streaming_max_gap_ms']} ms (target < 30 ms; p99 {result['gui_streaming_p99_gap_ms']} ms, "
            f"{result['gui_gaps_over_30ms']} gaps over 30 ms); idle page: {result['gui_idle_max_gap_ms']} ms, "
            f"ratio {result['gui_stall_over_idle']}; reply {result['gui_reply_tokens']} tokens at "
            f"{result['gui_reply_tok_s']} tok/s, {result['gui_graph_redraws']} graph redraws"
        )
    return 0


def engine_against_bare(args: argparse.Namespace, model: Path) -> dict[str, object]:
    """Generation speed through the engine against the bare llama-cpp-python loop, alternating pairs."""
    import llama_cpp

    from desktop.chat.templates import choose_template, render
    from desktop.chat.engine import Engine, LoadOptions
    from desktop.chat.engine_child import _patched_model_params

    messages = [{"role": "user", "content": PROMPT}]

    engine = Engine()
    loaded = engine.load_and_wait(LoadOptions(str(model), n_ctx=args.ctx, n_threads=args.threads))
    meta = loaded.data["metadata"]

    with _patched_model_params(use_extra_bufts=False, progress=None):
        llm = llama_cpp.Llama(
            str(model),
            n_ctx=args.ctx,
            n_threads=args.threads,
            n_threads_batch=args.threads,
            swa_full=bool(meta.get("swa_full", False)),  # the engine's context settings
            verbose=False,
        )
    template = choose_template(llm.metadata.get("tokenizer.chat_template"), meta["architecture"], None)
    prompt = render(template, messages, bos_token=meta["bos_token"], eos_token=meta["eos_token"])
    add_bos = meta["add_bos"] and not prompt.startswith(meta["bos_token"])
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)

    engine_rates: list[float] = []
    bare_rates: list[float] = []
    engine_llama: list[float] = []
    bare_llama: list[float] = []
    counts: list[int] = []
    try:
        engine_run(engine, messages, 8)  # warm-up both sides
        bare_run(llm, tokens, 8)
        for _ in range(args.runs):
            n_engine, s_engine, l_engine = engine_run(engine, messages, args.tokens)
            n_bare, s_bare, l_bare = bare_run(llm, tokens, args.tokens)
            counts.append(min(n_engine, n_bare))
            engine_rates.append((n_engine - 1) / s_engine)
            bare_rates.append((n_bare - 1) / s_bare)
            engine_llama.append(l_engine)
            bare_llama.append(l_bare)
    finally:
        engine.close()
        llm.close()

    engine_rate = statistics.median(engine_rates)
    bare_rate = statistics.median(bare_rates)
    # each pair ran back to back, so its ratio is the least disturbed by other load on the machine
    pair_ratio = statistics.median(e / b for e, b in zip(engine_rates, bare_rates))
    return {
        "tokens": counts,
        "engine_tok_s": round(engine_rate, 2),
        "bare_tok_s": round(bare_rate, 2),
        "ratio": round(pair_ratio, 3),
        "ratio_of_medians": round(engine_rate / bare_rate, 3),
        "engine_llama_counter_tok_s": round(statistics.median(engine_llama), 2),
        "bare_llama_counter_tok_s": round(statistics.median(bare_llama), 2),
        "runs_engine": [round(r, 2) for r in engine_rates],
        "runs_bare": [round(r, 2) for r in bare_rates],
        "target": 0.97,
    }


if __name__ == "__main__":
    raise SystemExit(main())
