"""Per-architecture knowledge: the GGUF hyperparameter keys, tensor names and tensor transforms llama.cpp expects.

Transformers writes rope settings either as ``rope_theta`` + ``rope_scaling`` (4.x) or as ``rope_parameters``
(5.x, per attention type for Gemma 3); both are read.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gguf
import numpy as np

from desktop.convert.checkpoint import Checkpoint
from desktop.convert.safetensors import TensorRef
from desktop.errors import UserError

GGUF_ARCH = {
    "LlamaForCausalLM": gguf.MODEL_ARCH.LLAMA,
    "MistralForCausalLM": gguf.MODEL_ARCH.LLAMA,
    "Qwen2ForCausalLM": gguf.MODEL_ARCH.QWEN2,
    "Qwen3ForCausalLM": gguf.MODEL_ARCH.QWEN3,
    "Gemma3ForCausalLM": gguf.MODEL_ARCH.GEMMA3,
    "Gemma3ForConditionalGeneration": gguf.MODEL_ARCH.GEMMA3,
    "Phi3ForCausalLM": gguf.MODEL_ARCH.PHI3,
}
SKIPPED = re.compile(
    r"(rotary_emb\.inv_freq|\.attention\.masked_bias|\.attention\.bias$|vision_tower|vision_model|"
    r"multi_modal_projector|audio_tower|embed_vision|embed_audio)"
)
# Checkpoint name prefixes of multimodal wrappers, mapped to the plain text-model names the tensor map knows.
PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
            ("language_model.lm_head.", "lm_head."), ("language_model.", ""))

RowLoader = Callable[[int, int], np.ndarray]


@dataclass
class PlannedTensor:
    """One output tensor: its GGUF name, numpy-order shape and how to read its rows as float32."""

    name: str
    shape: tuple[int, ...]
    source: TensorRef | None
    load_rows: RowLoader  # rows [start, stop) of the tensor viewed as (shape[0], -1), float32
    row_chunkable: bool = True  # False: load_rows must be called for the whole tensor at once
    keep_f32: bool = False
    passthrough: bool = False  # bytes can be copied unchanged when the output dtype equals the stored one


def rope_settings(hp: dict[str, Any], attention: str = "full_attention") -> tuple[float | None, dict[str, Any]]:
    """The rope base frequency and scaling dict, from either config style."""
    params = hp.get("rope_parameters")
    if isinstance(params, dict) and isinstance(params.get(attention), dict):
        params = params[attention]
    scaling = hp.get("rope_scaling") if isinstance(hp.get("rope_scaling"), dict) else None
    if scaling is None and isinstance(params, dict):
        scaling = params
    theta = hp.get("rope_theta")
    if theta is None and isinstance(params, dict):
        theta = params.get("rope_theta")
    return (float(theta) if theta is not None else None), dict(scaling or {})


def rope_type(scaling: dict[str, Any]) -> str:
    return str(scaling.get("rope_type") or scaling.get("type") or "default")


def llama3_rope_factors(base: float, dim: int, scaling: dict[str, Any]) -> np.ndarray:
    """Per-frequency divisors of Llama 3.1's rope scaling (the ``rope_freqs`` tensor llama.cpp reads)."""
    factor = float(scaling.get("factor", 8.0))
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    wavelen = 2 * math.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    factors = 1.0 / ((1 - smooth) / factor + smooth)
    factors = np.where(wavelen < old_ctx / high, 1.0, factors)
    factors = np.where(wavelen > old_ctx / low, factor, factors)
    return factors.astype(np.float32)


def _permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Reorder rows of a q/k projection from Hugging Face's rotate-half layout to llama.cpp's interleaved one."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _rows(ref: TensorRef) -> RowLoader:
    return ref.rows_f32


