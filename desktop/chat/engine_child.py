"""The chat engine's child process: loads one GGUF through :class:`~desktop.llama.session.LlamaSession` and serves chat requests.

The protocol is documented in :mod:`desktop.chat.engine` (the parent side). This module runs only in the child: a
*reader thread* receives requests, so that ``stop`` lands while the main thread is inside a generation; the
*main thread* owns the session (llama.cpp's context is not thread-safe) and handles one request at a time.

Replies come from :func:`desktop.llama.generate.generate`: llama.cpp samples, one decode per token, and the text goes to the
parent in small batches (``tokens`` events, every ~15 ms) with one timestamp per token taken here.

Stopping works within one token: every chat request gets a sequence number when the reader receives it, and
``stop`` marks every request received so far as stopped. The generation loop checks that mark before each decode,
and llama.cpp's abort callback checks it inside ``llama_decode`` during the prompt prefill (the only decode that can
take seconds), so a long prompt stops too.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from desktop.chat.templates import ChatTemplate, choose_template, render
from desktop.errors import Cancelled, UserError
from desktop.jobs import JobError, error_from_exception
from desktop.llama.generate import SamplerSettings, StopMatcher, generate
from desktop.llama.log import llama_log
from desktop.llama.native import native_loop
from desktop.llama.native import unavailable as native_unavailable
from desktop.chat.load_report import (  # re-exported: the engine's tests and callers import them from here
    FLASH_ATTN_VALUES,
    flash_attn_setting,
    memory_report,
    nvml_delta,
    nvml_used_bytes,
    parse_buffer_sizes,
    resolved_flash_attn,
)
from desktop.llama.session import KV_TYPE_IDS, ContextOptions, LlamaSession, default_threads

__all__ = ["StopMatcher", "fit_messages", "main", "memory_report", "nvml_delta", "nvml_used_bytes", "parse_buffer_sizes"]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------- which turns fit


def fit_messages(
    messages: Sequence[Mapping[str, Any]], count_tokens: Callable[[Sequence[Mapping[str, Any]]], int], budget: int
) -> tuple[list[dict[str, Any]], int]:
    """Drop the oldest turns (never the system prompt, never the last message) until the prompt fits ``budget``.

    Returns the kept messages and how many were dropped. A user turn is dropped together with the assistant
    reply that follows it, so roles keep alternating. Raises UserError when even the last message alone is too long.
    """
    kept = [dict(m) for m in messages]
    dropped = 0
    while count_tokens(kept) > budget:
        first = next((i for i, m in enumerate(kept) if m.get("role") != "system"), None)
        if first is None or first >= len(kept) - 1:
            raise UserError(
                "The last message alone is longer than the context.",
                "Shorten it, or reload the model with a longer context.",
                kind="context_full",
            )
        del kept[first]
        dropped += 1
        while first < len(kept) - 1 and kept[first].get("role") == "assistant":
            del kept[first]
            dropped += 1
    return kept, dropped


# ----------------------------------------------------------------------------------------- the server


class _Server:
    def __init__(self, events: Connection) -> None:
        self._events = events
        self._send_lock = threading.Lock()
        self.requests: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self.received_chats = 0  # sequence number of the last chat or load the reader received
        self.stop_upto = 0  # every chat or load with a sequence number <= this is stopped
        self.current_seq = 0
        self.shutting_down = False
        self.stop_flag = ctypes.c_int32(0)  # set with every stop: the native token loop reads it before each decode
        self.session: LlamaSession | None = None
        self.model_info: dict[str, Any] = {}
        self.template: ChatTemplate | None = None

    # -- plumbing

    def send(self, kind: str, payload: dict[str, Any]) -> None:
        with self._send_lock:
            self._events.send((kind, payload))

    def stopped(self, seq: int | None = None) -> bool:
        return self.shutting_down or self.stop_upto >= (self.current_seq if seq is None else seq)

    def read_requests(self, requests: Connection) -> None:
        """The reader thread: stop and shutdown act at once, the rest waits for the main thread."""
        while True:
            try:
                message = requests.recv()
            except (EOFError, OSError):  # the parent is gone
                message = ("shutdown", {})
            kind = message[0]
            if kind == "stop":
                self.stop_upto = self.received_chats
                self.stop_flag.value = 1
            elif kind in ("shutdown", "cancel"):
                self.shutting_down = True
                self.stop_flag.value = 1
                self.requests.put(("shutdown", {}))
                return
            else:
                if kind in ("chat", "load"):
                    self.received_chats += 1
                    message = (kind, {**message[1], "_seq": self.received_chats})
                self.requests.put(message)

    def serve(self) -> None:
        self.send("ready", {"pid": os.getpid()})
        while True:
            kind, payload = self.requests.get()
            if kind == "shutdown":
                self._unload()
                return
            handler = {"load": self._load, "chat": self._chat, "unload": self._unload_request}.get(kind)
            request_id = payload.get("request_id")
            if handler is None:
                self.send("error", {"request_id": request_id, "error": JobError("internal", f"Unknown request {kind!r}.").as_dict()})
                continue
            try:
                handler(payload)
            except BaseException as exc:  # noqa: BLE001 - every failure crosses as a value
                error = error_from_exception(exc)
                if error.detail:
                    print(error.detail, file=sys.stderr, flush=True)
                self.send("error", {"request_id": request_id, "request": kind, "error": error.as_dict()})

    # -- requests

    def _load(self, request: Mapping[str, Any]) -> None:
        self._unload()
        settings = dict(request.get("settings") or {})
        path = str(request["path"])
        n_gpu_layers = int(request.get("n_gpu_layers") or 0)
        cache_k = str(settings.get("cache_type_k") or "f16").lower()
        cache_v = str(settings.get("cache_type_v") or cache_k).lower()
        for cache_type in (cache_k, cache_v):
            if cache_type not in KV_TYPE_IDS:
                raise UserError(f"{cache_type} is not a KV cache type llama.cpp supports.", "Choose f16, q8_0 or q4_0.")
        flash_setting = flash_attn_setting(settings.get("flash_attn", "auto"), cache_v)
        swa_full = bool(settings.get("swa_full", False))
        # llama.cpp's default keeps the whole context in sliding-window layers too; the planner assumes the
        # window (much less memory on Gemma-style models) unless asked otherwise
        threads = int(request.get("n_threads") or 0) or default_threads(interactive=True)
        context = ContextOptions(
            n_ctx=int(request.get("n_ctx") or 0),
            n_batch=int(settings.get("n_batch") or 512),
            threads=threads,
            flash_attn=FLASH_ATTN_VALUES[flash_setting],
            type_k=cache_k,
            type_v=cache_v,
            swa_full=swa_full,
        )
        if not os.path.exists(path):
            raise UserError(f"The model file {path} does not exist.", "Pick the model again in the library.")

        seq = self.current_seq = int(request["_seq"])  # a stop from now on cancels the load
        last_percent = -1

        def on_progress(fraction: float) -> bool:
            nonlocal last_percent
            percent = int(fraction * 100)
            if percent != last_percent:
                last_percent = percent
                self.send("load_progress", {"fraction": fraction, "message": f"Loading {percent}%"})
            return not self.stopped(seq)

        nvml_before = nvml_used_bytes() if n_gpu_layers else None
        started = time.perf_counter()
        try:
            with llama_log.capture() as captured:
                session = LlamaSession(
                    path,
                    context,
                    n_gpu_layers=n_gpu_layers,
                    cpu_repack=bool(settings.get("cpu_repack")),
                    load_progress=on_progress,
                    should_abort=self.stopped,
                    abort_flag=self.stop_flag,
                )
        except Cancelled:
            self.send("load_cancelled", {})
            return
        except UserError:
            if self.stopped(seq):
                self.send("load_cancelled", {})
                return
            raise
        load_s = time.perf_counter() - started
        self.session = session

        arch = session.meta("general.architecture") or ""
        self.template = choose_template(session.meta("tokenizer.chat_template"), arch, settings.get("template"))
        self.model_info = {
            "path": path,
            "name": session.meta("general.name") or os.path.basename(path),
            "architecture": arch,
            "n_ctx": session.n_ctx,
            **session.info(),  # n_ctx_train, n_layer, model_size, n_params
            "n_gpu_layers": n_gpu_layers,
            "n_threads": session.threads,
            "n_vocab": session.n_vocab,
            "template": self.template.name,
            "template_from_model": self.template.from_model,
            "add_bos": session.add_bos,
            "bos_token": session.token_text(session.bos),
            "eos_token": session.token_text(session.eos),
            "cpu_repack": bool(settings.get("cpu_repack")),
            "cache_type_k": cache_k,
            "cache_type_v": cache_v,
            "flash_attn": resolved_flash_attn("".join(captured), flash_setting),
            "swa_full": swa_full,
            "load_s": load_s,
            "token_loop": "native" if native_loop() is not None else "python",  # built now, not at the first reply
            "token_loop_note": native_unavailable(),
        }
        nvml = nvml_delta(nvml_before, nvml_used_bytes()) if n_gpu_layers else None
        memory = memory_report(parse_buffer_sizes("".join(captured)), nvml)
        memory["model_size"] = self.model_info["model_size"]
        gc.collect()
        gc.freeze()  # the imports' and the load's ~36k objects are never scanned again: a full pass took ~20 ms
        self.send("loaded", {"metadata": self.model_info, "memory": memory})

    def _unload_request(self, request: Mapping[str, Any]) -> None:
        self._unload()
        self.send("unloaded", {})

    def _unload(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            session.close()
            del session
            gc.unfreeze()
            gc.collect()

    def _tokenize_prompt(self, prompt: str) -> list[int]:
        assert self.session is not None
        bos = self.model_info["bos_token"]
        add_bos = self.model_info["add_bos"] and not (bos and prompt.startswith(bos))
        return self.session.tokenize(prompt, add_special=add_bos, parse_special=True)

    def _prompt_tokens(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        assert self.template is not None
        prompt = render(
            self.template,
            messages,
            bos_token=self.model_info["bos_token"],
            eos_token=self.model_info["eos_token"],
            add_generation_prompt=True,
        )
        return self._tokenize_prompt(prompt)

    def _chat(self, request: Mapping[str, Any]) -> None:
        started = time.perf_counter()
        request_id = request.get("request_id")
        seq = self.current_seq = int(request["_seq"])
        session = self.session
        if session is None:
            raise UserError("No model is loaded.", "Load a model first.", kind="not_loaded")
        sampling = dict(request.get("sampling") or {})
        n_ctx = int(self.model_info["n_ctx"])
        max_tokens = int(sampling.get("max_tokens") or 0) or n_ctx
        reserve = max(1, min(max_tokens, n_ctx // 4))
        messages = list(request.get("messages") or [])
        raw_prompt = request.get("prompt")  # complete this text as it is: no template, no dropped turns
        tokens = self._tokenize_prompt(str(raw_prompt)) if raw_prompt is not None else self._prompt_tokens(messages)
        dropped = 0
        if len(tokens) + reserve > n_ctx:
            if request.get("on_overflow") != "drop_oldest" or raw_prompt is not None:
                raise UserError(
                    f"This conversation ({len(tokens)} tokens) no longer fits the context of {n_ctx} tokens.",
                    "Drop the oldest turns, or reload the model with a longer context "
                    f"(this model was trained for up to {self.model_info['n_ctx_train']}).",
                    kind="context_full",
                )
            messages, dropped = fit_messages(messages, lambda m: len(self._prompt_tokens(m)), n_ctx - reserve)
            tokens = self._prompt_tokens(messages)
        max_tokens = max(1, min(max_tokens, n_ctx - len(tokens)))
        template_stops = self.template.stop if self.template and raw_prompt is None else ()
        stops = list(sampling.get("stop") or []) + list(template_stops)

        def send_text(text: str, stamps: list[float]) -> None:
            self.send("tokens", {"request_id": request_id, "text": text, "stamps": stamps})

        self.send("prompt_started", {"request_id": request_id, "prompt_tokens": len(tokens), "dropped_messages": dropped})
        session.perf_reset()
        self.stop_flag.value = 0
        if self.stopped(seq):  # a stop that came before the reset (the reader sets the number, then the flag)
            self.stop_flag.value = 1
        reply = generate(
            session,
            tokens,
            SamplerSettings.from_mapping(sampling),
            max_tokens=max_tokens,
            stops=stops,
            should_stop=lambda: self.stopped(seq),
            stop_flag=self.stop_flag,
            on_text=send_text,
        )
        finished = time.perf_counter()
        counters = session.perf()
        first_token_at = reply.stamps[0] if reply.stamps else None
        metrics = {
            "prompt_tokens": counters["n_p_eval"],
            "prompt_ms": counters["t_p_eval_ms"],
            "prompt_tokens_per_s": _rate(counters["n_p_eval"], counters["t_p_eval_ms"]),
            "generated_tokens": counters["n_eval"],
            "generation_ms": counters["t_eval_ms"],
            "generation_tokens_per_s": _rate(counters["n_eval"], counters["t_eval_ms"]),
            "ttft_s": (first_token_at - started) if first_token_at is not None else None,
            "total_s": finished - started,
            "completion_tokens": len(reply.tokens),
            "prompt_tokens_total": len(tokens),
            "context_used": len(tokens) + len(reply.tokens),
            "n_ctx": n_ctx,
            "finish_reason": reply.finish,
            "dropped_messages": dropped,
            "llama_perf": counters,
        }
        self.send("reply_done", {"request_id": request_id, "text": reply.text, "tokens": reply.tokens, "metrics": metrics})


def _rate(n: int, ms: float) -> float:
    return n / ms * 1000.0 if ms > 0 else 0.0


def main(requests: Connection, events: Connection, log_path: str | None) -> None:
    """Entry point of the engine process."""
    from desktop.process import setup_child_logging

    setup_child_logging(log_path)
    server = _Server(events)
    try:
        llama_log.install(echo_level=1)  # the engine's log file keeps everything llama.cpp says
    except Exception as exc:  # noqa: BLE001 - llama_cpp missing or broken: say so in a sentence
        server.send(
            "error",
            {
                "request_id": None,
                "request": "start",
                "error": JobError(
                    "engine_unavailable",
                    f"The chat engine could not start: llama-cpp-python is not usable ({exc}).",
                    "Reinstall QuantDesk, or install llama-cpp-python.",
                ).as_dict(),
            },
        )
        return
    reader = threading.Thread(target=server.read_requests, args=(requests,), name="engine-requests", daemon=True)
    reader.start()
    try:
        server.serve()
    finally:
        with contextlib.suppress(Exception):
            server.send("exited", {})
        events.close()
