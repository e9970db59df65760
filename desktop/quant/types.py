"""Every GGUF file type this build of llama.cpp can quantize to, with what a hobbyist needs to choose one.

The names and ``LLAMA_FTYPE_MOSTLY_*`` numbers are llama.cpp's (``include/llama.h``, and the names its
``llama-quantize`` tool accepts). ``bpw`` is a nominal bits-per-weight figure: what the whole file comes to on a
Llama-3-8B-shaped model quantized with an importance matrix (computed once with :mod:`desktop.quant.sizing`, embeddings
and output included), so mixes that share a main type (Q4_K_S, Q4_K_M) differ the way their real files do. The predicted size of a
real model comes from :func:`desktop.quant.sizing.predict_size`, not from this number.

``GGML_TYPE_SIZES`` gives each ggml tensor type's block size and bytes per block (the same numbers as
``gguf.GGML_QUANT_SIZES``; a test keeps them equal), and ``GGML_TYPE_IDS`` its number in ``enum ggml_type``, which
is what ``llama_model_quantize_params.output_tensor_type`` and ``token_embedding_type`` take.
"""

from __future__ import annotations

from dataclasses import dataclass

from desktop.errors import UserError

__all__ = [
    "GGML_TYPE_IDS",
    "GGML_TYPE_SIZES",
    "IMATRIX_REASON",
    "QUANT_TYPES",
    "QuantType",
    "by_name",
    "ggml_type_bpw",
    "ggml_type_id",
    "ggml_type_name",
    "ggml_type_by_name",
    "offered_types",
]

# ggml type name -> (enum ggml_type value, elements per block, bytes per block); ggml/include/ggml.h and
# ggml/src/ggml-common.h of the llama.cpp that llama-cpp-python 0.3.36 vendors.
_GGML_TYPES: dict[str, tuple[int, int, int]] = {
    "F32": (0, 1, 4),
    "F16": (1, 1, 2),
    "Q4_0": (2, 32, 18),
    "Q4_1": (3, 32, 20),
    "Q5_0": (6, 32, 22),
    "Q5_1": (7, 32, 24),
    "Q8_0": (8, 32, 34),
    "Q2_K": (10, 256, 84),
    "Q3_K": (11, 256, 110),
    "Q4_K": (12, 256, 144),
    "Q5_K": (13, 256, 176),
    "Q6_K": (14, 256, 210),
    "Q8_K": (15, 256, 292),
    "IQ2_XXS": (16, 256, 66),
    "IQ2_XS": (17, 256, 74),
    "IQ3_XXS": (18, 256, 98),
    "IQ1_S": (19, 256, 50),
    "IQ4_NL": (20, 32, 18),
    "IQ3_S": (21, 256, 110),
    "IQ2_S": (22, 256, 82),
    "IQ4_XS": (23, 256, 136),
    "I8": (24, 1, 1),
    "I16": (25, 1, 2),
    "I32": (26, 1, 4),
    "I64": (27, 1, 8),
    "F64": (28, 1, 8),
    "IQ1_M": (29, 256, 56),
    "BF16": (30, 1, 2),
    "TQ1_0": (34, 256, 54),
    "TQ2_0": (35, 256, 66),
    "MXFP4": (39, 32, 17),
    "NVFP4": (40, 64, 36),
    "Q1_0": (41, 128, 18),
    "Q2_0": (42, 64, 18),
}

GGML_TYPE_SIZES: dict[str, tuple[int, int]] = {name: (block, size) for name, (_, block, size) in _GGML_TYPES.items()}
"""ggml type name ("Q4_K") -> (elements per block, bytes per block)."""

GGML_TYPE_IDS: dict[str, int] = {name: type_id for name, (type_id, _, _) in _GGML_TYPES.items()}
"""ggml type name ("Q4_K") -> its value in ``enum ggml_type``."""

_GGML_NAMES_BY_ID = {type_id: name for name, type_id in GGML_TYPE_IDS.items()}

IMATRIX_REASON = (
    "This type packs weights so tightly that llama.cpp refuses to make it without an importance matrix: "
    "without one the result would be garbage. Add a calibration text to compute one."
)


