"""The chat engine, parent side: a Qt-free client for the child process that runs llama.cpp.

(Over 400 lines on purpose: :class:`Engine` is one state machine whose reader thread, stop watchdog, crash and restart
handling share its state, and the protocol it speaks is documented here, next to it; the child's side is
:mod:`desktop.chat.engine_child`.)

The GUI never loads weights into its own process. :class:`Engine` starts ``desktop.chat.engine_child`` in a spawned
child process and talks to it through two one-way pipes of tuples ``(kind, payload_dict)``.

Requests (parent -> child)
    ``("load", {path, n_ctx, n_gpu_layers, n_threads, settings, _seq})``   load a GGUF (unloads the previous one).
        ``settings``: ``cpu_repack`` (bool), ``cache_type_k``/``cache_type_v`` ("f16", "q8_0", "q4_0"),
        ``flash_attn`` ("auto": llama.cpp's default, "on", "off"), ``swa_full`` (bool), ``template`` (None: the GGUF's own, else a name from
        :data:`desktop.chat.templates.FALLBACK_TEMPLATES`), ``n_batch``.
    ``("chat", {messages, sampling, request_id, on_overflow, _seq})``      answer ``messages`` (dicts with role and
        content). ``sampling``: temperature, top_p, top_k, min_p, repeat_penalty, max_tokens, seed, stop.
        ``on_overflow``: "error" (default) or "drop_oldest". With ``prompt`` (a string) instead of messages the
        text is completed as it is: no chat template, no template stop strings, no dropped turns.
    ``("stop", {})``       stop every load or chat received so far; acts within one token (the child's reader thread
        sets a mark that the generation loop checks before each decode and llama.cpp's abort callback checks
        during the prompt prefill).
    ``("unload", {})``     free the model.
    ``("shutdown", {})``   stop, free, exit.  (``("cancel",)`` from :func:`desktop.process.terminate_all` too.)

Events (child -> parent); each is delivered as an :class:`EngineEvent`
    ``ready {pid}``                               the child is up.
    ``load_progress {fraction, message}``         only when the whole percent changes.
    ``loaded {metadata, memory}``                 ``metadata``: name, architecture, n_ctx, n_ctx_train, n_layer,
        n_gpu_layers, n_threads, template, ...; ``memory``: ``{"host": {weights, kv_cache, compute},
        "gpus": [{name, weights, kv_cache, compute}], "buffers": [...], "nvml": [...] | None, "model_size"}`` in
        bytes, from the buffer sizes llama.cpp reports (and NVML's used-memory delta on NVIDIA).
    ``load_cancelled {}``                         a stop arrived during the load.
    ``prompt_started {request_id, prompt_tokens, dropped_messages}``   the prompt is rendered and fits; prefill
        begins (a stop from here on aborts it inside ``llama_decode``).
    ``tokens {request_id, text, stamps}``         the next part of the reply, sent every ~15 ms (the first token
        at once): ``text`` is what these tokens add (held back around incomplete UTF-8 and possible stop strings,
        so it may be ""), ``stamps`` one ``time.perf_counter()`` per token, taken in the child when llama.cpp
        sampled it (a system-wide monotonic clock on Linux, Windows and macOS, so the parent can compare it with
        its own). The final event of a reply may carry text and no stamps.
    ``reply_done {request_id, text, tokens, metrics}``  the reply ended; ``tokens`` are its token ids; see
        :class:`ReplyMetrics` (from llama.cpp's ``llama_perf_context`` counters, reset before each request; TTFT
        measured with ``perf_counter`` from the request's arrival to the first token).
    ``unloaded {}``
    ``error {request_id, request, error}``        ``error`` is a :class:`~desktop.jobs.JobError` dict. Kinds:
        "context_full" (the conversation outgrew the context: offer "drop oldest turns"), "crash" (the child
        died: segfault, abort, out-of-memory kill; its sentence says how and suggests safe mode), "error",
        "internal", "not_loaded", "engine_unavailable".
    ``exited {}``                                 the child ended after a shutdown.

If the child dies without saying so, the client reports ``error`` with kind "crash" and then ``exited``; the
window stays. If it does not answer a ``stop`` within :data:`STOP_GRACE_S` (stuck in native code, or in a template
that outlived its deadline), the client kills it, reports ``error`` with kind "unresponsive" for the request in
flight, starts a fresh child, reloads the last model, and reports ``restarted {request_id, reloading}`` (the Chat
page says so; the conversation is untouched). :meth:`Engine.retry_safe_mode` starts a fresh child and reloads with CPU repacking off and half the
GPU layers.

Regenerate is a new ``chat`` with the same messages (:meth:`Engine.regenerate` resends the last request).

Events reach the caller either through ``on_event`` (called on the client's reader thread; a Qt worker turns
them into signals) or, without a callback, through :meth:`Engine.events` / :meth:`Engine.next_event`.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from desktop.jobs import JobError, JobFailed
from desktop.llama.generate import SamplerSettings
from desktop.process import ChildProcess, describe_exit

log = logging.getLogger(__name__)

SAFE_MODE_STEP = "Retry in safe mode (CPU repacking off, fewer GPU layers)."
STOP_GRACE_S = 5.0  # a stop lands within one token; an engine silent this long after one is restarted


@dataclass(frozen=True)
class Sampling(SamplerSettings):
    """A chat request's sampling: llama.cpp's sampler settings plus the reply's length and stop strings."""

    max_tokens: int = 512
    stop: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stop"] = list(self.stop)
        return data


