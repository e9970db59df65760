"""Tokenizers to GGUF: SentencePiece ``tokenizer.model``, byte-level BPE and SentencePiece-style BPE ``tokenizer.json``.

Special token ids, the add-bos/add-eos flags and the chat template(s) come from ``tokenizer_config.json``,
``tokenizer.json``'s post-processor and ``config.json`` (through the gguf package's ``SpecialVocab``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from desktop.convert.pretokenizer import identify_pretokenizer
from desktop.errors import UserError

TT = gguf.TokenType
ADDED_SCORE = -1000.0


@dataclass
class Vocab:
    model: str  # "llama" (SentencePiece) or "gpt2" (byte-level BPE), as llama.cpp names them
    pre: str
    tokens: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    add_space_prefix: bool | None = None
    add_bos: bool = False
    add_eos: bool = False
    special: gguf.SpecialVocab | None = None

    def __len__(self) -> int:
        return len(self.tokens)

    def id_of(self, text: str) -> int | None:
        try:
            return self.tokens.index(text)
        except ValueError:
            return None

    def pad_to(self, n: int) -> None:
        for i in range(len(self.tokens), n):
            self.append(f"[PAD{i}]", ADDED_SCORE, TT.UNUSED)

    def drop_added_beyond(self, n: int) -> None:
        """Forget added tokens past the embedding's rows (Gemma 3 lists an image token the text model lacks)."""
        extra = self.types[n:]
        if any(kind not in (TT.CONTROL, TT.USER_DEFINED, TT.UNUSED) for kind in extra):
            raise UserError(f"The tokenizer has {len(self.tokens)} tokens but the model only {n}.",
                            "The tokenizer files do not belong to these weights; download them again.",
                            kind="corrupt_checkpoint")
        del self.tokens[n:], self.scores[n:], self.types[n:]

    def append(self, text: str, score: float, kind: int) -> None:
        self.tokens.append(text)
        self.scores.append(score)
        self.types.append(int(kind))

    def set_at(self, index: int, text: str, score: float, kind: int) -> None:
        self.pad_to(index + 1)
        self.tokens[index], self.scores[index], self.types[index] = text, score, int(kind)


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path.name} cannot be read ({exc}).", "Download the tokenizer files again.",
                        kind="corrupt_checkpoint") from None
    return data if isinstance(data, dict) else {}


def added_tokens(src: Path, tok_json: dict[str, Any], tok_config: dict[str, Any]) -> dict[int, tuple[str, bool]]:
    """Every added token the tokenizer files declare: id -> (text, special)."""
    found: dict[int, tuple[str, bool]] = {}
    for text, idx in _json(src / "added_tokens.json").items():
        found[int(idx)] = (str(text), False)
    for idx, info in (tok_config.get("added_tokens_decoder") or {}).items():
        found[int(idx)] = (str(info["content"]), bool(info.get("special")))
    for info in tok_json.get("added_tokens") or []:
        found[int(info["id"])] = (str(info["content"]), bool(info.get("special")))
    return found


def _sentencepiece_flags(serialized: bytes) -> dict[int, int]:
    """Varint fields of the NormalizerSpec (field 3 of ModelProto): 3 add_dummy_prefix, 4 remove_extra_whitespaces."""

    def fields(buf: bytes) -> list[tuple[int, int, bytes | int]]:
        out: list[tuple[int, int, bytes | int]] = []
        pos = 0

        def varint() -> int:
            nonlocal pos
            value, shift = 0, 0
            while True:
                byte = buf[pos]
                pos += 1
                value |= (byte & 0x7F) << shift
                if byte < 0x80:
                    return value
                shift += 7

        while pos < len(buf):
            key = varint()
            number, wire = key >> 3, key & 7
            if wire == 0:
                out.append((number, wire, varint()))
            elif wire == 1:
                pos += 8
            elif wire == 5:
                pos += 4
            elif wire == 2:
                length = varint()
                out.append((number, wire, buf[pos:pos + length]))
                pos += length
            else:
                break
        return out

    for number, wire, value in fields(serialized):
        if number == 3 and wire == 2 and isinstance(value, bytes):
            return {n: v for n, w, v in fields(value) if w == 0 and isinstance(v, int)}
    return {}


def sentencepiece_vocab(src: Path, added: dict[int, tuple[str, bool]]) -> Vocab:
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:  # pragma: no cover - a packaging error, not a user's
        raise UserError("Reading tokenizer.model needs the sentencepiece package, which is not installed.",
                        "Reinstall QuantDesk.") from None
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(src / "tokenizer.model"))
    except (OSError, RuntimeError) as exc:
        raise UserError(f"tokenizer.model cannot be read ({exc}).", "Download the tokenizer files again.",
                        kind="corrupt_checkpoint") from None
    flags = _sentencepiece_flags(sp.serialized_model_proto())
    vocab = Vocab("llama", "default", add_space_prefix=bool(flags.get(3, 1)))
    for i in range(sp.vocab_size()):
        kind = TT.NORMAL
        if sp.IsUnknown(i):
            kind = TT.UNKNOWN
        elif sp.IsControl(i):
            kind = TT.CONTROL
        elif sp.IsUnused(i):
            kind = TT.UNUSED
        elif sp.IsByte(i):
            kind = TT.BYTE
        vocab.append(sp.IdToPiece(i), sp.GetScore(i), kind)
    _merge_added(vocab, added)
    return vocab


def _merge_added(vocab: Vocab, added: dict[int, tuple[str, bool]]) -> None:
    base = len(vocab)
    for idx in sorted(added):
        text, special = added[idx]
        if idx < base:
            if vocab.tokens[idx] == text and vocab.types[idx] == TT.NORMAL:
                vocab.types[idx] = int(TT.CONTROL if special else TT.USER_DEFINED)
            continue
        vocab.set_at(idx, text, ADDED_SCORE, TT.CONTROL if special else TT.USER_DEFINED)