@dataclass(frozen=True)
class QuantType:
    """One GGUF file type (a llama.cpp "ftype"): a recipe that gives each tensor a ggml type.

    ``name`` is llama.cpp's name ("Q4_K_M"), ``ftype`` its ``LLAMA_FTYPE_*`` number, ``bpw`` nominal bits per
    weight, ``description`` one line for the type list, ``needs_imatrix`` whether llama.cpp refuses it without
    an importance matrix, ``ggml_type`` the type most tensors get, ``family`` a word to group the list by.
    """

    name: str
    ftype: int
    bpw: float
    description: str
    needs_imatrix: bool
    ggml_type: str = ""
    family: str = ""

    @property
    def is_float(self) -> bool:
        return self.family == "float"


def _t(name: str, ftype: int, bpw: float, ggml: str, family: str, description: str, imatrix: bool = False) -> QuantType:
    return QuantType(name, ftype, bpw, description, imatrix, ggml, family)


# Left out on purpose:
# * NVFP4 (ftype 39): llama_model_quantize rejects it ("invalid output file type 39"); it has no default type.
# * COPY: the quantize tool's "copy tensors unchanged" mode, not a type.
# * Q4_0_4_4 / Q4_0_4_8 / Q4_0_8_8 (33-35): removed from GGUF files; llama.cpp repacks Q4_0 at load time instead.
_ALL_TYPES: tuple[QuantType, ...] = (
    _t("F32", 0, 32.0, "F32", "float", "Full 32-bit floats: twice the size of F16 and no better; only for debugging."),
    _t("F16", 1, 16.0, "F16", "float", "Half precision: the unquantized reference every other type is measured against."),
    _t("BF16", 32, 16.0, "BF16", "float", "Brain float 16: same size as F16, keeps the range of models trained in bf16."),
    _t("Q8_0", 7, 8.5, "Q8_0", "legacy", "8-bit: practically indistinguishable from F16 at about half the size."),
    _t("Q6_K", 18, 6.57, "Q6_K", "k-quant", "6-bit k-quant: near-lossless, a safe choice when it fits."),
    _t("Q5_K_M", 17, 5.71, "Q5_K", "k-quant",
       "5-bit k-quant mix, key layers at 6-bit: very close to F16, a quality-first pick."),
    _t("Q5_K_S", 16, 5.57, "Q5_K", "k-quant", "5-bit k-quant: slightly smaller than Q5_K_M, slightly worse."),
    _t("Q5_1", 9, 6.04, "Q5_1", "legacy", "Older 5-bit format with offsets; Q5_K_M is smaller and better."),
    _t("Q5_0", 8, 5.59, "Q5_0", "legacy", "Older 5-bit format; Q5_K_S is usually better at the same size."),
    _t("Q4_K_M", 15, 4.9, "Q4_K", "k-quant",
       "4-bit k-quant mix, key layers at 6-bit: the popular balance of size and quality."),
    _t("Q4_K_S", 14, 4.67, "Q4_K", "k-quant", "4-bit k-quant: a little smaller than Q4_K_M and a little worse."),
    _t("Q4_1", 3, 5.11, "Q4_1", "legacy", "Older 4-bit format with offsets; Q4_K_M is smaller and better."),
    _t("IQ4_NL", 25, 4.66, "IQ4_NL", "i-quant", "4-bit non-linear: Q4-class quality, fast on CPUs and most GPUs."),
    _t("Q4_0", 2, 4.65, "Q4_0", "legacy", "Older 4-bit format: fast and widely supported, lower quality than Q4_K_M."),
    _t("IQ4_XS", 30, 4.43, "IQ4_XS", "i-quant", "4-bit non-linear, smaller blocks of scales: close to Q4_K_M quality in less space."),
    _t("Q3_K_L", 13, 4.3, "Q3_K", "k-quant", "3-bit k-quant with large layers at 5-bit: the best of the 3-bit k-quants."),
    _t("Q3_K_M", 12, 4.0, "Q3_K", "k-quant", "3-bit k-quant mix: noticeably worse than 4-bit, for tight memory."),
    _t("IQ3_M", 27, 3.77, "IQ3_S", "i-quant", "3-bit i-quant mix with 4-bit attention: better than Q3_K_M at a smaller size."),
    _t("IQ3_S", 26, 3.66, "IQ3_S", "i-quant", "3-bit i-quant: a good 3-bit choice; better with an importance matrix."),
    _t("Q3_K_S", 11, 3.65, "Q3_K", "k-quant", "3-bit k-quant: small, with clear quality loss."),
    _t("IQ3_XS", 22, 3.5, "IQ3_S", "i-quant", "3-bit i-quant mix with some 3-bit-XXS layers: small; needs an importance matrix.", True),
    _t("IQ3_XXS", 23, 3.26, "IQ3_XXS", "i-quant", "The smallest 3-bit i-quant: needs an importance matrix.",
       True),
    _t("Q2_K", 10, 3.16, "Q2_K", "k-quant", "2-bit k-quant mix: large quality loss; for very tight memory only."),
    _t("Q2_K_S", 21, 2.97, "Q2_K", "k-quant", "Smaller 2-bit k-quant: needs an importance matrix, large quality loss.",
       True),
    _t("IQ2_M", 29, 2.93, "IQ2_S", "i-quant", "2-bit i-quant mix, the largest 2-bit: big models only; needs an importance matrix.",
       True),
    _t("IQ2_S", 28, 2.74, "IQ2_XS", "i-quant", "2-bit i-quant: big models only; needs an importance matrix.", True),
    _t("IQ2_XS", 20, 2.59, "IQ2_XS", "i-quant", "2-bit i-quant, extra-small: big models only; needs an importance matrix.", True),
    _t("IQ2_XXS", 19, 2.39, "IQ2_XXS", "i-quant",
       "The smallest 2-bit i-quant: very lossy, big models only; needs an importance matrix.", True),
    _t("Q2_0", 41, 2.68, "Q2_0", "legacy", "Plain 2-bit format: very lossy; mostly for experiments."),
    _t("TQ2_0", 37, 2.52, "TQ2_0", "ternary", "Ternary 2-bit: only for models trained ternary (BitNet); garbage otherwise."),
    _t("IQ1_M", 31, 2.15, "IQ1_M", "i-quant",
       "1-bit i-quant mix: extreme, only huge models survive it; needs an importance matrix.", True),
    _t("TQ1_0", 36, 2.19, "TQ1_0", "ternary", "Ternary 1.6-bit: only for models trained ternary (BitNet); garbage otherwise."),
    _t("IQ1_S", 24, 2.01, "IQ1_S", "i-quant",
       "The smallest i-quant: mostly broken output; needs an importance matrix.", True),
    _t("Q1_0", 40, 1.49, "Q1_0", "legacy", "Plain 1-bit format: an experiment; expect broken output."),
    _t("MXFP4_MOE", 38, 4.25, "MXFP4", "mxfp4",
       "MXFP4 for mixture-of-experts models (experts 4-bit, the rest 8-bit); the native format of gpt-oss."),
)

