"""Hand-made GGUF headers for tests of the reader: any field can hold a value a real writer would never write."""

from __future__ import annotations

import struct
from collections.abc import Sequence

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)


def string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return string(key) + struct.pack("<I", vtype) + payload


def kv_u32(key: str, value: int) -> bytes:
    return kv(key, U32, struct.pack("<I", value))


def kv_str(key: str, value: str) -> bytes:
    return kv(key, STRING, string(value))


def kv_array(key: str, item_type: int, items: Sequence[bytes]) -> bytes:
    return kv(key, ARRAY, struct.pack("<IQ", item_type, len(items)) + b"".join(items))


def tensor(name: str, shape: Sequence[int], type_id: int = 0, offset: int = 0, n_dims: int | None = None) -> bytes:
    dims = len(shape) if n_dims is None else n_dims
    return string(name) + struct.pack("<I", dims) + b"".join(struct.pack("<Q", d) for d in shape) + \
        struct.pack("<IQ", type_id, offset)


def gguf(kvs: Sequence[bytes], tensors: Sequence[bytes] = (), *, n_kv: int | None = None,
         n_tensors: int | None = None, version: int = 3, data: bytes = b"") -> bytes:
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    body = head + b"".join(kvs) + b"".join(tensors)
    return body + bytes(-len(body) % 32) + data


def llama_header(n_layer: int = 2, extra: Sequence[bytes] = (), **overrides: bytes) -> bytes:
    """A small llama header: architecture, layers, heads, context; one F32 tensor of 64 floats."""
    fields = {
        "general.architecture": kv_str("general.architecture", "llama"),
        "llama.block_count": kv_u32("llama.block_count", n_layer),
        "llama.context_length": kv_u32("llama.context_length", 4096),
        "llama.embedding_length": kv_u32("llama.embedding_length", 64),
        "llama.attention.head_count": kv_u32("llama.attention.head_count", 4),
        **overrides,
    }
    return gguf([*fields.values(), *extra], [tensor("token_embd.weight", (8, 8))], data=bytes(256))
