"""Chat templates: the GGUF's own Jinja template, rendered in a sandbox, or a fallback chosen by architecture.

A GGUF's ``tokenizer.chat_template`` is code from the internet, so it is rendered with
:class:`jinja2.sandbox.ImmutableSandboxedEnvironment` (no attribute access to internals, no mutation of the
values passed in), within a deadline (:data:`RENDER_TIMEOUT_S`: two nested loops of 100,000 would otherwise run for
hours on the engine's main thread) and an output cap (:data:`MAX_PROMPT_CHARS`, also checked before a string or list
is multiplied). The helpers Hugging Face templates expect are provided: ``raise_exception``,
``strftime_now``, ``bos_token``, ``eos_token``, ``add_generation_prompt``, and the ``tojson`` filter.

When a GGUF has no template, :func:`template_for_architecture` picks one of :data:`FALLBACK_TEMPLATES`; the user
may pick another by name (:func:`choose_template`).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as _dt
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from desktop.errors import UserError

RENDER_TIMEOUT_S = 2.0  # real templates render in milliseconds
MAX_PROMPT_CHARS = 8_000_000  # about two million tokens: more than any context
MAX_POWER_EXPONENT = 4096


@dataclass(frozen=True)
class ChatTemplate:
    name: str  # "model" for the GGUF's own template, else a key of FALLBACK_TEMPLATES
    source: str  # Jinja text
    stop: tuple[str, ...] = ()  # strings that end a reply when the model does not emit an end-of-generation token
    from_model: bool = False
    label: str = ""


_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

_LLAMA2 = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = '<<SYS>>\n' + messages[0]['content'] + '\n<</SYS>>\n\n' %}{% set rest = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set rest = messages %}{% endif %}"
    "{% for message in rest %}"
    "{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + (system if loop.first else '') + message['content'] | trim + ' [/INST]' }}"
    "{% else %}{{ ' ' + message['content'] | trim + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

_GEMMA = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set first_prefix = messages[0]['content'] + '\n\n' %}{% set rest = messages[1:] %}"
    "{% else %}{% set first_prefix = '' %}{% set rest = messages %}{% endif %}"
    "{% for message in rest %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + (first_prefix if loop.first else '') + message['content'] | trim"
    " + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

_PHI3 = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)

_MISTRAL = (
    "{{ bos_token }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] + '\n\n' %}{% set rest = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set rest = messages %}{% endif %}"
    "{% for message in rest %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + (system if loop.first else '') + message['content'] + '[/INST]' }}"
    "{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)

_PLAIN = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n' }}"
    "{% else %}{{ 'Assistant: ' + message['content'] + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

FALLBACK_TEMPLATES: dict[str, ChatTemplate] = {
    "chatml": ChatTemplate("chatml", _CHATML, ("<|im_end|>",), label="ChatML (Qwen, SmolLM, many fine-tunes)"),
    "llama3": ChatTemplate("llama3", _LLAMA3, ("<|eot_id|>",), label="Llama 3"),
    "llama2": ChatTemplate("llama2", _LLAMA2, ("[INST]",), label="Llama 2 / TinyLlama chat"),
    "gemma": ChatTemplate("gemma", _GEMMA, ("<end_of_turn>",), label="Gemma"),
    "phi3": ChatTemplate("phi3", _PHI3, ("<|end|>",), label="Phi-3"),
    "mistral": ChatTemplate("mistral", _MISTRAL, ("[INST]",), label="Mistral instruct"),
    "plain": ChatTemplate("plain", _PLAIN, ("\nUser:",), label="Plain text (User:/Assistant:)"),
}

_BY_ARCHITECTURE = {
    "llama": "llama3",
    "qwen2": "chatml",
    "qwen2moe": "chatml",
    "qwen3": "chatml",
    "qwen3moe": "chatml",
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3n": "gemma",
    "phi3": "phi3",
    "mistral": "mistral",
    "mistral3": "mistral",
}

# end-of-turn markers a model's own template may use; added as stop strings when the template contains them
_KNOWN_STOPS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


def template_for_architecture(architecture: str) -> ChatTemplate:
    """The fallback for a GGUF without a chat template (ChatML when the architecture is unknown)."""
    return FALLBACK_TEMPLATES[_BY_ARCHITECTURE.get(architecture.lower(), "chatml")]


def model_template(source: str) -> ChatTemplate:
    stops = tuple(s for s in _KNOWN_STOPS if s in source)
    return ChatTemplate("model", source, stops, from_model=True, label="The model's own template")


def choose_template(model_source: str | None, architecture: str, override: str | None = None) -> ChatTemplate:
    """The template to use: the user's choice (a fallback name, or "model"), else the GGUF's, else by architecture."""
    if override and override != "model":
        try:
            return FALLBACK_TEMPLATES[override]
        except KeyError:
            raise UserError(
                f"There is no chat template called {override!r}.",
                f"Choose one of: model, {', '.join(FALLBACK_TEMPLATES)}.",
            ) from None
    if model_source:
        return model_template(model_source)
    return template_for_architecture(architecture)


def _raise_exception(message: str) -> None:
    raise UserError(f"The chat template refused the conversation: {message}", "Edit the conversation or pick another template.")


def _strftime_now(fmt: str) -> str:
    return _dt.datetime.now().strftime(fmt)


class _TemplateTimeout(Exception):
    """Raised inside the rendering thread when its deadline passes."""


@contextlib.contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`_TemplateTimeout` in this thread if the block is still running after ``seconds``.

    A template's loops are Python bytecode, so an asynchronous exception stops them wherever they are; a timer
    thread sets it, and the block's end takes back one that was set but not yet raised.
    """
    thread_id = threading.get_ident()
    lock = threading.Lock()
    state = {"running": True, "fired": False}

    def fire() -> None:
        with lock:
            if state["running"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(_TemplateTimeout))

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            state["running"] = False
            timer.cancel()
            if state["fired"]:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)


