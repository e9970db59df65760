"""What went wrong talking to Hugging Face, as one sentence and a next step.

:func:`translate` turns the exceptions huggingface_hub and its HTTP client raise into :class:`UserError` values
with a ``kind`` the GUI can act on: the kinds in :data:`TOKEN_KINDS` mean "ask for a token, then retry".
huggingface_hub often wraps the real cause (a 500 on a HEAD becomes "cannot find the requested files in the
local cache"), so the whole ``__cause__``/``__context__`` chain is searched for the most telling error.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from types import ModuleType

from desktop.errors import UserError

__all__ = ["TOKEN_KINDS", "hub_errors", "translate"]

TOKEN_KINDS = frozenset({"auth_required", "access_denied", "bad_token"})
"""Error kinds after which the app asks for a Hugging Face token and retries."""

_TOKEN_STEP = "Enter a Hugging Face access token with read permission (huggingface.co/settings/tokens)."
_RETRY_STEP = "Retry; files that finished downloading are kept."


def _httpx() -> ModuleType:
    """The HTTP client module huggingface_hub uses (httpx2 in 2.x, httpx in 1.x)."""
    from huggingface_hub.utils import _http

    module = getattr(_http, "httpx2", None) or getattr(_http, "httpx", None)
    assert module is not None
    return module


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def translate(
    exc: BaseException,
    *,
    repo_id: str,
    revision: str | None = None,
    filename: str | None = None,
    endpoint: str = "",
    timeout: float | None = None,
) -> UserError | None:
    """The user-facing error for ``exc``, or None when it is not a failure this module understands."""
    for candidate in _chain(exc):
        error = _one(candidate, repo_id, revision, filename, endpoint, timeout)
        if error is not None:
            return error
    from huggingface_hub.errors import LocalEntryNotFoundError

    if any(isinstance(e, LocalEntryNotFoundError) for e in _chain(exc)):
        return UserError(
            f"{repo_id} is not downloaded, and Hugging Face cannot be reached to fetch it.",
            "Connect to the internet, or turn off offline mode in Settings, then retry.",
            kind="offline",
        )
    return None


def _one(  # noqa: C901 - one branch per failure, in the order that matters
    e: BaseException, repo_id: str, revision: str | None, filename: str | None, endpoint: str, timeout: float | None
) -> UserError | None:
    from huggingface_hub import errors as hf

    httpx = _httpx()
    what = f"'{filename}' in {repo_id}" if filename else repo_id
    if isinstance(e, UserError):
        return e
    if isinstance(e, hf.GatedRepoError):
        if _status(e) == 403:
            return UserError(
                f"Your Hugging Face token does not give access to {repo_id}.",
                "Accept the model's terms on its Hugging Face page with the same account, or use another token.",
                kind="access_denied",
            )
        return UserError(
            f"{repo_id} is gated: Hugging Face needs a token from an account that accepted its terms.",
            "Accept the terms on the model's Hugging Face page, then enter your access token.",
            kind="auth_required",
        )
    if isinstance(e, hf.RepositoryNotFoundError):
        if _status(e) == 401:
            return UserError(f"{repo_id} does not exist, or it is private.", _TOKEN_STEP, kind="auth_required")
        return UserError(
            f"There is no model called {repo_id} on Hugging Face.",
            "Check the spelling (owner/name), or search for the model by name.",
            kind="not_found",
        )
    if isinstance(e, hf.RevisionNotFoundError):
        return UserError(
            f"{repo_id} has no revision '{revision or 'main'}'.",
            "Leave the revision empty to use main, or give a branch, tag or commit that exists.",
            kind="revision_not_found",
        )
    if isinstance(e, hf.RemoteEntryNotFoundError):
        return UserError(
            f"{what} does not exist.", "Inspect the repository to see the files it has.", kind="not_found"
        )
    if isinstance(e, hf.DisabledRepoError):
        return UserError(f"Hugging Face has disabled {repo_id}.", "Choose another model.", kind="not_found")
    if isinstance(e, hf.OfflineModeIsEnabled):
        return UserError(
            f"{what} is not downloaded, and offline mode is on.",
            "Turn off offline mode (Settings or HF_HUB_OFFLINE), then retry.",
            kind="offline",
        )
    if isinstance(e, hf.HfHubHTTPError):
        status = _status(e)
        if status == 401:
            return UserError("Hugging Face did not accept the access token.", _TOKEN_STEP, kind="bad_token")
        if status == 403:
            return UserError(f"Hugging Face refused access to {what}.", _TOKEN_STEP, kind="access_denied")
        if status == 429:
            return UserError(
                "Hugging Face is limiting how fast this computer may download.",
                "Wait a few minutes, then retry; a token raises the limit.",
                kind="rate_limited",
            )
        if status is not None and status >= 500:
            return UserError(
                f"The Hugging Face server failed (HTTP {status}) while answering for {what}.",
                "Try again in a few minutes; files that finished downloading are kept.",
                kind="server_error",
            )
        return UserError(
            f"Hugging Face answered HTTP {status} for {what}.", "Check the repository and retry.", kind="http_error"
        )
    if isinstance(e, httpx.TimeoutException):
        limit = f" within {timeout:g} s" if timeout else " in time"
        return UserError(
            f"Hugging Face ({endpoint or 'the server'}) did not answer{limit}.",
            "Check your internet connection and retry.",
            kind="timeout",
        )
    if isinstance(e, httpx.ConnectError):
        return UserError(
            f"Cannot reach Hugging Face at {endpoint or 'its server'}.",
            "Check your internet connection; models already downloaded still work offline.",
            kind="offline",
        )
    if isinstance(e, (httpx.RemoteProtocolError, httpx.NetworkError, httpx.ProtocolError)):
        return UserError(
            f"The connection to Hugging Face dropped while downloading {what}.", _RETRY_STEP, kind="connection_lost"
        )
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return UserError(
            "The disk filled up while downloading; the unfinished file was removed.",
            "Free some space (or point HF_HOME at a bigger disk), then retry.",
            kind="disk_full",
        )
    return None


def _status(e: BaseException) -> int | None:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None)


@contextlib.contextmanager
def hub_errors(
    *, repo_id: str, revision: str | None = None, filename: str | None = None, endpoint: str = "",
    timeout: float | None = None,
) -> Iterator[None]:
    """Re-raise what :func:`translate` understands as a :class:`UserError`; anything else is left alone."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        error = translate(exc, repo_id=repo_id, revision=revision, filename=filename, endpoint=endpoint,
                          timeout=timeout)
        if error is None:
            raise
        raise error from exc
