"""Search Hugging Face, and list what the local Hugging Face cache holds (which works offline).

:func:`search_models` returns a :class:`SearchResult`; when the Hub cannot be reached (or offline mode is on) it
is a plain offline result with a sentence, not an error. :func:`cached_repos` needs no network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from desktop.hub.http import count, get_json_pages
from desktop.hub.repo import default_cache_dir, hub_context
from desktop.hub.errors import translate

__all__ = ["CachedRepo", "SearchHit", "SearchResult", "cached_repos", "search_models"]


@dataclass(frozen=True)
class SearchHit:
    repo_id: str
    downloads: int
    likes: int
    pipeline_tag: str
    tags: tuple[str, ...]
    is_gguf: bool
    last_modified: str


@dataclass
class SearchResult:
    """Search results; ``offline`` True (with a ``message``) when the Hub could not be reached."""

    query: str
    hits: list[SearchHit]
    offline: bool = False
    message: str = ""


def search_models(
    query: str, *, gguf: bool = False, text_generation: bool = False, limit: int = 30, token: str | None = None,
    timeout: float | None = None,
) -> SearchResult:
    """Models whose id contains ``query``, most downloaded first; a plain offline result when offline."""
    query = (query or "").strip()[:200]
    ctx = hub_context(token, timeout=timeout)
    offline_message = "Offline: searching needs a connection to Hugging Face. Models already downloaded are listed."
    if ctx.offline:
        return SearchResult(query, [], True, offline_message)
    params: dict[str, str] = {"sort": "downloads", "direction": "-1", "limit": str(max(1, min(limit, 200)))}
    if query:
        params["search"] = query
    if gguf:
        params["filter"] = "gguf"
    if text_generation:
        params["pipeline_tag"] = "text-generation"
    try:
        models = get_json_pages(ctx, "/api/models", params, max_pages=1)
    except Exception as exc:
        error = translate(exc, repo_id="the search", endpoint=ctx.endpoint, timeout=ctx.timeout)
        if error is None:
            raise
        if error.kind in ("offline", "timeout"):
            return SearchResult(query, [], True, offline_message)
        raise error from exc
    hits = []
    for m in models:
        if not isinstance(m, dict) or not m.get("id"):
            continue
        raw_tags = m.get("tags")
        tags = tuple(str(t)[:100] for t in raw_tags[:200]) if isinstance(raw_tags, list) else ()
        hits.append(
            SearchHit(
                repo_id=str(m["id"])[:200],
                downloads=count(m.get("downloads")),
                likes=count(m.get("likes")),
                pipeline_tag=str(m.get("pipeline_tag") or ""),
                tags=tags,
                is_gguf="gguf" in tags or m.get("library_name") == "gguf",
                last_modified=str(m.get("lastModified") or ""),
            )
        )
    return SearchResult(query, hits)


@dataclass(frozen=True)
class CachedRepo:
    """A model repo in the local Hugging Face cache: usable offline."""

    repo_id: str
    sha: str  # the most recent cached commit
    refs: tuple[str, ...]
    snapshot_dir: str
    files: tuple[str, ...]
    size_bytes: int
    kind: str  # "gguf", "checkpoint" or "other"
    last_modified: float


def cached_repos(cache_dir: str | None = None, *, include_partial: bool = False) -> list[CachedRepo]:
    """Model repos in the Hugging Face cache that hold weights (GGUF or safetensors), most recently changed
    first, without any network. ``include_partial`` adds repos with other files only (say, the config.json an
    inspection fetched)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir or default_cache_dir())
    except CacheNotFound:
        return []
    repos = []
    for repo in info.repos:
        if repo.repo_type != "model" or not repo.revisions:
            continue
        latest = max(repo.revisions, key=lambda r: r.last_modified)
        names = tuple(sorted(_relative(f.file_path, latest.snapshot_path) for f in latest.files))
        kind = ("gguf" if any(n.endswith(".gguf") for n in names)
                else "checkpoint" if any(n.endswith(".safetensors") for n in names) and "config.json" in names
                else "other")
        if kind == "other" and not include_partial:
            continue
        repos.append(CachedRepo(repo.repo_id, latest.commit_hash, tuple(sorted(latest.refs)),
                                str(latest.snapshot_path), names, int(latest.size_on_disk), kind,
                                float(latest.last_modified)))
    repos.sort(key=lambda r: -r.last_modified)
    return repos


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).name
