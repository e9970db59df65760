"""The child side of quantizing: llama.cpp's ``llama_model_quantize`` with per-tensor progress read from its log.

:func:`run_job` runs in a child process (:func:`desktop.process.run_in_child`, started by
:func:`desktop.quant.quantize.quantize_one`). It installs a llama.cpp log callback and turns its per-tensor lines
(``[  12/ 201] blk.3.ffn_down.weight - [ 2048, 640, 1, 1], type = f16, converting to q4_K .. size = ...``) into
``progress(elements_done, elements_total, "[12/201] blk.3.ffn_down.weight → q4_K")``.
"""

from __future__ import annotations

import ctypes
import re
import shutil
from pathlib import Path
from typing import Any

from desktop.errors import UserError
from desktop.fileio import remove_quietly
from desktop.jobs import CancelledFn, ProgressFn
from desktop.quant import types as quant_types

__all__ = ["TensorLineParser", "build_params", "run_job"]


_START = re.compile(r"\[\s*(\d+)\s*/\s*(\d+)\]\s+(\S+)\s+-\s+\[([^\]]*)\],\s+type\s+=\s+(\w+),")
_CONVERTING = re.compile(r"converting to (\w+)")


class TensorLineParser:
    """Turns llama.cpp's quantize log text (arriving in pieces) into per-tensor progress calls, counted in tensor
    elements (the shape in each line) out of ``n_elements`` (the source's; 0: count tensors instead)."""

    def __init__(self, progress: ProgressFn, n_elements: int = 0) -> None:
        self.progress = progress
        self.n_elements = n_elements
        self.elements_done = 0
        self.buffer = ""
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.tensors_done = 0

    def feed(self, level: int, text: str) -> None:
        if level >= 4:
            stripped = text.strip(" =\n")
            if stripped:
                self.errors.append(stripped)
        self.buffer += text
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            self._line(line)

    def _line(self, line: str) -> None:
        start = _START.search(line)
        if start is None:
            if "falling back to" in line or "applying manual override" in line:
                self.warnings.append(line.strip())
            return
        index, total, name, src_type = int(start.group(1)), int(start.group(2)), start.group(3), start.group(5)
        converting = _CONVERTING.search(line, start.end())
        target = converting.group(1) if converting else f"{src_type} (kept)"
        self.tensors_done = index
        note = f"[{index}/{total}] {name} → {target}"
        if self.n_elements <= 0:
            self.progress(index, total, note)
            return
        elements = 1
        for dim in start.group(4).split(","):
            dim = dim.strip()
            elements *= int(dim) if dim.isdigit() else 1
        self.elements_done = min(self.n_elements, self.elements_done + elements)
        self.progress(self.elements_done, self.n_elements, note)