QUANT_TYPES: tuple[QuantType, ...] = tuple(sorted(_ALL_TYPES, key=lambda t: (t.family == "mxfp4", -t.bpw)))
"""Every type this llama.cpp can make, largest first (MXFP4_MOE, for mixture-of-experts models only, last)."""

_BY_NAME = {t.name: t for t in QUANT_TYPES}
# The quantize tool's aliases.
_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}


def by_name(name: str) -> QuantType:
    """The type called ``name`` (any case; "q4_k_m", "Q4_K" as the quantize tool's alias)."""
    key = name.strip().upper().replace("-", "_")
    key = _ALIASES.get(key, key)
    try:
        return _BY_NAME[key]
    except KeyError:
        valid = ", ".join(t.name for t in QUANT_TYPES)
        raise UserError(f"'{name}' is not a quantization type this llama.cpp can make; choose one of {valid}.") from None


def offered_types(*, has_imatrix: bool) -> list[QuantType]:
    """The types to offer: those that need an importance matrix only when one is available."""
    return [t for t in QUANT_TYPES if has_imatrix or not t.needs_imatrix]


def ggml_type_by_name(name: str) -> str:
    """Normalise a ggml tensor type name ("q6_k" -> "Q6_K"), raising a UserError for an unknown one."""
    key = name.strip().upper()
    if key not in _GGML_TYPES or key in {"I8", "I16", "I32", "I64", "F64", "Q8_K", "NVFP4"}:
        valid = ", ".join(n for n in _GGML_TYPES if n not in {"I8", "I16", "I32", "I64", "F64", "Q8_K", "NVFP4"})
        raise UserError(f"'{name}' is not a tensor type llama.cpp can store weights in; choose one of {valid}.")
    return key


def ggml_type_id(name: str) -> int:
    return GGML_TYPE_IDS[ggml_type_by_name(name)]


def ggml_type_name(type_id: int) -> str:
    return _GGML_NAMES_BY_ID[type_id]


def ggml_type_bpw(name: str) -> float:
    block, size = GGML_TYPE_SIZES[name.upper()]
    return size * 8 / block
