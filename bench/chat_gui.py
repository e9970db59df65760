"""The GUI thread's longest stall while a reply streams into the Chat page with the live graph running (offscreen Qt,
the real page and engine): a 5 ms QTimer on the GUI thread records the gap between its ticks; the reference is the
same probe on the same page, idle, just before. Target: under 30 ms. Run through ``python bench/chat.py --gui``.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

PROMPT = "Count from 1 to 500, separated by commas: 1, 2, 3,"


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
