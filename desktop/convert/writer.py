"""The conversion job: check the checkpoint, then stream every tensor into a GGUF file written atomically.

Tensors are read from memory-mapped safetensors and converted in row chunks, so peak memory is a few chunks
(tens of megabytes), not the model; only llama's q/k projections are permuted whole.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import gguf
import numpy as np

from desktop.convert.architectures import PlannedTensor, architecture_for
from desktop.convert.checkpoint import Checkpoint, inspect_checkpoint
from desktop.convert.metadata import write_general
from desktop.convert.vocab import load_vocab, write_vocab
from desktop.errors import Cancelled, UserError
from desktop.fileio import atomic_path
from desktop.jobs import CancelledFn, ProgressFn, format_bytes

log = logging.getLogger(__name__)

QT = gguf.GGMLQuantizationType
OUTTYPES: dict[str, tuple[QT, gguf.LlamaFileType]] = {
    "f32": (QT.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (QT.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (QT.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (QT.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
STORED_AS = {"F32": QT.F32, "F16": QT.F16, "BF16": QT.BF16}
CHUNK_ELEMENTS = 4 * 1024 * 1024
DISK_MARGIN = 64 * 1024 * 1024


class _Writer(gguf.GGUFWriter):
    """``GGUFWriter`` with a fast path for the long homogeneous arrays of a vocabulary (10^5 tokens, scores,
    types, merges), which the generic packer encodes one Python call per item; anything else goes to it."""

    def _pack_val(self, val: Any, vtype: gguf.GGUFValueType, add_vtype: bool,
                  sub_type: gguf.GGUFValueType | None = None) -> bytes:
        VT = gguf.GGUFValueType
        if (vtype == VT.ARRAY and isinstance(val, list) and len(val) > 256
                and self.endianess == gguf.GGUFEndian.LITTLE):
            body: bytes | None = None
            ltype = sub_type
            if all(isinstance(v, str) for v in val) and ltype in (None, VT.STRING):
                ltype = VT.STRING
                parts = []
                for v in val:
                    b = v.encode("utf-8")
                    parts.append(struct.pack("<Q", len(b)))
                    parts.append(b)
                body = b"".join(parts)
            elif all(type(v) is int for v in val) and ltype in (None, VT.INT32):
                ltype, body = VT.INT32, np.asarray(val, dtype="<i4").tobytes()
            elif all(type(v) is float for v in val) and ltype in (None, VT.FLOAT32):
                ltype, body = VT.FLOAT32, np.asarray(val, dtype="<f4").tobytes()
            if body is not None and ltype is not None:
                head = struct.pack("<I", vtype) if add_vtype else b""
                return head + struct.pack("<IQ", ltype, len(val)) + body
        return super()._pack_val(val, vtype, add_vtype, sub_type)


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def tensor_type(t: PlannedTensor, outtype: QT) -> QT:
    if t.keep_f32 or len(t.shape) < 2:
        return QT.F32
    if outtype == QT.Q8_0 and t.shape[-1] % 32 != 0:
        return QT.F16  # Q8_0 needs rows in whole blocks of 32
    return outtype


def type_nbytes(shape: tuple[int, ...], qtype: QT) -> int:
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape, dtype=np.int64)) // block * size


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest, ties to even), keeping NaNs NaN; returned as uint16."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return rounded


def encode(rows: np.ndarray, qtype: QT) -> np.ndarray:
    if qtype == QT.F32:
        return np.ascontiguousarray(rows, dtype=np.float32)
    if qtype == QT.F16:
        return rows.astype(np.float16)
    if qtype == QT.BF16:
        return f32_to_bf16(rows)
    return gguf.quants.quantize(np.ascontiguousarray(rows, dtype=np.float32), qtype)


class TensorStream:
    """Looks like a numpy array to ``GGUFWriter.write_tensor_data`` (``nbytes``, ``tofile``) but writes chunks."""

    def __init__(self, t: PlannedTensor, qtype: QT, pool: ThreadPoolExecutor, cancelled: CancelledFn) -> None:
        self.t, self.qtype, self.pool, self.cancelled = t, qtype, pool, cancelled
        self.nbytes = type_nbytes(t.shape, qtype)

    def _chunks(self) -> Iterator[tuple[int, int]]:
        rows = self.t.shape[0] if self.t.shape else 1
        per_row = max(1, int(np.prod(self.t.shape[1:], dtype=np.int64)))
        step = rows if not self.t.row_chunkable else max(1, CHUNK_ELEMENTS // per_row)
        for start in range(0, rows, step):
            yield start, min(rows, start + step)

    def _raw_copy(self) -> bool:
        ref = self.t.source
        return bool(self.t.passthrough and ref is not None and STORED_AS.get(ref.dtype) == self.qtype)

    def _produce(self, start: int, stop: int) -> np.ndarray:
        if self._raw_copy():
            assert self.t.source is not None
            raw = self.t.source.raw()
            return np.ascontiguousarray(raw.reshape(raw.shape[0], -1)[start:stop])
        return encode(self.t.load_rows(start, stop), self.qtype)

    def tofile(self, fout: BinaryIO) -> None:
        written = 0
        pending = []
        for start, stop in self._chunks():
            pending.append(self.pool.submit(self._produce, start, stop))
            if len(pending) >= 3:
                written += _write(fout, pending.pop(0).result())
                if self.cancelled():
                    raise Cancelled()
        for fut in pending:
            written += _write(fout, fut.result())
        if written != self.nbytes:  # a bug, never a user's problem
            raise AssertionError(f"{self.t.name}: wrote {written} bytes, expected {self.nbytes}")


def _write(fout: BinaryIO, arr: np.ndarray) -> int:
    fout.write(arr.tobytes() if not arr.flags.c_contiguous else arr.data.cast("B"))
    return int(arr.nbytes)


def _n_vocab_rows(ckpt: Checkpoint) -> int | None:
    for name, ref in ckpt.tensors.items():
        if name.endswith("embed_tokens.weight") and "vision" not in name and len(ref.shape) == 2:
            return ref.shape[0]
    return None


@dataclass(frozen=True)
class OutputTensor:
    """A tensor of the GGUF the converter would write: its GGUF name, numpy-order shape and ggml type name."""

    name: str
    shape: tuple[int, ...]
    ggml_type: str

    @property
    def n_bytes(self) -> int:
        return type_nbytes(self.shape, QT[self.ggml_type])


def _base_type(outtype: str) -> QT:
    if outtype.lower() not in OUTTYPES:
        raise UserError(f"{outtype} is not an output type the converter writes ({', '.join(OUTTYPES)}).",
                        "Pick one of those; other types come from quantizing the result.", kind="bad_outtype")
    return OUTTYPES[outtype.lower()][0]


def output_tensors(ckpt: Checkpoint, outtype: str = "f16") -> list[OutputTensor]:
    """The tensors :func:`convert` writes for ``ckpt`` (a folder's or :func:`remote_checkpoint`'s): the tensor
    map, what is dropped, what stays F32, and the refusals of tensors it cannot place. Reads no weights."""
    base = _base_type(outtype)
    rows = _n_vocab_rows(ckpt) or int(ckpt.hparams.get("vocab_size") or 0)
    plan = architecture_for(ckpt, rows).plan()
    return [OutputTensor(t.name, tuple(t.shape), tensor_type(t, base).name) for t in plan]


def predict_size(src_dir: Path | str | Checkpoint, outtype: str = "f16") -> int:
    """About how many bytes :func:`convert` will write (tensors only, without the vocabulary), after the same checks
    it runs first; raises :class:`UserError` for a checkpoint it would refuse. Reads no weights and no tokenizer."""
    _base_type(outtype)
    ckpt = src_dir if isinstance(src_dir, Checkpoint) else inspect_checkpoint(src_dir)
    return sum(t.n_bytes for t in output_tensors(ckpt, outtype))


def convert(
    src_dir: Path | str,
    out_path: Path | str,
    outtype: str = "f16",
    *,
    progress: ProgressFn,
    cancelled: CancelledFn,
) -> dict[str, Any]:
    """Convert a Hugging Face checkpoint folder to one GGUF file; see :mod:`desktop.convert`."""
    started = time.monotonic()
    src, out = Path(src_dir), Path(out_path)
    _base_type(outtype)
    base_type, file_type = OUTTYPES[outtype.lower()]
    progress(0, 0, "Checking the checkpoint")
    ckpt = inspect_checkpoint(src)
    rows = _n_vocab_rows(ckpt)
    gemma = ckpt.architecture.startswith("Gemma3")
    vocab = load_vocab(src, None if gemma else (rows or ckpt.hparams.get("vocab_size")))
    if rows is not None and len(vocab) > rows:
        vocab.drop_added_beyond(rows)
    arch = architecture_for(ckpt, len(vocab))
    plan = arch.plan()
    embd = next((t for t in plan if t.name == "token_embd.weight"), None)
    if embd is None or embd.shape[0] != len(vocab):
        raise UserError("The checkpoint's embedding does not match its tokenizer.",
                        "The tokenizer files may belong to another model; download them again.",
                        kind="corrupt_checkpoint")
    types = {t.name: tensor_type(t, base_type) for t in plan}
    estimate = sum(type_nbytes(t.shape, types[t.name]) for t in plan) + sum(len(s) + 24 for s in vocab.tokens)
    out.parent.mkdir(parents=True, exist_ok=True)
    free = free_bytes(out.parent)
    if free < estimate + DISK_MARGIN:
        raise UserError(f"There is not enough disk space for the GGUF file: it needs about {format_bytes(estimate)} "
                        f"and {format_bytes(free)} is free.", "Free some space, or choose another folder.",
                        kind="disk_full")
    n_params = sum(int(np.prod(t.shape)) for t in plan if t.source is not None)
    total = len(plan)
    with atomic_path(out) as tmp:
        writer = _Writer(tmp, arch.arch_name)
        try:
            writer.add_type(gguf.GGUFType.MODEL)
            general = write_general(writer, src, ckpt.config, n_params)
            arch.write_metadata(writer)
            writer.add_file_type(file_type)
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            write_vocab(writer, vocab)
            for t in plan:
                writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), type_nbytes(t.shape, types[t.name]),
                                       raw_dtype=types[t.name])
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
                for i, t in enumerate(plan):
                    if cancelled():
                        raise Cancelled()
                    progress(i, total, f"{t.name} → {types[t.name].name.lower()}")
                    writer.write_tensor_data(TensorStream(t, types[t.name], pool, cancelled))  # type: ignore[arg-type]
            progress(total, total, "Finishing")
        finally:
            writer.close()
    size = out.stat().st_size
    log.info("converted %s to %s (%s) in %.1f s", src, out, format_bytes(size), time.monotonic() - started)
    return {
        "path": str(out), "size": size, "outtype": outtype.lower(), "architecture": arch.arch_name,
        "tensors": total, "parameters": n_params, "seconds": time.monotonic() - started, **general,
    }
