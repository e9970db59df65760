"""The OpenAI wire format, as QuantDesk speaks it: request checking and the response objects (no I/O here).

Requests are untrusted: :func:`parse_chat` and :func:`parse_completion` check every field they use and raise
:class:`ApiError` (an HTTP status and OpenAI's error object ``{"error": {message, type, param, code}}``) for
anything malformed. Unknown fields are ignored, as OpenAI-compatible servers do (``tools``, ``logprobs``,
``response_format`` among them), and ``model`` is not checked: the one loaded model answers to any name.

Sampling defaults for API requests are llama-server's (temperature 0.8, top_k 40, top_p 0.95, min_p 0.05, no
repeat penalty); ``top_k``, ``min_p`` and ``repeat_penalty`` are accepted as extensions. ``max_tokens`` (or
``max_completion_tokens``) is clamped to the server's cap; a missing one means the cap.

Responses carry ``usage`` and, like llama-server, ``timings`` (llama.cpp's own counters for the request:
``prompt_n``, ``prompt_ms``, ``prompt_per_second``, ``predicted_n``, ``predicted_ms``, ``predicted_per_second``).
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from desktop.chat.engine import ReplyMetrics, Sampling

MAX_STOP_STRINGS = 4
MAX_STOP_LENGTH = 200
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
FINISH_REASONS = {"stop": "stop", "length": "length", "stopped": "stop"}

__all__ = [
    "ApiError",
    "ParsedRequest",
    "chat_response",
    "completion_response",
    "error_body",
    "models_response",
    "parse_chat",
    "parse_completion",
    "stream_chunk",
    "timings",
    "usage",
]


class ApiError(Exception):
    """A request the server answers with an OpenAI error object and a 4xx/5xx status."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,  # noqa: A002
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:  # noqa: A002
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass(frozen=True)
class ParsedRequest:
    """A checked request: chat ``messages`` or a raw ``prompt``, the sampling, and how to answer."""

    endpoint: str  # "chat" or "completion"
    sampling: Sampling
    stream: bool = False
    include_usage: bool = False
    messages: list[dict[str, str]] = field(default_factory=list)
    prompt: str | None = None
    model: str | None = None
    timings_per_token: bool = False  # llama-server's option: every chunk says how many tokens so far


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(400, f"'{name}' must be a number.", param=name, code="invalid_type")
    if not low <= value <= high:
        raise ApiError(400, f"'{name}' must be between {low:g} and {high:g}.", param=name, code="invalid_value")
    return float(value)


def _integer(body: dict[str, Any], name: str, default: int | None, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, f"'{name}' must be an integer.", param=name, code="invalid_type")
    if not low <= value <= high:
        raise ApiError(400, f"'{name}' must be between {low} and {high}.", param=name, code="invalid_value")
    return value


def _stops(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise ApiError(400, "'stop' must be a string or a list of strings.", param="stop", code="invalid_type")
    if len(items) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_LENGTH for s in items):
        raise ApiError(
            400, f"'stop' takes at most {MAX_STOP_STRINGS} strings of up to {MAX_STOP_LENGTH} characters.",
            param="stop", code="invalid_value",
        )
    return tuple(s for s in items if s)


def _sampling(body: dict[str, Any], max_tokens_cap: int) -> Sampling:
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise ApiError(400, "Only n=1 is supported: ask again for another reply.", param="n", code="unsupported_value")
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _integer(body, name, max_tokens_cap, 1, 2**31 - 1)
    assert max_tokens is not None
    seed = _integer(body, "seed", None, -(2**63), 2**63 - 1)
    return Sampling(
        temperature=_number(body, "temperature", 0.8, 0.0, 2.0),
        top_p=_number(body, "top_p", 0.95, 0.0, 1.0),
        top_k=int(_number(body, "top_k", 40, 0, 1_000_000)),
        min_p=_number(body, "min_p", 0.05, 0.0, 1.0),
        repeat_penalty=_number(body, "repeat_penalty", 1.0, 0.0, 10.0),
        max_tokens=min(max_tokens, max_tokens_cap),
        seed=seed if seed is None or seed >= 0 else None,
        stop=_stops(body),
    )


def _common(body: Any, max_tokens_cap: int) -> tuple[Sampling, bool, bool, str | None]:
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_json")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false.", param="stream", code="invalid_type")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "'stream_options' must be an object.", param="stream_options", code="invalid_type")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "'model' must be a string.", param="model", code="invalid_type")
    return _sampling(body, max_tokens_cap), stream, bool(options.get("include_usage")), model


def _content(value: Any, index: int) -> str:
    if isinstance(value, str):
        return value
    param = f"messages[{index}].content"
    if isinstance(value, list):
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ApiError(400, "This server takes text only: each content part must be {type: text, text}.",
                               param=param, code="unsupported_content")
            texts.append(part["text"])
        return "".join(texts)
    if value is None:
        return ""
    raise ApiError(400, "A message's 'content' must be a string or a list of text parts.", param=param,
                   code="invalid_type")