@dataclass(frozen=True)
class LoadOptions:
    path: str
    n_ctx: int = 4096
    n_gpu_layers: int = 0
    n_threads: int | None = None
    cpu_repack: bool = False
    cache_type_k: str = "f16"
    cache_type_v: str = ""
    flash_attn: str = "auto"  # "auto" (llama.cpp's default: on where the backend supports it), "on", "off"
    swa_full: bool = False  # True: sliding-window layers keep the whole context (more memory, better prefix reuse)
    template: str | None = None  # None: the GGUF's own template (or one chosen by architecture)

    def request(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "n_ctx": self.n_ctx,
            "n_gpu_layers": self.n_gpu_layers,
            "n_threads": self.n_threads,
            "settings": {
                "cpu_repack": self.cpu_repack,
                "cache_type_k": self.cache_type_k,
                "cache_type_v": self.cache_type_v or self.cache_type_k,
                "flash_attn": self.flash_attn,
                "swa_full": self.swa_full,
                "template": self.template,
            },
        }

    def safe_mode(self) -> LoadOptions:
        """The retry after a crash: no CPU repacking and half the GPU layers."""
        return replace(self, cpu_repack=False, n_gpu_layers=self.n_gpu_layers // 2)


@dataclass(frozen=True)
class ReplyMetrics:
    """One reply's numbers. Token counts and times are llama.cpp's own counters for this request."""

    prompt_tokens: int  # tokens evaluated as prompt (n_p_eval; a reused prefix is not evaluated again)
    prompt_ms: float
    prompt_tokens_per_s: float
    generated_tokens: int  # single-token decodes (n_eval)
    generation_ms: float
    generation_tokens_per_s: float
    ttft_s: float | None  # request received by the engine -> first text
    total_s: float
    completion_tokens: int  # tokens in the reply
    prompt_tokens_total: int
    context_used: int
    n_ctx: int
    finish_reason: str  # "stop", "length" or "stopped" (the user pressed stop)
    dropped_messages: int = 0
    llama_perf: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReplyMetrics:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class EngineEvent:
    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def request_id(self) -> str | None:
        value = self.data.get("request_id")
        return str(value) if value is not None else None

    @property
    def error(self) -> JobError | None:
        return JobError.from_dict(self.data["error"]) if self.kind == "error" else None

    @property
    def metrics(self) -> ReplyMetrics | None:
        return ReplyMetrics.from_dict(self.data["metrics"]) if self.kind == "reply_done" else None


@dataclass(frozen=True)
class Reply:
    text: str
    metrics: ReplyMetrics
    request_id: str
    tokens: tuple[int, ...] = ()
    stamps: tuple[float, ...] = ()  # one per token, taken in the engine when it was sampled


class _EngineProcess(ChildProcess):
    """A :class:`ChildProcess` running the engine's own main, so :func:`desktop.process.terminate_all` covers it."""

    def __init__(self, log_path: Path | None, env: dict[str, str | None] | None = None) -> None:  # noqa: D107
        self.target = "desktop.chat.engine_child:main"  # replaces the generic job wiring on purpose
        self.kwargs = {}
        self.env = env
        self.log_path = log_path
        ctx = multiprocessing.get_context("spawn")
        child_requests, self._requests = ctx.Pipe(duplex=False)
        self._conn, child_events = ctx.Pipe(duplex=False)
        self._child_ends: list[Connection] = [child_requests, child_events]
        self._send_lock = threading.Lock()
        from desktop.chat import engine_child

        self.process = ctx.Process(
            target=engine_child.main,
            args=(child_requests, child_events, str(log_path) if log_path else None),
            daemon=True,
            name="quantdesk-engine",
        )

    def start(self) -> None:
        from desktop import process as process_module

        process_module.start_process(self.process, self.env)  # on the selected llama.cpp engine, or self.env
        for end in self._child_ends:
            end.close()
        self._child_ends = []
        with process_module._live_lock:
            process_module._live.add(self)

    def send(self, kind: str, payload: dict[str, Any]) -> bool:
        try:
            with self._send_lock:
                self._requests.send((kind, payload))
            return True
        except (OSError, EOFError, BrokenPipeError, ValueError):
            return False

    def send_cancel(self) -> None:
        self.send("shutdown", {})

    def close(self) -> None:
        super().close()
        self._requests.close()


class Engine:
    """Start, load, chat, stop, unload, close. Thread-safe for callers; events come from one reader thread."""

    def __init__(
        self,
        on_event: Callable[[EngineEvent], None] | None = None,
        *,
        log_path: Path | str | None = None,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        self._on_event = on_event
        self.stop_grace_s = stop_grace_s
        self._stop_timer: threading.Timer | None = None
        self._replaced: set[_EngineProcess] = set()  # children killed for not answering: their readers stay silent
        self._queue: queue.Queue[EngineEvent] = queue.Queue()
        self._log_path = Path(log_path) if log_path else None
        self._child: _EngineProcess | None = None
        self._reader: threading.Thread | None = None
        self._closing = False
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self.state = "stopped"  # stopped, starting, idle, loading, ready, generating, crashed
        self.last_load: LoadOptions | None = None
        self.loaded_metadata: dict[str, Any] = {}
        self.loaded_memory: dict[str, Any] = {}
        self.current_request: str | None = None
        self.last_error: JobError | None = None
        self._last_chat: tuple[list[Mapping[str, Any]], dict[str, Any], str] | None = None
        self.engine_env: dict[str, str | None] | None = None  # None: the selected llama.cpp engine
        self.engine_name = ""  # the llama.cpp engine the current child runs on ("cpu", "vulkan-0.3.36", ...)
        self.offload_warning = ""  # after a load asked for GPU layers and got none: the sentence to show

    # -- lifecycle

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    @property
    def alive(self) -> bool:
        return self._child is not None and self._child.process.is_alive()

    @property
    def log_path(self) -> Path | None:
        return self._child.log_path if self._child else None

    def start(self) -> None:
        """Start the engine process (no model yet). Safe to call again after a crash."""
        with self._lock:
            if self.alive:
                return
            self._discard_child()
            log_path = self._log_path
            if log_path is None:
                from desktop import paths

                log_path = paths.logs_dir() / f"engine-{os.getpid()}-{time.time_ns()}.log"
            self._closing = False
            from desktop.llama.engines import environment_engine_name

            self.engine_name = environment_engine_name(self.engine_env)
            child = _EngineProcess(log_path, self.engine_env)
            child.start()
            self._child = child
            self.state = "starting"
            self._reader = threading.Thread(target=self._read_events, args=(child,), name="engine-events", daemon=True)
            self._reader.start()

    def close(self, timeout: float = 5.0) -> None:
        """Ask the engine to shut down, wait up to ``timeout``, then kill it. Frees all its memory."""
        with self._lock:
            child = self._child
            self._closing = True
        if child is None:
            return
        child.send("shutdown", {})
        child.process.join(timeout)
        reader = self._reader
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout)
        with self._lock:
            self._discard_child()
            self.state = "stopped"

    def _discard_child(self) -> None:
        if self._child is not None:
            self._child.close()
            self._child = None

    def __enter__(self) -> Engine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests

    def _send(self, kind: str, payload: dict[str, Any]) -> None:
        if self._child is None:
            self.start()
        assert self._child is not None
        if not self._child.send(kind, payload):
            log.info("engine request %s not sent: the engine process is gone", kind)

    def load(self, options: LoadOptions | str | Path, **overrides: Any) -> None:
        """Load a model (events: load_progress..., then loaded, load_cancelled or error)."""
        if not isinstance(options, LoadOptions):
            options = LoadOptions(path=str(options), **overrides)
        elif overrides:
            options = replace(options, **overrides)
        self.last_load = options
        self.start()
        self.state = "loading"
        self._send("load", options.request())

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        sampling: Sampling | Mapping[str, Any] | None = None,
        *,
        request_id: str | None = None,
        on_overflow: str = "error",
        prompt: str | None = None,
    ) -> str:
        """Ask for a reply to ``messages``; returns the request id its events carry.

        Regenerate is the same call with the conversation up to the user's last message. ``prompt`` instead of
        messages: complete that raw text (the OpenAI ``/v1/completions`` endpoint of :mod:`desktop.chat.server`).
        """
        request_id = request_id or uuid.uuid4().hex[:12]
        if isinstance(sampling, Sampling):
            sampling_dict = sampling.as_dict()
        else:
            sampling_dict = dict(sampling or {})
        self.current_request = request_id
        self.state = "generating"
        self._last_chat = (list(messages), sampling_dict, on_overflow)
        self._send(
            "chat",
            {
                "request_id": request_id,
                "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
                "sampling": sampling_dict,
                "on_overflow": on_overflow,
                **({"prompt": prompt} if prompt is not None else {}),
            },
        )
        return request_id

    def regenerate(self, sampling: Sampling | Mapping[str, Any] | None = None) -> str:
        """Ask again for the last reply (same conversation; the sampling given, else the last one)."""
        if self._last_chat is None:
            raise RuntimeError("there is no earlier request to regenerate")
        messages, last_sampling, on_overflow = self._last_chat
        return self.chat(messages, sampling if sampling is not None else last_sampling, on_overflow=on_overflow)

    def stop(self) -> None:
        """Stop the reply (or load) in progress; its reply_done follows within about one token. An engine that
        does not answer within ``stop_grace_s`` is restarted (see the module docstring)."""
        if self._child is not None:
            self._child.send("stop", {})
            if self.state in ("generating", "loading"):
                self._arm_stop_watchdog()

    def _arm_stop_watchdog(self) -> None:
        with self._lock:
            if self._stop_timer is not None or self._child is None:
                return
            timer = threading.Timer(self.stop_grace_s, self._stop_not_answered, args=(self._child,))
            timer.daemon = True
            self._stop_timer = timer
        timer.start()

    def _disarm_stop_watchdog(self) -> None:
        with self._lock:
            timer, self._stop_timer = self._stop_timer, None
        if timer is not None:
            timer.cancel()

    def _stop_not_answered(self, child: _EngineProcess) -> None:
        with self._lock:
            self._stop_timer = None
            if child is not self._child or self.state not in ("generating", "loading") or self._closing:
                return
            self._replaced.add(child)
            doing = self.state
        request_id = self.current_request if doing == "generating" else None
        log.warning("the engine did not answer stop within %.1f s; restarting it", self.stop_grace_s)
        child.kill()
        error = JobError(
            "unresponsive",
            f"The chat engine did not answer Stop within {self.stop_grace_s:g} s, so QuantDesk restarted it.",
            "Your conversation is kept. If this happens again with this model, pick a built-in chat template.",
            child.log_tail(),
        )
        with self._lock:
            self._discard_child()
        reload = self.last_load if self.loaded_metadata or doing == "loading" else None
        self.loaded_metadata = {}
        self.start()
        if reload is not None:
            self.load(reload)  # sent before anything queued behind the stuck request reaches the new child
        self._deliver(EngineEvent("error", {"request_id": request_id, "request": "chat" if request_id else "load",
                                            "error": error.as_dict(), "restarting": True}))
        self._deliver(EngineEvent("restarted", {"request_id": request_id, "reloading": reload is not None}))

    def unload(self) -> None:
        if self._child is not None:
            self._send("unload", {})

    def retry_safe_mode(self) -> LoadOptions:
        """After a crash: a fresh engine process, loading the last model with CPU repacking off, fewer GPU layers."""
        if self.last_load is None:
            raise RuntimeError("nothing was loaded, so there is nothing to retry")
        options = self.last_load.safe_mode()
        self.close(timeout=1.0)
        self.start()
        self.load(options)
        return options

    @property
    def on_gpu_engine(self) -> bool:
        """True when the child runs on a GPU build of llama.cpp: after a crash, offer :meth:`retry_on_cpu`."""
        return bool(self.engine_name) and self.engine_name != "cpu"

    def retry_on_cpu(self) -> LoadOptions:
        """After a crash on a GPU engine: a fresh engine process on pip's CPU build, the last model with no GPU
        layers. Later starts of this client stay on the CPU."""
        if self.last_load is None:
            raise RuntimeError("nothing was loaded, so there is nothing to retry")
        from desktop.llama.engines import cpu_environment

        options = replace(self.last_load, n_gpu_layers=0)
        self.close(timeout=1.0)
        self.engine_env = cpu_environment()
        self.start()
        self.load(options)
        return options

    # -- events

    def next_event(self, timeout: float | None = None) -> EngineEvent | None:
        """The next event (only when no ``on_event`` callback was given), or None after ``timeout``."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def events(self, timeout: float | None = None) -> Iterator[EngineEvent]:
        """Yield events as they come; ends when none came within ``timeout`` or after ``exited``."""
        while True:
            event = self.next_event(timeout)
            if event is None:
                return
            yield event
            if event.kind == "exited":
                return

    def _deliver(self, event: EngineEvent) -> None:
        self._track(event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:  # noqa: BLE001 - a faulty listener must not kill the reader thread
                log.exception("engine event listener failed on %s", event.kind)
        else:
            self._queue.put(event)

    def _track(self, event: EngineEvent) -> None:
        if event.kind in ("reply_done", "loaded", "load_cancelled", "unloaded", "error", "exited"):
            self._disarm_stop_watchdog()
        if event.kind == "ready":
            self.state = "idle"
        elif event.kind == "loaded":
            self.state = "ready"
            self.loaded_metadata = dict(event.data.get("metadata") or {})
            self.loaded_memory = dict(event.data.get("memory") or {})
            from desktop.llama.engines import offload_shortfall

            requested = int(self.loaded_metadata.get("n_gpu_layers") or 0)
            self.offload_warning = offload_shortfall(requested, self.loaded_memory, self.engine_name)
        elif event.kind in ("unloaded", "load_cancelled"):
            self.state = "idle"
            self.loaded_metadata = {}
        elif event.kind == "reply_done":
            if event.request_id == self.current_request:
                self.state = "ready"
        elif event.kind == "error":
            self.last_error = event.error
            if event.data.get("restarting"):
                pass  # the fresh engine's state is already set
            elif event.data.get("request") == "load":
                self.state = "idle"
            elif event.data.get("request") == "chat":
                self.state = "ready"
            elif event.error is not None and event.error.kind == "crash":
                self.state = "crashed"

    def _read_events(self, child: _EngineProcess) -> None:
        while True:
            try:
                message = child.receive(0.2)
            except (EOFError, OSError):
                break
            if message is None:
                continue
            kind, payload = message[0], dict(message[1]) if len(message) > 1 else {}
            self._deliver(EngineEvent(kind, payload))
            if kind == "exited":
                return
        child.process.join(5)
        if child in self._replaced:  # killed for not answering a stop; the restart reports it
            self._replaced.discard(child)
            return
        if self._closing:
            self._deliver(EngineEvent("exited", {"exitcode": child.process.exitcode}))
            return
        self._deliver(self._crash_event(child))
        self._deliver(EngineEvent("exited", {"exitcode": child.process.exitcode}))

    def _crash_event(self, child: _EngineProcess) -> EngineEvent:
        how = describe_exit(child.process.exitcode)
        doing = {"loading": "loading the model", "generating": "writing a reply"}.get(self.state, "running")
        error = JobError(
            "crash",
            f"The chat engine crashed with {how} while {doing}; QuantDesk itself is fine.",
            SAFE_MODE_STEP,
            child.log_tail(),
        )
        return EngineEvent(
            "error",
            {
                "request_id": self.current_request if self.state == "generating" else None,
                "request": "engine",
                "error": error.as_dict(),
                "exitcode": child.process.exitcode,
            },
        )

    # -- blocking helpers (CLI, tests, benchmarks); only without an on_event callback

    def wait_for(self, *kinds: str, timeout: float = 120.0, on_event: Callable[[EngineEvent], None] | None = None) -> EngineEvent:
        """Wait for the first event of one of ``kinds``; raises JobFailed on an error event, TimeoutError on time."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {'/'.join(kinds)} event within {timeout:.0f} s")
            event = self.next_event(left)
            if event is None:
                continue
            if on_event is not None:
                on_event(event)
            if event.kind in kinds:
                return event
            if event.kind == "error":
                assert event.error is not None
                raise JobFailed(event.error)

    def load_and_wait(self, options: LoadOptions | str | Path, timeout: float = 300.0, **overrides: Any) -> EngineEvent:
        self.load(options, **overrides)
        event = self.wait_for("loaded", "load_cancelled", timeout=timeout)
        return event

    def ask(
        self,
        messages: Sequence[Mapping[str, Any]],
        sampling: Sampling | Mapping[str, Any] | None = None,
        *,
        on_token: Callable[[str], None] | None = None,
        on_overflow: str = "error",
        timeout: float = 600.0,
    ) -> Reply:
        """Send a chat request and block until its reply is done; ``on_token(text)`` sees each streamed part."""
        request_id = self.chat(messages, sampling, on_overflow=on_overflow)
        stamps: list[float] = []

        def tokens(event: EngineEvent) -> None:
            if event.kind == "tokens" and event.request_id == request_id:
                stamps.extend(event.data.get("stamps") or ())
                text = str(event.data.get("text", ""))
                if on_token is not None and text:
                    on_token(text)

        while True:
            event = self.wait_for("reply_done", timeout=timeout, on_event=tokens)
            if event.request_id == request_id:
                assert event.metrics is not None
                return Reply(str(event.data.get("text", "")), event.metrics, request_id,
                             tuple(event.data.get("tokens") or ()), tuple(stamps))
