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

Collection runs in a child process (:func:`compute_imatrix`); :func:`run_job` is the child's side.
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from desktop.errors import Cancelled, UserError
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
    "run_job",
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
        _write_gguf(tmp, data)
        os.replace(tmp, final)
    except BaseException:
        remove_quietly(tmp)
        raise
    return final


def _write_gguf(path: Path, data: ImatrixData) -> None:
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
        "desktop.quant.imatrix:run_job",
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


# --------------------------------------------------------------------------------------------------------------
# Child side: llama.cpp through ctypes


class _GgmlTensor(ctypes.Structure):
    """A mirror of ``struct ggml_tensor`` (ggml/include/ggml.h of the vendored llama.cpp; 336 bytes on 64-bit)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


GGML_TYPE_F32 = 0
GGML_TYPE_I32 = 26


class _Ggml:
    """The few ggml functions the collector needs, from libggml-base."""

    def __init__(self) -> None:
        from llama_cpp import _ctypes_extensions

        from desktop.llama.engines import loaded_library_dir

        self.lib = _ctypes_extensions.load_shared_library("ggml-base", loaded_library_dir())  # the engine's copy
        self.lib.ggml_op_name.restype = ctypes.c_char_p
        self.lib.ggml_op_name.argtypes = [ctypes.c_int]
        self.lib.ggml_backend_buffer_is_host.restype = ctypes.c_bool
        self.lib.ggml_backend_buffer_is_host.argtypes = [ctypes.c_void_p]
        self.lib.ggml_backend_tensor_get.restype = None
        self.lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
        self.lib.ggml_nbytes.restype = ctypes.c_size_t
        self.lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
        self.op_mul_mat, self.op_mul_mat_id = self._find_ops()

    def _find_ops(self) -> tuple[int, int]:
        found: dict[str, int] = {}
        for op in range(1, 200):  # ggml_op_name does not check bounds: stop as soon as both are known
            name = self.lib.ggml_op_name(op)
            if name in (b"MUL_MAT", b"MUL_MAT_ID"):
                found[name.decode()] = op
            if len(found) == 2:
                return found["MUL_MAT"], found["MUL_MAT_ID"]
        raise RuntimeError("this llama.cpp has no MUL_MAT operation")

    def host_array(self, t: _GgmlTensor, ptr: int, dtype: Any) -> np.ndarray:
        """The tensor's data as a 4-D numpy array ``[ne3, ne2, ne1, ne0]`` in host memory (copied off a GPU)."""
        nbytes = int(self.lib.ggml_nbytes(ptr))
        if t.buffer is None or self.lib.ggml_backend_buffer_is_host(t.buffer):
            raw = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(t.data))
        else:
            raw = np.empty(nbytes, dtype=np.uint8)
            self.lib.ggml_backend_tensor_get(ptr, raw.ctypes.data, 0, nbytes)
        shape = (t.ne[3], t.ne[2], t.ne[1], t.ne[0])
        strides = (t.nb[3], t.nb[2], t.nb[1], t.nb[0])
        return _strided(raw, shape, strides, dtype)


def _strided(raw: np.ndarray, shape: tuple[int, ...], strides: tuple[int, ...], dtype: Any) -> np.ndarray:
    itemsize = np.dtype(dtype).itemsize
    base = np.frombuffer(raw, dtype=np.uint8)
    arr = np.lib.stride_tricks.as_strided(base, shape=shape + (itemsize,), strides=strides + (1,), writeable=False)
    return np.ascontiguousarray(arr).view(dtype).reshape(shape)


def _weight_name(raw: bytes) -> str:
    """A weight's GGUF name; backends decorate copies as ``CUDA0#blk.0.attn_q.weight#0``."""
    name = raw.decode(errors="replace")
    if "#" in name:
        parts = name.split("#")
        if len(parts) >= 2:
            return parts[1]
    return name