def parse_chat(body: Any, max_tokens_cap: int) -> ParsedRequest:
    """Check a ``/v1/chat/completions`` body."""
    sampling, stream, include_usage, model = _common(body, max_tokens_cap)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "'messages' must be a non-empty list.", param="messages", code="invalid_value")
    messages = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict):
            raise ApiError(400, "Each message must be an object with 'role' and 'content'.",
                           param=f"messages[{index}]", code="invalid_type")
        role = ROLES.get(message.get("role"))  # type: ignore[arg-type]
        if role is None:
            raise ApiError(400, f"Message role {str(message.get('role'))[:40]!r} is not supported here "
                           "(system, developer, user or assistant).", param=f"messages[{index}].role",
                           code="invalid_value")
        messages.append({"role": role, "content": _content(message.get("content"), index)})
    return ParsedRequest("chat", sampling, stream, include_usage, messages=messages, model=model,
                         timings_per_token=body.get("timings_per_token") is True)


def parse_completion(body: Any, max_tokens_cap: int) -> ParsedRequest:
    """Check a ``/v1/completions`` body (one prompt string, or a list holding one)."""
    sampling, stream, include_usage, model = _common(body, max_tokens_cap)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ApiError(400, "'prompt' must be a string.", param="prompt", code="invalid_type")
    if body.get("echo") or (body.get("best_of") or 1) != 1 or body.get("suffix"):
        raise ApiError(400, "'echo', 'best_of' and 'suffix' are not supported.", code="unsupported_parameter")
    return ParsedRequest("completion", sampling, stream, include_usage, prompt=prompt, model=model,
                         timings_per_token=body.get("timings_per_token") is True)


# ---------------------------------------------------------------------------------------------- responses


def new_id(endpoint: str) -> str:
    return ("chatcmpl-" if endpoint == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage(metrics: ReplyMetrics) -> dict[str, int]:
    prompt, completion = metrics.prompt_tokens_total, metrics.completion_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def timings(metrics: ReplyMetrics) -> dict[str, float]:
    """llama-server's ``timings`` object, from llama.cpp's counters for this request."""
    def per_token(ms: float, n: int) -> float:
        return ms / n if n else 0.0

    return {
        "prompt_n": metrics.prompt_tokens,
        "prompt_ms": metrics.prompt_ms,
        "prompt_per_token_ms": per_token(metrics.prompt_ms, metrics.prompt_tokens),
        "prompt_per_second": metrics.prompt_tokens_per_s,
        "predicted_n": metrics.generated_tokens,
        "predicted_ms": metrics.generation_ms,
        "predicted_per_token_ms": per_token(metrics.generation_ms, metrics.generated_tokens),
        "predicted_per_second": metrics.generation_tokens_per_s,
    }


def _envelope(response_id: str, kind: str, model: str, created: int | None) -> dict[str, Any]:
    return {"id": response_id, "object": kind, "created": created or int(time.time()), "model": model}


def chat_response(response_id: str, model: str, text: str, metrics: ReplyMetrics) -> dict[str, Any]:
    message = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": FINISH_REASONS[metrics.finish_reason]}
    return {**_envelope(response_id, "chat.completion", model, None), "choices": [choice], "usage": usage(metrics),
            "timings": timings(metrics)}


def completion_response(response_id: str, model: str, text: str, metrics: ReplyMetrics) -> dict[str, Any]:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": FINISH_REASONS[metrics.finish_reason]}
    return {**_envelope(response_id, "text_completion", model, None), "choices": [choice], "usage": usage(metrics),
            "timings": timings(metrics)}


def stream_chunk(endpoint: str, response_id: str, model: str, created: int, text: str = "", *, first: bool = False,
                 finish: str | None = None, metrics: ReplyMetrics | None = None,
                 tokens_so_far: int | None = None) -> dict[str, Any]:
    """One server-sent chunk: the opening one (``first``: a chat's role), a piece of ``text``, or the last one
    (``finish`` and, like llama-server, the request's ``timings``). ``tokens_so_far``: for a client that asked for
    ``timings_per_token``, ``timings.predicted_n`` on a piece (a piece can hold several tokens)."""
    if endpoint == "chat":
        delta = {"role": "assistant", "content": ""} if first else ({} if finish else {"content": text})
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        kind = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        kind = "text_completion"
    chunk = {**_envelope(response_id, kind, model, created), "choices": [choice]}
    if metrics is not None:
        chunk["timings"] = timings(metrics)
    elif tokens_so_far is not None:
        chunk["timings"] = {"predicted_n": tokens_so_far}
    return chunk


def usage_chunk(response_id: str, model: str, created: int, endpoint: str, metrics: ReplyMetrics) -> dict[str, Any]:
    """The last chunk of a stream asked for with ``stream_options.include_usage``: no choices, the usage."""
    kind = "chat.completion.chunk" if endpoint == "chat" else "text_completion"
    return {**_envelope(response_id, kind, model, created), "choices": [], "usage": usage(metrics)}


def models_response(model: str, created: int, meta: dict[str, Any]) -> dict[str, Any]:
    entry = {"id": model, "object": "model", "created": created, "owned_by": "quantdesk", "meta": meta}
    return {"object": "list", "data": [entry]}