class Architecture:
    """What one model family needs. Subclasses add metadata and tensor transforms."""

    def __init__(self, ckpt: Checkpoint, n_vocab: int) -> None:
        self.ckpt = ckpt
        self.hp = ckpt.hparams
        self.arch = GGUF_ARCH[ckpt.architecture]
        self.n_vocab = n_vocab
        self.n_layer = self._required("num_hidden_layers")
        self.n_head = self._required("num_attention_heads")
        self.n_head_kv = int(self.hp.get("num_key_value_heads") or self.n_head)
        self.n_embd = self._required("hidden_size")
        self.head_dim = int(self.hp.get("head_dim") or self.n_embd // self.n_head)
        self.name_map = gguf.get_tensor_name_map(self.arch, self.n_layer)

    def _required(self, key: str) -> int:
        """A positive whole number the config must give (its bounds were checked when it was read)."""
        value = self.hp.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) <= 0:
            raise UserError(f"The checkpoint's config.json does not give {key}, which conversion needs.",
                            "Use the model's original release, whose config.json is complete.",
                            kind="corrupt_checkpoint")
        return int(value)

    @property
    def arch_name(self) -> str:
        return gguf.MODEL_ARCH_NAMES[self.arch]

    # ------------------------------------------------------------------ metadata
    def tied(self) -> bool:
        return bool(self.hp.get("tie_word_embeddings", self.ckpt.config.get("tie_word_embeddings", False)))

    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        hp = self.hp
        w.add_context_length(int(hp.get("max_position_embeddings") or self.default_context()))
        w.add_embedding_length(self.n_embd)
        w.add_feed_forward_length(int(hp["intermediate_size"]))
        w.add_block_count(self.n_layer)
        w.add_head_count(self.n_head)
        w.add_head_count_kv(self.n_head_kv)
        w.add_layer_norm_rms_eps(float(hp.get("rms_norm_eps", 1e-6)))
        if hp.get("head_dim"):
            w.add_key_length(self.head_dim)
            w.add_value_length(self.head_dim)
        theta, scaling = rope_settings(hp)
        if theta is not None:
            w.add_rope_freq_base(theta)
        self.write_rope_scaling(w, scaling)
        w.add_vocab_size(self.n_vocab)

    def default_context(self) -> int:
        return 4096

    def write_rope_scaling(self, w: gguf.GGUFWriter, scaling: dict[str, Any]) -> None:
        kind = rope_type(scaling)
        if kind == "default":
            return
        if kind == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(scaling["factor"]))
        elif kind == "yarn":
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(float(scaling["factor"]))
            w.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
        else:
            raise UserError(f"This model uses {kind} rope scaling, which QuantDesk cannot convert for "
                            f"{self.ckpt.display_name} yet.", "Look for a GGUF of this model on Hugging Face instead.",
                            kind="unsupported_architecture")

    # ------------------------------------------------------------------- tensors
    def plan(self) -> list[PlannedTensor]:
        planned = list(self.extra_tensors())
        for name, ref in self.ckpt.tensors.items():
            if SKIPPED.search(name):
                continue
            for old, new in PREFIXES:
                if name.startswith(old):
                    name = new + name[len(old):]
                    break
            if name == "lm_head.weight" and self.tied():
                continue
            gguf_name = self.name_map.get_name(name, try_suffixes=(".weight", ".bias"))
            if gguf_name is None:
                raise UserError(f"The checkpoint has a tensor QuantDesk does not know how to place ({ref.name}).",
                                "This variant of the architecture is not supported yet.",
                                kind="unsupported_architecture")
            planned.append(self.tensor(gguf_name, name, ref))
        return sorted(planned, key=_order)

    def tensor(self, gguf_name: str, hf_name: str, ref: TensorRef) -> PlannedTensor:
        keep = len(ref.shape) == 1 or gguf_name.endswith("_norm.weight")
        return PlannedTensor(gguf_name, ref.shape, ref, _rows(ref), keep_f32=keep, passthrough=True)

    def extra_tensors(self) -> list[PlannedTensor]:
        return []


def _order(t: PlannedTensor) -> tuple[int, int, str]:
    m = re.match(r"blk\.(\d+)\.", t.name)
    if m:
        return (1, int(m.group(1)), t.name)
    return (0 if t.name in ("token_embd.weight", "rope_freqs.weight") else 2, 0, t.name)