def _normalizer_steps(node: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [s for child in node.get("normalizers", []) for s in _normalizer_steps(child)]
    return [node]


def bpe_vocab(tok_json: dict[str, Any], added: dict[int, tuple[str, bool]]) -> Vocab:
    model = tok_json.get("model") or {}
    if model.get("type") != "BPE":
        raise UserError(f"The tokenizer is of type {model.get('type')}, which QuantDesk cannot convert (BPE and "
                        "SentencePiece are supported).", "Look for a GGUF of this model instead.",
                        kind="unsupported_tokenizer")
    steps = _normalizer_steps(tok_json.get("normalizer"))
    spaces_to_underscore = any(s.get("type") == "Replace" and s.get("content") == "\u2581" for s in steps)
    if model.get("byte_fallback") or spaces_to_underscore:
        vocab = Vocab("llama", "default")
        vocab.add_space_prefix = any(s.get("type") == "Prepend" and s.get("prepend") == "\u2581" for s in steps)
        ranks = _merge_ranks(model.get("merges") or [])
    else:
        vocab = Vocab("gpt2", identify_pretokenizer(tok_json))
        ranks = {}
    by_id = {int(i): t for t, i in model.get("vocab", {}).items()}
    size = max([*by_id, *added, -1]) + 1
    for i in range(size):
        if i in added:
            text, special = added[i]
            vocab.append(text, ADDED_SCORE, TT.CONTROL if special else TT.USER_DEFINED)
        elif i in by_id:
            text = by_id[i]
            if vocab.model == "llama":
                byte = len(text) == 6 and text.startswith("<0x") and text.endswith(">")
                kind = TT.BYTE if byte else TT.UNKNOWN if text == model.get("unk_token") else TT.NORMAL
                # SentencePiece-style BPE in llama.cpp merges the highest-scoring pair first: rank order.
                vocab.append(text, -float(ranks.get(text, 0 if len(text) == 1 else len(ranks))), kind)
            else:
                vocab.append(text, 0.0, TT.NORMAL)
        else:
            vocab.append(f"[PAD{i}]", ADDED_SCORE, TT.UNUSED)
    return vocab


def _merge_ranks(merges: list[Any]) -> dict[str, int]:
    ranks: dict[str, int] = {}
    for rank, merge in enumerate(merges):
        left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
        ranks.setdefault(left + right, rank)
    return ranks


def _add_flags(tok_json: dict[str, Any], tok_config: dict[str, Any], vocab: Vocab, special: gguf.SpecialVocab,
               sentencepiece_class: bool) -> tuple[bool, bool]:
    """Whether encoding adds BOS / EOS, decided as transformers decides it."""
    add_bos = tok_config.get("add_bos_token")
    add_eos = tok_config.get("add_eos_token")
    post = tok_json.get("post_processor") or {}
    processors = post.get("processors", [post]) if post else []
    for proc in processors:
        if proc.get("type") == "TemplateProcessing":
            single = proc.get("single") or []
            first = single[0].get("SpecialToken", {}).get("id") if single else None
            last = single[-1].get("SpecialToken", {}).get("id") if single else None
            bos_id, eos_id = special.special_token_ids.get("bos"), special.special_token_ids.get("eos")
            if not isinstance(add_bos, bool):
                add_bos = first is not None and bos_id is not None and vocab.id_of(first) == bos_id
            if not isinstance(add_eos, bool):
                add_eos = last is not None and eos_id is not None and vocab.id_of(last) == eos_id
    if not isinstance(add_bos, bool):
        add_bos = sentencepiece_class and not tok_json  # LlamaTokenizer's default with only tokenizer.model
    return bool(add_bos), bool(add_eos) if isinstance(add_eos, bool) else False


def load_vocab(src: Path, n_vocab: int | None) -> Vocab:
    """Read the tokenizer of a checkpoint folder; ``n_vocab`` (the embedding's rows) pads the token list."""
    tok_json = _json(src / "tokenizer.json")
    tok_config = _json(src / "tokenizer_config.json")
    added = added_tokens(src, tok_json, tok_config)
    if (src / "tokenizer.model").is_file():
        vocab = sentencepiece_vocab(src, added)
    elif tok_json:
        vocab = bpe_vocab(tok_json, added)
    else:
        raise UserError(f"{src.name} has no tokenizer (tokenizer.json or tokenizer.model).",
                        "Download the tokenizer files of the model into the same folder.", kind="missing_tokenizer")
    if n_vocab is not None:
        if n_vocab < len(vocab):
            raise UserError(f"The tokenizer has {len(vocab)} tokens but the model only {n_vocab}.",
                            "The tokenizer files do not belong to these weights; download them again.",
                            kind="corrupt_checkpoint")
        vocab.pad_to(n_vocab)
    special = gguf.SpecialVocab(src, load_merges=vocab.model == "gpt2", n_vocab=len(vocab))
    sp_class = "Llama" in str(tok_config.get("tokenizer_class", "")) or "Gemma" in str(
        tok_config.get("tokenizer_class", ""))
    vocab.add_bos, vocab.add_eos = _add_flags(tok_json, tok_config, vocab, special, sp_class)
    special.add_special_token = {"bos": vocab.add_bos, "eos": vocab.add_eos}
    vocab.special = special
    return vocab


def write_vocab(w: gguf.GGUFWriter, vocab: Vocab) -> None:
    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    if vocab.model == "llama":  # byte-level BPE has no scores; llama.cpp ranks its merges instead
        w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    if vocab.add_space_prefix is not None:
        w.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.special is not None:
        vocab.special.add_to_gguf(w, quiet=True)
