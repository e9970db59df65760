"""Name llama.cpp's pre-tokenizer for a byte-level BPE ``tokenizer.json`` from the tokenizer's own configuration.

llama.cpp hard-codes each pre-tokenizer's split regexes under a name (``tokenizer.ggml.pre``). QuantDesk reads the
``pre_tokenizer`` section of tokenizer.json (its Split regexes, ByteLevel and Digits steps) and maps the known
combinations to those names. An unknown combination is refused: guessing would silently change the token ids.
"""

from __future__ import annotations

from typing import Any

from desktop.errors import UserError

# The split regexes as tokenizer.json spells them.
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
    r"\s+(?!\S)|\s+"
)
# A ByteLevel step with use_regex applies GPT-2's own split regex.
GPT2 = "bytelevel-gpt2-regex"
DIGITS_EACH = "digits-individual"

KNOWN: dict[tuple[str, ...], str] = {
    (LLAMA3_REGEX,): "llama-bpe",  # Llama 3 / 3.1 / 3.2
    (QWEN2_REGEX,): "qwen2",  # Qwen2, Qwen2.5, Qwen3
    (GPT2,): "gpt-2",
    (DIGITS_EACH, GPT2): "smollm",  # SmolLM / SmolLM2
}


def split_steps(node: dict[str, Any] | None) -> list[str]:
    """The pre-tokenizer as a list of comparable steps; raises for a step QuantDesk does not understand."""
    if not node:
        return []
    kind = node.get("type")
    if kind == "Sequence":
        return [step for child in node.get("pretokenizers", []) for step in split_steps(child)]
    if kind == "Split":
        pattern = node.get("pattern") or {}
        if "Regex" in pattern and node.get("behavior") == "Isolated" and not node.get("invert"):
            return [str(pattern["Regex"])]
        raise _unknown(f"a Split on {pattern}")
    if kind == "ByteLevel":
        return [GPT2] if node.get("use_regex", True) else []
    if kind == "Digits":
        return [DIGITS_EACH] if node.get("individual_digits") else ["digits-grouped"]
    raise _unknown(f"a {kind} step")


def identify_pretokenizer(tok_json: dict[str, Any]) -> str:
    """llama.cpp's pre-tokenizer name for this tokenizer.json (byte-level BPE only)."""
    steps = tuple(split_steps(tok_json.get("pre_tokenizer")))
    name = KNOWN.get(steps)
    if name is None:
        shown = ", ".join(s if len(s) < 60 else s[:57] + "..." for s in steps) or "none"
        raise _unknown(f"splitting by {shown}")
    normalizer = tok_json.get("normalizer")
    if normalizer and normalizer.get("type") not in ("NFC",):
        raise _unknown(f"a {normalizer.get('type')} normalizer")
    return name


def _unknown(what: str) -> UserError:
    return UserError(
        f"The tokenizer pre-processes text in a way QuantDesk cannot reproduce in llama.cpp ({what}).",
        "Look for a GGUF of this model on Hugging Face instead.",
        kind="unsupported_tokenizer",
    )
