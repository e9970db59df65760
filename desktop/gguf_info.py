"""What a GGUF file says about itself: name, architecture, size, quant type, context length, layers.

Read with gguf-py's memory-mapped reader, so it costs the header, not the weights. Split models
(``name-00001-of-00003.gguf``) are read shard by shard and summed.
"""

from __future__ import annotations

import re
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
    metadata: dict[str, Any] = field(default_factory=dict)  # scalar and string keys; arrays are left out
    tensors: list[TensorInfo] = field(default_factory=list)
    shards: list[Path] = field(default_factory=list)

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


def _field_value(field_: Any) -> Any:
    try:
        return field_.contents()
    except Exception:  # noqa: BLE001 - an odd field should not make the whole file unreadable
        return None


def read_gguf(path: Path | str) -> GGUFInfo:
    """Read a GGUF's metadata and tensor table. Raises UserError for a file that is not a readable GGUF."""
    import gguf

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
    for shard in shards:
        try:
            reader = gguf.GGUFReader(shard, "r")
        except (ValueError, OSError, IndexError, KeyError) as exc:
            raise UserError(
                f"{shard.name} is not a readable GGUF file ({exc}).",
                "Check that the download finished, or pick another file.",
            ) from exc
        if not metadata:
            for key, fld in reader.fields.items():
                if key.startswith("GGUF.") or (len(fld.types) > 0 and fld.types[0] == gguf.GGUFValueType.ARRAY):
                    continue
                metadata[key] = _field_value(fld)
            template_fld = reader.fields.get("tokenizer.chat_template")
            if template_fld is not None:
                metadata["tokenizer.chat_template"] = _field_value(template_fld)
        for t in reader.tensors:
            tensors.append(
                TensorInfo(
                    name=t.name,
                    ggml_type=t.tensor_type.name,
                    shape=tuple(int(x) for x in t.shape.tolist()),
                    n_elements=int(t.n_elements),
                    n_bytes=int(t.n_bytes),
                )
            )
        del reader
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
    )


def _name_from_path(path: Path) -> str:
    match = SHARD_RE.match(path.name)
    return match.group("stem") if match else path.stem
