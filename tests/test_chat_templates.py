"""Chat templates: sandboxed rendering, fallbacks by architecture, and the engine's pure text helpers."""

from __future__ import annotations

import pytest

from desktop.chat import templates as ct
from desktop.chat.engine_child import StopMatcher, fit_messages, memory_report, nvml_delta, nvml_used_bytes, parse_buffer_sizes
from desktop.errors import UserError

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Name a colour."},
]

# the shape of Hugging Face templates: loops, raise_exception, bos_token, add_generation_prompt
HF_STYLE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'tool' %}{{ raise_exception('no tools') }}{% endif %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def test_a_model_template_renders_with_the_helpers_hf_templates_use() -> None:
    text = ct.render(ct.model_template(HF_STYLE), CONVERSATION, bos_token="<s>")
    assert text == "<s><|system|>Be brief.<|end|><|user|>Hi<|end|><|assistant|>Hello!<|end|><|user|>Name a colour.<|end|><|assistant|>"
    assert ct.model_template(HF_STYLE).stop == ("<|end|>",)


def test_raise_exception_in_a_template_is_a_user_error() -> None:
    with pytest.raises(UserError, match="refused the conversation: no tools"):
        ct.render(HF_STYLE, [{"role": "tool", "content": "x"}])


def test_the_sandbox_stops_a_template_that_reaches_for_python_internals() -> None:
    evil = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(UserError, match="unsafe"):
        ct.render(evil, CONVERSATION)


def test_the_sandbox_is_immutable() -> None:
    mutating = "{% set x = messages.append({'role': 'user', 'content': 'injected'}) %}{{ messages | length }}"
    with pytest.raises(UserError, match="unsafe"):
        ct.render(mutating, CONVERSATION)


def test_a_broken_template_is_a_user_error() -> None:
    with pytest.raises(UserError, match="could not be used"):
        ct.render("{% for m in messages %}", CONVERSATION)


def test_gemma_fallback_folds_the_system_prompt_into_the_first_turn() -> None:
    text = ct.render(ct.template_for_architecture("gemma3"), CONVERSATION, bos_token="<bos>")
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nName a colour.<end_of_turn>\n<start_of_turn>model\n"
    )


@pytest.mark.parametrize(
    ("arch", "name", "marker"),
    [
        ("llama", "llama3", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
        ("qwen3", "chatml", "<|im_start|>assistant\n"),
        ("phi3", "phi3", "<|assistant|>\n"),
        ("something-new", "chatml", "<|im_start|>assistant\n"),
    ],
)
def test_fallback_by_architecture(arch: str, name: str, marker: str) -> None:
    template = ct.template_for_architecture(arch)
    assert template.name == name
    assert ct.render(template, CONVERSATION).endswith(marker)


def test_every_fallback_renders_the_conversation() -> None:
    for template in ct.FALLBACK_TEMPLATES.values():
        text = ct.render(template, CONVERSATION, bos_token="<s>", eos_token="</s>")
        assert "Name a colour." in text and "Hello!" in text and "Be brief." in text


def test_choose_template_prefers_the_user_then_the_model_then_the_architecture() -> None:
    assert ct.choose_template(HF_STYLE, "gemma3").from_model
    assert ct.choose_template(None, "gemma3").name == "gemma"
    assert ct.choose_template(HF_STYLE, "gemma3", override="chatml").name == "chatml"
    assert ct.choose_template(HF_STYLE, "gemma3", override="model").from_model
    with pytest.raises(UserError, match="no chat template called"):
        ct.choose_template(None, "llama", override="nope")


def test_stop_matcher_holds_back_a_possible_stop_string_and_cuts_at_it() -> None:
    m = StopMatcher(["<|im_end|>"])
    assert m.feed("Hello") == "Hello"
    assert m.feed(" <|im") == " "
    assert m.feed("_e") == ""
    assert m.feed("nd|> trailing") == ""
    assert m.stopped and m.flush() == ""


def test_stop_matcher_releases_held_text_that_was_not_a_stop() -> None:
    m = StopMatcher(["\nUser:"])
    assert m.feed("a\nUs") == "a"
    assert m.feed("ually") == "\nUsually"
    assert m.feed("\n") == ""
    assert m.flush() == "\n"
    assert StopMatcher([]).feed("anything") == "anything"



def test_stop_matcher_shows_exactly_the_text_before_the_first_stop_however_it_is_cut() -> None:
    """Streamed in random pieces, the text shown is the text up to the first stop string, never a character of the
    stop itself; with no stop in the text, everything is shown once flushed."""
    import random

    rng = random.Random(7)
    stops = ["<|im_end|>", "<end>", "\nUser:", "x"]
    for _ in range(400):
        text = "".join(rng.choice(["a", "b", " ", "<", "|", "im", "_end", "|>", "<end", ">", "\n", "Us", "er:", "x"])
                       for _ in range(rng.randint(0, 30)))
        chosen = rng.sample(stops, rng.randint(0, 3))
        firsts = [i for i in (text.find(s) for s in chosen) if i >= 0]
        expected = text[: min(firsts)] if firsts else text
        m = StopMatcher(chosen)
        shown, i = [], 0
        while i < len(text):
            step = rng.randint(1, 4)
            shown.append(m.feed(text[i : i + step]))
            i += step
        shown.append(m.flush())
        assert "".join(shown) == expected, (text, chosen)
        assert m.stopped == bool(firsts)

def _count_words(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"].split()) for m in messages)


def test_fit_messages_drops_the_oldest_turns_in_pairs_and_keeps_the_system_prompt() -> None:
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "one two three"},
        {"role": "assistant", "content": "four five"},
        {"role": "user", "content": "six"},
        {"role": "assistant", "content": "seven"},
        {"role": "user", "content": "eight nine"},
    ]
    kept, dropped = fit_messages(messages, _count_words, budget=5)
    assert dropped == 2
    assert [m["content"] for m in kept] == ["s", "six", "seven", "eight nine"]
    with pytest.raises(UserError, match="last message alone") as info:
        fit_messages(messages, _count_words, budget=2)
    assert info.value.kind == "context_full"


