"""The numbers of an evaluation, from logits, with numpy: log-softmax, the base model's stored log-probabilities,
KL divergence and top-1 agreement, and the running totals behind perplexity.

How the base's log-probabilities are stored (:class:`BaseLogProbs`)
-------------------------------------------------------------------
llama-perplexity stores, for every scored token, the base's whole distribution as ``uint16``:
``log_p = scale * q + min_log_prob`` with ``min_log_prob`` clamped 16 nats below the top token, and its KL
divergence sums only the entries whose stored ``log_p > -16``. We keep exactly those numbers, and only the
entries that KL divergence reads: for each scored token the ids (int32) and ``q`` (uint16) of the entries with
``log_p > -16``, plus ``scale`` and ``min_log_prob``. KLD is then identical to llama.cpp's, at a fraction of the
size: on Gemma 3's 262,144-token vocabulary about 12k of the entries pass the cut (~70 KB a token, against
512 KB for llama.cpp's full row).

Why not float16 top-k: measured on Gemma 3 270M, the base's distribution has a long tail (99.9% of the mass
needs ~5,400 entries on average), and a top-256 truncation with a lumped remainder underestimated KLD by 5-8%
(top-32: 25%). The exact log-probability of the text's own next token is stored as float32 as well, so the
base's perplexity is exact (llama.cpp's stored value is clamped near 16.5 nats), and the base's arg-max for
top-1 agreement is stored as an id.

The file is one ``.npz`` (uncompressed) written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from desktop.fileio import atomic_path

FORMAT_VERSION = 1
LOG_P_FLOOR = -16.0  # llama-perplexity's cut: base entries at or below it are left out of KLD
_RANGE = 16.0


_BLOCK_ROWS = 16  # rows per numpy pass: bounds the temporaries to a few rows of the vocabulary


def log_softmax_stats(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the max logit (float32) and log-sum-exp (float64), so ``log_softmax = rows - max - lse``."""
    n = rows.shape[0]
    row_max = np.empty(n, dtype=np.float32)
    lse = np.empty(n, dtype=np.float64)
    for start in range(0, n, _BLOCK_ROWS):
        block = np.asarray(rows[start : start + _BLOCK_ROWS], dtype=np.float32)
        top = block.max(axis=1)
        row_max[start : start + len(block)] = top
        lse[start : start + len(block)] = np.log(np.exp(block - top[:, None]).sum(axis=1, dtype=np.float64))
    return row_max, lse


@dataclass
class EncodedRows:
    """The sparse llama.cpp encoding of some rows (see the module docstring)."""

    scale: np.ndarray  # float32 [n]
    min_log_prob: np.ndarray  # float32 [n]
    counts: np.ndarray  # int64 [n]: entries kept per row
    ids: np.ndarray  # int32 [nnz]
    q: np.ndarray  # uint16 [nnz]
    argmax: np.ndarray  # int32 [n]
    target_log_p: np.ndarray  # float32 [n]: exact log-probability of the text's next token


def encode_rows(rows: np.ndarray, targets: np.ndarray) -> EncodedRows:
    """llama-perplexity's uint16 encoding of each row's log-softmax, keeping the entries with ``log_p > -16``."""
    n = rows.shape[0]
    row_max, lse = log_softmax_stats(rows)
    scale = np.empty(n, dtype=np.float32)
    min_log_prob = np.empty(n, dtype=np.float32)
    counts = np.empty(n, dtype=np.int64)
    ids: list[np.ndarray] = []
    qs: list[np.ndarray] = []
    for start in range(0, n, _BLOCK_ROWS):
        block = np.asarray(rows[start : start + _BLOCK_ROWS], dtype=np.float32)
        sl = slice(start, start + len(block))
        top = row_max[sl]
        low = np.maximum(block.min(axis=1), top - np.float32(_RANGE))
        blk_scale = ((top - low) / np.float32(65535.0)).astype(np.float32)
        blk_min = (low - top - lse[sl].astype(np.float32)).astype(np.float32)
        scale[sl], min_log_prob[sl] = blk_scale, blk_min
        for r in range(len(block)):
            row = block[r]
            if blk_scale[r] > 0:
                q = np.rint((row - low[r]) * (np.float32(1.0) / blk_scale[r]))
                q[row <= low[r]] = 0
            else:
                q = np.zeros_like(row)
            q16 = q.astype(np.uint16)
            keep = np.flatnonzero(blk_scale[r] * q16.astype(np.float32) + blk_min[r] > LOG_P_FLOOR)
            counts[start + r] = keep.size
            ids.append(keep.astype(np.int32))
            qs.append(q16[keep])
    target_log_p = (np.asarray(rows[np.arange(n), targets], dtype=np.float32) - row_max - lse).astype(np.float32)
    return EncodedRows(
        scale=scale,
        min_log_prob=min_log_prob,
        counts=counts,
        ids=np.concatenate(ids) if ids else np.zeros(0, np.int32),
        q=np.concatenate(qs) if qs else np.zeros(0, np.uint16),
        argmax=np.asarray(rows).argmax(axis=1).astype(np.int32),
        target_log_p=target_log_p,
    )


