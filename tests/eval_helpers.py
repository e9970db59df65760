"""Models and an independent reference for the evaluation tests.

The ladder: the demo Gemma 3 270M (Q4_K_M) turned back into F16, *dithered*, then quantized to Q8_0, Q6_K,
Q4_K_M, Q3_K_M and Q2_K. Dithering is needed because every weight of the plain F16 sits exactly on the demo's
quantization grid, so requantizing it to Q4_K_M gives back nearly the demo itself: measured, its KLD came out
*below* Q6_K's (0.0056 against 0.0078), which says nothing about bits. Each weight is moved by uniform noise
within its own quantization cell (the grid step is read off every 16 consecutive weights), which gives a
plausible original: one the demo could have been quantized from. Quants of it then carry their own rounding error.

The reference recomputes perplexity, KL divergence and top-1 agreement from raw llama.cpp logits with numpy,
in its own way: one batch per chunk, float64 log-softmax over the full vocabulary, exact KLD over every entry
(no uint16 encoding, no -16 cut), all models side by side in one process.
"""

from __future__ import annotations

import ctypes
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LADDER = ("Q8_0", "Q6_K", "Q4_K_M", "Q3_K_M", "Q2_K")


def quantize_file(source: Path, target: Path, type_name: str, threads: int = 2) -> Path:
    """``llama_model_quantize`` in this process, requantizing allowed."""
    import llama_cpp

    from desktop.quant import types as quant_types
    from desktop.eval.llama_eval import quiet_llama

    quiet_llama()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = quant_types.by_name(type_name).ftype
    params.allow_requantize = True
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), ctypes.byref(params))
    assert rc == 0, f"quantizing {source.name} to {type_name} failed"
    return target


def dither_in_place(path: Path, seed: int = 0) -> None:
    """Add uniform noise of one grid step (±half a step) to every F16 matrix of a GGUF, in place."""
    import gguf

    reader = gguf.GGUFReader(path, "r+")
    rng = np.random.default_rng(seed)
    for tensor in reader.tensors:
        if tensor.tensor_type != gguf.GGMLQuantizationType.F16 or len(tensor.data.shape) < 2:
            continue
        values = np.asarray(tensor.data).reshape(-1, 16).astype(np.float32)
        gaps = np.diff(np.sort(values, axis=1), axis=1)
        gaps[gaps <= 0] = np.inf
        step = gaps.min(axis=1, keepdims=True)
        step[~np.isfinite(step)] = 0.0
        noise = (rng.random(values.shape, dtype=np.float32) - np.float32(0.5)) * step
        tensor.data[...] = (values + noise).astype(np.float16).reshape(tensor.data.shape)
    del reader  # the memory map is flushed when it goes


def make_ladder(demo: Path, folder: Path) -> dict[str, Path]:
    """F16 (dithered) and the five quants of it, under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    plain = quantize_file(demo, folder / "plain-F16.gguf", "F16")
    base = folder / "gemma-3-270m-F16.gguf"
    shutil.move(plain, base)
    dither_in_place(base)
    models = {"F16": base}
    for name in LADDER:
        models[name] = quantize_file(base, folder / f"gemma-3-270m-{name}.gguf", name)
    return models


@dataclass
class Reference:
    ppl: float
    kld_mean: float
    top1: float
    n_tokens: int


def _log_softmax64(rows: np.ndarray) -> np.ndarray:
    x = rows.astype(np.float64)
    x -= x.max(axis=1, keepdims=True)
    x -= np.log(np.exp(x).sum(axis=1, keepdims=True))
    return x


def reference_metrics(base: Path, models: dict[str, Path], text: str, n_ctx: int, n_chunks: int,
                      threads: int = 2) -> dict[str, Reference]:
    """PPL of the base and of each model, and each model's exact KLD and top-1 agreement against the base."""
    import llama_cpp

    from desktop.eval.llama_eval import quiet_llama

    quiet_llama()
    names = ["base", *models]
    files = [base, *models.values()]
    mp = llama_cpp.llama_model_default_params()
    mp.use_extra_bufts = False  # CPU repack crashes K-quant prompt decoding on some CPUs (shared notes)
    loaded, contexts = [], []
    batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
    try:
        for path in files:
            model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
            assert model
            loaded.append(model)
            cp = llama_cpp.llama_context_default_params()
            cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx
            cp.n_threads = cp.n_threads_batch = threads
            ctx = llama_cpp.llama_init_from_model(model, cp)
            assert ctx
            contexts.append(ctx)
        vocab = llama_cpp.llama_model_get_vocab(loaded[0])
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        data = text.encode()
        buf = (llama_cpp.llama_token * (len(data) + 16))()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(buf), True, False)
        tokens = list(buf[:n])
        assert len(tokens) >= n_chunks * n_ctx
        first = n_ctx // 2
        nll = {k: [] for k in names}
        kld = {k: [] for k in names}
        same = {k: 0 for k in names}
        for c in range(n_chunks):
            piece = tokens[c * n_ctx : (c + 1) * n_ctx]
            piece[0] = llama_cpp.llama_vocab_bos(vocab)
            for k, tok in enumerate(piece):
                batch.token[k], batch.pos[k], batch.n_seq_id[k] = tok, k, 1
                batch.seq_id[k][0] = 0
                batch.logits[k] = k >= first
            batch.n_tokens = n_ctx
            targets = np.array(piece[first + 1 :])
            base_lp = None
            for name, ctx in zip(names, contexts, strict=True):
                llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
                assert llama_cpp.llama_decode(ctx, batch) == 0
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(n_ctx - first, n_vocab))
                lp = _log_softmax64(logits[:-1])
                nll[name].append(-lp[np.arange(len(targets)), targets])
                if base_lp is None:
                    base_lp = lp
                kld[name].append((np.exp(base_lp) * (base_lp - lp)).sum(axis=1))
                same[name] += int((lp.argmax(axis=1) == base_lp.argmax(axis=1)).sum())
        out = {}
        for name in names:
            all_nll = np.concatenate(nll[name])
            out[name] = Reference(float(np.exp(all_nll.mean())), float(np.concatenate(kld[name]).mean()),
                                  same[name] / all_nll.size, int(all_nll.size))
        return out
    finally:
        llama_cpp.llama_batch_free(batch)
        for ctx in contexts:
            llama_cpp.llama_free(ctx)
        for model in loaded:
            llama_cpp.llama_model_free(model)
