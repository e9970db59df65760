"""The child side of computing an importance matrix: llama.cpp's eval callback (through ctypes) sums the squared
activations of every block weight's matrix multiplications over the calibration chunks, as ``llama-imatrix`` does.

:func:`run_job` runs in the child process :func:`desktop.quant.imatrix.compute_imatrix` starts.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

from desktop.errors import Cancelled, UserError
from desktop.jobs import CancelledFn, ProgressFn
from desktop.quant.imatrix import MIN_BATCH_ROWS, ImatrixData, write_gguf_file

__all__ = ["run_job"]


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
        from desktop.llama.ggml import ggml_base

        self.lib = ggml_base()  # the engine's copy
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
    write_gguf_file(Path(out_path), data)
    return {"entries": len(data), "chunks": n_chunks, "tokens": n_chunks * n_ctx}