def kld_rows(rows: np.ndarray, base: EncodedRows, row_max: np.ndarray, lse: np.ndarray) -> np.ndarray:
    """Per-row KL(base || model) as llama-perplexity computes it: ``sum p_base * (log p_base - log p_model)``
    over the base entries with ``log p_base > -16``."""
    n = rows.shape[0]
    row_of = np.repeat(np.arange(n), base.counts)
    log_p = base.scale[row_of] * base.q.astype(np.float32) + base.min_log_prob[row_of]
    log_q = rows[row_of, base.ids] - (row_max[row_of] + lse[row_of]).astype(np.float32)
    terms = np.exp(log_p.astype(np.float64)) * (log_p - log_q)
    return np.bincount(row_of, weights=terms, minlength=n)


@dataclass
class BaseLogProbs:
    """The base model's encoded distributions for every scored token of one text at one context size."""

    tokens: np.ndarray  # int32: the tokenized text (BOS first), used to check a quant tokenizes it the same
    n_ctx: int
    n_vocab: int
    chunks: list[EncodedRows] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        offsets = np.cumsum([0] + [int(c.counts.sum()) for c in self.chunks]).astype(np.int64)
        arrays: dict[str, np.ndarray] = {
            "tokens": np.asarray(self.tokens, dtype=np.int32),
            "chunk_nnz_offsets": offsets,
            "meta": np.array(json.dumps({**self.meta, "format": FORMAT_VERSION, "n_ctx": self.n_ctx,
                                         "n_vocab": self.n_vocab, "n_chunks": len(self.chunks)})),
        }
        for name in ("scale", "min_log_prob", "counts", "ids", "q", "argmax", "target_log_p"):
            arrays[name] = np.concatenate([getattr(c, name) for c in self.chunks])
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> BaseLogProbs:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != FORMAT_VERSION:
                raise ValueError(f"format {meta.get('format')} is not {FORMAT_VERSION}")
            n_chunks, n_ctx = int(meta["n_chunks"]), int(meta["n_ctx"])
            per_chunk = n_ctx - 1 - n_ctx // 2
            offsets = data["chunk_nnz_offsets"]
            fields = {k: data[k] for k in ("scale", "min_log_prob", "counts", "ids", "q", "argmax", "target_log_p")}
            tokens = data["tokens"]
        chunks = []
        for i in range(n_chunks):
            rows = slice(i * per_chunk, (i + 1) * per_chunk)
            nnz = slice(int(offsets[i]), int(offsets[i + 1]))
            chunks.append(
                EncodedRows(
                    scale=fields["scale"][rows],
                    min_log_prob=fields["min_log_prob"][rows],
                    counts=fields["counts"][rows],
                    ids=fields["ids"][nnz],
                    q=fields["q"][nnz],
                    argmax=fields["argmax"][rows],
                    target_log_p=fields["target_log_p"][rows],
                )
            )
        return cls(tokens=tokens, n_ctx=n_ctx, n_vocab=int(meta["n_vocab"]), chunks=chunks, meta=meta)


@dataclass
class RunningTotals:
    """Sums over scored tokens, so perplexity and KLD can be reported after every chunk."""

    nll: list[np.ndarray] = field(default_factory=list)
    kld: list[np.ndarray] = field(default_factory=list)
    same_top: int = 0
    base_nll: list[np.ndarray] = field(default_factory=list)

    @property
    def count(self) -> int:
        return int(sum(a.size for a in self.nll))

    def ppl(self) -> float:
        return float(np.exp(np.concatenate(self.nll).mean())) if self.nll else float("nan")

    def ppl_stderr(self) -> float:
        """llama-perplexity's ``±``: ``sqrt((mean(nll²) - mean²) / (n - 1)) * PPL``."""
        nll = np.concatenate(self.nll).astype(np.float64)
        if nll.size < 2:
            return float("nan")
        mean = nll.mean()
        var = max((nll * nll).mean() - mean * mean, 0.0)
        return float(np.sqrt(var / (nll.size - 1)) * np.exp(mean))

    def kld_values(self) -> np.ndarray:
        return np.concatenate(self.kld) if self.kld else np.zeros(0)
