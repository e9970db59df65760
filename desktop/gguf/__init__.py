"""GGUF headers: the one reader, for local files (memory-mapped, cached by path, size and mtime) and remote headers
(HTTP byte ranges), through the one bounded parser (:mod:`desktop.gguf.parser`); the bounds every number from a
file or a server is checked against (:mod:`desktop.gguf.limits`).
"""

from __future__ import annotations

from desktop.gguf.parser import BadHeader, Header, TensorInfo, head_counts
from desktop.gguf.reader import GGUFInfo, read_gguf, tensor_data
from desktop.gguf.remote import group_gguf_files, quant_from_name, read_gguf_header

__all__ = ["BadHeader", "GGUFInfo", "Header", "TensorInfo", "group_gguf_files", "head_counts", "quant_from_name",
           "read_gguf", "read_gguf_header", "tensor_data"]
