"""Reading parts of a repo's files without downloading the weights: small JSON files (capped), and byte ranges
of big files streamed so that at most what was asked is read, even from a server or proxy that ignores ``Range``
and sends the whole file. Files already in the local snapshot are read there.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from desktop.convert.checkpoint import MAX_CONFIG_BYTES, parse_config
from desktop.convert.safetensors import MAX_INDEX_BYTES, HeaderEntry, loads_strict, parse_header
from desktop.errors import UserError
from desktop.hub.http import fetch_range
from desktop.hub.repo import HubContext, RepoListing, storage_folder

__all__ = ["MAX_SAFETENSORS_HEADER", "range_fetcher", "read_config", "read_index", "safetensors_header"]

MAX_SAFETENSORS_HEADER = 100_000_000


def _local(listing: RepoListing, ctx: HubContext, path: str) -> Path | None:
    candidate = storage_folder(ctx.cache_dir, listing.repo_id) / "snapshots" / listing.sha / path
    return candidate if candidate.is_file() else None


class _Silent:
    """A progress bar that shows nothing (huggingface_hub's own bars would print to the terminal)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def update(self, n: float | None = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _bad(listing: RepoListing, path: str, why: str) -> UserError:
    return UserError(f"{path} in {listing.repo_id} is not usable ({why}).", "The repository looks broken; try another "
                     "one.", kind="bad_repo")


def _small_file(listing: RepoListing, ctx: HubContext, path: str, cap: int) -> bytes:
    """A small file of the repo, fetched into the cache (conversion needs it anyway); at most ``cap`` bytes are
    accepted, by the listing's size before fetching and by the file's size after."""
    if listing.size_of(path) > cap:
        raise _bad(listing, path, f"it is {listing.size_of(path)} bytes, more than such a file ever is")
    local = _local(listing, ctx, path)
    if local is None:
        from huggingface_hub import hf_hub_download

        local = Path(hf_hub_download(
            listing.repo_id, path, revision=listing.sha, cache_dir=ctx.cache_dir, endpoint=ctx.endpoint,
            token=ctx.token, etag_timeout=ctx.timeout, tqdm_class=_Silent,
        ))
    try:
        with open(local, "rb") as f:
            raw = f.read(cap + 1)
    except OSError as exc:
        raise _bad(listing, path, exc.strerror or "it cannot be read") from None
    if len(raw) > cap:
        raise _bad(listing, path, "it is larger than such a file ever is")
    return raw


def read_config(listing: RepoListing, ctx: HubContext) -> dict[str, Any]:
    """The repo's ``config.json``, checked like the converter checks a local one (numbers bounded)."""
    raw = _small_file(listing, ctx, "config.json", MAX_CONFIG_BYTES)
    try:
        return parse_config(raw, f"config.json in {listing.repo_id}")
    except UserError as exc:
        raise UserError(exc.message, "The repository looks broken; try another one.", kind="bad_repo") from None


def read_index(listing: RepoListing, ctx: HubContext, path: str) -> Any:
    """A safetensors index (``model.safetensors.index.json``), capped and parsed strictly."""
    raw = _small_file(listing, ctx, path, MAX_INDEX_BYTES)
    try:
        return loads_strict(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _bad(listing, path, f"it is not valid JSON: {str(exc)[:80]}") from None


def range_fetcher(listing: RepoListing, ctx: HubContext, path: str) -> Callable[[int, int], bytes]:
    """``fetch(start, end)`` for one file of the repo: from the local snapshot when it is there, else streamed."""
    local = _local(listing, ctx, path)
    if local is not None:
        def read_local(start: int, end: int) -> bytes:
            with open(local, "rb") as f:
                f.seek(start)
                return f.read(max(0, end - start))

        return read_local
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(listing.repo_id, path, revision=listing.sha, endpoint=ctx.endpoint)
    headers = build_hf_headers(token=ctx.token, library_name="quantdesk")
    return lambda start, end: fetch_range(url, headers, start, end, ctx.timeout)


def safetensors_header(listing: RepoListing, ctx: HubContext, path: str) -> dict[str, HeaderEntry]:
    """The tensors a safetensors file's header lists, validated like a local file's (see
    :func:`desktop.convert.safetensors.parse_header`)."""
    fetch = range_fetcher(listing, ctx, path)
    size = listing.size_of(path)
    first = fetch(0, min(size, 100_000) if size else 100_000)
    if len(first) < 8:
        raise UserError(f"{path} in {listing.repo_id} is not a safetensors file.", "Choose another repository.",
                        kind="bad_repo")
    n = struct.unpack("<Q", first[:8])[0]
    if n > MAX_SAFETENSORS_HEADER or (size and n + 8 > size):
        raise _bad(listing, path, "its safetensors header runs past the end of the file")
    raw = first[8 : 8 + n] if len(first) >= 8 + n else first[8:] + fetch(len(first), 8 + n)
    try:
        return parse_header(raw, size - 8 - n if size else None)
    except ValueError as exc:
        raise _bad(listing, path, f"its safetensors header is broken: {exc}") from None
