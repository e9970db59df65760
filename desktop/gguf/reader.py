"""What a GGUF file says about itself: name, architecture, size, quant type, context length, layers.

Read by :mod:`desktop.gguf.parser` (the one header parser, shared with remote headers) over a memory map: it
skips the token lists instead of decoding them (gguf-py's GGUFReader decodes every one, which takes seconds on a
262k-token vocabulary) and bounds every length and count. Split models (``name-00001-of-00003.gguf``) are read
shard by shard and summed. Results are cached by (path, size, modification time).
"""

from __future__ import annotations

import mmap
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from desktop.errors import UserError
from desktop.gguf.limits import BadNumber, check_gguf_numbers
from desktop.gguf.parser import BadHeader, BufferSource, Header, TensorInfo, file_type_name, head_counts, parse

__all__ = ["GGUFInfo", "TensorInfo", "file_type_name", "format_parameters", "head_counts", "read_gguf",
           "shard_paths", "tensor_data"]

SHARD_RE = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


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
    metadata: dict[str, Any] = field(default_factory=dict)  # None for long arrays and huge strings (skipped)
    tensors: list[TensorInfo] = field(default_factory=list)
    shards: list[Path] = field(default_factory=list)
    kv_bytes: int = 0  # size of the first shard's key/value section
    data_offset: int = 0  # where the first shard's tensor data starts (the header's size, aligned)
    array_lengths: dict[str, int] = field(default_factory=dict)  # every array's length, the skipped ones too

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    def hparam(self, key: str, default: Any = None) -> Any:
        """An ``{arch}.*`` metadata value, e.g. ``hparam("attention.head_count_kv")``."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def head_counts(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(query heads, key/value heads) per layer; see :func:`desktop.gguf.parser.head_counts`."""
        return head_counts(self.metadata, self.architecture, self.block_count)

    @property
    def n_vocab(self) -> int:
        return self.array_lengths.get("tokenizer.ggml.tokens", 0)

    @property
    def parameters_label(self) -> str:
        return format_parameters(self.parameter_count)


def format_parameters(n: int) -> str:
    """A parameter count as people write it: 135M, 1.2B, 13B (every page and sentence uses this one)."""
    if n >= 10e9:
        return f"{n / 1e9:.0f}B"
    if n >= 1e9:
        return f"{n / 1e9:.1f}B"
    if n >= 1e6:
        return f"{n / 1e6:.0f}M"
    if n >= 1e3:
        return f"{n / 1e3:.0f}K"
    return str(n)


def shard_paths(path: Path) -> list[Path]:
    """All shards of a split model given any one of them (or just the file itself)."""
    match = SHARD_RE.match(path.name)
    if not match:
        return [path]
    count = int(match.group("count"))
    stem = match.group("stem")
    return [path.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


_CACHE_SIZE = 64
_cache: OrderedDict[tuple[Any, ...], GGUFInfo] = OrderedDict()
_cache_lock = threading.Lock()


def _read_header(path: Path) -> Header:
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise BadHeader("it is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return parse(BufferSource(buf))


def read_gguf(path: Path | str) -> GGUFInfo:
    """Read a GGUF's metadata and tensor table (not its weights; token lists are skipped, not decoded).

    The result is cached by (path, size, modification time) of every shard: callers share it and must not
    change it. Raises UserError for a file that is not a readable GGUF or whose numbers no model has.
    """
    path = Path(path)
    shards = shard_paths(path)
    try:
        stats = [p.stat() for p in shards]
    except FileNotFoundError:
        missing = next(p.name for p in shards if not p.exists())
        if len(shards) == 1:
            raise UserError(f"{path.name} does not exist.", "Choose another file.", kind="not_found") from None
        raise UserError(
            f"{path.name} is one part of a split model, and part {missing} is missing.",
            "Download all its parts into the same folder.",
        ) from None
    except OSError as exc:
        raise UserError(f"{path.name} cannot be read ({exc.strerror}).", "Check the file's permissions.") from None
    key = (str(path), *((str(p), st.st_size, st.st_mtime_ns) for p, st in zip(shards, stats)))
    with _cache_lock:
        info = _cache.get(key)
        if info is not None:
            _cache.move_to_end(key)
            return info
    info = _read_uncached(path, shards, sum(st.st_size for st in stats))
    with _cache_lock:
        _cache[key] = info
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return info


def _read_uncached(path: Path, shards: list[Path], size: int) -> GGUFInfo:
    headers: list[Header] = []
    for shard in shards:
        try:
            headers.append(_read_header(shard))
        except (BadHeader, OSError, ValueError) as exc:
            raise UserError(
                f"{shard.name} is not a readable GGUF file ({exc}).",
                "Check that the download finished, or pick another file.",
            ) from None
    first = headers[0]
    metadata = first.metadata
    try:
        check_gguf_numbers(metadata)
    except BadNumber as exc:
        raise UserError(f"{path.name} is not a usable GGUF file: {exc}.", "Pick another file.",
                        kind="bad_model") from None
    arch = str(metadata.get("general.architecture") or "unknown")
    name = metadata.get("general.name") or _name_from_path(path)
    tensors = [t for h in headers for t in (h.tensors or ())]
    context = metadata.get(f"{arch}.context_length")
    blocks = metadata.get(f"{arch}.block_count")
    return GGUFInfo(
        path=path,
        name=str(name),
        architecture=arch,
        parameter_count=sum(t.n_elements for t in tensors),
        quant_type=file_type_name(metadata.get("general.file_type")),
        context_length=context if isinstance(context, int) else 0,
        size_bytes=size,
        block_count=blocks if isinstance(blocks, int) else 0,
        metadata=metadata,
        tensors=tensors,
        shards=shards,
        kv_bytes=first.kv_end - 24,
        data_offset=first.data_offset,
        array_lengths=first.array_lengths,
    )


def tensor_data(info: GGUFInfo, name: str) -> Any:
    """The stored bytes of tensor ``name`` of a single-file GGUF, as a read-only uint8 memory map."""
    import numpy as np

    if len(info.shards) > 1:
        raise ValueError("tensor_data reads single-file models only")
    tensor = next((t for t in info.tensors if t.name == name), None)
    if tensor is None:
        raise KeyError(name)
    start = info.data_offset + tensor.offset
    if start + tensor.n_bytes > info.size_bytes:
        raise UserError(f"{info.path.name} ends before the data of its tensor {name}.",
                        "Check that the download finished.")
    return np.memmap(info.path, dtype=np.uint8, mode="r", offset=start, shape=(tensor.n_bytes,))


def _name_from_path(path: Path) -> str:
    match = SHARD_RE.match(path.name)
    return match.group("stem") if match else path.stem