class _Collector:
    """The eval callback: answers which nodes it wants, then accumulates squared activations."""

    def __init__(self, ggml: _Ggml) -> None:
        self.ggml = ggml
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.error: BaseException | None = None

    def __call__(self, t_ptr: int, ask: bool, _user_data: int) -> bool:
        try:
            t = _GgmlTensor.from_address(t_ptr)
            if ask:
                return self._wants(t)
            self._collect(t)
            return True
        except BaseException as exc:  # noqa: BLE001 - an exception must never cross into C
            if self.error is None:
                self.error = exc
            return False

    def _wants(self, t: _GgmlTensor) -> bool:
        if t.op == self.ggml.op_mul_mat_id:
            return True
        if t.op != self.ggml.op_mul_mat or not t.src[0] or not t.src[1]:
            return False
        src1 = _GgmlTensor.from_address(t.src[1])
        if src1.ne[1] < MIN_BATCH_ROWS or src1.type != GGML_TYPE_F32:
            return False
        return _weight_name(_GgmlTensor.from_address(t.src[0]).name).startswith("blk.")

    def _collect(self, t: _GgmlTensor) -> None:
        src0 = _GgmlTensor.from_address(t.src[0])
        src1 = _GgmlTensor.from_address(t.src[1])
        name = _weight_name(src0.name)
        x = self.ggml.host_array(src1, t.src[1], np.float32).astype(np.float64)  # [ne3, ne2, ne1, ne0]
        ne0 = int(src1.ne[0])
        if t.op == self.ggml.op_mul_mat_id:
            n_as = int(src0.ne[2])
            ids_t = _GgmlTensor.from_address(t.src[2])
            ids = self.ggml.host_array(ids_t, t.src[2], np.int32)[0, 0]  # [n_tokens, n_ids]
            sums, counts = self._entry(name, n_as, ne0)
            n_tokens, n_ids = ids.shape
            rows = x[0]  # [n_tokens, ne1, ne0]
            picked = rows[np.arange(n_tokens)[:, None], np.arange(n_ids)[None, :] % rows.shape[1]]
            experts = ids.reshape(-1)
            np.add.at(sums, experts, np.square(picked.reshape(-1, ne0)))
            np.add.at(counts, experts, 1.0)
        else:
            ne2, ne3 = int(src0.ne[2]), int(src0.ne[3])
            n_mat = ne2 * ne3
            sums, counts = self._entry(name, n_mat, ne0)
            sq = np.square(x).sum(axis=2)  # [ne3, ne2, ne0]
            for i3 in range(sq.shape[0]):
                for i2 in range(sq.shape[1]):
                    sums[(i3 % ne3) * ne2 + (i2 % ne2)] += sq[i3, i2]
            counts += x.shape[0] * x.shape[1] * x.shape[2] / n_mat
        if not np.all(np.isfinite(sums)):
            raise UserError(f"The model produced non-finite activations in {name}; it cannot be calibrated.")

    def _entry(self, name: str, n_mat: int, ne0: int) -> tuple[np.ndarray, np.ndarray]:
        if name not in self.sums:
            self.sums[name] = np.zeros((n_mat, ne0), dtype=np.float64)
            self.counts[name] = np.zeros(n_mat, dtype=np.float64)
        sums = self.sums[name]
        if sums.shape != (n_mat, ne0):
            raise RuntimeError(f"inconsistent activation size for {name}: {sums.shape} vs {(n_mat, ne0)}")
        return sums, self.counts[name]


def run_job(
    *,
    progress: ProgressFn,
    cancelled: CancelledFn,
    model_path: str,
    text_path: str,
    out_path: str,
    n_ctx: int = 512,
    max_chunks: int | None = None,
    threads: int = 1,
    n_gpu_layers: int = 0,
) -> dict[str, Any]:
    """Child side of :func:`compute_imatrix`: collect and save; returns a summary."""
    import llama_cpp

    from desktop.llama.log import llama_log
    from desktop.llama.session import ContextOptions, LlamaSession

    llama_log.install()
    text = Path(text_path).read_text(encoding="utf-8", errors="replace")
    collector = _Collector(_Ggml())
    c_callback = llama_cpp.ggml_backend_sched_eval_callback(collector)  # keep a reference while the context lives
    context = ContextOptions(n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, threads=max(1, threads), perf=False,
                             cb_eval=c_callback)
    with LlamaSession(model_path, context, n_gpu_layers=n_gpu_layers) as session:
        tokens = session.tokenize(text)
        n_chunks = len(tokens) // n_ctx
        if max_chunks is not None:
            n_chunks = min(n_chunks, max_chunks)
        if n_chunks < 1:
            raise UserError(
                f"The calibration text is too short: {len(tokens)} tokens, and one chunk needs {n_ctx}.",
                "Use a longer text or a smaller chunk size.",
            )
        progress(0, n_chunks, f"chunk 0/{n_chunks}")
        for chunk in range(n_chunks):
            if cancelled():
                raise Cancelled()
            piece = tokens[chunk * n_ctx : (chunk + 1) * n_ctx]
            if session.bos >= 0:
                piece[0] = session.bos
            session.clear()
            session.fill(piece, 0, 0)  # all logits, so the last layer runs for every token
            try:
                session.decode()
            except UserError:
                if collector.error is not None:
                    raise collector.error from None
                raise
            if collector.error is not None:
                raise collector.error
            progress(chunk + 1, n_chunks, f"chunk {chunk + 1}/{n_chunks}")
    del c_callback
    if not collector.sums:
        raise UserError("llama.cpp reported no matrix multiplications to calibrate; this model is not supported.")
    data = ImatrixData(
        sums={k: v.astype(np.float32) for k, v in collector.sums.items()},
        counts={k: v.astype(np.float32) for k, v in collector.counts.items()},
        datasets=[Path(text_path).name],
        chunk_count=n_chunks,
        chunk_size=n_ctx,
    )
    _write_gguf(Path(out_path), data)
    return {"entries": len(data), "chunks": n_chunks, "tokens": n_chunks * n_ctx}
