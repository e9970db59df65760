"""What a GGUF file says about itself: name, architecture, size, quant type, context length, layers.

Read with a small header parser of our own over a memory map: it skips the token lists instead of decoding
them (gguf-py's GGUFReader decodes every one, which takes seconds on a 262k-token vocabulary). Split models
(``name-00001-of-00003.gguf``) are read shard by shard and summed.
"""

from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from desktop.errors import UserError

SHARD_RE = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: str  # "Q4_K", "F16", ...
    shape: tuple[int, ...]  # ggml order, ne0 first
    n_elements: int
    n_bytes: int


@dataclass
class GGUFInfo:
    path: Path
    name: str
    architecture: str
    parameter_count: int
    quant_type: str  # from general.file_type, e.g. "Q4_K_M"; "unknown" if absent
    context_length: int
    size_bytes: int
    block_count: int
    metadata: dict[str, Any] = field(default_factory=dict)  # arrays longer than 64 items are None
    tensors: list[TensorInfo] = field(default_factory=list)
    shards: list[Path] = field(default_factory=list)
    kv_bytes: int = 0  # size of the first shard's key/value section
    data_offset: int = 0  # where the first shard's tensor data starts (the header's size, aligned)

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    def hparam(self, key: str, default: Any = None) -> Any:
        """An ``{arch}.*`` metadata value, e.g. ``hparam("attention.head_count_kv")``."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def parameters_label(self) -> str:
        return format_parameters(self.parameter_count)


def format_parameters(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.1f}B"
    if n >= 1e6:
        return f"{n / 1e6:.0f}M"
    if n >= 1e3:
        return f"{n / 1e3:.0f}K"
    return str(n)


def file_type_name(file_type: int | None) -> str:
    if file_type is None:
        return "unknown"
    import gguf

    try:
        name = gguf.LlamaFileType(file_type).name
    except ValueError:
        return f"type {file_type}"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def shard_paths(path: Path) -> list[Path]:
    """All shards of a split model given any one of them (or just the file itself)."""
    match = SHARD_RE.match(path.name)
    if not match:
        return [path]
    count = int(match.group("count"))
    stem = match.group("stem")
    return [path.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


# GGUF value types (the file format's own numbering) -> struct format of one scalar.
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_KEEP_ARRAYS_UP_TO = 64  # small arrays (per-layer head counts, ...) are kept; token lists are skipped


class _Cursor:
    """Reads a GGUF header from a memory map without touching the tensor data or decoding large arrays."""

    def __init__(self, buf: mmap.mmap, name: str) -> None:
        self.buf, self.pos, self.name = buf, 0, name

    def scalar(self, fmt: str) -> Any:
        value = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("<Q")
        if self.pos + n > len(self.buf):
            raise ValueError("a string runs past the end of the file")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", "replace")

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type, count = self.scalar("<I"), self.scalar("<Q")
            if count <= _KEEP_ARRAYS_UP_TO:
                return [self.value(item_type) for _ in range(count)]
            self.skip_array(item_type, count)
            return None
        if vtype not in _SCALAR:
            raise ValueError(f"unknown metadata value type {vtype}")
        return self.scalar(_SCALAR[vtype])

    def skip_array(self, item_type: int, count: int) -> None:
        if item_type == _STRING:
            unpack, buf, pos = struct.Struct("<Q").unpack_from, self.buf, self.pos
            for _ in range(count):
                pos += 8 + unpack(buf, pos)[0]
            self.pos = pos
        elif item_type in _SCALAR:
            self.pos += struct.calcsize(_SCALAR[item_type]) * count
        else:
            for _ in range(count):
                self.value(item_type)


def _read_header(path: Path) -> tuple[dict[str, Any], list[TensorInfo], int, int]:
    """(metadata, tensors, end of the key/value section, start of the tensor data)."""
    import gguf

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf, path.name)
        if buf[:4] != b"GGUF":
            raise ValueError("it does not start with the GGUF signature")
        version = struct.unpack_from("<I", buf, 4)[0]
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} is not supported")
        cur.pos = 8
        n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = cur.string()
            metadata[key] = cur.value(cur.scalar("<I"))
        kv_end = cur.pos
        tensors = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.scalar("<I")
            shape = tuple(cur.scalar("<Q") for _ in range(n_dims))
            type_id = cur.scalar("<I")
            cur.scalar("<Q")  # data offset
            ggml_type = gguf.GGMLQuantizationType(type_id)
            block, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
            n_elements = 1
            for dim in shape:
                n_elements *= dim
            tensors.append(TensorInfo(name, ggml_type.name, shape, n_elements, n_elements // block * type_size))
        alignment = metadata.get("general.alignment")
        alignment = alignment if isinstance(alignment, int) and alignment > 0 else 32
        data_offset = (cur.pos + alignment - 1) // alignment * alignment
    return metadata, tensors, kv_end, data_offset


def read_gguf(path: Path | str) -> GGUFInfo:
    """Read a GGUF's metadata and tensor table (not its weights; token lists are skipped, not decoded).

    Raises UserError for a file that is not a readable GGUF.
    """
    path = Path(path)
    shards = shard_paths(path)
    missing = [p.name for p in shards if not p.exists()]
    if missing:
        raise UserError(
            f"{path.name} is one part of a split model, and part {missing[0]} is missing.",
            "Download all its parts into the same folder.",
        )
    metadata: dict[str, Any] = {}
    tensors: list[TensorInfo] = []
    kv_end = data_offset = 0
    for shard in shards:
        try:
            shard_metadata, shard_tensors, shard_kv_end, shard_data_offset = _read_header(shard)
        except (ValueError, OSError, struct.error, KeyError, IndexError) as exc:
            raise UserError(
                f"{shard.name} is not a readable GGUF file ({exc}).",
                "Check that the download finished, or pick another file.",
            ) from exc
        if not metadata:
            metadata, kv_end, data_offset = shard_metadata, shard_kv_end, shard_data_offset
        tensors += shard_tensors
    arch = str(metadata.get("general.architecture") or "unknown")
    name = metadata.get("general.name") or _name_from_path(path)
    return GGUFInfo(
        path=path,
        name=str(name),
        architecture=arch,
        parameter_count=sum(t.n_elements for t in tensors),
        quant_type=file_type_name(metadata.get("general.file_type")),
        context_length=int(metadata.get(f"{arch}.context_length") or 0),
        size_bytes=sum(p.stat().st_size for p in shards),
        block_count=int(metadata.get(f"{arch}.block_count") or 0),
        metadata=metadata,
        tensors=tensors,
        shards=shards,
        kv_bytes=kv_end - 24,
        data_offset=data_offset,
    )


def _name_from_path(path: Path) -> str:
    match = SHARD_RE.match(path.name)
    return match.group("stem") if match else path.stem
