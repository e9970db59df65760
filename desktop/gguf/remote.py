"""GGUF repos on the Hub: which files make one model, what quant type each is, and the model's hyperparameters
read from the start of the file with HTTP Range requests (no download).

A split model is ``{stem}-00001-of-00003.gguf`` ... ``-00003-of-00003.gguf`` and counts as one model.
Projector (``mmproj``) and importance-matrix files are listed as extras, not models.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from desktop.gguf.parser import BadHeader, Header, HeaderIncomplete, RangeSource, parse
from desktop.gguf.reader import SHARD_RE

__all__ = [
    "BadHeader",
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


GgufHeader = Header
"""A remote header is the same :class:`~desktop.gguf.parser.Header` a local file gives."""


def parse_gguf_header(data: bytes, *, need_tensors: bool = True, partial: bool = False) -> Header:
    """Parse a GGUF header from its first bytes (see :func:`desktop.gguf.parser.parse`)."""
    return parse(RangeSource(lambda start, end: data[start:end], 0, first=len(data), limit=len(data)),
                 need_tensors=need_tensors, partial=partial)


def read_gguf_header(
    fetch: Callable[[int, int], bytes], size: int, *, first: int = 1 << 20, limit: int = 64 << 20,
    partial: bool = False, cancelled: Callable[[], bool] | None = None,
) -> Header:
    """Read a header through ``fetch(start, end)`` (bytes ``[start, end)``), asking for more as needed.

    The tensor table is skipped when it lies beyond ``limit`` bytes (huge vocabularies); the key/values are
    required unless ``partial`` (then those within ``limit`` are returned: enough for ``general.file_type``).
    Raises :class:`BadHeader` for a header it refuses.
    """
    source = RangeSource(fetch, size, first=first, limit=limit)
    try:
        return parse(source, need_tensors=True, cancelled=cancelled)
    except HeaderIncomplete:
        return parse(source, need_tensors=False, partial=partial, cancelled=cancelled)
