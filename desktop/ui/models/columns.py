"""The cells a model shows in the Models page's tables (its GGUFs and its checkpoints), made one way."""

from __future__ import annotations

from desktop.gguf.reader import format_parameters
from desktop.jobs import format_bytes
from desktop.library import CheckpointEntry, ModelEntry


def model_cells(entry: ModelEntry | CheckpointEntry, weights: str) -> list[str]:
    """Name, architecture, parameters, ``weights`` (a GGUF's quant type, a checkpoint's dtype), context, size."""
    return [
        entry.name,
        entry.architecture,
        format_parameters(entry.parameters),
        weights,
        f"{entry.context_length:,}" if entry.context_length else "–",
        format_bytes(entry.size_bytes),
    ]
