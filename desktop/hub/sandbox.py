"""Inspecting a Hub repo in a child process, with a wall-clock limit (kept by the parent) and a memory limit (the
child's address space, on Linux and other POSIX systems): whatever a hostile repo's numbers make the inspection do,
the window's process never pays for it, and Cancel always stops it (the child is killed after a short grace).

The token is resolved here, in the parent (the keyring lives here; tests use an in-memory one), and handed to the
child, which never looks one up itself.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from desktop.errors import Cancelled, UserError
from desktop.hub import tokens
from desktop.hub.repo import RepoReport, parse_repo_ref
from desktop.jobs import CancelledFn, JobFailed, ProgressFn

log = logging.getLogger(__name__)

__all__ = ["INSPECT_MEMORY_LIMIT", "INSPECT_TIME_LIMIT_S", "inspect_repo_isolated"]

INSPECT_TIME_LIMIT_S = 120.0
INSPECT_MEMORY_LIMIT = 3 * 1024**3  # address space: Python, numpy, gguf-py and HTTP need about 1 GiB of it


def inspect_repo_isolated(
    *,
    progress: ProgressFn,
    cancelled: CancelledFn,
    repo: str,
    revision: str | None = None,
    token: str | None = None,
    timeout: float | None = None,
    time_limit_s: float = INSPECT_TIME_LIMIT_S,
    memory_limit: int = INSPECT_MEMORY_LIMIT,
) -> RepoReport:
    """:func:`desktop.hub.inspect.inspect_repo` in a child process (a job). Raises UserError (kind "timeout" or
    "out_of_memory") when the inspection passes a limit, and :class:`Cancelled` when cancelled."""
    from desktop.process import run_in_child

    ref = parse_repo_ref(repo, revision)  # a typo is refused here, before a process starts
    hub_token = tokens.token_for(tokens.endpoint(), token)
    deadline = time.monotonic() + time_limit_s
    over_time = False

    def stop() -> bool:
        nonlocal over_time
        if time.monotonic() > deadline:
            over_time = True
            return True
        return cancelled()

    try:
        return run_in_child(
            "desktop.hub.sandbox:inspect_with_limits",
            {"repo": repo, "revision": revision, "token": hub_token, "timeout": timeout, "memory_limit": memory_limit},
            progress=progress, cancelled=stop, grace_s=1.0,
            crash_next_step="Retry; if it happens again, the repository may be built to break tools like this one.",
        )
    except JobFailed as exc:  # known failures cross as the same UserError inspect_repo raises in-process
        if exc.error.kind == "internal":
            raise
        if exc.error.detail:
            log.info("inspecting %s failed: %s", ref.repo_id, exc.error.detail)
        raise UserError(exc.error.message, exc.error.next_step, kind=exc.error.kind) from None
    except Cancelled:
        if over_time:
            raise UserError(f"Inspecting {ref.repo_id} took longer than {time_limit_s:.0f} s, so it was stopped.",
                            "Retry when the connection is faster; a repository this slow to read may also be "
                            "built to break tools like this one.", kind="timeout") from None
        raise


def _limit_memory(limit: int) -> None:
    if sys.platform == "win32" or limit <= 0:
        return  # Windows has no RLIMIT_AS; the wall-clock limit and the child's separate memory still hold
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def inspect_with_limits(*, progress: ProgressFn, cancelled: CancelledFn, memory_limit: int, **kwargs: Any) -> RepoReport:
    """The child's side: cap this process's memory, then inspect."""
    from desktop.hub.inspect import inspect_repo

    _limit_memory(memory_limit)
    try:
        return inspect_repo(progress=progress, cancelled=cancelled, **kwargs)
    except MemoryError:
        raise UserError(f"Inspecting {kwargs.get('repo')} needed more than {memory_limit // 1024**2} MiB of memory, "
                        "so it was stopped.", "The repository's files describe a model far larger than any real "
                        "one; try another repository.", kind="out_of_memory") from None
