"""API keys for serving and for remote servers, kept in the operating system's keyring and nowhere else.

* The key of QuantDesk's own server (:mod:`desktop.chat.server`): generated once with :func:`secrets`, shown to the
  user once, then read from the keyring whenever the server listens beyond this machine.
* The key of a remote OpenAI-compatible server (:mod:`desktop.chat.remote`), stored per server address (scheme,
  host, port and path), so a key is only ever sent to the server it was given for.

Keys are never logged, printed (except the one-time showing of a new server key) or written to a file. When no
keyring is usable, saving fails with a sentence that says so and reading returns None.
"""

from __future__ import annotations

import logging
import secrets
from urllib.parse import urlsplit

from desktop.errors import UserError

log = logging.getLogger(__name__)

SERVE_SERVICE = "QuantDesk API server key"
SERVE_ACCOUNT = "quantdesk serve"
REMOTE_SERVICE = "QuantDesk remote server key"
MAX_KEY_LENGTH = 4096

__all__ = [
    "delete_remote_key",
    "ensure_serve_key",
    "get_remote_key",
    "get_serve_key",
    "new_serve_key",
    "save_remote_key",
    "server_account",
]


def server_account(url: str) -> str:
    """The keyring account for a server: its normalized address (``https://host:port/path``, no trailing /v1)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    path = parts.path.rstrip("/")
    if path.endswith("/v1"):
        path = path[:-3]
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}{path}"


def _get(service: str, account: str) -> str | None:
    import keyring

    try:
        return keyring.get_password(service, account) or None
    except Exception as exc:  # noqa: BLE001 - a broken keyring (D-Bus down, locked) reads as "no key"
        log.info("keyring unavailable for reading %s: %s", service, type(exc).__name__)
        return None


def _set(service: str, account: str, key: str) -> None:
    import keyring

    try:
        keyring.set_password(service, account, key)
    except Exception as exc:  # noqa: BLE001 - whatever the backend raises, the user gets the same sentence
        log.info("keyring refused to store %s: %s", service, type(exc).__name__)
        raise UserError(
            "This system has no keyring QuantDesk can keep the API key in.",
            "Install or unlock a keyring service (for example GNOME Keyring or KWallet), then try again.",
            kind="no_keyring",
        ) from None


def _delete(service: str, account: str) -> None:
    import keyring
    from keyring.errors import PasswordDeleteError

    try:
        keyring.delete_password(service, account)
    except PasswordDeleteError:
        pass
    except Exception as exc:  # noqa: BLE001
        log.info("keyring refused to delete %s: %s", service, type(exc).__name__)


# ---- QuantDesk's own server


def get_serve_key() -> str | None:
    return _get(SERVE_SERVICE, SERVE_ACCOUNT)


def new_serve_key() -> str:
    """Generate a new server key, keep it in the keyring (replacing the old one) and return it to be shown once."""
    key = "qd-" + secrets.token_urlsafe(32)
    _set(SERVE_SERVICE, SERVE_ACCOUNT, key)
    return key


def ensure_serve_key() -> tuple[str, bool]:
    """The stored server key, or a new one: ``(key, is_new)``; show it to the user only when it is new."""
    key = get_serve_key()
    if key:
        return key, False
    return new_serve_key(), True


# ---- remote servers


def get_remote_key(url: str) -> str | None:
    return _get(REMOTE_SERVICE, server_account(url))


def save_remote_key(url: str, key: str) -> None:
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH or any(c.isspace() for c in key):
        raise UserError("That does not look like an API key.", "Paste the key in one piece, without spaces.",
                        kind="invalid_key")
    _set(REMOTE_SERVICE, server_account(url), key)


def delete_remote_key(url: str) -> None:
    _delete(REMOTE_SERVICE, server_account(url))
