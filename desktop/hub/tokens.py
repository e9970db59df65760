"""The Hugging Face access token, kept in the operating system's keyring and nowhere else.

The token is stored per Hub endpoint and :func:`token_for` gives a token only to the endpoint it was saved for:
for any other endpoint it returns False, which huggingface_hub reads as "send none" (None would make it fall back
to ``HF_TOKEN`` or its saved login, both meant for huggingface.co). No token ever goes over plain http, except to
this computer (loopback). ``HF_TOKEN`` and huggingface_hub's saved login count for huggingface.co only.

A token is never logged, printed or written to a plain file: a keyring backend that stores in a file
(``keyrings.alt``'s) or that cannot store (keyring's fail and null backends) counts as no keyring. Then saving
fails with a sentence that says so and reading returns None.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal
from urllib.parse import urlsplit

from desktop.errors import UserError
from desktop.netloc import is_loopback

log = logging.getLogger(__name__)

SERVICE = "QuantDesk Hugging Face token"
DEFAULT_ENDPOINT = "https://huggingface.co"

__all__ = ["SERVICE", "delete_token", "endpoint", "get_token", "keyring_problem", "looks_like_token", "save_token",
           "token_for"]

_INSECURE_MODULES = ("keyring.backends.fail", "keyring.backends.null", "keyrings.alt")


def endpoint() -> str:
    """The Hub endpoint in use: ``HF_ENDPOINT`` (read now, not at import) or huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _account(hub_endpoint: str | None) -> str:
    return (hub_endpoint or endpoint()).rstrip("/")


def looks_like_token(token: str) -> bool:
    """A cheap sanity check before storing: one line, no spaces, a plausible length."""
    token = token.strip()
    return 8 <= len(token) <= 512 and not any(c.isspace() for c in token)


def keyring_problem(backend: Any = None) -> str:
    """Why the keyring backend cannot keep a token safely ("" when it can): one that writes a plain or merely
    obfuscated file, or that cannot store at all. A chain of backends is as weak as its weakest member."""
    import keyring

    backend = backend if backend is not None else keyring.get_keyring()
    members = list(getattr(backend, "backends", None) or [backend])
    for member in members:
        module, name = type(member).__module__, type(member).__name__
        if module.startswith(_INSECURE_MODULES) or "plaintext" in name.lower():
            return f"the keyring backend {name} ({module}) does not keep secrets out of plain files"
    return ""


def can_carry_token(hub_endpoint: str) -> bool:
    """https, or http to this computer only: a token never crosses a network in clear text."""
    parts = urlsplit(hub_endpoint)
    return parts.scheme == "https" or (parts.scheme == "http" and is_loopback(parts.hostname or ""))


def token_for(hub_endpoint: str, explicit: str | None = None) -> str | Literal[False]:
    """The token to send to ``hub_endpoint``: ``explicit``, else the one saved for that endpoint, else (for
    huggingface.co only) ``HF_TOKEN`` or huggingface_hub's saved login; False when there is none or the endpoint
    is plain http elsewhere than this computer. Pass the result as huggingface_hub's ``token``."""
    if not can_carry_token(hub_endpoint):
        if explicit or get_token(hub_endpoint):
            log.info("not sending the Hugging Face token to %s: plain http", urlsplit(hub_endpoint).hostname)
        return False
    token = (explicit or "").strip() or get_token(hub_endpoint)
    if not token and _account(hub_endpoint) == DEFAULT_ENDPOINT:
        from huggingface_hub import get_token as hf_saved_token

        token = hf_saved_token()
    return token or False


def get_token(hub_endpoint: str | None = None) -> str | None:
    """The stored token for ``hub_endpoint`` (default: the current endpoint), or None."""
    import keyring

    if keyring_problem():
        return None
    try:
        return keyring.get_password(SERVICE, _account(hub_endpoint)) or None
    except Exception as exc:  # noqa: BLE001 - a broken keyring (D-Bus down, locked) must not stop a download
        log.info("keyring unavailable for reading the Hugging Face token: %s", type(exc).__name__)
        return None


def save_token(token: str, hub_endpoint: str | None = None) -> None:
    """Keep ``token`` in the keyring for ``hub_endpoint``. Raises UserError when it cannot."""
    import keyring

    token = token.strip()
    if not looks_like_token(token):
        raise UserError(
            "That does not look like a Hugging Face token.",
            "Copy the whole token from huggingface.co/settings/tokens (it starts with hf_).",
            kind="invalid_token",
        )
    try:
        problem = keyring_problem()
        if problem:
            raise RuntimeError(problem)
        keyring.set_password(SERVICE, _account(hub_endpoint), token)
    except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the user gets the same sentence
        log.info("keyring refused to store the Hugging Face token: %s", exc if isinstance(exc, RuntimeError)
                 else type(exc).__name__)
        raise UserError(
            "This system has no keyring QuantDesk can keep the token in.",
            "Set the HF_TOKEN environment variable instead, or install a keyring service.",
            kind="no_keyring",
        ) from None


def delete_token(hub_endpoint: str | None = None) -> None:
    """Forget the stored token for ``hub_endpoint``; nothing happens when none is stored."""
    import keyring
    from keyring.errors import PasswordDeleteError

    if keyring_problem():
        return
    try:
        keyring.delete_password(SERVICE, _account(hub_endpoint))
    except PasswordDeleteError:
        pass
    except Exception as exc:  # noqa: BLE001
        log.info("keyring refused to delete the Hugging Face token: %s", type(exc).__name__)
