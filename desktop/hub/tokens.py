"""The Hugging Face access token, kept in the operating system's keyring and nowhere else.

The token is stored per Hub endpoint (so a token for a private mirror is never sent to huggingface.co) and is
never logged, printed or written to a plain file. When no keyring is usable, saving fails with a sentence that
says so, and reading returns None: ``HF_TOKEN`` in the environment still works then.
"""

from __future__ import annotations

import logging
import os

from desktop.errors import UserError

log = logging.getLogger(__name__)

SERVICE = "QuantDesk Hugging Face token"
DEFAULT_ENDPOINT = "https://huggingface.co"

__all__ = ["SERVICE", "delete_token", "endpoint", "get_token", "looks_like_token", "save_token"]


def endpoint() -> str:
    """The Hub endpoint in use: ``HF_ENDPOINT`` (read now, not at import) or huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _account(hub_endpoint: str | None) -> str:
    return (hub_endpoint or endpoint()).rstrip("/")


def looks_like_token(token: str) -> bool:
    """A cheap sanity check before storing: one line, no spaces, a plausible length."""
    token = token.strip()
    return 8 <= len(token) <= 512 and not any(c.isspace() for c in token)


def get_token(hub_endpoint: str | None = None) -> str | None:
    """The stored token for ``hub_endpoint`` (default: the current endpoint), or None."""
    import keyring

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
        keyring.set_password(SERVICE, _account(hub_endpoint), token)
    except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the user gets the same sentence
        log.info("keyring refused to store the Hugging Face token: %s", type(exc).__name__)
        raise UserError(
            "This system has no keyring QuantDesk can keep the token in.",
            "Set the HF_TOKEN environment variable instead, or install a keyring service.",
            kind="no_keyring",
        ) from None


def delete_token(hub_endpoint: str | None = None) -> None:
    """Forget the stored token for ``hub_endpoint``; nothing happens when none is stored."""
    import keyring
    from keyring.errors import PasswordDeleteError

    try:
        keyring.delete_password(SERVICE, _account(hub_endpoint))
    except PasswordDeleteError:
        pass
    except Exception as exc:  # noqa: BLE001
        log.info("keyring refused to delete the Hugging Face token: %s", type(exc).__name__)
