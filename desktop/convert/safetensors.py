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
MAX_DIMS = 8
MAX_ELEMENTS = (1 << 63) - 1  # what fits int64
MAX_INDEX_BYTES = 64 * 1024 * 1024


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


@dataclass(frozen=True)
class HeaderEntry:
    """One tensor of a parsed header: where its bytes lie, relative to the end of the header."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _dim(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ELEMENTS:
        raise ValueError(value)
    return value


def parse_header(raw: bytes, data_size: int | None) -> dict[str, HeaderEntry]:
    """Parse and validate a safetensors JSON header (the bytes after the 8-byte length). Every tensor's shape must
    be non-negative whole numbers whose product fits int64, its size must match its dtype and shape and, when
    ``data_size`` is known, lie inside the data; tensors must not overlap. Raises ValueError with a fragment."""
    try:
        header = loads_strict(raw)
    except UnicodeDecodeError:
        raise ValueError("its header is not valid JSON") from None
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"its header is not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    entries: dict[str, HeaderEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = str(info["dtype"])
            shape = tuple(_dim(d) for d in info["shape"])
            begin, end = (_dim(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"the entry for {name[:80]} is malformed") from None
        if dtype not in DTYPE_SIZES:
            raise ValueError(f"{name[:80]} has the unknown data type {dtype[:20]}")
        if len(shape) > MAX_DIMS:
            raise ValueError(f"{name[:80]} has {len(shape)} dimensions")
        n = 1
        for d in shape:
            n *= d
            if n > MAX_ELEMENTS:
                raise ValueError(f"{name[:80]} has a shape too large for any model")
        if end < begin or end - begin != n * DTYPE_SIZES[dtype]:
            raise ValueError(f"{name[:80]} does not have the size its shape needs")
        if data_size is not None and end > data_size:
            raise ValueError(f"{name[:80]} ends {end - data_size} bytes after the end of the file")
        entries[name] = HeaderEntry(dtype, shape, begin, end)
    spans = sorted((e.begin, e.end) for e in entries.values() if e.end > e.begin)
    for (_, prev_end), (begin, _) in zip(spans, spans[1:]):
        if begin < prev_end:
            raise ValueError("two tensors overlap")
    return entries


def _no_constant(name: str) -> Any:
    raise ValueError(f"it contains {name}, which is not a number")


def loads_strict(raw: bytes | str) -> Any:
    """JSON from an untrusted file: ``Infinity``/``NaN`` (which Python's json accepts) and nesting deep enough to
    exhaust the stack are refused with ValueError, like any other invalid JSON."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("it nests too deeply") from None


def read_header(path: Path) -> dict[str, TensorRef]:
    """Parse and validate one file's header: every tensor must lie inside the file and match its shape."""
    size = path.stat().st_size
    if size < 8:
        raise _corrupt(path, "it is shorter than a safetensors header")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > MAX_HEADER or 8 + header_len > size:
            raise _corrupt(path, "its header runs past the end of the file")
        raw = f.read(header_len)
    data_start = 8 + header_len
    try:
        entries = parse_header(raw, size - data_start)
    except ValueError as exc:
        raise _corrupt(path, str(exc)) from None
    return {name: TensorRef(name, path, e.dtype, e.shape, data_start + e.begin, e.end - e.begin)
            for name, e in entries.items()}


def shard_path(src: Path, index: Path, shard: Any) -> Path:
    """The file an index's ``weight_map`` names, refused unless it is a plain file name inside ``src``."""
    name = shard if isinstance(shard, str) else ""
    if (not name or name != Path(name).name or name in (".", "..") or "\\" in name or ":" in name
            or not name.endswith(".safetensors")):
        raise UserError(f"{index.name} names the weights file '{str(shard)[:80]}', which is not a safetensors file "
                        "in the model's folder.", "Download the model again from a source you trust.",
                        kind="corrupt_checkpoint")
    return src / name


def open_checkpoint(src: Path) -> dict[str, TensorRef]:
    """All tensors of a checkpoint folder: one ``*.safetensors`` file, or the shards an index lists."""
    index_files = sorted(src.glob("*.safetensors.index.json"))
    tensors: dict[str, TensorRef] = {}
    if index_files:
        try:
            if index_files[0].stat().st_size > MAX_INDEX_BYTES:
                raise ValueError("it is larger than any real index")
            weight_map = loads_strict(index_files[0].read_bytes())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError):
            raise _corrupt(index_files[0], "it is not a valid index") from None
        if not isinstance(weight_map, dict):
            raise _corrupt(index_files[0], "it is not a valid index")
        shards = sorted({shard_path(src, index_files[0], s) for s in weight_map.values()})
        for path in shards:
            shard = path.name
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