def test_buffer_sizes_from_llama_cpp_log_lines_group_into_host_and_gpus() -> None:
    log = (
        "load_tensors:   CPU_Mapped model buffer size =   241.05 MiB\n"
        "load_tensors:        CUDA0 model buffer size =  1000.00 MiB\n"
        "llama_kv_cache:      CUDA0 KV buffer size =    64.00 MiB\n"
        "llama_context:  CPU  output buffer size =     1.00 MiB\n"
        "llama_context:      CUDA0 compute buffer size =   300.50 MiB\n"
        "llama_context:  CUDA_Host compute buffer size =    12.00 MiB\n"
    )
    buffers = parse_buffer_sizes(log)
    assert len(buffers) == 6
    report = memory_report(buffers)
    mib = 1024 * 1024
    assert report["host"] == {"weights": int(241.05 * mib), "kv_cache": 0, "compute": 13 * mib}
    assert report["gpus"] == [{"name": "CUDA0", "weights": 1000 * mib, "kv_cache": 64 * mib, "compute": int(300.5 * mib)}]


class FakeNvml:
    """Imitates the pynvml calls the engine makes (nvidia-ml-py's names and shapes)."""

    class NVMLError(Exception):
        pass

    def __init__(self, used: list[int], fail_init: bool = False) -> None:
        self.used = used
        self.fail_init = fail_init
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.used)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> object:
        used = self.used[handle]
        return type("c_nvmlMemory_t", (), {"total": 2 * used, "free": used, "used": used})()


def test_nvml_used_memory_and_its_delta() -> None:
    fake = FakeNvml([100, 200])
    before = nvml_used_bytes(fake)
    assert before == [100, 200] and fake.shutdowns == 1
    assert nvml_delta(before, [150, 200]) == [
        {"index": 0, "used_before": 100, "used_after": 150, "delta": 50},
        {"index": 1, "used_before": 200, "used_after": 200, "delta": 0},
    ]
    assert nvml_used_bytes(FakeNvml([1], fail_init=True)) is None
    assert nvml_delta(None, [1]) is None


def test_a_template_with_nested_loops_is_stopped_at_its_deadline() -> None:
    import threading
    import time

    nested = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    started = time.monotonic()
    with pytest.raises(UserError, match="took more than 0.5 s") as info:
        ct.render(nested, CONVERSATION, timeout_s=0.5)
    assert info.value.kind == "template" and time.monotonic() - started < 3
    # the deadline of a render that finished in time never fires later
    assert ct.render(HF_STYLE, CONVERSATION, timeout_s=0.05).startswith("<|system|>")
    done = threading.Event()
    threading.Timer(0.2, done.set).start()
    while not done.is_set():  # a stray asynchronous exception would land in this loop
        sum(range(1000))


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",  # the output grows past the cap
        "{{ 'x' * 1000000000 }}",  # one multiplication would allocate a gigabyte
        "{{ ['x'] * 1000000000 }}",
    ],
)
def test_a_template_that_writes_without_end_is_capped(source: str) -> None:
    with pytest.raises(UserError, match="more than 8,000,000 characters"):
        ct.render(source, CONVERSATION)


def test_a_template_cannot_compute_an_enormous_number() -> None:
    with pytest.raises(UserError, match="enormous number"):
        ct.render("{{ 2 ** 100000000 }}", CONVERSATION)
    assert ct.render("{{ 'ab' * 2 }}{{ 2 ** 10 }}", CONVERSATION) == "abab1024"
