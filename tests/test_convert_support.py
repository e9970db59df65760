"""Helpers shared by the converter tests: assemble fixture checkpoints, convert them once per session, load them in
llama.cpp. (No tests here; pytest collects the module and finds none.)"""

from __future__ import annotations

import json
import lzma
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = ["llama3", "tinyllama", "mistral", "qwen2", "qwen3", "gemma3", "gemma3mm", "phi3"]


def assemble(name: str, dest: Path) -> Path:
    """A complete Hugging Face folder for fixture ``name``: its weights and config plus its tokenizer files
    (kept once per tokenizer, compressed, under fixtures/tokenizers/)."""
    src = FIXTURES / "models" / name
    folder = dest / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for f in src.iterdir():
        if not f.name.startswith("reference") and f.name != "tokenizer.txt":
            shutil.copy(f, folder / f.name)
    shared = src / "tokenizer.txt"
    if shared.exists():
        for f in (FIXTURES / "tokenizers" / shared.read_text().strip()).iterdir():
            if f.name.endswith(".xz"):
                (folder / f.name[:-3]).write_bytes(lzma.open(f).read())
            elif f.name not in ("LICENSE", "SOURCE.txt"):
                shutil.copy(f, folder / f.name)
    return folder


def reference(name: str) -> tuple[dict[str, Any], Any]:
    ref = json.loads((FIXTURES / "models" / name / "reference.json").read_text(encoding="utf-8"))
    return ref, np.load(FIXTURES / "models" / name / "reference_logits.npz")


def no_progress(done: float, total: float, message: str) -> None:
    pass


def never() -> bool:
    return False


class Converted:
    """Session cache: each (fixture, outtype) is assembled and converted once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folders: dict[str, Path] = {}
        self.outputs: dict[tuple[str, str], tuple[Path, dict[str, Any]]] = {}

    def folder(self, name: str) -> Path:
        if name not in self.folders:
            self.folders[name] = assemble(name, self.root / "src")
        return self.folders[name]

    def gguf(self, name: str, outtype: str) -> tuple[Path, dict[str, Any]]:
        from desktop.convert import convert

        key = (name, outtype)
        if key not in self.outputs:
            out = self.root / "out" / f"{name}-{outtype}.gguf"
            result = convert(self.folder(name), out, outtype, progress=no_progress, cancelled=never)
            self.outputs[key] = (out, result)
        return self.outputs[key]


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    return Converted(tmp_path_factory.mktemp("convert"))


def load_llama(path: Path, *, vocab_only: bool = False, n_ctx: int = 128) -> Any:
    """A llama.cpp model with an F32 KV cache (so the cache adds no rounding of its own) and without CPU
    repacking (``use_extra_bufts``; it crashes quantized models on AMX machines, see the shared notes)."""
    import llama_cpp
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params

    def no_repack() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    low.llama_model_default_params = no_repack
    try:
        return llama_cpp.Llama(
            str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=not vocab_only,
            vocab_only=vocab_only, type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, n_threads=2,
            verbose=False,
        )
    finally:
        low.llama_model_default_params = original


def llama_logits(path: Path, ids: list[int]) -> np.ndarray:
    llm = load_llama(path)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def max_relative_error(got: np.ndarray, expected: np.ndarray, absmax: np.ndarray) -> float:
    """Largest |difference| at each position, relative to that position's largest |logit|; the worst position."""
    return float((np.abs(got - expected).max(axis=1) / absmax).max())


def gguf_meta(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Metadata (long arrays skipped) and {tensor name: ggml type name}, without decoding the token list
    (gguf's GGUFReader takes tens of seconds on a 262k vocabulary)."""
    from desktop.gguf.reader import read_gguf

    info = read_gguf(path)
    return info.metadata, {t.name: t.ggml_type for t in info.tensors}


def gguf_tensor_bytes(path: Path, name: str) -> np.ndarray:
    """The stored bytes of one tensor of a GGUF file, found through the reader's tensor table."""
    from desktop.gguf.reader import read_gguf, tensor_data

    return np.array(tensor_data(read_gguf(path), name))


Check = Callable[[np.ndarray], None]
