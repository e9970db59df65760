"""The per-job logs of child processes: an empty one goes after a success, and only the newest few are kept."""

from __future__ import annotations

from pathlib import Path

__all__ = ["MAX_JOB_LOGS", "MAX_JOB_LOG_BYTES", "drop_empty", "prune_job_logs"]


def drop_empty(path: Path) -> None:
    try:
        if path.stat().st_size == 0:
            path.unlink()
    except OSError:
        pass


MAX_JOB_LOGS = 40
MAX_JOB_LOG_BYTES = 200 * 1000**2


def prune_job_logs(folder: Path, keep: int = MAX_JOB_LOGS, max_bytes: int = MAX_JOB_LOG_BYTES) -> None:
    """Per-job logs are for the last few failures: keep the newest ``keep`` (and at most ``max_bytes`` of them),
    delete the rest, so the logs folder does not grow with every job ever run."""
    try:
        logs = sorted((p for p in folder.glob("job-*.log") if p.is_file()), key=lambda p: p.stat().st_mtime,
                      reverse=True)
    except OSError:
        return
    total = 0
    for index, path in enumerate(logs):
        try:
            total += path.stat().st_size
            if index >= keep or total > max_bytes:
                path.unlink()
        except OSError:
            pass
