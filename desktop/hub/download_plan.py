"""What a download fetches: the files chosen from a repo's listing (a checkpoint's conversion files or one GGUF
model with its shards), which of them are already in the cache, and whether the cache's disk has room."""

from __future__ import annotations

import fnmatch
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from desktop.errors import UserError
from desktop.gguf.remote import group_gguf_files
from desktop.hub.repo import HubContext, RepoFile, RepoListing, RepoRef, list_repo, storage_folder
from desktop.jobs import format_bytes

__all__ = ["DISK_MARGIN_BYTES", "DownloadPlan", "check_disk_space", "plan_download", "select_files"]

DISK_MARGIN_BYTES = 64 * 1024**2
"""Kept free on the cache's disk beyond what the download needs."""


@dataclass
class DownloadPlan:
    """What :func:`download` will fetch: ``files`` in download order, ``cached`` those already complete."""

    repo_id: str
    revision: str
    sha: str
    files: list[RepoFile]
    cached: list[str]
    snapshot_dir: str
    from_cache: bool = False
    kind: str = ""  # "checkpoint", "gguf" or "files" (an explicit pattern outside those)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def cached_bytes(self) -> int:
        cached = set(self.cached)
        return sum(f.size for f in self.files if f.path in cached)

    @property
    def remaining(self) -> list[RepoFile]:
        cached = set(self.cached)
        return [f for f in self.files if f.path not in cached]



def _has_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def select_files(listing: RepoListing, pattern: str | None, config: Any = None,
                 weights: tuple[list[str], str | None] | None = None) -> tuple[str, list[RepoFile]]:
    """(kind, files) that a download of ``listing`` with the ``--file`` ``pattern`` fetches.

    A pattern without wildcards matches a path exactly, else any file containing it ("Q4_K_M"); matching is
    case-insensitive. A match on one GGUF shard brings all shards of that model. Without a pattern: a
    checkpoint's conversion files (``config`` is its config.json, ``weights`` its shards and index as
    :func:`desktop.hub.inspect.weight_files` gives them), or the only GGUF model of the repo.
    """
    from desktop.hub import inspect as hub_inspect

    by_path = {f.path: f for f in listing.files}
    models, _ = group_gguf_files((f.path, f.size) for f in listing.files)
    if pattern:
        pattern = pattern.strip()
        lowered = pattern.lower()
        if pattern in by_path:
            matched = [pattern]
        else:
            glob = lowered if _has_glob(pattern) else f"*{lowered}*"
            matched = [p for p in by_path if fnmatch.fnmatchcase(p.lower(), glob)
                       or fnmatch.fnmatchcase(p.rsplit("/", 1)[-1].lower(), glob)]
        if not matched:
            raise UserError(
                f"No file in {listing.repo_id} matches '{pattern}'.",
                f"Run `quantdesk inspect {listing.repo_id}` to see its files.",
                kind="not_found",
            )
        hit_models = [m for m in models if any(p in m.files for p in matched)]
        if len(hit_models) > 1:
            names = ", ".join(m.name.rsplit("/", 1)[-1] for m in hit_models[:6])
            raise UserError(
                f"'{pattern}' matches {len(hit_models)} GGUF models in {listing.repo_id}: {names}.",
                "Give a more precise pattern, such as the full quant type (Q4_K_M).",
                kind="ambiguous",
            )
        paths = set(matched) | (set(hit_models[0].files) if hit_models else set())
        kind = "gguf" if hit_models else "files"
        return kind, _ordered([by_path[p] for p in paths])
    kind, reason, next_step = hub_inspect.classify_files(list(by_path))
    if kind == "unsupported":
        raise UserError(f"QuantDesk cannot use {listing.repo_id}: {reason[0].lower()}{reason[1:]}", next_step,
                        kind="unsupported")
    if kind == "gguf":
        complete = [m for m in models if m.complete]
        if len(models) != 1:
            quants = ", ".join(m.quant or m.name for m in models[:8])
            raise UserError(
                f"{listing.repo_id} holds {len(models)} GGUF models ({quants}); choose one.",
                "Pass --file with its quant type, for example --file Q4_K_M.",
                kind="choose_file",
            )
        return "gguf", _ordered([by_path[p] for p in (complete or models)[0].files])
    reason = hub_inspect.quantized_checkpoint_reason(config)
    if reason:
        raise UserError(f"QuantDesk cannot use {listing.repo_id}: {reason[0].lower()}{reason[1:]}",
                        hub_inspect._QUANTIZED_NEXT, kind="unsupported")
    return "checkpoint", _ordered([by_path[p] for p in _checkpoint_paths(listing, weights)])


def _checkpoint_paths(listing: RepoListing, weights: tuple[list[str], str | None] | None) -> list[str]:
    from desktop.hub import inspect as hub_inspect

    present = {f.path for f in listing.files}
    if weights is None:  # no index read: every top-level shard but Mistral's duplicate "consolidated" ones
        root = sorted(p for p in present if p.endswith(".safetensors") and "/" not in p)
        shards = ["model.safetensors"] if "model.safetensors" in present else (
            [p for p in root if not p.startswith("consolidated")] or root)
        index = "model.safetensors.index.json" if "model.safetensors.index.json" in present else None
        weights = (shards, index)
    return hub_inspect.checkpoint_download_files(present, weights[0], weights[1])


def _ordered(files: list[RepoFile]) -> list[RepoFile]:
    """Small files first: config and tokenizer are ready early, and a failure late in a big file keeps them."""
    return sorted(files, key=lambda f: (f.size, f.path))


def _snapshot(ctx: HubContext, repo_id: str, sha: str) -> Path:
    return storage_folder(ctx.cache_dir, repo_id) / "snapshots" / sha


def plan_download(ref: RepoRef, ctx: HubContext, pattern: str | None = None) -> DownloadPlan:
    """List the repo (or its cached copy), choose the files and see which are already complete."""
    from desktop.hub import inspect as hub_inspect

    listing = list_repo(ref, ctx)
    snapshot = _snapshot(ctx, listing.repo_id, listing.sha)
    present = {f.path for f in listing.files if (snapshot / f.path).is_file()}  # before config.json is read
    config = weights = None
    if not pattern and hub_inspect.classify_files([f.path for f in listing.files])[0] == "checkpoint":
        config = hub_inspect.read_config(listing, ctx)
        weights = hub_inspect.weight_files(listing, ctx)
    kind, files = select_files(listing, pattern, config, weights)
    cached = [f.path for f in files if f.path in present]
    return DownloadPlan(listing.repo_id, listing.revision, listing.sha, files, cached, str(snapshot),
                        listing.from_cache, kind)


def _free_bytes(path: str) -> int:
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def check_disk_space(plan: DownloadPlan, ctx: HubContext) -> None:
    needed = sum(f.size for f in plan.remaining)
    if not needed:
        return
    free = _free_bytes(ctx.cache_dir)
    if needed + DISK_MARGIN_BYTES > free:
        raise UserError(
            f"Not enough disk space: this download needs {format_bytes(needed)}, and the Hugging Face cache "
            f"({ctx.cache_dir}) has {format_bytes(free)} free.",
            "Free some space, or set HF_HOME to a folder on a bigger disk, then retry.",
            kind="disk_full",
        )
