"""Predict, before quantizing, which ggml type each tensor gets and how big the output file will be.

The per-tensor rules live in :mod:`desktop.quant.type_rules` (llama.cpp's ``llama_tensor_get_type``, re-implemented
and checked against llama.cpp's ``dry_run`` and real output files); the tensor list and its GGUF reader in
:mod:`desktop.quant.tensors`. This module walks the tensors in llama.cpp's order and adds up the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from desktop.quant.tensors import ModelTensors, TensorSpec, tensor_nbytes, tensors_from_gguf
from desktop.quant.type_rules import WalkState, layer_of, tensor_type
from desktop.quant.types import by_name, ggml_type_by_name

__all__ = [
    "ModelTensors",
    "bits_per_weight",
    "TensorSpec",
    "predict_size",
    "predict_tensor_types",
    "tensors_from_gguf",
    "tensors_needing_imatrix",
    "tensor_nbytes",
]

GGUF_ALIGNMENT = 32


def bits_per_weight(size_bytes: int, parameters: int) -> float | None:
    """What a model file comes to per parameter: size × 8 / parameters, header, embeddings and norms included.

    The one bits-per-weight figure shown for a file, measured (Compare) or predicted (Quantize). A type's nominal
    figure (:attr:`desktop.quant.types.QuantType.bpw`, on an 8B-shaped model) differs on small models, whose
    embeddings weigh more: Gemma 3 270M at Q4_K_M comes to about 7.5, not 4.9."""
    return 8.0 * size_bytes / parameters if parameters > 0 and size_bytes > 0 else None


# --------------------------------------------------------------------------------------------------------------
# Public functions

def _infer_hparams(tensors: Sequence[TensorSpec], given: Mapping[str, int] | None) -> dict[str, int]:
    hp: dict[str, int] = {}
    layers = [layer_of(t.name) for t in tensors]
    hp["n_layer"] = max(layers, default=-1) + 1
    by_name_ = {t.name: t for t in tensors}
    q, k = by_name_.get("blk.0.attn_q.weight"), by_name_.get("blk.0.attn_k.weight")
    if q is not None and k is not None and len(q.shape) == 2 and k.shape[0] > 0:
        hp["n_gqa"] = q.shape[0] // k.shape[0]
    experts = [t.shape[0] for t in tensors if len(t.shape) == 3 and "_exps" in t.name]
    hp["n_expert"] = max(experts, default=0)
    hp.update({key: int(value) for key, value in (given or {}).items()})
    return hp


def _sorted_like_llama(tensors: Sequence[TensorSpec]) -> list[TensorSpec]:
    """llama.cpp walks the tensors ordered by layer number (others first), then by name."""
    return sorted(tensors, key=lambda t: (layer_of(t.name), t.name))


def _resolve(tensors: Sequence[TensorSpec], arch: str | None, hparams: Mapping[str, int] | None) -> tuple[str | None, dict[str, int]]:
    if arch is None:
        arch = getattr(tensors, "arch", None)
    file_hp = getattr(tensors, "hparams", None) or {}
    merged = {**file_hp, **(hparams or {})}
    return arch, _infer_hparams(tensors, merged)


def predict_tensor_types(
    tensors: Sequence[TensorSpec],
    ftype_name: str,
    *,
    arch: str | None = None,
    output_type: str | None = None,
    embedding_type: str | None = None,
    pure: bool = False,
    has_imatrix: bool = False,
    overrides: Sequence[tuple[str, str]] = (),
    hparams: Mapping[str, int] | None = None,
) -> dict[str, str]:
    """The ggml type name llama.cpp will give each tensor when quantizing to ``ftype_name``.

    ``output_type``/``embedding_type`` force ``output.weight``/``token_embd.weight`` (ggml type names),
    ``overrides`` are (regex, ggml type) pairs like the quantize tool's ``--tensor-type`` (first match wins),
    ``hparams`` can give ``n_layer``, ``n_gqa``, ``n_expert`` and ``is_70b`` where the shapes do not tell.
    ``arch`` and ``hparams`` default to what :func:`tensors_from_gguf` read from the file.
    """
    quant = by_name(ftype_name)
    arch, hp = _resolve(tensors, arch, hparams)
    default = quant.ggml_type
    default_is_quantized = quant.family != "float"
    out_t = ggml_type_by_name(output_type) if output_type else None
    emb_t = ggml_type_by_name(embedding_type) if embedding_type else None
    patterns = [(re.compile(p), ggml_type_by_name(ty)) for p, ty in overrides]

    ordered = _sorted_like_llama(tensors)
    state = WalkState(ordered, quant.name, arch, hp, has_imatrix, out_t, emb_t)
    result: dict[str, str] = {}
    for t in ordered:
        result[t.name] = tensor_type(state, t, default, default_is_quantized, out_t, emb_t, pure, patterns)
    return {t.name: result[t.name] for t in tensors}


def tensors_needing_imatrix(tensors: Sequence[TensorSpec], ftype_name: str, **options: Any) -> list[str]:
    """Names of the tensors llama.cpp would refuse to quantize to ``ftype_name`` without an importance matrix."""
    ftype = by_name(ftype_name).name
    types = predict_tensor_types(tensors, ftype_name, **{**options, "has_imatrix": False})
    needing = []
    for t in tensors:
        if t.name in ("token_embd.weight", "per_layer_token_embd.weight", "output.weight"):
            continue
        new = types[t.name]
        if new == t.source_type:
            continue
        if new in ("IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S") or (new == "Q2_K" and ftype == "Q2_K_S"):
            needing.append(t.name)
    return needing


def _header_bytes(tensors: Sequence[TensorSpec], kv_bytes: int) -> int:
    size = 4 + 4 + 8 + 8 + kv_bytes  # magic, version, tensor count, kv count
    for t in tensors:
        size += 8 + len(t.name.encode()) + 4 + 8 * max(1, len(t.shape)) + 4 + 8
    return _pad(size)


def _pad(n: int) -> int:
    return (n + GGUF_ALIGNMENT - 1) // GGUF_ALIGNMENT * GGUF_ALIGNMENT


def _estimate_kv_bytes(tensors: Sequence[TensorSpec]) -> int:
    """Without the file: the vocabulary dominates the key/values (token text, score and type per token)."""
    embd = next((t for t in tensors if t.name == "token_embd.weight"), None)
    n_vocab = embd.shape[0] if embd is not None else 32000
    return 4096 + n_vocab * 26


def predict_size(tensors: Sequence[TensorSpec], ftype_name: str, **options: Any) -> int:
    """Predicted size in bytes of the GGUF that quantizing to ``ftype_name`` writes (same options as
    :func:`predict_tensor_types`): tensor data with llama.cpp's 32-byte alignment plus the header."""
    types = predict_tensor_types(tensors, ftype_name, **options)
    data = sum(_pad(tensor_nbytes(t.shape, types[t.name])) for t in tensors)
    kv_bytes = getattr(tensors, "kv_bytes", None)
    if kv_bytes is None:
        kv_bytes = _estimate_kv_bytes(tensors)
    # llama.cpp adds general.quantization_version and general.file_type (u32) if missing, and the imatrix keys.
    keys = getattr(tensors, "kv_keys", None)
    for key in ("general.quantization_version", "general.file_type"):
        if keys is None or key not in keys:
            kv_bytes += 8 + len(key) + 4 + 4
    kv_bytes += 400 if options.get("has_imatrix") else 0
    return _header_bytes(tensors, kv_bytes) + data
