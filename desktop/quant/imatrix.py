"""Importance matrices: computed by QuantDesk from a calibration text, saved in llama.cpp's GGUF imatrix format.

An importance matrix tells the quantizer which input columns of each weight matter most: for every matrix
multiplication with a weight ``blk.N.*``, the sum of squared activations per input column over the calibration
tokens (and how many tokens were seen). It is collected exactly as llama.cpp's ``llama-imatrix`` tool does: the
text is tokenized with BOS, cut into chunks of ``n_ctx`` tokens whose first token is replaced by BOS, each chunk is
decoded with all logits requested (so the last layer runs for every token), and llama.cpp's eval callback hands
us every ``MUL_MAT``/``MUL_MAT_ID`` whose weight belongs to a block and whose batch has at least 16 rows.

The file is the one llama.cpp writes (``imatrix.gguf``): ``general.type = "imatrix"``, ``imatrix.datasets``,
``imatrix.chunk_count``, ``imatrix.chunk_size`` and, per weight, ``<weight>.in_sum2`` (raw sums, F32
``[n_mat, n_cols]``) and ``<weight>.counts`` (F32 ``[n_mat, 1]``), so llama.cpp's own tools read it.

Collection runs in a child process (:func:`compute_imatrix`); :mod:`desktop.quant.imatrix_child` is the child's side.
"""

from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from desktop.errors import UserError
from desktop.fileio import partial_path, remove_quietly
from desktop.jobs import CancelledFn, ProgressFn
from desktop.llama.session import default_threads
from desktop.resources import path as resource_path

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CALIBRATION",
    "ImatrixData",
    "compute_imatrix",
    "default_calibration_text",
    "load_imatrix",
    "save_imatrix",
]

DEFAULT_CALIBRATION = "texts/calibration.txt"
MIN_BATCH_ROWS = 16  # llama.cpp's imatrix tool ignores smaller batches


def default_calibration_text() -> Path:
    """The bundled general-purpose calibration sample."""
    return resource_path(DEFAULT_CALIBRATION)


@dataclass
class ImatrixData:
    """Collected statistics: per weight name, raw sums of squares ``[n_mat, n_cols]`` and token counts ``[n_mat]``."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0

    def normalized(self) -> dict[str, np.ndarray]:
        """What ``llama_model_quantize`` takes: per weight, mean squared activation per column (flat float32,
        ``n_mat * n_cols`` values); a matrix that saw no tokens gets 1.0, as llama.cpp's loader does."""
        result = {}
        for name, sums in self.sums.items():
            counts = self.counts[name].reshape(-1, 1).astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                values = np.where(counts > 0, sums / np.where(counts > 0, counts, 1.0), 1.0)
            result[name] = np.ascontiguousarray(values.reshape(-1), dtype=np.float32)
        return result

    def __len__(self) -> int:
        return len(self.sums)


