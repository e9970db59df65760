"""Look at a Hugging Face checkpoint folder and decide whether it can be converted, before touching any weights.

Every refusal is a :class:`~desktop.errors.UserError` with one sentence and a next step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from desktop.convert.safetensors import FLOAT_DTYPES, TensorRef, loads_strict, open_checkpoint
from desktop.errors import UserError
from desktop.gguf.limits import BadNumber, check_config_numbers

# The Hugging Face class names QuantDesk converts, and the name shown to people.
SUPPORTED: dict[str, str] = {
    "LlamaForCausalLM": "Llama",
    "MistralForCausalLM": "Mistral",
    "Qwen2ForCausalLM": "Qwen2",
    "Qwen3ForCausalLM": "Qwen3",
    "Gemma3ForCausalLM": "Gemma 3",
    "Gemma3ForConditionalGeneration": "Gemma 3",
    "Phi3ForCausalLM": "Phi-3",
}
SUPPORTED_SENTENCE = "Llama (including Llama 3, TinyLlama and SmolLM), Mistral, Qwen2, Qwen3, Gemma 3 and Phi-3"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
QUANT_METHODS = {
    "gptq": "GPTQ", "awq": "AWQ", "fp8": "FP8", "bitsandbytes": "bitsandbytes", "compressed-tensors":
    "compressed-tensors", "aqlm": "AQLM", "hqq": "HQQ", "eetq": "EETQ", "quanto": "Quanto", "mxfp4": "MXFP4",
    "fbgemm_fp8": "FP8", "torchao": "torchao", "exl2": "EXL2", "bitnet": "BitNet", "higgs": "HIGGS",
}


@dataclass
class Checkpoint:
    """A checkpoint folder that passed every check: its config, text hyperparameters and tensors."""

    path: Path
    config: dict[str, Any]
    hparams: dict[str, Any]  # the text model's config (``text_config`` merged over the top level)
    architecture: str
    tensors: dict[str, TensorRef]

    @property
    def display_name(self) -> str:
        return SUPPORTED[self.architecture]


MAX_CONFIG_BYTES = 4 * 1024 * 1024  # real config.json files are a few KB


def parse_config(raw: bytes, where: str) -> dict[str, Any]:
    """A ``config.json``'s bytes as a dict whose numbers are all within what a model has; ``where`` names it in
    the sentence ("config.json in org/model"). Raises UserError."""
    try:
        if len(raw) > MAX_CONFIG_BYTES:
            raise ValueError(f"it is larger than {MAX_CONFIG_BYTES // 1024} KiB, far more than any real config")
        data = loads_strict(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{where} cannot be read ({str(exc)[:120]}).", "Download the model again.",
                        kind="corrupt_checkpoint") from None
    if not isinstance(data, dict):
        raise UserError(f"{where} is not a JSON object.", "Download the model again.", kind="corrupt_checkpoint")
    try:
        check_config_numbers(data)
    except BadNumber as exc:
        raise UserError(f"{where} does not describe a real model: {exc}.",
                        "Use the model's original release; this config.json looks damaged or made up.",
                        kind="corrupt_checkpoint") from None
    return data


def _read_json(path: Path) -> dict[str, Any]:
    where = f"{path.name} in {path.parent.name}"
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # one byte more than allowed is enough to refuse it
    except OSError as exc:
        raise UserError(f"{where} cannot be read ({exc.strerror}).", "Download the model again.",
                        kind="corrupt_checkpoint") from None
    return parse_config(raw, where)


def text_hparams(config: dict[str, Any]) -> dict[str, Any]:
    merged = dict(config)
    text = config.get("text_config")
    if isinstance(text, dict):
        merged.update(text)
    return merged


def quantization_method(config: dict[str, Any], tensors: dict[str, TensorRef] | None = None) -> str | None:
    """The name of the quantization a checkpoint already carries, or None for plain float weights."""
    text = config.get("text_config")
    for holder in (config, text if isinstance(text, dict) else {}):
        qc = holder.get("quantization_config") or holder.get("compression_config")
        if isinstance(qc, dict):
            method = str(qc.get("quant_method") or qc.get("format") or "unknown").lower()
            if qc.get("load_in_4bit") or qc.get("load_in_8bit"):
                method = "bitsandbytes"
            return QUANT_METHODS.get(method, method)
    if tensors:
        names = set(tensors)
        if any(n.endswith((".qweight", ".qzeros", ".g_idx")) for n in names):
            return "GPTQ" if any(n.endswith(".g_idx") for n in names) else "AWQ"
        if any(n.endswith((".weight_scale", ".weight_scale_inv", ".input_scale")) for n in names):
            return "FP8"
        if any(".absmax" in n or n.endswith(".quant_state.bitsandbytes__nf4") for n in names):
            return "bitsandbytes"
        if any(t.dtype.startswith("F8") for t in tensors.values()):
            return "FP8"
    return None


def _refuse_quantized(method: str) -> UserError:
    return UserError(
        f"This checkpoint is already quantized with {method}, and converting it would not give a correct model.",
        "Use the original (unquantized) release of the model instead.",
        kind="already_quantized",
    )


def has_tokenizer(path: Path) -> bool:
    return (path / "tokenizer.model").is_file() or (path / "tokenizer.json").is_file()


def check_config(config: dict[str, Any]) -> str:
    """The Hugging Face class of a checkpoint the converter can take, from its config; UserError for an
    architecture it does not convert or a config that says the weights are already quantized."""
    architectures = config.get("architectures") or []
    architecture = architectures[0] if isinstance(architectures, list) and architectures else None
    if not isinstance(architecture, str) or architecture not in SUPPORTED:
        what = f"the {str(architecture)[:80]} architecture" if architecture else \
            "a model whose config.json names no architecture"
        raise UserError(f"QuantDesk cannot convert {what}; it converts {SUPPORTED_SENTENCE}.",
                        "Look for a GGUF of this model on Hugging Face instead.", kind="unsupported_architecture")
    method = quantization_method(config)
    if method:
        raise _refuse_quantized(method)
    return architecture


def check_tensors(config: dict[str, Any], tensors: dict[str, TensorRef]) -> None:
    """UserError for tensors that show quantized weights (GPTQ, AWQ, FP8...) or a dtype the converter cannot read."""
    method = quantization_method(config, tensors)
    if method:
        raise _refuse_quantized(method)
    for ref in tensors.values():
        if ref.dtype not in FLOAT_DTYPES and not _ignorable(ref.name):
            raise UserError(
                f"The tensor {ref.name} is stored as {ref.dtype}, which QuantDesk cannot convert (F32, F16 and BF16 "
                "are supported).",
                "Use a release of the model with F32, F16 or BF16 weights.", kind="unsupported_dtype")


def inspect_checkpoint(src: Path | str) -> Checkpoint:
    """Check a folder and return what the converter needs; raise :class:`UserError` for anything it cannot do."""
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"{src} is not a folder.", "Choose the folder that holds config.json and the weights.",
                        kind="not_found")
    config_path = src / "config.json"
    if not config_path.is_file():
        raise UserError(f"{src.name} has no config.json, so its architecture cannot be known.",
                        "Choose a complete Hugging Face model folder (with config.json).", kind="missing_config")
    config = _read_json(config_path)
    architecture = check_config(config)
    safetensors = list(src.glob("*.safetensors"))
    if not safetensors:
        pickles = sorted(p.name for p in src.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise UserError(
                f"{src.name} has only PyTorch pickle weights ({pickles[0]}), which QuantDesk never opens because "
                "loading them can run arbitrary code.",
                "Download the safetensors version of the model, or convert it to safetensors with a tool you trust.",
                kind="pickle_only",
            )
        raise UserError(f"{src.name} has no weights (*.safetensors files).",
                        "Download the model's weights into this folder.", kind="missing_weights")
    if not has_tokenizer(src):
        raise UserError(f"{src.name} has no tokenizer (tokenizer.json or tokenizer.model).",
                        "Download the tokenizer files of the model into the same folder.", kind="missing_tokenizer")
    tensors = open_checkpoint(src)
    check_tensors(config, tensors)
    return Checkpoint(src, config, text_hparams(config), architecture, tensors)


def remote_checkpoint(config: dict[str, Any], tensors: dict[str, tuple[str, tuple[int, ...]]],
                      where: str) -> Checkpoint:
    """A checkpoint known only by its config and its safetensors headers (a Hub repo before download), checked
    as :func:`inspect_checkpoint` checks a folder, for planning and predicting (no weights can be read)."""
    architecture = check_config(config)
    refs = {name: TensorRef(name, Path(where), dtype, shape, 0, 0) for name, (dtype, shape) in tensors.items()}
    check_tensors(config, refs)
    return Checkpoint(Path(where), config, text_hparams(config), architecture, refs)


def _ignorable(name: str) -> bool:
    """Tensors that are dropped anyway, so their dtype does not matter."""
    return name.endswith(("rotary_emb.inv_freq", ".attention.masked_bias", ".attention.bias")) or any(
        part in name for part in ("vision_tower", "multi_modal_projector", "vision_model", "audio_tower"))
