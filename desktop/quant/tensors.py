"""A model's tensors as sizing sees them: names, numpy-order shapes, ggml types, and reading them from a GGUF header.

Tensor shapes are in numpy order (out-features first); llama.cpp's ``ne[0]`` (the row length) is ``shape[-1]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from desktop.quant.types import GGML_TYPE_SIZES

__all__ = ["ModelTensors", "TensorSpec", "tensor_nbytes", "tensors_from_gguf"]


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a model: its GGUF name, numpy-order shape and current ggml type name."""

    name: str
    shape: tuple[int, ...]
    source_type: str = "F16"

    @property
    def n_cols(self) -> int:
        return self.shape[-1] if self.shape else 1

    @property
    def n_rows(self) -> int:
        rows = 1
        for dim in self.shape[:-1]:
            rows *= dim
        return rows

    @property
    def n_elements(self) -> int:
        return self.n_rows * self.n_cols


class ModelTensors(list[TensorSpec]):
    """The tensors of a GGUF file plus what the file says about the model (a plain list for everything else).

    ``arch`` is ``general.architecture``; ``hparams`` holds ``n_layer``, ``n_gqa`` and ``n_expert`` where the file
    has them; ``metadata_bytes`` is the size of the file's header (key/values and tensor infos) in bytes.
    """

    def __init__(
        self,
        tensors: Iterable[TensorSpec] = (),
        *,
        arch: str | None = None,
        hparams: Mapping[str, int] | None = None,
        metadata_bytes: int | None = None,
        kv_bytes: int | None = None,
        kv_keys: Iterable[str] | None = None,
    ) -> None:
        super().__init__(tensors)
        self.kv_keys = frozenset(kv_keys) if kv_keys is not None else None
        self.arch = arch
        self.hparams = dict(hparams or {})
        self.metadata_bytes = metadata_bytes
        self.kv_bytes = kv_bytes


def tensor_nbytes(shape: Sequence[int], ggml_type: str) -> int:
    """Bytes of a tensor of ``shape`` (numpy order) stored as ``ggml_type``."""
    block, size = GGML_TYPE_SIZES[ggml_type]
    n_cols = shape[-1] if shape else 1
    rows = 1
    for dim in shape[:-1]:
        rows *= dim
    return rows * (n_cols // block) * size



def tensors_from_gguf(path: Path | str) -> ModelTensors:
    """The tensors of a GGUF file, with its architecture, layer count, GQA factor and header size.

    Only the header is read (:func:`desktop.gguf.reader.read_gguf`, which skips the vocabulary instead of decoding it).
    """
    from desktop.gguf.reader import read_gguf

    info = read_gguf(path)
    kv = info.metadata
    specs = [TensorSpec(t.name, tuple(reversed(t.shape)), t.ggml_type) for t in info.tensors]
    arch = kv.get("general.architecture")
    arch = arch if isinstance(arch, str) else None
    hp: dict[str, int] = {}
    if arch:
        n_layer = kv.get(f"{arch}.block_count")
        if isinstance(n_layer, int):
            hp["n_layer"] = n_layer
        heads, heads_kv = info.head_counts()
        if heads and heads_kv and heads_kv[0] > 0:  # llama.cpp's quantizer reads layer 0's heads
            hp["n_gqa"] = heads[0] // heads_kv[0]
        n_expert = kv.get(f"{arch}.expert_count")
        if isinstance(n_expert, int):
            hp["n_expert"] = n_expert
        if arch == "llama" and hp.get("n_layer") == 80:
            hp["is_70b"] = 1
    return ModelTensors(specs, arch=arch, hparams=hp, metadata_bytes=info.data_offset, kv_bytes=info.kv_bytes,
                        kv_keys=kv.keys())
