"""The smoke test a built engine passes before it is offered: in a child process on that engine, load a model with
every layer on the GPU, generate a few greedy tokens, and compare them with the CPU engine's greedy tokens.

It runs through the chat engine (desktop.chat.engine), the same child the Chat page uses, so what passed here is what
the user gets. What llama.cpp did is read from that child's log: "offloaded N/M layers to GPU" and the names of the
buffers it allocated ("Vulkan0", "CUDA0"). A load that put no layer on the GPU is a failure with its own sentence,
never passed off as offloaded; a crash is a failure too. The result is stored next to the engine (``smoke.json``).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from desktop.errors import Cancelled
from desktop.jobs import CancelledFn, JobFailed, ProgressFn
from desktop.llama.engines import Engine, SmokeResult, child_environment, cpu_environment, find_engine, save_smoke

PROMPT = [{"role": "user", "content": "List the days of the week, starting with Monday."}]
MAX_TOKENS = 6
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_DEVICE = re.compile(r"using device (\S+) \((.*)\) \([^()]*\) - \d+ MiB free")


@dataclass
class LoadReport:
    """What llama.cpp said it did while loading."""

    layers_offloaded: int
    layers_total: int
    gpu_buffers: list[str]  # non-host buffer names, "Vulkan0", "CUDA0"
    device: str  # the device description llama.cpp named, "" when it named none

    @property
    def on_gpu(self) -> bool:
        return self.layers_offloaded > 0 and bool(self.gpu_buffers)


def read_load_report(log_text: str, memory: dict[str, Any] | None = None) -> LoadReport:
    """Parse the last load in ``log_text``. ``memory`` is the chat engine's memory report (its GPU buffer names)."""
    found = _OFFLOADED.findall(log_text)
    done, total = (int(found[-1][0]), int(found[-1][1])) if found else (0, 0)
    gpus = [str(g.get("name", "")) for g in (memory or {}).get("gpus", []) if g.get("name")]
    devices = _DEVICE.findall(log_text)
    return LoadReport(done, total, gpus, devices[-1][1] if devices else "")


def _log_since(path: Path | None, offset: int) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(4_000_000).decode("utf-8", "replace")
    except OSError:
        return ""


def greedy_reply(model: Path, env: dict[str, str | None], gpu_layers: int, max_tokens: int = MAX_TOKENS,
                 timeout: float = 600.0) -> tuple[str, LoadReport]:
    """Load ``model`` in a chat engine child started with ``env`` and return its greedy reply and load report."""
    from desktop.chat.engine import Engine as ChatEngine
    from desktop.chat.engine import LoadOptions, Sampling

    chat = ChatEngine()
    chat.engine_env = env
    try:
        chat.start()
        loaded = chat.load_and_wait(LoadOptions(str(model), n_ctx=512, n_gpu_layers=gpu_layers), timeout=timeout)
        report = read_load_report(_log_since(chat.log_path, 0), loaded.data.get("memory"))
        sampling = Sampling(temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0,
                            max_tokens=max_tokens, seed=1)
        reply = chat.ask(PROMPT, sampling, timeout=timeout)
        return reply.text, report
    finally:
        chat.close(timeout=5.0)


def run_smoke_test(
    engine: Engine,
    model: Path | None = None,
    progress: ProgressFn = lambda done, total, message: None,
    cancelled: CancelledFn = lambda: False,
    *,
    timeout: float = 900.0,
) -> SmokeResult:
    """Test ``engine`` on this machine and store the result. Never raises for a failing engine: the result says
    what went wrong in one sentence (a crash, no layer on the GPU, tokens that differ from the CPU's)."""
    from desktop.chat_model import ensure_chat_model

    model = model or ensure_chat_model()  # the bundled instruct model: small, and on every install
    started = time.monotonic()
    progress(0, 3, "Generating on the CPU for reference")
    try:
        expected, _ = greedy_reply(model, cpu_environment(), 0, timeout=timeout)
    except JobFailed as exc:
        raise JobFailed(exc.error) from exc  # the CPU engine itself is broken: not this engine's result
    if cancelled():
        raise Cancelled()
    progress(1, 3, f"Loading every layer on the GPU with the {engine.label} engine (the first run compiles shaders)")
    try:
        got, report = greedy_reply(model, child_environment(engine), -1, timeout=timeout)
    except JobFailed as exc:
        result = SmokeResult(False, f"The {engine.label} engine failed its test: {exc.error.sentence()}",
                             seconds=round(time.monotonic() - started, 1))
        save_smoke(engine, result)
        return result
    except TimeoutError:
        result = SmokeResult(False, f"The {engine.label} engine did not answer within {timeout:.0f} s in its test.",
                             seconds=round(time.monotonic() - started, 1))
        save_smoke(engine, result)
        return result
    progress(2, 3, "Comparing")
    result = judge(engine, expected, got, report, time.monotonic() - started)
    save_smoke(engine, result)
    progress(3, 3, "Done")
    return result


def judge(engine: Engine, expected: str, got: str, report: LoadReport, seconds: float) -> SmokeResult:
    """The verdict from what the GPU run produced and what llama.cpp reported."""
    base = {
        "layers_offloaded": report.layers_offloaded,
        "layers_total": report.layers_total,
        "gpu_buffers": report.gpu_buffers,
        "device": report.device,
        "seconds": round(seconds, 1),
    }
    if not report.on_gpu:
        sentence = (f"The {engine.label} engine loaded the model but put no layer on a GPU "
                    f"({report.layers_offloaded}/{report.layers_total} offloaded): it found no GPU it can use.")
        return SmokeResult(False, sentence, **base)
    if report.layers_offloaded < report.layers_total:
        sentence = (f"The {engine.label} engine put only {report.layers_offloaded} of {report.layers_total} layers on "
                    "the GPU when asked for all of them.")
        return SmokeResult(False, sentence, **base)
    if got.strip() != expected.strip() or not expected.strip():
        sentence = (f"The {engine.label} engine ran on {', '.join(report.gpu_buffers)} but its greedy reply "
                    f"{got[:40]!r} differs from the CPU engine's {expected[:40]!r}.")
        return SmokeResult(False, sentence, **base)
    where = report.device or ", ".join(report.gpu_buffers)
    sentence = (f"Passed: all {report.layers_total} layers on {where}, same greedy tokens as the CPU engine "
                f"({seconds:.0f} s).")
    return SmokeResult(True, sentence, tokens_match=True, **base)


def smoke_job(name: str, progress: ProgressFn, cancelled: CancelledFn, model: str = "") -> dict[str, Any]:
    """The job for the Hardware page and ``quantdesk engine test``: runs in a thread (it starts its own children)."""
    engine = find_engine(name)
    result = run_smoke_test(engine, Path(model) if model else None, progress, cancelled)
    return dict(result.__dict__)