def _too_long() -> UserError:
    return UserError(
        f"The chat template produced more than {MAX_PROMPT_CHARS:,} characters, so it was stopped.",
        "Pick one of the built-in templates for this model.",
        kind="template",
    )


def _environment() -> Any:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _BoundedEnvironment(ImmutableSandboxedEnvironment):  # type: ignore[misc]
        intercepted_binops = frozenset(["*", "**"])

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for seq, times in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > MAX_PROMPT_CHARS:
                        raise _too_long()
            elif operator == "**" and isinstance(right, int) and abs(right) > MAX_POWER_EXPONENT:
                raise UserError("The chat template computes an enormous number.", "Pick one of the built-in templates.")
            return super().call_binop(context, operator, left, right)

    env = _BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.filters["tojson"] = lambda value, indent=None, ensure_ascii=False: json.dumps(
        value, indent=indent, ensure_ascii=ensure_ascii
    )
    return env


def render(
    template: ChatTemplate | str,
    messages: Sequence[Mapping[str, Any]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    timeout_s: float = RENDER_TIMEOUT_S,
    **extra: Any,
) -> str:
    """Render ``messages`` (dicts with "role" and "content") to the prompt text.

    Raises UserError when the template is broken, unsafe (the sandbox stopped it), refuses the messages, runs
    longer than ``timeout_s`` or writes more than :data:`MAX_PROMPT_CHARS`.
    """
    import jinja2
    from jinja2.sandbox import SecurityError

    source = template.source if isinstance(template, ChatTemplate) else template
    plain = [{"role": str(m["role"]), "content": str(m.get("content", ""))} for m in messages]
    try:
        with _deadline(timeout_s):
            compiled = _environment().from_string(source)
            parts: list[str] = []
            size = 0
            for part in compiled.generate(
                messages=plain,
                bos_token=bos_token,
                eos_token=eos_token,
                add_generation_prompt=add_generation_prompt,
                **extra,
            ):
                size += len(part)
                if size > MAX_PROMPT_CHARS:
                    raise _too_long()
                parts.append(part)
            return "".join(parts)
    except _TemplateTimeout:
        raise UserError(
            f"The chat template took more than {timeout_s:g} s to render, so it was stopped.",
            "Pick one of the built-in templates for this model.",
            kind="template",
        ) from None
    except UserError:
        raise
    except SecurityError as exc:
        raise UserError(
            f"The chat template tried something unsafe and was stopped ({exc}).",
            "Pick one of the built-in templates for this model.",
        ) from exc
    except jinja2.TemplateError as exc:
        raise UserError(
            f"The chat template could not be used ({type(exc).__name__}: {exc}).",
            "Pick one of the built-in templates for this model.",
        ) from exc
