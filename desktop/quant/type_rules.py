"""llama.cpp's choice of a ggml type for one tensor: which tensors it quantizes, each mix's per-category bumps,
the layer-position rules and the block-size fallbacks.

The rules mirror ``llama_tensor_get_type`` in ``src/llama-quant.cpp`` of the llama.cpp that llama-cpp-python 0.3.36
vendors. They are an independent re-implementation, checked in the tests (through :mod:`desktop.quant.sizing`)
against llama.cpp's own choice (its ``dry_run`` mode) and against the sizes of real output files.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from desktop.errors import UserError
from desktop.quant.tensors import TensorSpec
from desktop.quant.types import GGML_TYPE_SIZES


# --------------------------------------------------------------------------------------------------------------
# Which tensors llama.cpp quantizes at all (tensor_allows_quantization)

_NEVER_QUANTIZED = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
    "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
    "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight", "time_mix_a0.weight",
    "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight", "time_mix_g2.weight",
    "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight", "attn_rel_b.weight",
    ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger",
    "a.rvq.codebook", "mm.a.code_embd",
)
_NEVER_QUANTIZED_GLM5 = (
    "hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
    "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight",
    "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight",
)


def _allows_quantization(t: TensorSpec, arch: str | None) -> bool:
    if len(t.shape) < 2 or not t.name.endswith("weight"):
        return False
    if t.name in ("position_embd.weight", "token_types.weight"):
        return False
    if any(part in t.name for part in _NEVER_QUANTIZED):
        return False
    if arch == "glm5-next" and any(part in t.name for part in _NEVER_QUANTIZED_GLM5):
        return False
    return True


# --------------------------------------------------------------------------------------------------------------
# Categories (tensor_get_category) and the mixes' rules (llama_tensor_get_type_impl)

def _category(name: str) -> str:
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for needle, category in (
        ("attn_qkv.weight", "attn_v"),  # fused QKV and MLA's kv_b are as sensitive as V
        ("attn_kv_b.weight", "attn_v"),
        ("attn_v.weight", "attn_v"),
        ("attn_k.weight", "attn_k"),
        ("attn_q.weight", "attn_q"),
        ("attn_output.weight", "attn_output"),
        ("ffn_up", "ffn_up"),
        ("ffn_gate", "ffn_gate"),
        ("ffn_down", "ffn_down"),
    ):
        if needle in name:
            return category
    return "other"


_IQ2_FAMILY = {"IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"}
_OUTPUT_Q5K = {"IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ2_S", "IQ2_M", "IQ1_M"}
_MOE8_ATTN_OUTPUT_Q5K = {
    "Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ3_S", "IQ3_M", "IQ4_XS",
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.")


def layer_of(name: str) -> int:
    """The block number of a ``blk.N.`` tensor name, -1 for tensors outside the blocks."""
    match = _LAYER_RE.match(name)
    return int(match.group(1)) if match else -1


def _cdiv(a: int, b: int) -> int:
    """C integer division (truncates toward zero), as llama.cpp's int arithmetic does."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _cmod(a: int, b: int) -> int:
    return a - b * _cdiv(a, b)


def _more_bits_c(i_layer: int, n_layers: int) -> bool:
    return (
        i_layer < _cdiv(n_layers, 8)
        or i_layer >= _cdiv(7 * n_layers, 8)
        or _cmod(i_layer - _cdiv(n_layers, 8), 3) == 2
    )


class WalkState:
    """The running counters llama.cpp keeps while it walks the tensors in its order."""

    def __init__(self, tensors: Sequence[TensorSpec], ftype: str, arch: str | None, hp: Mapping[str, int],
                 has_imatrix: bool, output_type: str | None, embedding_type: str | None) -> None:
        self.ftype = ftype
        self.output_type = output_type
        self.embedding_type = embedding_type
        self.arch = arch
        self.has_imatrix = has_imatrix
        self.n_gqa = hp.get("n_gqa", 1)
        self.n_expert = max(1, hp.get("n_expert", 0))
        self.n_expert_raw = hp.get("n_expert", 0)
        self.is_70b = bool(hp.get("is_70b", 0))
        cats = [_category(t.name) for t in tensors]
        self.n_attention_wv = sum(c == "attn_v" for c in cats)
        self.tied = "output" not in cats
        self.n_layer = hp.get("n_layer", 0)
        self.i_attention_wv = self.i_ffn_down = self.i_ffn_gate = self.i_ffn_up = 0

    def layer(self, counter: int, name: str) -> tuple[int, int]:
        if self.n_expert > 1:
            layer = layer_of(name)
            if layer < 0 or layer >= self.n_layer:
                raise UserError(f"QuantDesk cannot tell which layer the tensor {name} belongs to.")
            return layer, self.n_layer
        return counter, self.n_layer


