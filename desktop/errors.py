"""Errors the user can act on.

A domain function raises :class:`UserError` for every failure it understands: one sentence saying what
happened and, where there is one, the next step. Anything else is a bug and keeps its traceback in the log.
"""

from __future__ import annotations


class UserError(Exception):
    """A known failure: ``message`` is one plain sentence, ``next_step`` what the user can do about it."""

    kind = "error"

    def __init__(self, message: str, next_step: str = "", *, kind: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.next_step = next_step
        if kind is not None:
            self.kind = kind

    def __str__(self) -> str:
        return f"{self.message} {self.next_step}".strip()


class Cancelled(Exception):
    """Raised inside a job once it has seen ``cancelled()`` return True and has cleaned up after itself."""