class Llama(Architecture):
    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        super().write_metadata(w)
        w.add_rope_dimension_count(self.head_dim)

    def write_rope_scaling(self, w: gguf.GGUFWriter, scaling: dict[str, Any]) -> None:
        if rope_type(scaling) != "llama3":  # llama3 scaling travels as the rope_freqs tensor
            super().write_rope_scaling(w, scaling)

    def extra_tensors(self) -> list[PlannedTensor]:
        theta, scaling = rope_settings(self.hp)
        if rope_type(scaling) != "llama3":
            return []
        factors = llama3_rope_factors(theta or 10000.0, self.head_dim, scaling)
        return [PlannedTensor("rope_freqs.weight", factors.shape, None,
                              lambda a, b: factors.reshape(-1, 1)[a:b], keep_f32=True)]

    def tensor(self, gguf_name: str, hf_name: str, ref: TensorRef) -> PlannedTensor:
        heads = {"attn_q": self.n_head, "attn_k": self.n_head_kv}.get(gguf_name.split(".")[2] if
                                                                        gguf_name.startswith("blk.") else "")
        if heads is None:
            return super().tensor(gguf_name, hf_name, ref)

        def load(start: int, stop: int) -> np.ndarray:
            return _permute_qk(ref.array_f32(), heads)[start:stop].reshape(stop - start, -1)

        return PlannedTensor(gguf_name, ref.shape, ref, load, row_chunkable=False, keep_f32=len(ref.shape) == 1)


class Qwen2(Architecture):
    pass


class Qwen3(Architecture):
    pass


class Gemma3(Architecture):
    def default_context(self) -> int:
        return 131072

    def tied(self) -> bool:
        return True

    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        super().write_metadata(w)
        if not self.hp.get("head_dim"):
            w.add_key_length(256)
            w.add_value_length(256)
        theta, _ = rope_settings(self.hp, "full_attention")
        if theta is None:
            w.add_rope_freq_base(1_000_000.0)
        params = self.hp.get("rope_parameters")
        local = self.hp.get("rope_local_base_freq")
        if local is None and isinstance(params, dict) and isinstance(params.get("sliding_attention"), dict):
            local = params["sliding_attention"].get("rope_theta")
        w.add_rope_freq_base_swa(float(local if local is not None else 10000.0))
        if self.hp.get("sliding_window"):
            w.add_sliding_window(int(self.hp["sliding_window"]))
        if self.hp.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(float(self.hp["final_logit_softcapping"]))
        types = self.hp.get("layer_types")
        if isinstance(types, list) and len(types) == self.n_layer:
            # Per-layer local (sliding) or global attention; llama.cpp would otherwise assume every sixth is global.
            w.add_sliding_window_pattern([t == "sliding_attention" for t in types])

    def tensor(self, gguf_name: str, hf_name: str, ref: TensorRef) -> PlannedTensor:
        if gguf_name.endswith("norm.weight"):
            # Gemma stores RMSNorm weights as offsets from 1.
            return PlannedTensor(gguf_name, ref.shape, ref, lambda a, b: ref.rows_f32(a, b) + 1.0, keep_f32=True)
        if gguf_name == "token_embd.weight" and len(ref.shape) == 2 and ref.shape[0] > self.n_vocab:
            # The embedding has rows for image tokens the text vocabulary does not have.
            shape = (self.n_vocab, *ref.shape[1:])
            return PlannedTensor(gguf_name, shape, ref, ref.rows_f32, passthrough=True)
        return super().tensor(gguf_name, hf_name, ref)


class Phi3(Architecture):
    def write_metadata(self, w: gguf.GGUFWriter) -> None:
        super().write_metadata(w)
        rotary = float(self.hp.get("partial_rotary_factor", 1.0))
        w.add_rope_dimension_count(int(rotary * self.n_embd) // self.n_head)
        orig = self.hp.get("original_max_position_embeddings")
        if orig:
            w.add_rope_scaling_orig_ctx_len(int(orig))
        if self.hp.get("sliding_window"):
            w.add_sliding_window(int(self.hp["sliding_window"]))


FAMILIES: dict[gguf.MODEL_ARCH, type[Architecture]] = {
    gguf.MODEL_ARCH.LLAMA: Llama,
    gguf.MODEL_ARCH.QWEN2: Qwen2,
    gguf.MODEL_ARCH.QWEN3: Qwen3,
    gguf.MODEL_ARCH.GEMMA3: Gemma3,
    gguf.MODEL_ARCH.PHI3: Phi3,
}


def architecture_for(ckpt: Checkpoint, n_vocab: int) -> Architecture:
    return FAMILIES[GGUF_ARCH[ckpt.architecture]](ckpt, n_vocab)