def save_imatrix(path: Path | str, data: ImatrixData) -> Path:
    """Write ``data`` as a GGUF imatrix at ``path`` (atomically: a partial name first, renamed when complete)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(final)
    try:
        write_gguf_file(tmp, data)
        os.replace(tmp, final)
    except BaseException:
        remove_quietly(tmp)
        raise
    return final


def write_gguf_file(path: Path, data: ImatrixData) -> None:
    """Write ``data`` in llama.cpp's GGUF imatrix format at ``path`` as it is (no partial name: see :func:`save_imatrix`)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="imatrix")
    # llama.cpp's imatrix files carry no architecture; GGUFWriter adds one unasked.
    writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)
    writer.add_type(gguf.GGUFType.IMATRIX)
    writer.add_array(gguf.Keys.IMatrix.DATASETS, list(data.datasets))
    writer.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, int(data.chunk_count))
    writer.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, int(data.chunk_size))
    for name in sorted(data.sums):
        sums = np.ascontiguousarray(data.sums[name], dtype=np.float32)
        if sums.ndim == 1:
            sums = sums.reshape(1, -1)
        counts = np.ascontiguousarray(data.counts[name], dtype=np.float32).reshape(-1, 1)
        writer.add_tensor(f"{name}.in_sum2", sums)
        writer.add_tensor(f"{name}.counts", counts)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def load_imatrix(path: Path | str) -> ImatrixData:
    """Read an imatrix: llama.cpp's GGUF format, or its legacy ``.dat`` format."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise UserError(f"QuantDesk cannot read the importance matrix {path.name} ({exc.strerror}).") from exc
    if magic == b"GGUF":
        return _load_gguf(path)
    return _load_legacy(path)


def _load_gguf(path: Path) -> ImatrixData:
    import gguf

    from desktop.gguf.reader import read_gguf, tensor_data

    info = read_gguf(path)  # the one bounded header reader; the data is memory-mapped, not parsed
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for t in info.tensors:
        if not t.name.endswith((".in_sum2", ".counts")):
            continue
        if t.ggml_type != "F32" or not t.shape or t.shape[0] == 0:
            raise UserError(f"{path.name} is not an importance matrix (its tensor {t.name[:80]} is not F32 values).")
        values = np.frombuffer(bytes(tensor_data(info, t.name)), dtype=np.float32)  # a copy: no open map
        if t.name.endswith(".in_sum2"):
            sums[t.name[: -len(".in_sum2")]] = values.reshape(-1, int(t.shape[0]))
        else:
            counts[t.name[: -len(".counts")]] = values.reshape(-1)
    names = sorted(set(sums) & set(counts))
    if not names or set(sums) != set(counts):
        raise UserError(f"{path.name} is not an importance matrix (it lacks matching .in_sum2 and .counts tensors).")
    meta = info.metadata
    datasets = meta.get(gguf.Keys.IMatrix.DATASETS)
    chunk_count, chunk_size = meta.get(gguf.Keys.IMatrix.CHUNK_COUNT), meta.get(gguf.Keys.IMatrix.CHUNK_SIZE)
    return ImatrixData(
        sums={n: sums[n] for n in names},
        counts={n: counts[n] for n in names},
        datasets=[str(d) for d in datasets] if isinstance(datasets, list) else [],
        chunk_count=chunk_count if isinstance(chunk_count, int) else 0,
        chunk_size=chunk_size if isinstance(chunk_size, int) else 0,
    )


def _load_legacy(path: Path) -> ImatrixData:
    """llama.cpp's old ``imatrix.dat``: values are stored as (sum / count) * ncall."""
    raw = path.read_bytes()
    try:
        (n_entries,) = struct.unpack_from("<i", raw, 0)
        offset = 4
        data = ImatrixData()
        for _ in range(n_entries):
            (name_len,) = struct.unpack_from("<i", raw, offset)
            name = raw[offset + 4 : offset + 4 + name_len].decode()
            offset += 4 + name_len
            ncall, nval = struct.unpack_from("<ii", raw, offset)
            offset += 8
            values = np.frombuffer(raw, dtype="<f4", count=nval, offset=offset).astype(np.float64)
            offset += 4 * nval
            data.sums[name] = values.reshape(1, -1)
            data.counts[name] = np.array([float(ncall)])
        if offset + 4 <= len(raw):
            (data.chunk_count,) = struct.unpack_from("<i", raw, offset)
            offset += 4
            if offset + 4 <= len(raw):
                (ds_len,) = struct.unpack_from("<i", raw, offset)
                data.datasets = [raw[offset + 4 : offset + 4 + ds_len].decode(errors="replace")]
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path.name} is neither a GGUF nor a legacy importance matrix.") from exc
    if n_entries <= 0:
        raise UserError(f"{path.name} is neither a GGUF nor a legacy importance matrix.")
    return data


# --------------------------------------------------------------------------------------------------------------
# Parent side


def compute_imatrix(
    model: Path | str,
    text: Path | str | None,
    out: Path | str,
    *,
    progress: ProgressFn,
    cancelled: CancelledFn,
    n_ctx: int = 512,
    max_chunks: int | None = None,
    threads: int | None = None,
    grace_s: float = 5.0,
    n_gpu_layers: int = 0,
) -> Path:
    """Compute an importance matrix for ``model`` from ``text`` (None: the bundled sample) in a child process and
    save it at ``out``. ``progress(chunk, n_chunks, "chunk 3/20")`` (speed and ETA are made where they are shown);
    cancel kills the child and leaves no file. Returns ``out``."""
    from desktop.process import run_in_child

    model, out = Path(model), Path(out)
    text_path = Path(text) if text is not None else default_calibration_text()
    if not model.is_file():
        raise UserError(f"The model {model} does not exist.")
    if not text_path.is_file():
        raise UserError(f"The calibration text {text_path} does not exist.")
    if n_ctx < MIN_BATCH_ROWS:
        raise UserError(f"A chunk of {n_ctx} tokens is too short; use at least {MIN_BATCH_ROWS}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(out)

    run_in_child(
        "desktop.quant.imatrix_child:run_job",
        {
            "model_path": str(model),
            "text_path": str(text_path),
            "out_path": str(partial),
            "n_ctx": int(n_ctx),
            "max_chunks": max_chunks,
            "threads": threads or default_threads(),
            "n_gpu_layers": int(n_gpu_layers),
        },
        progress=progress,
        cancelled=cancelled,
        cleanup=[partial],
        grace_s=grace_s,
        crash_next_step="Retry; if it crashes again, try a smaller chunk size.",
    )
    os.replace(partial, out)
    return out
