"""GGUF repos on the Hub: which files make one model, what quant type each is, and the model's hyperparameters
read from the start of the file with HTTP Range requests (no download).

A split model is ``{stem}-00001-of-00003.gguf`` ... ``-00003-of-00003.gguf`` and counts as one model.
Projector (``mmproj``) and importance-matrix files are listed as extras, not models.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from desktop.gguf.reader import SHARD_RE, file_type_name

__all__ = [
    "GgufHeader",
    "GgufModel",
    "HeaderIncomplete",
    "group_gguf_files",
    "parse_gguf_header",
    "quant_from_name",
    "read_gguf_header",
]

_QUANT_RE = re.compile(
    r"(?<![A-Za-z0-9])("
    r"IQ[1-4]_(?:XXS|XS|NL|S|M)|Q[2-8]_K(?:_XL|_[SMLX])?|Q[4-8]_[01]|TQ[12]_0|MXFP4(?:_MOE)?|BF16|F16|F32"
    r")(?![A-Za-z0-9])",
    re.IGNORECASE,
)
_AUX_RE = re.compile(r"mmproj|imatrix", re.IGNORECASE)


def quant_from_name(filename: str) -> str:
    """The quant type a GGUF file name states ("model.Q4_K_M.gguf" -> "Q4_K_M"), or "" when it states none."""
    base = filename.rsplit("/", 1)[-1]
    matches = _QUANT_RE.findall(base)
    return matches[-1].upper() if matches else ""


@dataclass
class GgufModel:
    """One model of a GGUF repo: its files (all shards, in order), their total size and its quant type."""

    name: str
    quant: str
    files: list[str]
    size_bytes: int
    complete: bool = True  # every shard the names promise is in the repo
    parameter_count: int = 0


def group_gguf_files(files: Iterable[tuple[str, int]]) -> tuple[list[GgufModel], list[str]]:
    """Group ``(path, size)`` pairs of .gguf files into models, largest quant first; also return the extras."""
    groups: dict[str, list[tuple[int, str, int]]] = {}
    counts: dict[str, int] = {}
    extras: list[str] = []
    for path, size in files:
        if not path.lower().endswith(".gguf"):
            continue
        folder, _, base = path.rpartition("/")
        if _AUX_RE.search(base):
            extras.append(path)
            continue
        match = SHARD_RE.match(base)
        if match:
            key = f"{folder}/{match.group('stem')}" if folder else match.group("stem")
            counts[key] = int(match.group("count"))
            groups.setdefault(key, []).append((int(match.group("no")), path, size))
        else:
            key = path[: -len(".gguf")]
            groups.setdefault(key, []).append((1, path, size))
    models = []
    for key, parts in groups.items():
        parts.sort()
        paths = [p for _, p, _ in parts]
        expected = counts.get(key, 1)
        models.append(
            GgufModel(
                name=key,
                quant=quant_from_name(key + ".gguf") or quant_from_name(paths[0]),
                files=paths,
                size_bytes=sum(s for _, _, s in parts),
                complete=len(parts) == expected,
            )
        )
    models.sort(key=lambda m: (-m.size_bytes, m.name))
    return models, sorted(extras)


class HeaderIncomplete(ValueError):
    """The bytes given end before the part of the header asked for."""


@dataclass
class GgufHeader:
    """The key/values of a GGUF header (arrays longer than 64 items are left out, their lengths kept) and,
    when the bytes reached that far, the tensor table as (name, numpy-order shape, ggml type name)."""

    metadata: dict[str, Any]
    array_lengths: dict[str, int] = field(default_factory=dict)
    tensors: list[tuple[str, tuple[int, ...], str]] | None = None
    header_bytes: int = 0

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture") or "")

    @property
    def file_type(self) -> str:
        value = self.metadata.get("general.file_type")
        return file_type_name(int(value)) if isinstance(value, int) else ""

    @property
    def n_vocab(self) -> int:
        return self.array_lengths.get("tokenizer.ggml.tokens", 0)

    @property
    def parameter_count(self) -> int:
        total = 0
        for _, shape, _ in self.tensors or ():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise HeaderIncomplete
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.unpack("<Q")).decode("utf-8", "replace")

    def value(self, vtype: int, key: str, lengths: dict[str, int]) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, count = self.unpack("<I"), self.unpack("<Q")
            lengths[key] = count
            if item_type in _SCALARS:
                size = struct.calcsize(_SCALARS[item_type])
                raw = self.take(size * count)
                return list(struct.unpack(f"<{count}{_SCALARS[item_type][1]}", raw)) if count <= 64 else None
            items = [self.value(item_type, key, {}) for _ in range(count)]
            return items if count <= 64 else None
        raise ValueError(f"unknown GGUF value type {vtype}")


def parse_gguf_header(data: bytes, *, need_tensors: bool = True, partial: bool = False) -> GgufHeader:
    """Parse a GGUF header from its first bytes. Raises :class:`HeaderIncomplete` when ``data`` ends too soon
    (with ``need_tensors`` False, as soon as the key/values are read; with ``partial``, never: the key/values
    read so far are returned), ValueError when it is not GGUF."""
    from desktop.quant.types import ggml_type_name

    r = _Reader(data)
    if r.take(4) != b"GGUF":
        raise ValueError("not a GGUF file")
    version = r.unpack("<I")
    if version < 2:
        raise ValueError(f"GGUF version {version} is too old")
    n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
    metadata: dict[str, Any] = {}
    lengths: dict[str, int] = {}
    for _ in range(n_kv):
        try:
            key = r.string()
            value = r.value(r.unpack("<I"), key, lengths)
        except HeaderIncomplete:
            if partial:
                return GgufHeader(metadata, lengths, None, 0)
            raise
        if value is not None:
            metadata[key] = value
    header = GgufHeader(metadata, lengths, None, r.pos)
    if not need_tensors:
        return header
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        dims = [r.unpack("<Q") for _ in range(r.unpack("<I"))]
        ggml_type = r.unpack("<I")
        r.unpack("<Q")  # data offset
        try:
            type_name = ggml_type_name(ggml_type)
        except KeyError:
            type_name = f"type{ggml_type}"
        tensors.append((name, tuple(reversed(dims)), type_name))
    header.tensors = tensors
    header.header_bytes = r.pos
    return header


def read_gguf_header(
    fetch: Callable[[int, int], bytes], size: int, *, first: int = 1 << 20, limit: int = 64 << 20,
    partial: bool = False,
) -> GgufHeader:
    """Read a header through ``fetch(start, end)`` (bytes ``[start, end)``), asking for more as needed.

    The tensor table is skipped when it lies beyond ``limit`` bytes (huge vocabularies); the key/values are
    required unless ``partial`` (then those within ``limit`` are returned: enough for ``general.file_type``).
    """
    data = b""
    want = min(first, size)
    while True:
        if want > len(data):
            data += fetch(len(data), want)
        try:
            return parse_gguf_header(data, need_tensors=True)
        except HeaderIncomplete:
            if want >= min(size, limit):
                return parse_gguf_header(data, need_tensors=False, partial=partial)
            want = min(size, limit, want * 4)
