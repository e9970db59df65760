"""The one GGUF reader: local files and remote headers through the same bounded parser, cached by
(path, size, mtime); hostile headers end in one sentence, within a small time and memory budget."""

from __future__ import annotations

import os
import struct
import tracemalloc
from pathlib import Path

import pytest
from gguf_bytes import (ARRAY, F32, STRING, U32, gguf, kv, kv_array, kv_str, kv_u32, llama_header, string,
                        tensor)
from mockhub import gguf_files

from desktop.errors import UserError
from desktop.gguf.reader import read_gguf
from desktop.gguf.remote import read_gguf_header
from desktop.quant.sizing import tensors_from_gguf

MB = 1024 * 1024


def write(tmp_path: Path, data: bytes, name: str = "m.gguf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def refused(path: Path, *words: str) -> UserError:
    with pytest.raises(UserError) as info:
        read_gguf(path)
    error = info.value
    assert error.message.endswith(".") and error.next_step and "\n" not in str(error), error
    for word in words:
        assert word in error.message, error.message
    return error


def test_a_300_mb_string_is_skipped_not_decoded(tmp_path: Path) -> None:
    """13.8: a metadata string is decoded only up to a cap; the old reader decoded 300 MB (917 MB of memory)."""
    huge = 300 * MB
    path = tmp_path / "huge.gguf"
    with open(path, "wb") as f:  # a sparse file: the 300 MB are a hole on disk
        f.write(b"GGUF" + struct.pack("<IQQ", 3, 0, 4) + kv_str("general.architecture", "llama")
                + kv_u32("llama.block_count", 2) + string("general.description") + struct.pack("<IQ", STRING, huge))
        f.seek(huge, os.SEEK_CUR)
        f.write(kv_str("general.name", "after the hole"))
    tracemalloc.start()
    try:
        info = read_gguf(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.metadata["general.description"] is None and info.name == "after the hole"
    assert peak < 20 * MB, peak


@pytest.mark.parametrize(
    ("tensors", "words"),
    [
        ([tensor("t", (32, 1, 1, 1, 1))], "5 dimensions"),
        ([tensor("t", (32,) * 8, n_dims=100_000)], "100000 dimensions"),  # the 45 s file of the issue, in short
        ([tensor("t", (1 << 62, 1 << 62))], "too large"),
        ([tensor("t", (1 << 63, 1))], "too large"),
        ([tensor("t", (33, 2), type_id=2)], "whole Q4_0 blocks"),
        ([tensor("t", (32,), type_id=4)], "unknown type 4"),
    ],
)
def test_tensor_tables_no_model_has_are_one_sentence(tmp_path: Path, tensors: list[bytes], words: str) -> None:
    path = write(tmp_path, gguf([kv_str("general.architecture", "llama")], tensors, data=bytes(64)))
    refused(path, "not a readable GGUF", words)


def test_nesting_is_bounded(tmp_path: Path) -> None:
    """13.8: arrays of arrays recursed without limit (a deep nest ended in RecursionError, a traceback)."""
    deep = struct.pack("<IQ", U32, 0)
    for _ in range(5000):
        deep = struct.pack("<IQ", ARRAY, 1) + deep
    refused(write(tmp_path, gguf([kv("x", ARRAY, deep)])), "nests arrays deeper than 2")
    pair = kv_array("ok", ARRAY, [struct.pack("<IQ", U32, 2) + struct.pack("<II", 1, 2)])
    assert read_gguf(write(tmp_path, gguf([pair]), "pair.gguf")).metadata["ok"] == [[1, 2]]


@pytest.mark.parametrize(
    ("key", "field", "words"),
    [
        ("llama.context_length", kv_str("llama.context_length", "lots"), "context_length is a text"),
        ("llama.context_length", kv("llama.context_length", F32, struct.pack("<f", float("inf"))),
         "context_length is inf"),
        ("llama.context_length", kv("llama.context_length", F32, struct.pack("<f", 4096.5)), "not a whole number"),
        ("llama.block_count", kv_u32("llama.block_count", 20_000), "block_count is 20000"),
        ("llama.attention.head_count",
         kv_array("llama.attention.head_count", U32, [struct.pack("<I", 1 << 30)] * 2), "head_count is 1073741824"),
    ],
)
def test_numbers_of_the_wrong_type_or_size_are_one_sentence(tmp_path: Path, key: str, field: bytes,
                                                             words: str) -> None:
    """13.8: a bad ``context_length`` type escaped as an internal error (ValueError, OverflowError)."""
    path = write(tmp_path, llama_header(**{key: field}))
    error = refused(path, "not a usable GGUF", words)
    assert error.kind == "bad_model"


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (gguf([], n_kv=1 << 40), "more than the file can hold"),
        (gguf([], n_tensors=1 << 30), "more than the file can hold"),
        (gguf([kv("x", 13, b"")]), "unknown type 13"),
        (gguf([kv("x", ARRAY, struct.pack("<IQ", 77, 1))]), "unknown type 77"),
        (gguf([kv_u32("a", 1), kv_u32("a", 2)]), "appears twice"),
        (gguf([kv("x", STRING, struct.pack("<Q", 1 << 62))]), "cut short"),
        (gguf([kv_u32("general.alignment", 24)], [tensor("t", (32,))]), "power of two"),
        (b"GGUF" + struct.pack("<I", 7) + bytes(16), "version 7"),
        (b"GGML" + bytes(20), "signature"),
        (b"", "empty"),
    ],
)
def test_broken_headers_are_one_sentence(tmp_path: Path, data: bytes, words: str) -> None:
    refused(write(tmp_path, data), "not a readable GGUF", words)


