"""Memory-mapped safetensors reading, with every structural check done before anything is written.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping tensor names to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the end of the header), then the data.
Nothing here reads tensor data until :meth:`TensorRef.array` is called, and then only through ``np.memmap``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from desktop.errors import UserError

# Bytes per element of every dtype the format defines; only the float ones below can be converted.
DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F6_E2M3": 1, "F6_E3M2": 1, "F4": 1,
}
FLOAT_DTYPES: dict[str, np.dtype[Any]] = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorRef:
    """One tensor inside one safetensors file, located but not read."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    def raw(self) -> np.ndarray:
        """The stored elements as a read-only memory map (BF16 as uint16), shaped like the tensor."""
        if self.nbytes == 0:
            return np.zeros(self.shape, dtype=FLOAT_DTYPES[self.dtype])
        mm = np.memmap(self.file, dtype=FLOAT_DTYPES[self.dtype], mode="r", offset=self.offset,
                       shape=(self.n_elements,))
        return mm.reshape(self.shape)

    def rows_f32(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of the tensor (viewed as 2-D over its first axis) as float32."""
        raw = self.raw()
        return to_f32(np.asarray(raw.reshape(raw.shape[0], -1)[start:stop]), self.dtype)

    def array_f32(self) -> np.ndarray:
        return to_f32(np.asarray(self.raw()), self.dtype)


def to_f32(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)


def _corrupt(path: Path, why: str) -> UserError:
    return UserError(
        f"The weights file {path.name} is damaged or incomplete ({why}).",
        "Download the model again; an interrupted download usually leaves a file like this.",
        kind="corrupt_checkpoint",
    )


def read_header(path: Path) -> dict[str, TensorRef]:
    """Parse and validate one file's header: every tensor must lie inside the file and match its shape."""
    size = path.stat().st_size
    if size < 8:
        raise _corrupt(path, "it is shorter than a safetensors header")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > MAX_HEADER or 8 + header_len > size:
            raise _corrupt(path, "its header runs past the end of the file")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise _corrupt(path, "its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _corrupt(path, "its header is not a JSON object")
    data_start = 8 + header_len
    data_size = size - data_start
    tensors: dict[str, TensorRef] = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = str(info["dtype"])
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise _corrupt(path, f"the entry for {name} is malformed") from None
        if dtype not in DTYPE_SIZES:
            raise _corrupt(path, f"{name} has the unknown data type {dtype}")
        expected = int(np.prod(shape, dtype=np.int64)) * DTYPE_SIZES[dtype] if shape else DTYPE_SIZES[dtype]
        if begin < 0 or end < begin or end - begin != expected:
            raise _corrupt(path, f"{name} does not have the size its shape needs")
        if end > data_size:
            raise _corrupt(path, f"{name} ends {end - data_size} bytes after the end of the file")
        spans.append((begin, end))
        tensors[name] = TensorRef(name, path, dtype, shape, data_start + begin, end - begin)
    spans.sort()
    for (_, prev_end), (begin, _) in zip(spans, spans[1:]):
        if begin < prev_end:
            raise _corrupt(path, "two tensors overlap")
    return tensors


def open_checkpoint(src: Path) -> dict[str, TensorRef]:
    """All tensors of a checkpoint folder: one ``*.safetensors`` file, or the shards an index lists."""
    index_files = sorted(src.glob("*.safetensors.index.json"))
    tensors: dict[str, TensorRef] = {}
    if index_files:
        try:
            weight_map = json.loads(index_files[0].read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError):
            raise _corrupt(index_files[0], "it is not a valid index") from None
        shards = sorted(set(weight_map.values()))
        for shard in shards:
            path = src / shard
            if not path.is_file():
                raise UserError(
                    f"The weights file {shard} that {index_files[0].name} lists is missing.",
                    "Download the model again, including every shard.",
                    kind="corrupt_checkpoint",
                )
            tensors.update(read_header(path))
        missing = [name for name in weight_map if name not in tensors]
        if missing:
            raise _corrupt(src / weight_map[missing[0]], f"{missing[0]} is listed in the index but absent")
        return tensors
    for path in sorted(src.glob("*.safetensors")):
        tensors.update(read_header(path))
    return tensors
