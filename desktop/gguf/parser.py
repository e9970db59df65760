"""The one GGUF header parser, over any source of bytes: a memory-mapped file or HTTP byte ranges.

Everything in a header is untrusted, so every length and count is bounded before it is used: strings longer than
:data:`KEEP_STRING_BYTES` are skipped, not decoded; arrays longer than :data:`KEEP_ARRAY_ITEMS` are skipped (only
their length is kept: the token lists); nesting stops at :data:`MAX_NESTING`; a tensor has at most
:data:`MAX_DIMS` dimensions whose product must fit int64; counts must fit in the bytes that remain; value and
tensor types must be known. Any violation is :class:`BadHeader` (a sentence fragment); running out of the bytes a
remote source may fetch is :class:`HeaderIncomplete`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from desktop.gguf.limits import MAX_ELEMENTS

MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NESTING = 2  # an array of arrays, no deeper
MAX_KEY_BYTES = 64 * 1024
KEEP_STRING_BYTES = 4 * 1024 * 1024  # chat templates are tens of KB; longer strings are skipped
KEEP_ARRAY_ITEMS = 4096  # per-layer values are kept; token lists (10^5 items) are skipped
KEEP_STRING_ARRAY_ITEMS = 64
MAX_ARRAY_ITEMS = 1 << 22  # vocabularies have up to a few hundred thousand tokens
MAX_COUNT = 1 << 20  # tensors or key/values in one file
MAX_ALIGNMENT = 1 << 16
_CANCEL_EVERY = 4096

# GGUF value types (the format's own numbering) -> struct format of one scalar.
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
_SIZES = {t: struct.calcsize(f) for t, f in SCALARS.items()}


class BadHeader(ValueError):
    """The bytes are not a GGUF header this reader accepts; ``str()`` says why in a few words."""


class HeaderIncomplete(ValueError):
    """The header goes on beyond the bytes this source may read."""


class ByteSource(Protocol):
    size: int  # the whole file's size, 0 when unknown

    def take(self, pos: int, n: int) -> bytes | memoryview: ...


class BufferSource:
    """Bytes in memory or a memory map: the whole file is there."""

    def __init__(self, buf: Any) -> None:
        self.buf = buf
        self.size = len(buf)

    def take(self, pos: int, n: int) -> bytes | memoryview:
        if n < 0 or pos + n > self.size:
            raise BadHeader("it ends in the middle of its header (the file may be cut short)")
        return self.buf[pos : pos + n]


class RangeSource:
    """Bytes fetched on demand through ``fetch(start, end)``, at most ``limit`` of them, ``first`` at once."""

    def __init__(self, fetch: Callable[[int, int], bytes], size: int, *, first: int, limit: int) -> None:
        self.fetch, self.size, self.first, self.limit = fetch, size, first, limit
        self.data = bytearray()

    def take(self, pos: int, n: int) -> bytes | memoryview:
        end = pos + n
        if n < 0 or (self.size and end > self.size):
            raise BadHeader("it ends in the middle of its header (the file may be cut short)")
        if end > len(self.data):
            cap = min(self.limit, self.size) if self.size else self.limit
            if end > cap:
                raise HeaderIncomplete
            want = min(cap, max(end, self.first, 4 * len(self.data)))
            chunk = self.fetch(len(self.data), want)
            self.data += chunk[: want - len(self.data)]
            if end > len(self.data):
                raise BadHeader("the server sent fewer bytes than the header needs")
        return bytes(self.data[pos:end])


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ggml_type: str  # "Q4_K", "F16", ...
    shape: tuple[int, ...]  # ggml order, ne0 first
    n_elements: int
    n_bytes: int
    offset: int = 0  # from the start of the tensor data


@dataclass
class Header:
    """One file's header. ``metadata`` has None for skipped values (long arrays, huge strings); ``array_lengths``
    keeps every array's length; ``tensors`` is None when the source ended before the tensor table."""

    version: int
    metadata: dict[str, Any]
    array_lengths: dict[str, int] = field(default_factory=dict)
    tensors: list[TensorInfo] | None = None
    kv_end: int = 0  # end of the key/value section
    data_offset: int = 0  # start of the tensor data (the header's size, aligned); 0 without tensors


    @property
    def architecture(self) -> str:
        value = self.metadata.get("general.architecture")
        return value if isinstance(value, str) else ""

    @property
    def file_type(self) -> str:
        value = self.metadata.get("general.file_type")
        return file_type_name(value) if isinstance(value, int) and not isinstance(value, bool) else ""

    @property
    def n_vocab(self) -> int:
        return self.array_lengths.get("tokenizer.ggml.tokens", 0)

    @property
    def block_count(self) -> int:
        value = self.metadata.get(f"{self.architecture}.block_count")
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    @property
    def parameter_count(self) -> int:
        return sum(t.n_elements for t in self.tensors or ())

    def head_counts(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(query heads, key/value heads) per layer; see :func:`head_counts`."""
        return head_counts(self.metadata, self.architecture, self.block_count)


def layer_values(metadata: Mapping[str, Any], arch: str, key: str, n_layer: int, default: Any = None) -> tuple[int, ...]:
    """A per-layer hyperparameter (``attention.head_count``, ...) as one int per layer, the one way every reader
    takes it: a scalar applies to every layer, an array gives each layer its own value (models with layers of
    different widths), padded with its last value or cut to ``n_layer``. ``default`` (a value or a tuple) when
    the key is absent; non-numbers count as 0."""
    value = metadata.get(f"{arch}.{key}", default)
    if value is None:
        return (0,) * n_layer
    if isinstance(value, (list, tuple)):
        items = [v if isinstance(v, int) and not isinstance(v, bool) else 0 for v in value][:n_layer]
        return tuple(items + [items[-1] if items else 0] * (n_layer - len(items)))
    return (value if isinstance(value, int) and not isinstance(value, bool) else 0,) * n_layer


def head_counts(metadata: Mapping[str, Any], arch: str, n_layer: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(query heads, key/value heads) per layer, the one way they are read (key/value heads default to the query
    heads). The planner sizes each layer by its own count; the quantizer, like llama.cpp's, uses layer 0."""
    n_layer = max(n_layer, 1)  # a file without block_count still has its heads
    return (layer_values(metadata, arch, "attention.head_count", n_layer),
            layer_values(metadata, arch, "attention.head_count_kv", n_layer,
                         metadata.get(f"{arch}.attention.head_count")))


def file_type_name(file_type: int | None) -> str:
    if file_type is None:
        return "unknown"
    import gguf

    try:
        name = gguf.LlamaFileType(file_type).name
    except ValueError:
        return f"type {file_type}"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


class _Cursor:
    def __init__(self, src: ByteSource, cancelled: Callable[[], bool] | None) -> None:
        self.src, self.pos, self.cancelled, self.ticks = src, 0, cancelled, 0

    def tick(self) -> None:
        self.ticks += 1
        if self.ticks % _CANCEL_EVERY == 0:
            self.check_cancelled()

    def check_cancelled(self) -> None:
        if self.cancelled is not None and self.cancelled():
            from desktop.errors import Cancelled

            raise Cancelled()

    def raw(self, n: int) -> bytes | memoryview:
        data = self.src.take(self.pos, n)
        self.pos += n
        return data

    def skip(self, n: int) -> None:
        if self.src.size and self.pos + n > self.src.size:
            raise BadHeader("it ends in the middle of its header (the file may be cut short)")
        if not self.src.size:
            self.src.take(self.pos, n)  # a remote source of unknown size must still hold the bytes
        self.pos += n

    def scalar(self, vtype: int) -> Any:
        return struct.unpack(SCALARS[vtype], self.raw(_SIZES[vtype]))[0]

    def u32(self) -> int:
        return int(self.scalar(4))

    def u64(self) -> int:
        return int(self.scalar(10))

    def count(self, what: str, min_item_bytes: int, bound: int) -> int:
        n = self.u64()
        left = self.src.size - self.pos if self.src.size else None
        if n > bound or (left is not None and n * min_item_bytes > left):
            raise BadHeader(f"it claims {n} {what}, more than the file can hold")
        return n

    def string(self, keep: int = KEEP_STRING_BYTES) -> str | None:
        n = self.u64()
        if n > keep:
            self.skip(n)
            return None
        return bytes(self.raw(n)).decode("utf-8", "replace")

    def key(self) -> str:
        n = self.u64()
        if n > MAX_KEY_BYTES:
            raise BadHeader(f"a metadata key is {n} bytes long")
        return bytes(self.raw(n)).decode("utf-8", "replace")

    def value(self, vtype: int, depth: int, lengths: dict[str, int], key: str) -> Any:
        if vtype in SCALARS:
            return self.scalar(vtype)
        if vtype == STRING:
            return self.string()
        if vtype != ARRAY:
            raise BadHeader(f"the value of {key[:80]} has the unknown type {vtype}")
        if depth >= MAX_NESTING:
            raise BadHeader(f"the value of {key[:80]} nests arrays deeper than {MAX_NESTING}")
        item_type = self.u32()
        if item_type not in SCALARS and item_type not in (STRING, ARRAY):
            raise BadHeader(f"the value of {key[:80]} is an array of the unknown type {item_type}")
        count = self.count("array items", _SIZES.get(item_type, 8 if item_type == STRING else 12), MAX_ARRAY_ITEMS)
        if depth == 0:
            lengths[key] = count
        keep = KEEP_STRING_ARRAY_ITEMS if item_type == STRING else KEEP_ARRAY_ITEMS
        if item_type in SCALARS:
            raw = self.raw(_SIZES[item_type] * count) if count <= keep else None
            if raw is None:
                self.skip(_SIZES[item_type] * count)
                return None
            return list(struct.unpack(f"<{count}{SCALARS[item_type][1]}", raw))
        if item_type == STRING and count > keep:
            self.skip_strings(count)
            return None
        items = []
        for _ in range(count):
            self.tick()
            item = self.value(item_type, depth + 1, lengths, key)
            if count <= keep:
                items.append(item)
        return items if count <= keep else None

    def skip_strings(self, count: int) -> None:
        buf = getattr(self.src, "buf", None)
        if buf is None:  # a remote source: the lengths must be fetched anyway
            for _ in range(count):
                self.tick()
                self.skip(self.u64())
            return
        unpack, pos, size = struct.Struct("<Q").unpack_from, self.pos, self.src.size
        try:
            for start in range(0, count, 1 << 16):
                self.check_cancelled()
                for _ in range(min(count - start, 1 << 16)):
                    pos += 8 + unpack(buf, pos)[0]
        except struct.error:
            pos = size + 1
        if pos > size:
            raise BadHeader("it ends in the middle of its header (the file may be cut short)")
        self.pos = pos


def _tensor(cur: _Cursor) -> TensorInfo:
    import gguf

    name = cur.key()
    n_dims = cur.u32()
    if n_dims > MAX_DIMS:
        raise BadHeader(f"the tensor {name[:80]} has {n_dims} dimensions (at most {MAX_DIMS})")
    shape = tuple(cur.u64() for _ in range(n_dims))
    type_id = cur.u32()
    offset = cur.u64()
    try:
        qtype = gguf.GGMLQuantizationType(type_id)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise BadHeader(f"the tensor {name[:80]} has the unknown type {type_id}") from None
    n_elements = 1
    for dim in shape:
        if dim > MAX_ELEMENTS or (dim and n_elements > MAX_ELEMENTS // dim):
            raise BadHeader(f"the tensor {name[:80]} has a shape too large for any model")
        n_elements *= dim
    if shape and shape[0] % block:
        raise BadHeader(f"the tensor {name[:80]} has rows that do not fill whole {qtype.name} blocks")
    return TensorInfo(name, qtype.name, shape, n_elements, n_elements // block * type_size, offset)


def parse(src: ByteSource, *, need_tensors: bool = True, partial: bool = False,
          cancelled: Callable[[], bool] | None = None) -> Header:
    """Parse a GGUF header from ``src``. Raises :class:`BadHeader` for a header it refuses, and
    :class:`HeaderIncomplete` when ``src`` ends too soon (with ``need_tensors`` False, the key/values are
    enough; with ``partial``, never: the key/values read so far are returned)."""
    cur = _Cursor(src, cancelled)
    if bytes(cur.raw(4)) != b"GGUF":
        raise BadHeader("it does not start with the GGUF signature")
    version = cur.u32()
    if version not in (2, 3):
        raise BadHeader(f"GGUF version {version} is not supported")
    n_tensors = cur.count("tensors", 24, MAX_COUNT)
    n_kv = cur.count("metadata entries", 13, MAX_COUNT)
    header = Header(version, {})
    for _ in range(n_kv):
        cur.tick()
        try:
            key = cur.key()
            value = cur.value(cur.u32(), 0, header.array_lengths, key)
        except HeaderIncomplete:
            if partial:
                return header
            raise
        if key in header.metadata:
            raise BadHeader(f"the key {key[:80]} appears twice")
        header.metadata[key] = value  # None: skipped (a long array, a huge string)
    header.kv_end = cur.pos
    if not need_tensors:
        return header
    alignment = header.metadata.get("general.alignment", 32)
    if isinstance(alignment, bool) or not isinstance(alignment, int) or not 0 < alignment <= MAX_ALIGNMENT \
            or alignment & (alignment - 1):
        raise BadHeader(f"its general.alignment ({alignment!r}) is not a power of two")
    try:
        tensors = []
        for _ in range(n_tensors):
            cur.tick()
            tensors.append(_tensor(cur))
    except HeaderIncomplete:
        if partial:
            return header
        raise
    header.tensors = tensors
    header.data_offset = (cur.pos + alignment - 1) // alignment * alignment
    return header