def _imatrix_array(path: str, keep: list[Any]) -> Any:
    import llama_cpp
    import numpy as np

    from desktop.quant.imatrix import load_imatrix

    data = load_imatrix(path)
    normalized = data.normalized()
    arr = (llama_cpp.llama_model_imatrix_data * (len(normalized) + 1))()
    for i, (name, values) in enumerate(sorted(normalized.items())):
        values = np.ascontiguousarray(values, dtype=np.float32)
        encoded = name.encode()
        keep.extend((values, encoded))
        arr[i].name = encoded
        arr[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = values.size
    arr[len(normalized)].name = None
    keep.append(arr)
    return arr, data


def _kv_overrides(pairs: list[tuple[str, Any]], keep: list[Any]) -> Any:
    import llama_cpp

    arr = (llama_cpp.llama_model_kv_override * (len(pairs) + 1))()
    for i, (key, value) in enumerate(pairs):
        arr[i].key = key.encode()[:127]
        if isinstance(value, str):
            arr[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            arr[i].value.val_str = value.encode()[:127]
        else:
            arr[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            arr[i].value.val_i64 = int(value)
    arr[len(pairs)].key = b""
    keep.append(arr)
    return arr


def _tensor_overrides(overrides: list[list[str]], keep: list[Any]) -> Any:
    import llama_cpp

    arr = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
    for i, (pattern, type_name) in enumerate(overrides):
        encoded = pattern.encode()
        keep.append(encoded)
        arr[i].pattern = encoded
        arr[i].type = quant_types.ggml_type_id(type_name)
    arr[len(overrides)].pattern = None
    keep.append(arr)
    return arr


def build_params(type_name: str, options: dict[str, Any], keep: list[Any]) -> Any:
    """``llama_model_quantize_params`` for a type and options; ``keep`` receives what must outlive the call."""
    import llama_cpp

    quant = quant_types.by_name(type_name)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = quant.ftype
    params.nthread = int(options.get("threads") or 0)
    params.allow_requantize = bool(options.get("allow_requantize"))
    params.pure = bool(options.get("pure"))
    if options.get("output_type"):
        params.output_tensor_type = quant_types.ggml_type_id(options["output_type"])
    if options.get("embedding_type"):
        params.token_embedding_type = quant_types.ggml_type_id(options["embedding_type"])
    if options.get("overrides"):
        params.tt_overrides = _tensor_overrides(options["overrides"], keep)
    if options.get("imatrix"):
        arr, data = _imatrix_array(options["imatrix"], keep)
        params.imatrix = arr
        params.kv_overrides = _kv_overrides(
            [
                ("quantize.imatrix.file", Path(options["imatrix"]).name),
                ("quantize.imatrix.dataset", data.datasets[0] if data.datasets else ""),
                ("quantize.imatrix.entries_count", len(data)),
                ("quantize.imatrix.chunks_count", data.chunk_count),
            ],
            keep,
        )
    return params


def _failure(errors: list[str], out_path: str) -> UserError:
    """One sentence for what llama.cpp logged before failing."""
    text = " ".join(errors)
    if "requires an imatrix" in text or "importance matrix" in text:
        return UserError("This type needs an importance matrix, and none was given.",
                         "Add a calibration text or choose another type.", kind="needs_imatrix")
    if "requantizing from type" in text:
        return UserError("The source is already quantized.", "Tick 'allow requantize' or use the F16 original.",
                         kind="requantize")
    folder = Path(out_path).parent
    try:
        if shutil.disk_usage(folder).free < 64 * 1024 * 1024 or "No space" in text:
            return UserError(f"The disk holding {folder} is full.", "Free some space and retry.", kind="disk_full")
    except OSError:
        pass
    if "iostream error" in text or "basic_ios" in text:
        return UserError(f"Writing to {folder} failed (the disk may be full or read-only).",
                         "Free some space or choose another folder.", kind="disk_full")
    if "unknown model architecture" in text or "gguf_init" in text or "failed to load" in text or "key not found" in text:
        return UserError("llama.cpp cannot read this source model (an unsupported architecture or a damaged file).",
                         "Convert it again with QuantDesk, or use another GGUF.", kind="unsupported_source")
    detail = errors[-1] if errors else "no message"
    return UserError(f"llama.cpp could not quantize this model ({detail}).")


def run_job(
    *,
    progress: ProgressFn,
    cancelled: CancelledFn,
    source: str,
    out_path: str,
    type_name: str,
    options: dict[str, Any],
    n_elements: int = 0,
) -> dict[str, Any]:
    """Child side: quantize ``source`` to ``out_path`` with per-tensor progress from llama.cpp's log."""
    import llama_cpp

    del cancelled  # llama_model_quantize cannot be interrupted: the parent kills this process instead
    from desktop.llama.log import llama_log

    parser = TensorLineParser(progress, n_elements)
    llama_log.install()
    keep: list[Any] = []
    params = build_params(type_name, options, keep)
    with llama_log.listen(parser.feed):
        rc = llama_cpp.llama_model_quantize(source.encode(), out_path.encode(), ctypes.byref(params))
    if rc != 0:
        remove_quietly(out_path)
        raise _failure(parser.errors, out_path)
    del keep
    return {"warnings": parser.warnings, "tensors": parser.tensors_done}
