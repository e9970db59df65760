"""Models on Hugging Face, without Qt: what a repo is, whether it fits this machine, search, and the local cache.

* :func:`parse_repo_ref` accepts ``owner/name`` or a Hub URL (``/tree/<rev>``, ``/blob/<rev>/<file>``) and refuses
  empty, malformed and path-like input before any request.
* :func:`desktop.hub.inspect.inspect_repo` (a job: ``progress``/``cancelled``) lists files and sizes and classifies the repo: a
  safetensors checkpoint (architecture, parameter count, dtype and the predicted size of every quant type), a GGUF
  repo (its models, shards grouped), or unsupported with the reason in a sentence.
* :func:`fit_rows` turns a report into a GPU / RAM / neither verdict per quant type or GGUF model, for a context.
Search and the cache listing are in :mod:`desktop.hub.search`, downloads in :mod:`desktop.hub.download`. Every call reads ``HF_ENDPOINT``, ``HF_HUB_CACHE``/``HF_HOME`` and
``HF_HUB_OFFLINE`` when it runs (huggingface_hub itself reads them once, at import), and the token comes from the
keyring (:mod:`desktop.hub.tokens`). Network failures become :class:`~desktop.errors.UserError` values
(:mod:`desktop.hub.errors`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

from desktop.hub import tokens
from desktop.errors import UserError
from desktop.memory import Fit, Machine, ModelShape, PlanOptions, fit
from desktop.hub.errors import TOKEN_KINDS, hub_errors, translate
from desktop.hub.http import count, get_json_pages
from desktop.gguf.remote import GgufModel
from desktop.jobs import CancelledFn, ProgressFn, check_cancelled

log = logging.getLogger(__name__)

__all__ = [
    "TOKEN_KINDS",
    "FitRow",
    "HubContext",
    "QuantPrediction",
    "RepoFile",
    "RepoListing",
    "RepoRef",
    "RepoReport",
    "fit_rows",
    "hub_context",
    "list_repo",
    "parse_repo_ref",
]

_HUB_HOSTS = {"huggingface.co", "www.huggingface.co", "hf.co"}
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_EXAMPLE = "Use the form owner/name, for example Qwen/Qwen3-0.6B, or paste the model's Hugging Face address."


@dataclass(frozen=True)
class RepoRef:
    """A model repo on the Hub; ``filename`` is set when a URL pointed at one file."""

    repo_id: str
    revision: str | None = None
    filename: str | None = None


def _invalid(text: str, why: str = "") -> UserError:
    shown = text if len(text) <= 80 else text[:77] + "..."
    return UserError(f"'{shown}' is not a Hugging Face model id{why}.", _EXAMPLE, kind="invalid_repo")


def _check_revision(revision: str | None) -> str | None:
    if revision is None or not revision.strip():
        return None
    revision = revision.strip()
    if len(revision) > 200 or any(c.isspace() for c in revision) or ".." in revision or revision.startswith("/"):
        raise UserError(
            f"'{revision[:80]}' is not a valid revision.",
            "Give a branch, tag or commit id, or leave it empty for main.",
            kind="invalid_revision",
        )
    return revision


def parse_repo_ref(text: str, revision: str | None = None) -> RepoRef:
    """``owner/name`` (or a legacy ``name``) or a Hub URL, checked without any request."""
    raw = (text or "").strip()
    if not raw:
        raise UserError("Enter a Hugging Face model id.", _EXAMPLE, kind="invalid_repo")
    if (
        raw.startswith(("/", "./", "../", "~", ".\\", "..\\", "\\"))
        or "\\" in raw
        or re.match(r"^[A-Za-z]:[\\/]", raw)
        or raw in (".", "..")
    ):
        raise UserError(
            f"'{raw[:80]}' looks like a folder on this computer, not a Hugging Face model id.",
            "To use a model file you already have, add it from the Library instead.",
            kind="invalid_repo",
        )
    filename = None
    url_revision = None
    if "://" in raw or raw.split("/", 1)[0].lower() in _HUB_HOSTS:
        parts = urlsplit(raw if "://" in raw else f"https://{raw}")
        endpoint_host = urlsplit(tokens.endpoint()).netloc.lower()
        if parts.scheme not in ("http", "https") or parts.netloc.lower() not in _HUB_HOSTS | {endpoint_host}:
            raise _invalid(raw, " (only huggingface.co addresses are understood)")
        segments = [unquote(s) for s in parts.path.split("/") if s]
        if segments[:1] in (["datasets"], ["spaces"]):
            raise _invalid(raw, f" (it is a {segments[0][:-1]}, not a model)")
        keyword = next((i for i, s in enumerate(segments) if s in ("tree", "blob", "resolve")), None)
        if keyword is not None:
            if keyword + 1 >= len(segments):
                raise _invalid(raw)
            url_revision = segments[keyword + 1]
            if segments[keyword] != "tree" and keyword + 2 < len(segments):
                filename = "/".join(segments[keyword + 2 :])
            segments = segments[:keyword]
        repo_segments = segments
    else:
        repo_segments = raw.split("/")
    if not 1 <= len(repo_segments) <= 2 or not all(_SEGMENT_RE.match(s) for s in repo_segments):
        raise _invalid(raw)
    if any(".." in s or "--" in s for s in repo_segments):
        raise _invalid(raw)
    return RepoRef("/".join(repo_segments), _check_revision(revision) or _check_revision(url_revision), filename)


@dataclass(frozen=True)
class HubContext:
    """Where and how to reach the Hub for one operation. The token is never part of the repr."""

    endpoint: str
    cache_dir: str
    token: str | Literal[False] = field(default=False, repr=False)  # False: send none (see tokens.token_for)
    offline: bool = False
    timeout: float = 10.0

    def api(self) -> Any:
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token, library_name="quantdesk")


def default_cache_dir() -> str:
    """The Hugging Face cache folder as huggingface_hub computes it, but from the environment as it is now."""
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if cache:
        return os.path.expanduser(cache)
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    return os.path.join(os.path.expanduser(home), "hub")


def _offline_setting() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from desktop.settings import load_settings

        return bool(load_settings().hf_offline)
    except Exception:  # noqa: BLE001 - unreadable settings mean the defaults
        return False


def hub_context(token: str | Literal[False] | None = None, *, timeout: float | None = None) -> HubContext:
    """The context for a call now: endpoint, cache folder, the token for this endpoint (``token`` if given, else
    the keyring's; False: none, and nothing is looked up), offline."""
    endpoint = tokens.endpoint()
    return HubContext(
        endpoint=endpoint,
        cache_dir=default_cache_dir(),
        token=False if token is False else tokens.token_for(endpoint, token),
        offline=_offline_setting(),
        timeout=timeout if timeout is not None else 10.0,
    )


# ---------------------------------------------------------------------------------------------------------------
# Listing


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int


@dataclass
class RepoListing:
    """The files of one commit of a repo. ``from_cache``: read from the local cache (offline), which knows only
    the files downloaded before; ``snapshot_dir`` is the local snapshot folder when there is one."""

    repo_id: str
    revision: str
    sha: str
    files: list[RepoFile]
    gated: bool = False
    private: bool = False
    from_cache: bool = False
    snapshot_dir: str = ""

    def size_of(self, path: str) -> int:
        return next((f.size for f in self.files if f.path == path), 0)


def storage_folder(cache_dir: str, repo_id: str) -> Path:
    return Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))