def _mix_rule(s: WalkState, new: str, t: TensorSpec, category: str) -> str:  # noqa: C901 - mirrors llama.cpp
    """llama.cpp's per-category choice for a quantized default type ``new`` (llama_tensor_get_type_impl)."""
    f, name, arch = s.ftype, t.name, s.arch
    if arch == "glm5-next" and any(k in name for k in ("attn_q_a", "attn_q_b", "nextn.eh_proj")):
        if new not in ("F32", "BF16", "F16"):
            return "Q8_0"

    if category == "output" or (s.tied and category == "token_embd"):
        if s.output_type is not None:
            return s.output_type
        if f == "MXFP4_MOE":
            return "Q8_0"
        if arch == "falcon" or t.n_cols % GGML_TYPE_SIZES[new][0] != 0:
            return "Q8_0"
        if f in _OUTPUT_Q5K:
            return "Q5_K"
        return new if new == "Q8_0" else "Q6_K"
    if f == "MXFP4_MOE":
        is_expert = category in ("ffn_up", "ffn_gate", "ffn_down")
        if len(t.shape) >= 3 and t.shape[-3] > 1 and (arch != "bailingmoe3" or is_expert):
            return "MXFP4"
        return "Q8_0"
    if category == "token_embd":
        if s.embedding_type is not None:
            return s.embedding_type
        if f in ("IQ2_XXS", "IQ2_XS", "IQ1_S", "IQ1_M"):
            return "Q2_K"
        if f in ("IQ2_S", "IQ2_M", "IQ3_XXS"):
            return "IQ3_S"
        if f in ("TQ1_0", "TQ2_0", "Q2_0"):
            return "Q4_K"
        return new
    if f in _IQ2_FAMILY:
        return _iq2_family_rule(s, new, category)
    if category == "attn_v":
        return _attn_v_rule(s, new)
    if category == "attn_k":
        if s.n_expert_raw == 8:
            return "Q8_0"
        if f == "IQ3_XS":
            return "IQ3_XXS"
        if f == "IQ3_XXS":
            return "IQ2_S"
        return new
    if category == "attn_q":
        if f == "IQ3_XS":
            return "IQ3_XXS"
        if f == "IQ3_XXS":
            return "IQ2_S"
        return new
    if category == "ffn_down":
        return _ffn_down_rule(s, new, name)
    if category == "attn_output":
        if arch != "falcon":
            if s.n_expert_raw == 8:
                return "Q5_K" if f in _MOE8_ATTN_OUTPUT_Q5K else new
            return {"Q2_K": "Q3_K", "IQ3_XXS": "IQ3_S", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K", "IQ3_M": "Q4_K"}.get(f, new)
        return "Q4_K" if f == "Q3_K_L" else new
    if category in ("ffn_gate", "ffn_up"):
        counter = s.i_ffn_gate if category == "ffn_gate" else s.i_ffn_up
        i_layer, n_layer = s.layer(counter, name)
        if f == "IQ3_XS" and _cdiv(n_layer, 8) <= i_layer < _cdiv(7 * n_layer, 8):
            new = "IQ3_XXS"
        if category == "ffn_gate":
            s.i_ffn_gate += 1
        else:
            s.i_ffn_up += 1
        return new
    return new


def _iq2_family_rule(s: WalkState, new: str, category: str) -> str:
    f = s.ftype
    s_or_m = f in ("IQ2_S", "IQ2_M")
    if category == "attn_v":
        if s.n_gqa >= 4 or s.n_expert_raw >= 4:
            new = "Q4_K"
        else:
            new = "IQ3_S" if s_or_m else "Q2_K"
        s.i_attention_wv += 1
    elif s.n_expert_raw == 8 and category == "attn_k":
        new = "Q4_K"
    elif category == "ffn_down":
        if s.i_ffn_down < _cdiv(s.n_layer, 8):
            new = "IQ3_S" if s_or_m else "Q2_K"
        s.i_ffn_down += 1
    elif category == "attn_output":
        if s.n_expert_raw == 8:
            new = "Q5_K"
        elif f in ("IQ1_S", "IQ1_M"):
            new = "IQ2_XXS"
        elif s_or_m:
            new = "IQ3_S"
    return new


def _attn_v_rule(s: WalkState, new: str) -> str:
    f, gqa4 = s.ftype, s.n_gqa >= 4
    if f == "Q2_K":
        new = "Q4_K" if gqa4 else "Q3_K"
    elif f == "Q2_K_S" and gqa4:
        new = "Q4_K"
    elif f == "IQ3_XXS":
        new = "Q4_K" if gqa4 else ("IQ3_S" if not s.has_imatrix else "IQ3_XXS")
    elif f in ("IQ3_XS", "IQ3_S") and gqa4:
        new = "Q4_K"
    elif f == "IQ3_M":
        new = "Q4_K"
    elif f == "Q3_K_M":
        new = "Q5_K" if s.i_attention_wv < 2 else "Q4_K"
    elif f == "Q3_K_L":
        new = "Q5_K"
    elif f in ("IQ4_NL", "IQ4_XS") and gqa4:
        new = "Q5_K"
    elif f in ("Q4_K_M", "Q5_K_M") and _more_bits_c(s.i_attention_wv, s.n_attention_wv):
        new = "Q6_K"
    elif f == "Q4_K_S" and s.i_attention_wv < 4:
        new = "Q5_K"
    if s.is_70b and new in ("Q3_K", "Q4_K"):
        new = "Q5_K"
    if s.n_expert_raw == 8:
        new = "Q8_0"
    s.i_attention_wv += 1
    return new


def _ffn_down_rule(s: WalkState, new: str, name: str) -> str:
    f, falcon = s.ftype, s.arch == "falcon"
    i_layer, n_layer = s.layer(s.i_ffn_down, name)
    eighth = _cdiv(n_layer, 8)
    if f == "Q2_K":
        new = "Q3_K"
    elif f == "Q2_K_S":
        if i_layer < eighth:
            new = "Q4_K"
    elif f == "IQ3_XXS" and not s.has_imatrix:
        new = "Q4_K" if i_layer < eighth else "Q3_K"
    elif f == "Q3_K_M":
        if i_layer < _cdiv(n_layer, 16):
            new = "Q5_K"
        elif not falcon or _more_bits_c(i_layer, n_layer):
            new = "Q4_K"
        else:
            new = "Q3_K"
    elif f == "IQ3_M" and (i_layer < eighth or (s.n_expert_raw == 8 and _more_bits_c(i_layer, n_layer))):
        new = "Q4_K"
    elif f == "Q3_K_L":
        new = "Q4_K" if falcon else "Q5_K"
    elif f == "Q4_K_M":
        if falcon:
            if i_layer < _cdiv(n_layer, 16):
                new = "Q6_K"
            else:
                new = "Q5_K" if _more_bits_c(i_layer, n_layer) else "Q4_K"
        elif _more_bits_c(i_layer, n_layer):
            new = "Q6_K"
    elif i_layer < eighth and f in ("IQ4_NL", "IQ4_XS") and not s.has_imatrix:
        new = "Q5_K"
    elif f == "Q5_K_M" and _more_bits_c(i_layer, n_layer):
        new = "Q6_K"
    elif f == "Q4_K_S" and not falcon and i_layer < eighth:
        new = "Q5_K"
    elif f in ("Q4_0", "Q5_0") and s.has_imatrix and i_layer < eighth:
        new = "Q4_1" if f == "Q4_0" else "Q5_1"
    s.i_ffn_down += 1
    return new


_FALLBACK = {
    "IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL", "IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL", "IQ2_S": "IQ4_NL",
    "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ4_XS": "IQ4_NL",
    "Q2_0": "Q4_0", "Q2_K": "Q4_0", "Q3_K": "Q4_0", "TQ1_0": "Q4_0", "TQ2_0": "Q4_0",
    "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
}


def _fallback(t: TensorSpec, target: str) -> str:
    """A type whose block divides the row when ``target``'s does not (tensor_type_fallback)."""
    block = GGML_TYPE_SIZES[target][0]
    if t.n_cols % block == 0:
        return target
    if target in _FALLBACK:
        result = _FALLBACK[target]
    elif block <= 32:
        result = target
    else:
        raise UserError(
            f"The tensor {t.name} has rows of {t.n_cols} values, which {target} cannot store.",
            "Choose another type.",
        )
    if t.n_cols % GGML_TYPE_SIZES[result][0] != 0:
        result = "F16"
    return result


def tensor_type(s: WalkState, t: TensorSpec, default: str, quantized: bool, out_t: str | None, emb_t: str | None,
                pure: bool, patterns: list[tuple[re.Pattern[str], str]]) -> str:
    """The type of one tensor, walked in llama.cpp's order (``s`` carries its counters): forced, overridden,
    the mix's rule, then the block-size fallback."""
    if not _allows_quantization(t, s.arch):
        return t.source_type
    category = _category(t.name)
    if emb_t is not None and category == "token_embd":
        named = t.name == "per_layer_token_embd.weight" and any(p.search(t.name) for p, _ in patterns)
        if not named:
            return emb_t
    if out_t is not None and category == "output":
        return out_t
    new = default
    if not quantized:
        return new
    manual = False
    for pattern, ty in patterns:
        if pattern.search(t.name):
            new, manual = ty, True
            break
    if not manual and not pure:
        new = _mix_rule(s, new, t, category)
    return _fallback(t, new)