def test_cached_by_path_size_and_mtime(tmp_path: Path) -> None:
    path = write(tmp_path, llama_header(n_layer=2))
    first = read_gguf(path)
    assert read_gguf(path) is first  # one read, shared
    path.write_bytes(llama_header(n_layer=3))
    os.utime(path, ns=(first_mtime := path.stat().st_mtime_ns, first_mtime + 10**9))
    again = read_gguf(path)
    assert again is not first and again.block_count == 3


def test_local_and_remote_headers_are_the_same_parse(tmp_path: Path) -> None:
    path = gguf_files(tmp_path, "tiny-Q8_0", "Q8_0", vocab=3000)["tiny-Q8_0.gguf"]
    data = path.read_bytes()
    requests: list[tuple[int, int]] = []

    def fetch(start: int, end: int) -> bytes:
        requests.append((start, end))
        return data[start:end]

    remote = read_gguf_header(fetch, len(data), first=4096)
    local = read_gguf(path)
    assert remote.metadata == local.metadata and remote.tensors == local.tensors
    assert remote.n_vocab == local.n_vocab == 3000 and remote.head_counts() == local.head_counts()
    assert remote.data_offset == local.data_offset and remote.kv_end - 24 == local.kv_bytes
    assert requests[0] == (0, 4096) and all(b == a for (_, a), (b, _) in zip(requests, requests[1:]))
    assert requests[-1][1] < len(data)  # the weights were never fetched
    # With too little allowed, the key/values read so far come back (partial), or nothing does.
    partial = read_gguf_header(fetch, len(data), first=512, limit=512, partial=True)
    assert partial.tensors is None and partial.metadata.get("general.architecture") == "llama"


def test_per_layer_head_counts_are_read_one_way(tmp_path: Path) -> None:
    """Per-layer head counts (arrays) are one tuple per layer for every consumer: the quantizer's GQA factor uses
    layer 0 as llama.cpp's does (it took the first element), the planner each layer's own."""
    heads = kv_array("llama.attention.head_count", U32, [struct.pack("<I", 8)] * 4)
    kv_heads = kv_array("llama.attention.head_count_kv", U32, [struct.pack("<I", v) for v in (2, 8, 0, 4)])
    path = write(tmp_path, llama_header(n_layer=4, extra=[kv_heads], **{"llama.attention.head_count": heads}))
    info = read_gguf(path)
    assert info.head_counts() == ((8, 8, 8, 8), (2, 8, 0, 4))
    assert tensors_from_gguf(path).hparams["n_gqa"] == 4
    scalar = write(tmp_path, llama_header(n_layer=3), "scalar.gguf")
    assert read_gguf(scalar).head_counts() == ((4, 4, 4), (4, 4, 4))  # key/value heads default to the heads
