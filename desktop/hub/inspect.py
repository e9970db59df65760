"""Build a :class:`~desktop.hub.repo.RepoReport` from a repo listing: classify it and read what fit needs.

Checkpoints: ``config.json`` (architecture, attention shape) and the safetensors headers, fetched with Range
requests (tensor names, shapes, dtypes: parameter count and the predicted size of each quant type through
:func:`desktop.quant.sizing.predict_size`). GGUF repos: models grouped by shard, quant type from the file name (else
from the header), hyperparameters from one model's header. Files already in the local cache are read there.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from desktop.errors import UserError
from desktop.memory import shape_from_config, shape_from_header, shape_from_metadata
from desktop.convert.safetensors import shard_path
from desktop.hub.errors import hub_errors
from desktop.hub.fetch import range_fetcher, read_config, read_index, safetensors_header
from desktop.hub.repo import (HubContext, QuantPrediction, RepoListing, RepoReport, describe, hub_context, list_repo,
                              parse_repo_ref)
from desktop.gguf.limits import check_gguf_numbers
from desktop.gguf.remote import GgufHeader, group_gguf_files, read_gguf_header
from desktop.jobs import CancelledFn, ProgressFn, check_cancelled

log = logging.getLogger(__name__)

def convertible_architectures() -> tuple[dict[str, str], str]:
    """(Hugging Face class -> llama.cpp architecture name, a sentence listing them), from the converter."""
    import gguf

    from desktop.convert.architectures import GGUF_ARCH
    from desktop.convert.checkpoint import SUPPORTED_SENTENCE

    return {cls: gguf.MODEL_ARCH_NAMES[arch] for cls, arch in GGUF_ARCH.items()}, SUPPORTED_SENTENCE


CONVERSION_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja",
    "chat_template.json",
)
"""Besides the weights, what conversion to GGUF reads."""

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_SKIPPED_TYPES = {"F32", "Q1_0", "Q2_0"}
_SKIPPED_FAMILIES = {"ternary", "mxfp4"}
_GGUF_NEXT = "Look for a GGUF version of this model, or for its original safetensors checkpoint."


def _unsupported(report: RepoReport, reason: str, next_step: str = _GGUF_NEXT) -> RepoReport:
    report.kind = "unsupported"
    report.reason = reason
    report.next_step = next_step
    return report


def classify_files(paths: list[str]) -> tuple[str, str, str]:
    """("gguf" | "checkpoint" | "unsupported", reason, next step) from the file names alone."""
    if any(p.lower().endswith(".gguf") for p in paths):
        return "gguf", "", ""
    if any(p.endswith(".safetensors") for p in paths):
        if "config.json" not in paths:
            return (
                "unsupported",
                "It has safetensors weights but no config.json, so the model's architecture is unknown.",
                "Use the model's original repository, which has config.json, or a GGUF version.",
            )
        return "checkpoint", "", ""
    pickles = [p for p in paths if p.lower().endswith(_PICKLE_SUFFIXES)]
    if pickles:
        return (
            "unsupported",
            f"Its weights are only in PyTorch pickle files ({Path(pickles[0]).name}), which QuantDesk never opens "
            "because loading them can run arbitrary code.",
            _GGUF_NEXT,
        )
    return "unsupported", "It has no model weights QuantDesk can use (no .safetensors or .gguf files).", _GGUF_NEXT


def build_report(listing: RepoListing, ctx: HubContext, *, progress: ProgressFn, cancelled: CancelledFn) -> RepoReport:
    report = RepoReport(listing.repo_id, listing.revision, listing.sha, "unsupported", list(listing.files),
                        gated=listing.gated, private=listing.private, from_cache=listing.from_cache)
    if listing.from_cache:
        report.notes.append("Offline: this is what the local Hugging Face cache holds of the repository.")
    kind, reason, next_step = classify_files([f.path for f in listing.files])
    if kind == "gguf":
        return _gguf_report(report, listing, ctx, progress, cancelled)
    if kind == "checkpoint":
        return _checkpoint_report(report, listing, ctx, progress, cancelled)
    return _unsupported(report, reason, next_step)


def quantized_checkpoint_reason(config: Any) -> str:
    """The sentence refusing a checkpoint that is already quantized (GPTQ, AWQ, FP8...), or "" (the converter's
    own test, from the config alone)."""
    from desktop.convert.checkpoint import quantization_method

    method = quantization_method(config) if isinstance(config, dict) else None
    return f"It is already quantized with {method}, a format llama.cpp cannot convert to GGUF." if method else ""


_QUANTIZED_NEXT = "Use the original, unquantized model (its page usually links it), or a GGUF version."


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints


def weight_files(listing: RepoListing, ctx: HubContext) -> tuple[list[str], str | None]:
    paths = {f.path for f in listing.files}
    index = "model.safetensors.index.json"
    if index in paths:
        data = read_index(listing, ctx, index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict):
            raise UserError(f"{index} in {listing.repo_id} is not a valid index.",
                            "The repository looks broken; try another one.", kind="bad_repo")
        try:
            shards = sorted({shard_path(Path("."), Path(index), s).name for s in weight_map.values()})
        except UserError as exc:
            raise UserError(exc.message, "The repository looks broken; try another one.", kind="bad_repo") from None
        if shards and all(s in paths for s in shards):
            return shards, index
    if "model.safetensors" in paths:
        return ["model.safetensors"], None
    root = sorted(p for p in paths if p.endswith(".safetensors") and "/" not in p)
    plain = [p for p in root if not p.startswith("consolidated")]
    return (plain or root), None


def _checkpoint_report(report: RepoReport, listing: RepoListing, ctx: HubContext, progress: ProgressFn,
                       cancelled: CancelledFn) -> RepoReport:
    """Ask the converter what it would do with this checkpoint, from config.json and the safetensors headers."""
    from desktop.convert import output_tensors, remote_checkpoint

    progress(0, 0, "Reading config.json...")
    config = read_config(listing, ctx)
    architectures = config.get("architectures")
    report.architecture = str(architectures[0]) if isinstance(architectures, list) and architectures else \
        str(config.get("model_type") or "")
    report.gguf_arch = convertible_architectures()[0].get(report.architecture, "")
    report.attention = shape_from_config(config)
    report.context_length = report.attention.n_ctx_train
    quantized = quantized_checkpoint_reason(config)
    if quantized:  # before reading any header: the config says enough
        return _unsupported(report, quantized, _QUANTIZED_NEXT)

    shards, index = weight_files(listing, ctx)
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for i, path in enumerate(shards):
        check_cancelled(cancelled)
        progress(i, len(shards), f"Reading the tensor list of {path} ({i + 1} of {len(shards)})...")
        for name, entry in safetensors_header(listing, ctx, path).items():
            tensors[name] = (entry.dtype, entry.shape)
    counts: Counter[str] = Counter()
    for dtype, shape in tensors.values():
        n = 1
        for d in shape:
            n *= d
        counts[dtype] += n
    report.parameter_count = sum(counts.values())
    report.dtype = counts.most_common(1)[0][0] if counts else ""
    check_cancelled(cancelled)
    try:  # the converter's refusals: architecture, quantized weights, dtypes, tensors it cannot place
        outputs = output_tensors(remote_checkpoint(config, tensors, listing.repo_id), "f16")
    except UserError as exc:
        return _unsupported(report, exc.message, exc.next_step or _GGUF_NEXT)
    report.kind = "checkpoint"
    present = {f.path for f in listing.files}
    report.download_files = checkpoint_download_files(present, shards, index)
    report.predictions = predict_quant_sizes(outputs, report.gguf_arch, report.attention.n_layer, cancelled)
    return report


def checkpoint_download_files(present: set[str], shards: list[str], index: str | None) -> list[str]:
    """What conversion needs: config, tokenizer and chat template files, the weight shards and their index."""
    extra = [p for p in present if p.startswith("additional_chat_templates/")]
    return sorted([p for p in CONVERSION_FILES if p in present] + shards + extra + ([index] if index else []))


def predict_quant_sizes(outputs: list[Any], gguf_arch: str, n_layers: int,
                        cancelled: CancelledFn = lambda: False) -> list[QuantPrediction]:
    """The GGUF size of every worthwhile quant type of this checkpoint, largest first, quantized from the GGUF
    the converter writes (``outputs``: :func:`desktop.convert.output_tensors`), as the Quantize page does."""
    from desktop.quant.sizing import TensorSpec, predict_size
    from desktop.quant.types import QUANT_TYPES

    specs = [TensorSpec(o.name, o.shape, o.ggml_type) for o in outputs]
    n_params = sum(s.n_elements for s in specs) or 1
    predictions = []
    for qt in QUANT_TYPES:
        check_cancelled(cancelled)
        if qt.name in _SKIPPED_TYPES or qt.family in _SKIPPED_FAMILIES:
            continue
        try:
            size = predict_size(specs, qt.name, arch=gguf_arch, hparams={"n_layer": n_layers})
        except (UserError, KeyError, ValueError) as exc:
            log.info("no size prediction for %s: %s", qt.name, exc)
            continue
        predictions.append(QuantPrediction(qt.name, int(size), round(size * 8 / n_params, 2), qt.needs_imatrix,
                                           qt.description))
    predictions.sort(key=lambda p: -p.size_bytes)
    return predictions


# ---------------------------------------------------------------------------------------------------------------
# GGUF repos


def _gguf_header(listing: RepoListing, ctx: HubContext, path: str, *, need_tensors: bool,
                 cancelled: CancelledFn) -> GgufHeader:
    fetch = range_fetcher(listing, ctx, path)
    size = listing.size_of(path)
    try:
        if need_tensors:
            header = read_gguf_header(fetch, size, cancelled=cancelled)
        else:
            header = read_gguf_header(fetch, size, first=256 * 1024, limit=256 * 1024, partial=True,
                                      cancelled=cancelled)
        check_gguf_numbers(header.metadata)
    except ValueError as exc:
        raise UserError(f"{path} in {listing.repo_id} is not a readable GGUF file ({exc}).",
                        "Choose another file of the repository.", kind="bad_repo") from None
    return header


def _gguf_report(report: RepoReport, listing: RepoListing, ctx: HubContext, progress: ProgressFn,
                 cancelled: CancelledFn) -> RepoReport:
    models, extras = group_gguf_files((f.path, f.size) for f in listing.files)
    report.extras = extras
    if not models:
        return _unsupported(report, "Its GGUF files are only vision projectors or importance matrices, not models.")
    report.kind = "gguf"
    report.gguf_models = models
    complete = [m for m in models if m.complete] or models
    sample = min(complete, key=lambda m: m.size_bytes)
    progress(0, 0, f"Reading the header of {sample.files[0]}...")
    header = _gguf_header(listing, ctx, sample.files[0], need_tensors=True, cancelled=cancelled)
    params = header.parameter_count
    for shard in sample.files[1:]:
        check_cancelled(cancelled)
        params += _gguf_header(listing, ctx, shard, need_tensors=True, cancelled=cancelled).parameter_count
    report.architecture = header.architecture
    report.gguf_arch = header.architecture
    report.parameter_count = params
    if len(sample.files) == 1 and header.tensors:  # the whole tensor table: per-layer bytes, tied embeddings
        report.attention = shape_from_header(header, sample.files[0])
    else:
        report.attention = shape_from_metadata(header.metadata, header.n_vocab)
    report.context_length = report.attention.n_ctx_train
    if not sample.quant:
        sample.quant = header.file_type
    for model in models:
        model.parameter_count = params
        if not model.quant:
            check_cancelled(cancelled)
            model.quant = _gguf_header(listing, ctx, model.files[0], need_tensors=False, cancelled=cancelled).file_type or "unknown"
        if not model.complete:
            report.notes.append(f"{model.name} is missing some of its shards in this repository.")
    if len(models) == 1:
        report.download_files = list(models[0].files)
    return report


def inspect_repo(
    *,
    progress: ProgressFn,
    cancelled: CancelledFn,
    repo: str,
    revision: str | None = None,
    token: str | Literal[False] | None = None,
    timeout: float | None = None,
) -> RepoReport:
    """Inspect a repo without downloading its weights (a job). See :class:`RepoReport`. ``token``: None looks up
    the one saved for the endpoint, False sends none. Untrusted repos are best inspected through
    :func:`desktop.hub.sandbox.inspect_repo_isolated`, which runs this in a child process with limits."""
    ref = parse_repo_ref(repo, revision)
    ctx = hub_context(token, timeout=timeout)
    progress(0, 0, f"Looking up {ref.repo_id}...")
    listing = list_repo(ref, ctx)
    check_cancelled(cancelled)
    with hub_errors(repo_id=ref.repo_id, revision=listing.revision, endpoint=ctx.endpoint, timeout=ctx.timeout):
        report = build_report(listing, ctx, progress=progress, cancelled=cancelled)
    progress(1, 1, f"{ref.repo_id}: {describe(report)}")
    return report