def cached_snapshot(cache_dir: str, repo_id: str, revision: str | None) -> tuple[str, Path] | None:
    """(commit sha, snapshot folder) of ``revision`` in the local cache, or None."""
    folder = storage_folder(cache_dir, repo_id)
    rev = revision or "main"
    sha = rev if _SHA_RE.match(rev) else None
    if sha is None:
        try:
            sha = (folder / "refs" / rev).read_text(encoding="utf-8").strip()
        except OSError:
            return None
    snapshot = folder / "snapshots" / sha
    return (sha, snapshot) if snapshot.is_dir() else None


def _cached_listing(ctx: HubContext, ref: RepoRef) -> RepoListing | None:
    found = cached_snapshot(ctx.cache_dir, ref.repo_id, ref.revision)
    if found is None:
        return None
    sha, snapshot = found
    files = []
    for path in sorted(snapshot.rglob("*")):
        if path.is_file():  # follows the symlink; a dangling pointer is not a usable file
            files.append(RepoFile(path.relative_to(snapshot).as_posix(), path.stat().st_size))
    return RepoListing(ref.repo_id, ref.revision or "main", sha, files, from_cache=True, snapshot_dir=str(snapshot))


def list_repo(ref: RepoRef, ctx: HubContext) -> RepoListing:
    """The files and sizes of ``ref`` from the Hub, or from the cache when offline or unreachable."""
    if ctx.offline:
        cached = _cached_listing(ctx, ref)
        if cached is None:
            raise UserError(
                f"{ref.repo_id} is not downloaded, and offline mode is on.",
                "Turn off offline mode (Settings or HF_HUB_OFFLINE) to fetch it.",
                kind="offline",
            )
        return cached
    api = ctx.api()
    revision = ref.revision or "main"
    try:
        info = api.repo_info(ref.repo_id, revision=revision, timeout=ctx.timeout)
        files = [RepoFile(str(e.get("path"))[:1000], count(e.get("size")))
                 for e in get_json_pages(ctx, f"/api/models/{ref.repo_id}/tree/{quote(str(info.sha), safe='')}",
                                          {"recursive": "true", "expand": "false"})
                 if isinstance(e, dict) and e.get("type") == "file" and isinstance(e.get("path"), str)]
    except UserError:
        raise
    except Exception as exc:
        error = translate(exc, repo_id=ref.repo_id, revision=revision, endpoint=ctx.endpoint, timeout=ctx.timeout)
        if error is None:
            raise
        if error.kind in ("offline", "timeout"):
            cached = _cached_listing(ctx, ref)
            if cached is not None:
                log.info("Hub unreachable (%s); using the cached snapshot of %s", error.kind, ref.repo_id)
                return cached
        raise error from exc
    snapshot = storage_folder(ctx.cache_dir, ref.repo_id) / "snapshots" / str(info.sha)
    return RepoListing(
        ref.repo_id, revision, str(info.sha), sorted(files, key=lambda f: f.path),
        gated=bool(getattr(info, "gated", False)), private=bool(getattr(info, "private", False)),
        snapshot_dir=str(snapshot) if snapshot.is_dir() else "",
    )


