"""The chat engine's child process: loads one GGUF with llama-cpp-python and serves chat requests.

The protocol is documented in :mod:`desktop.chat.engine` (the parent side). This module runs only in the child: a
*reader thread* receives requests, so that ``stop`` lands while the main thread is inside a generation; the
*main thread* owns the ``Llama`` object (it is not thread-safe) and handles one request at a time.

Stopping works within one token: every chat request gets a sequence number when the reader receives it, and
``stop`` marks every request received so far as stopped. The generation loop checks that mark after each token,
and llama.cpp's abort callback checks it inside ``llama_decode``, so a long prompt prefill stops too (CPU backend).

llama.cpp's AMX/repack buffers crash some CPUs on Q4_K models, so weights are loaded with
``use_extra_bufts = False`` unless the user turned CPU repacking on. ``Llama()`` has no argument for it (nor for a
load-progress callback), so :func:`_patched_model_params` wraps ``llama_model_default_params`` during the load.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import gc
import logging
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from desktop.chat.templates import ChatTemplate, choose_template, render
from desktop.errors import UserError
from desktop.jobs import JobError, error_from_exception

log = logging.getLogger(__name__)

KV_TYPE_IDS = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "bf16": 30, "iq4_nl": 20}

_BUFFER_RE = re.compile(r"(?P<buffer>\S+)\s+(?P<part>model|KV|compute|output|RS) buffer size =\s*(?P<mib>[\d.]+) MiB")
_PART_NAMES = {"model": "weights", "KV": "kv_cache", "RS": "kv_cache", "compute": "compute", "output": "compute"}


# ----------------------------------------------------------------------------------------- pure helpers


class StopMatcher:
    """Holds back streamed text that may be the start of a stop string, and cuts the reply at a full one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Add text; return what can be shown now. After a stop string, ``stopped`` is True."""
        if self.stopped:
            return ""
        self._pending += text
        if not self.stops:
            out, self._pending = self._pending, ""
            return out
        cut = min((i for i in (self._pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            out, self._pending = self._pending[:cut], ""
            return out
        hold = 0
        for stop in self.stops:
            for length in range(min(len(stop) - 1, len(self._pending)), 0, -1):
                if self._pending.endswith(stop[:length]):
                    hold = max(hold, length)
                    break
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(out) :]
        return out

    def flush(self) -> str:
        out, self._pending = ("" if self.stopped else self._pending), ""
        return out


_FLASH_ATTN_TYPES = {"auto": -1, "off": 0, "on": 1}  # llama.cpp's enum llama_flash_attn_type
_FLASH_RESOLVED_RE = re.compile(r"(?:Flash Attention (?:was auto, set to )?|flash_attn\s*=\s*)(enabled|disabled)")


def flash_attn_setting(value: Any, cache_type_v: str) -> str:
    """"auto", "on" or "off" from a request (bools accepted). llama.cpp refuses a quantized V cache unless flash
    attention is on (even "auto"), so a quantized V turns "auto" into "on" and "off" into a clear error."""
    setting = ("on" if value else "off") if isinstance(value, bool) else str(value or "auto").lower()
    if setting not in _FLASH_ATTN_TYPES:
        raise UserError(f"Flash attention '{value}' is not auto, on or off.", "Choose auto, on or off.")
    if cache_type_v not in ("f16", "f32", "bf16"):
        if setting == "off":
            raise UserError(f"llama.cpp needs flash attention for a {cache_type_v} V cache.",
                            "Set flash attention to auto or on, or use an f16 KV cache.")
        setting = "on"
    return setting


def resolved_flash_attn(log_text: str, setting: str) -> bool:
    """Whether llama.cpp ran with flash attention: its last word in the log, else the setting ("auto": on)."""
    found = _FLASH_RESOLVED_RE.findall(log_text)
    return found[-1] == "enabled" if found else setting != "off"


def parse_buffer_sizes(log_text: str) -> list[dict[str, Any]]:
    """The buffers llama.cpp allocated, from its log lines ("CPU_Mapped model buffer size = 12.34 MiB")."""
    found = []
    for match in _BUFFER_RE.finditer(log_text):
        found.append(
            {
                "buffer": match.group("buffer"),
                "part": _PART_NAMES[match.group("part")],
                "bytes": int(float(match.group("mib")) * 1024 * 1024),
            }
        )
    return found


def _is_host_buffer(name: str) -> bool:
    return name.upper().startswith("CPU") or name.endswith("_Host")


def memory_report(buffers: Sequence[Mapping[str, Any]], nvml: list[dict[str, int]] | None = None) -> dict[str, Any]:
    """Group llama.cpp's buffers into host and per-GPU weights / KV cache / compute (bytes)."""
    host = {"weights": 0, "kv_cache": 0, "compute": 0}
    gpus: dict[str, dict[str, Any]] = {}
    for buffer in buffers:
        name = str(buffer["buffer"])
        if _is_host_buffer(name):
            target = host
        else:
            device = name.removesuffix("_Mapped")
            target = gpus.setdefault(device, {"name": device, "weights": 0, "kv_cache": 0, "compute": 0})
        target[buffer["part"]] += int(buffer["bytes"])
    return {"host": host, "gpus": list(gpus.values()), "buffers": list(buffers), "nvml": nvml}


