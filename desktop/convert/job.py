"""The conversion as a child-process job.

    run_in_child("desktop.convert.job:run", {"src_dir": ..., "out_path": ..., "outtype": "f16"},
                 progress=..., cancelled=..., cleanup=[partial_path(Path(out_path))])

The child streams ``("progress", i, n, "blk.3.ffn_down.weight → f16")`` per tensor and ends with the result dict
of :func:`desktop.convert.convert`. A cancel makes the child delete its partial file and report ``("cancelled",)``;
if it is killed instead, the parent removes the ``cleanup`` paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from desktop.convert.writer import convert
from desktop.fileio import partial_path
from desktop.jobs import CancelledFn, ProgressFn


def run(*, progress: ProgressFn, cancelled: CancelledFn, src_dir: str, out_path: str,
        outtype: str = "f16") -> dict[str, Any]:
    return convert(src_dir, out_path, outtype, progress=progress, cancelled=cancelled)


def cleanup_paths(out_path: str | Path) -> list[Path]:
    """What to remove if the child dies: the partial output next to ``out_path``."""
    return [partial_path(Path(out_path))]