# ---------------------------------------------------------------------------------------------------------------
# Reports


@dataclass(frozen=True)
class QuantPrediction:
    """The predicted GGUF size of a checkpoint quantized to ``name``."""

    name: str
    size_bytes: int
    bpw: float  # what this model actually comes to, bits per parameter
    needs_imatrix: bool
    description: str


@dataclass
class RepoReport:
    """What :func:`inspect_repo` found. ``kind`` is "checkpoint", "gguf" or "unsupported" (``reason`` says why
    in a sentence and ``next_step`` what to do). Plain data: ``to_dict`` gives the ``--json`` form."""

    repo_id: str
    revision: str
    sha: str
    kind: str
    files: list[RepoFile]
    reason: str = ""
    next_step: str = ""
    gated: bool = False
    private: bool = False
    from_cache: bool = False
    architecture: str = ""  # the Hugging Face class (LlamaForCausalLM) or the GGUF architecture
    gguf_arch: str = ""  # llama.cpp's name for it (llama, qwen2, ...)
    parameter_count: int = 0
    dtype: str = ""  # the checkpoint's main tensor type (BF16, F16, F32)
    context_length: int = 0  # what the model was trained for
    attention: ModelShape | None = None  # the planner's shape, without weight bytes
    predictions: list[QuantPrediction] = field(default_factory=list)
    gguf_models: list[GgufModel] = field(default_factory=list)
    extras: list[str] = field(default_factory=list)  # GGUF projector/imatrix files
    download_files: list[str] = field(default_factory=list)  # what `pull` fetches by default
    notes: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def download_bytes(self) -> int:
        sizes = {f.path: f.size for f in self.files}
        return sum(sizes.get(p, 0) for p in self.download_files)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["total_bytes"] = self.total_bytes
        data["download_bytes"] = self.download_bytes
        return data


@dataclass(frozen=True)
class FitRow:
    """One line of the fit table: a quant type (checkpoint, predicted size) or a GGUF model (real size)."""

    label: str
    quant: str
    size_bytes: int
    kv_bytes: int
    fit: Fit
    predicted: bool
    files: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["verdict"] = self.fit.where
        data["sentence"] = self.fit.sentence()
        return data


def fit_rows(report: RepoReport, n_ctx: int, machine: Machine) -> list[FitRow]:
    """Where each quant type (checkpoint) or each GGUF model would run with a context of ``n_ctx`` tokens: the
    memory planner's verdict for its size on this machine's usable GPUs and RAM."""
    shape = report.attention
    if shape is None or shape.n_layer <= 0:
        return []
    options = PlanOptions(n_ctx=n_ctx)
    rows = []
    if report.kind == "checkpoint":
        for p in report.predictions:
            verdict = fit(shape.with_weights(p.size_bytes), machine, options)
            rows.append(FitRow(p.name, p.name, p.size_bytes, verdict.kv_bytes, verdict, True))
    elif report.kind == "gguf":
        for m in report.gguf_models:
            verdict = fit(shape.with_weights(m.size_bytes), machine, options)
            rows.append(FitRow(m.name, m.quant, m.size_bytes, verdict.kv_bytes, verdict, False, tuple(m.files)))
    return rows


def describe(report: RepoReport) -> str:
    """One line for a report: what the repo is."""
    if report.kind == "checkpoint":
        from desktop.gguf.reader import format_parameters

        return (f"{report.architecture} checkpoint, {format_parameters(report.parameter_count)} parameters "
                f"in {report.dtype}")
    if report.kind == "gguf":
        n = len(report.gguf_models)
        return f"GGUF repository with {n} model{'s' if n != 1 else ''}"
    return f"not usable: {report.reason}"