def nvml_used_bytes(nvml: Any = None) -> list[int] | None:
    """Used memory of each NVIDIA GPU from NVML, or None where there is no NVIDIA driver."""
    try:
        if nvml is None:
            import pynvml as nvml  # type: ignore[no-redef]
        nvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no library: nothing to report
        return None
    try:
        used = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            used.append(int(nvml.nvmlDeviceGetMemoryInfo(handle).used))
        return used
    except Exception:  # noqa: BLE001
        return None
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def nvml_delta(before: list[int] | None, after: list[int] | None) -> list[dict[str, int]] | None:
    if before is None or after is None or len(before) != len(after):
        return None
    return [
        {"index": i, "used_before": b, "used_after": a, "delta": a - b} for i, (b, a) in enumerate(zip(before, after))
    ]


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
        self.llm: Any = None
        self.model_info: dict[str, Any] = {}
        self.template: ChatTemplate | None = None
        self._log_lock = threading.Lock()
        self._log_capture: list[str] | None = None
        self._keep: list[Any] = []  # ctypes callbacks that must outlive their registration

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
            elif kind in ("shutdown", "cancel"):
                self.shutting_down = True
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

    # -- llama.cpp log capture (buffer sizes for the memory report)

    def install_log_callback(self) -> None:
        import llama_cpp

        @llama_cpp.llama_log_callback  # type: ignore[misc]
        def on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            try:
                line = text.decode("utf-8", "replace")
                sys.stderr.write(line)
                with self._log_lock:
                    if self._log_capture is not None:
                        self._log_capture.append(line)
            except Exception:  # noqa: BLE001 - never let an exception cross into C
                pass

        self._keep.append(on_log)
        llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))

    # -- requests

    def _load(self, request: Mapping[str, Any]) -> None:
        import llama_cpp

        self._unload()
        settings = dict(request.get("settings") or {})
        path = str(request["path"])
        n_ctx = int(request.get("n_ctx") or 0)
        n_gpu_layers = int(request.get("n_gpu_layers") or 0)
        n_threads = request.get("n_threads")
        cache_k = str(settings.get("cache_type_k") or "f16").lower()
        cache_v = str(settings.get("cache_type_v") or cache_k).lower()
        for cache_type in (cache_k, cache_v):
            if cache_type not in KV_TYPE_IDS:
                raise UserError(f"{cache_type} is not a KV cache type llama.cpp supports.", "Choose f16, q8_0 or q4_0.")
        flash_setting = flash_attn_setting(settings.get("flash_attn", "auto"), cache_v)

        if not os.path.exists(path):
            raise UserError(f"The model file {path} does not exist.", "Pick the model again in the library.")

        seq = self.current_seq = int(request["_seq"])  # a stop from now on cancels the load
        last_percent = -1

        @llama_cpp.llama_progress_callback  # type: ignore[misc]
        def on_progress(fraction: float, user_data: ctypes.c_void_p) -> bool:
            nonlocal last_percent
            try:
                percent = int(fraction * 100)
                if percent != last_percent:
                    last_percent = percent
                    self.send("load_progress", {"fraction": float(fraction), "message": f"Loading {percent}%"})
            except Exception:  # noqa: BLE001
                pass
            return not self.stopped(seq)

        with self._log_lock:
            self._log_capture = []
        nvml_before = nvml_used_bytes() if n_gpu_layers else None
        started = time.perf_counter()
        try:
            with _patched_model_params(use_extra_bufts=bool(settings.get("cpu_repack")), progress=on_progress,
                                       flash_attn_type=_FLASH_ATTN_TYPES[flash_setting]):
                kwargs: dict[str, Any] = {
                    "model_path": path,
                    "n_ctx": n_ctx,
                    "n_gpu_layers": n_gpu_layers,
                    "n_batch": int(settings.get("n_batch") or 512),
                    "flash_attn": flash_setting == "on",  # "auto" is set by _patched_model_params
                    # llama.cpp's default keeps the whole context in sliding-window layers too; the planner
                    # assumes the window (much less memory on Gemma-style models) unless asked otherwise
                    "swa_full": bool(settings.get("swa_full", False)),
                    "type_k": KV_TYPE_IDS[cache_k],
                    "type_v": KV_TYPE_IDS[cache_v],
                    "verbose": True,  # verbose=False dup2()s fd 1/2 process-wide; our log callback filters instead
                }
                if n_threads:
                    kwargs["n_threads"] = int(n_threads)
                    kwargs["n_threads_batch"] = int(n_threads)
                try:
                    llm = llama_cpp.Llama(**kwargs)
                except ValueError as exc:
                    if self.stopped(seq):
                        self.send("load_cancelled", {})
                        return
                    raise UserError(
                        f"llama.cpp could not load {os.path.basename(path)} ({exc}).",
                        "Check that the file is a complete GGUF of an architecture this llama.cpp supports; the log has details.",
                    ) from exc
        finally:
            with self._log_lock:
                captured = "".join(self._log_capture or [])
                self._log_capture = None
        load_s = time.perf_counter() - started
        self.llm = llm
        self._abort_callback(llm)

        metadata = dict(llm.metadata)
        arch = metadata.get("general.architecture", "")
        self.template = choose_template(metadata.get("tokenizer.chat_template"), arch, settings.get("template"))
        vocab = llm._model.vocab
        self.model_info = {
            "path": path,
            "name": metadata.get("general.name", os.path.basename(path)),
            "architecture": arch,
            "n_ctx": llm.n_ctx(),
            "n_ctx_train": int(llm._model.n_ctx_train()),
            "n_layer": int(llama_cpp.llama_model_n_layer(llm._model.model)),
            "n_gpu_layers": n_gpu_layers,
            "n_threads": llm.context_params.n_threads,
            "n_vocab": llm.n_vocab(),
            "model_size": int(llama_cpp.llama_model_size(llm._model.model)),
            "n_params": int(llama_cpp.llama_model_n_params(llm._model.model)),
            "template": self.template.name,
            "template_from_model": self.template.from_model,
            "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
            "bos_token": _token_text(llm, llm.token_bos()),
            "eos_token": _token_text(llm, llm.token_eos()),
            "cpu_repack": bool(settings.get("cpu_repack")),
            "cache_type_k": cache_k,
            "cache_type_v": cache_v,
            "flash_attn": resolved_flash_attn(captured, flash_setting),
            "swa_full": bool(settings.get("swa_full", False)),
            "load_s": load_s,
        }
        nvml = nvml_delta(nvml_before, nvml_used_bytes()) if n_gpu_layers else None
        memory = memory_report(parse_buffer_sizes(captured), nvml)
        memory["model_size"] = self.model_info["model_size"]
        self.send("loaded", {"metadata": self.model_info, "memory": memory})

    def _abort_callback(self, llm: Any) -> None:
        import llama_cpp

        @llama_cpp.ggml_abort_callback  # type: ignore[misc]
        def should_abort(user_data: ctypes.c_void_p) -> bool:
            try:
                return self.stopped()
            except Exception:  # noqa: BLE001
                return False

        self._keep.append(should_abort)
        self._abort_cb = should_abort
        self._no_abort_cb = llama_cpp.ggml_abort_callback()  # NULL: no Python call per graph node

    def _set_abortable(self, llm: Any, abortable: bool) -> None:
        """The abort callback is a Python call on every graph node: worth it during a long prompt prefill (the only
        decode that can take seconds), not during generation, where stop is checked between tokens anyway."""
        import llama_cpp

        llama_cpp.llama_set_abort_callback(
            llm._ctx.ctx, self._abort_cb if abortable else self._no_abort_cb, None
        )

    def _unload_request(self, request: Mapping[str, Any]) -> None:
        self._unload()
        self.send("unloaded", {})

    def _unload(self) -> None:
        if self.llm is not None:
            llm, self.llm = self.llm, None
            llm.close()
            del llm
            gc.collect()
        self._keep = self._keep[:1]  # keep the log callback; drop the old context's abort callback

    def _tokenize_prompt(self, prompt: str) -> list[int]:
        llm = self.llm
        bos = self.model_info["bos_token"]
        add_bos = self.model_info["add_bos"] and not (bos and prompt.startswith(bos))
        return list(llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True))

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
        import llama_cpp

        started = time.perf_counter()
        request_id = request.get("request_id")
        seq = self.current_seq = int(request["_seq"])
        if self.llm is None:
            raise UserError("No model is loaded.", "Load a model first.", kind="not_loaded")
        llm = self.llm
        sampling = dict(request.get("sampling") or {})
        n_ctx = int(self.model_info["n_ctx"])
        max_tokens = int(sampling.get("max_tokens") or 0) or n_ctx
        reserve = max(1, min(max_tokens, n_ctx // 4))
        messages = list(request.get("messages") or [])
        raw_prompt = request.get("prompt")
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

        seed = sampling.get("seed")
        if seed is not None and int(seed) >= 0:
            llm.set_seed(int(seed))
        template_stops = self.template.stop if self.template and raw_prompt is None else ()
        stops = list(sampling.get("stop") or []) + list(template_stops)
        matcher = StopMatcher(stops)
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        vocab = llm._model.vocab
        completion: list[int] = []
        finish = "length"
        first_token_at: float | None = None
        parts: list[str] = []

        def emit(text: str) -> None:
            nonlocal first_token_at
            if not text:
                return
            if first_token_at is None:
                first_token_at = time.perf_counter()
            parts.append(text)
            self.send("token", {"request_id": request_id, "text": text})

        self.send("prompt_started", {"request_id": request_id, "prompt_tokens": len(tokens), "dropped_messages": dropped})
        llama_cpp.llama_perf_context_reset(llm._ctx.ctx)
        self._set_abortable(llm, True)  # the generator's first step evaluates the prompt
        generator = llm.generate(
            tokens,
            temp=float(sampling.get("temperature", 0.8)),
            top_p=float(sampling.get("top_p", 0.95)),
            top_k=int(sampling.get("top_k", 40)),
            min_p=float(sampling.get("min_p", 0.05)),
            repeat_penalty=float(sampling.get("repeat_penalty", 1.1)),
        )
        try:
            if self.stopped(seq):
                finish = "stopped"
            else:
                for token in generator:
                    if not completion:
                        self._set_abortable(llm, False)  # prompt done; single-token decodes from here on
                    if llama_cpp.llama_vocab_is_eog(vocab, token):
                        finish = "stop"
                        break
                    completion.append(token)
                    emit(matcher.feed(decoder.decode(_piece(vocab, token))))
                    if matcher.stopped:
                        finish = "stop"
                        break
                    if len(completion) >= max_tokens:
                        finish = "length"
                        break
                    if self.stopped(seq):  # checked before the next llama_decode: stop lands within one token
                        finish = "stopped"
                        break
        except RuntimeError as exc:
            if not self.stopped(seq):
                raise
            log.info("generation aborted inside llama_decode (%s)", exc)
            finish = "stopped"
        finally:
            generator.close()
        emit(matcher.feed(decoder.decode(b"", final=True)))
        emit(matcher.flush())
        finished = time.perf_counter()
        perf = llama_cpp.llama_perf_context(llm._ctx.ctx)
        counters = {
            "t_p_eval_ms": float(perf.t_p_eval_ms),
            "n_p_eval": int(perf.n_p_eval),
            "t_eval_ms": float(perf.t_eval_ms),
            "n_eval": int(perf.n_eval),
        }
        metrics = {
            "prompt_tokens": counters["n_p_eval"],
            "prompt_ms": counters["t_p_eval_ms"],
            "prompt_tokens_per_s": _rate(counters["n_p_eval"], counters["t_p_eval_ms"]),
            "generated_tokens": counters["n_eval"],
            "generation_ms": counters["t_eval_ms"],
            "generation_tokens_per_s": _rate(counters["n_eval"], counters["t_eval_ms"]),
            "ttft_s": (first_token_at - started) if first_token_at is not None else None,
            "total_s": finished - started,
            "completion_tokens": len(completion),
            "prompt_tokens_total": len(tokens),
            "context_used": len(tokens) + len(completion),
            "n_ctx": n_ctx,
            "finish_reason": finish,
            "dropped_messages": dropped,
            "llama_perf": counters,
        }
        self.send("reply_done", {"request_id": request_id, "text": "".join(parts), "metrics": metrics})


def _rate(n: int, ms: float) -> float:
    return n / ms * 1000.0 if ms > 0 else 0.0


def _piece(vocab: Any, token: int) -> bytes:
    import llama_cpp

    buffer = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(vocab, token, buffer, 64, 0, False)
    if n < 0:
        buffer = ctypes.create_string_buffer(-n)
        n = llama_cpp.llama_token_to_piece(vocab, token, buffer, -n, 0, False)
    return buffer.raw[:n]


def _token_text(llm: Any, token: int) -> str:
    if token < 0:
        return ""
    try:
        return bytes(llm.detokenize([token], special=True)).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001
        return ""


@contextlib.contextmanager
def _patched_model_params(*, use_extra_bufts: bool, progress: Any, flash_attn_type: int | None = None) -> Iterator[None]:
    """Make ``Llama()`` load with our ``use_extra_bufts``, progress callback and flash-attention type (it has no
    arguments for them; its ``flash_attn`` bool cannot say llama.cpp's "auto")."""
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params
    original_init = low.llama_init_from_model

    def init_from_model(model: Any, params: Any) -> Any:
        if flash_attn_type is not None:
            params.flash_attn_type = flash_attn_type
        return original_init(model, params)

    def patched() -> Any:
        params = original()
        params.use_extra_bufts = use_extra_bufts
        if progress is not None:
            params.progress_callback = progress
            params.progress_callback_user_data = None
        return params

    low.llama_model_default_params = patched
    low.llama_init_from_model = init_from_model
    try:
        yield
    finally:
        low.llama_model_default_params = original
        low.llama_init_from_model = original_init


def main(requests: Connection, events: Connection, log_path: str | None) -> None:
    """Entry point of the engine process."""
    from desktop.process import setup_child_logging

    setup_child_logging(log_path)
    server = _Server(events)
    try:
        server.install_log_callback()
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
