"""Bounded HTTP reads from the Hub: byte ranges streamed so that at most what was asked is kept (also when a server
or proxy ignores ``Range``), JSON answers capped in size and parsed strictly, error bodies read up to 64 KiB, and
numbers from JSON answers clamped. Nothing a server sends is buffered whole.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from desktop.errors import UserError

__all__ = ["MAX_JSON_BYTES", "count", "fetch_range", "get_json", "get_json_pages"]

MAX_ERROR_BODY = 64 * 1024
MAX_JSON_BYTES = 64 * 1024 * 1024  # one page of a listing; a repo of 100,000 files is about 20 MB
_CHUNK = 64 * 1024


def count(value: Any, bound: int = 1 << 62) -> int:
    """A count or size from a JSON answer: a non-negative int at most ``bound``, else 0."""
    return min(value, bound) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _raise_for_status(response: Any) -> None:
    from huggingface_hub.utils import hf_raise_for_status

    if response.status_code >= 400:
        body = bytearray()
        for chunk in response.iter_bytes(_CHUNK):
            body += chunk
            if len(body) >= MAX_ERROR_BODY:
                break
        response._content = bytes(body[:MAX_ERROR_BODY])  # what hf_raise_for_status reads, bounded
        hf_raise_for_status(response)


def fetch_range(url: str, headers: dict[str, str], start: int, end: int, timeout: float) -> bytes:
    """Bytes ``[start, end)`` of ``url``, streamed: never more than ``end - start`` are kept, and a server that
    ignores ``Range`` (200 with the whole file) is read only up to ``end``."""
    from huggingface_hub.utils import get_session

    want = end - start
    if want <= 0:
        return b""
    with get_session().stream("GET", url, headers={**headers, "Range": f"bytes={start}-{end - 1}"},
                              timeout=timeout) as response:
        _raise_for_status(response)
        skip = start if response.status_code == 200 else 0  # Range ignored: the body starts at byte 0
        out = bytearray()
        for chunk in response.iter_bytes(_CHUNK):
            if skip:
                if len(chunk) <= skip:
                    skip -= len(chunk)
                    continue
                chunk, skip = chunk[skip:], 0
            out += chunk[: want - len(out)]
            if len(out) >= want:
                break
    return bytes(out)




def get_json(url: str, params: dict[str, str] | None, headers: dict[str, str], timeout: float) -> tuple[Any, Any]:
    """(parsed JSON, response) of a GET, read up to :data:`MAX_JSON_BYTES` and parsed strictly (no Infinity/NaN)."""
    from huggingface_hub.utils import get_session

    from desktop.convert.safetensors import loads_strict

    with get_session().stream("GET", url, params=params, headers=headers, timeout=timeout) as response:
        _raise_for_status(response)
        body = bytearray()
        for chunk in response.iter_bytes(_CHUNK):
            body += chunk
            if len(body) > MAX_JSON_BYTES:
                raise UserError(f"The Hub's answer to {url.split('?')[0][:120]} is larger than "
                                f"{MAX_JSON_BYTES // 1024**2} MiB, so QuantDesk stopped reading it.",
                                "Check HF_ENDPOINT, or retry later.", kind="bad_server")
    try:
        return loads_strict(bytes(body)), response
    except (UnicodeDecodeError, ValueError):
        raise UserError(f"The Hub's answer to {url.split('?')[0][:120]} is not valid JSON.",
                        "Check HF_ENDPOINT, or retry later.", kind="bad_server") from None


def _same_origin(url: str, endpoint: str) -> bool:
    a, b = urlsplit(url), urlsplit(endpoint)
    return (a.scheme, a.hostname, a.port) == (b.scheme, b.hostname, b.port)


MAX_LISTED = 200_000  # items of one listing, all pages together


def get_json_pages(ctx: Any, path: str, params: dict[str, str], max_pages: int = 1000) -> list[Any]:
    """GET a Hub API list (``ctx``: a :class:`~desktop.hub.repo.HubContext`), following ``Link: <...>; rel="next"``
    pages on the same scheme, host and port only, with the context's timeout.

    huggingface_hub's own listing calls retry connection failures for about 23 s and take no timeout; the app
    prefers a prompt sentence and a retry button.
    """
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers(token=ctx.token, library_name="quantdesk")
    url: str | None = f"{ctx.endpoint}{path}"
    items: list[Any] = []
    query: dict[str, str] | None = params
    for _ in range(max_pages):
        if url is None:
            break
        page, response = get_json(url, query, headers, ctx.timeout)
        items.extend(page[: MAX_LISTED - len(items)] if isinstance(page, list) else [])
        url = response.links.get("next", {}).get("url") if hasattr(response, "links") else None
        query = None  # the next link carries the query
        if len(items) >= MAX_LISTED:
            break
        if url is not None and not _same_origin(url, ctx.endpoint):
            raise UserError("The Hub's answer sent QuantDesk to another server for the next page of the list, "
                            "so QuantDesk stopped there.", "Check HF_ENDPOINT, or retry later.", kind="bad_server")
    return items
