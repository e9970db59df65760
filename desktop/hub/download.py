"""Download a model from Hugging Face into the standard cache: a job with progress, cancel and retry.

:func:`download` fetches either a checkpoint filtered to what conversion needs (config, tokenizer files, chat
template, safetensors and their index) or one GGUF model with all its shards, file by file through
``huggingface_hub.hf_hub_download`` (so the cache layout, locking and atomic renames are the library's own).

* Progress: ``progress(done_bytes, total_bytes, "2 of 5 files", unit="B")`` about ten times a second; ``done``
  counts files kept from before. Speed and ETA are made where they are shown (:class:`desktop.jobs.ProgressTracker`).
* Cancel: ``cancelled()`` is polled by every worker on each received chunk (1 MiB at most, see
  :data:`CHUNK_SIZE`); the worker raises, huggingface_hub deletes its ``.incomplete`` file, and the job raises
  :class:`~desktop.errors.Cancelled` once every worker has stopped.
* Retry: files that finished are in the cache and are skipped the next time; the result says how many were kept.
  A partly downloaded file is always deleted (huggingface_hub has no cross-call resume).
* Before starting, the free space of the cache's disk is checked against what is left to fetch.
* Which files, and which are cached already: :mod:`desktop.hub.download_plan` (its names are re-exported here).
* Downloads use plain HTTP, not Xet (see :func:`_prepare_huggingface_hub`), so cancel is dependable.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from desktop.errors import Cancelled, UserError
from desktop.fileio import write_text_atomic
from desktop.hub.download_plan import DISK_MARGIN_BYTES, DownloadPlan, check_disk_space, plan_download, select_files
from desktop.hub.errors import translate
from desktop.hub.repo import HubContext, RepoFile, hub_context, parse_repo_ref, storage_folder
from desktop.jobs import CancelledFn, ProgressFn, check_cancelled, format_bytes, format_duration, with_fields

log = logging.getLogger(__name__)

__all__ = ["CHUNK_SIZE", "DISK_MARGIN_BYTES", "DownloadPlan", "DownloadResult", "download", "plan_download",
           "select_files"]

CHUNK_SIZE = 1024 * 1024
"""huggingface_hub reads the body in ``DOWNLOAD_CHUNK_SIZE`` pieces (10 MiB) and reports progress per piece;
smaller pieces let a cancel land within a second on slow links. Loopback throughput is unchanged (bench)."""

PROGRESS_INTERVAL_S = 0.1


@dataclass
class DownloadResult:
    """The outcome: where the files are (``model_path`` is the first GGUF shard, or the snapshot folder for a
    checkpoint) and what was fetched now versus kept from before."""

    repo_id: str
    sha: str
    snapshot_dir: str
    model_path: str
    files: list[str]
    downloaded_files: int
    downloaded_bytes: int
    kept_files: int
    kept_bytes: int
    seconds: float
    message: str
    offline: bool = False


class _Stop(Exception):
    """Raised inside huggingface_hub's download loop to abandon a file (cancel, or another file failed)."""


class _Transfer:
    """Progress shared by the download threads: bytes, files, rate, throttled reports, the stop flag."""

    def __init__(self, plan: DownloadPlan, progress: ProgressFn, cancelled: CancelledFn) -> None:
        self.progress = progress
        self.cancelled = cancelled
        self.total = plan.total_bytes
        self.kept = plan.cached_bytes
        self.n_files = len(plan.files)
        self.files_done = len(plan.cached)
        self.fetched = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._last = 0.0

    def check(self) -> None:
        if self.stop.is_set():
            raise _Stop()
        if self.cancelled():
            self.stop.set()
            raise _Stop()

    def add(self, n: float) -> None:
        self.check()
        with self._lock:
            self.fetched += int(n)
            now = time.monotonic()
            if now - self._last >= PROGRESS_INTERVAL_S:
                self._last = now
                self._emit()

    def file_done(self, unreported: int) -> None:
        """A file is complete; ``unreported`` bytes of it never passed through ``add`` (an existing blob)."""
        with self._lock:
            self.files_done += 1
            self.fetched += unreported
            self._emit()

    def _emit(self) -> None:
        self.progress(self.kept + self.fetched, self.total, f"{self.files_done} of {self.n_files} files", unit="B")


class _FileBar:
    """What huggingface_hub takes for a tqdm bar: each ``update`` feeds the shared transfer (and may raise)."""

    def __init__(self, transfer: _Transfer, path: str, *args: Any, **kwargs: Any) -> None:
        self.transfer = transfer
        self.path = path
        self.n = 0

    def __enter__(self) -> _FileBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def update(self, n: float | None = 1) -> None:
        n = n or 0
        self.n += int(n)
        self.transfer.add(n)

    def close(self) -> None:
        pass

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        pass


def _prepare_huggingface_hub() -> None:
    """Process-wide settings the download path relies on (huggingface_hub reads both at call time).

    * Smaller chunks (see :data:`CHUNK_SIZE`) so a cancel lands within a second.
    * Plain HTTP instead of Xet: with ``hf_xet`` the bytes arrive through Rust callbacks, and an exception
      raised from the progress bar does not reliably stop the transfer (shared/notes, section 7).
    """
    from huggingface_hub import constants

    if constants.DOWNLOAD_CHUNK_SIZE > CHUNK_SIZE:
        constants.DOWNLOAD_CHUNK_SIZE = CHUNK_SIZE
    constants.HF_HUB_DISABLE_XET = True


def _fetch_one(ctx: HubContext, plan: DownloadPlan, f: RepoFile, transfer: _Transfer) -> None:
    from huggingface_hub import hf_hub_download

    transfer.check()
    bars: list[_FileBar] = []

    def make_bar(*args: Any, **kwargs: Any) -> _FileBar:
        bar = _FileBar(transfer, f.path)
        bars.append(bar)
        return bar

    # huggingface_hub calls a non-tqdm ``tqdm_class`` as a plain factory (utils/tqdm.py, _create_progress_bar).
    hf_hub_download(  # type: ignore[call-overload]
        plan.repo_id, f.path, revision=plan.sha, cache_dir=ctx.cache_dir, endpoint=ctx.endpoint, token=ctx.token,
        etag_timeout=ctx.timeout, tqdm_class=make_bar,
    )
    transfer.file_done(f.size - sum(b.n for b in bars))


def download(
    *,
    progress: ProgressFn,
    cancelled: CancelledFn,
    repo: str,
    revision: str | None = None,
    file: str | None = None,
    token: str | None = None,
    max_workers: int = 4,
    timeout: float | None = None,
) -> DownloadResult:
    """Download ``repo`` (a checkpoint for conversion, or the GGUF model ``file`` names) into the HF cache."""
    progress = with_fields(progress)
    ref = parse_repo_ref(repo, revision)
    ctx = hub_context(token, timeout=timeout)
    started = time.monotonic()
    progress(0, 0, f"Looking up {ref.repo_id}...")
    plan = plan_download(ref, ctx, file or ref.filename)
    check_cancelled(cancelled)
    kept_note = ""
    if plan.cached:
        kept_note = (f"Kept {len(plan.cached)} file{'s' if len(plan.cached) != 1 else ''} already downloaded "
                     f"({format_bytes(plan.cached_bytes)}).")
    remaining = plan.remaining
    if plan.from_cache or not remaining:
        if remaining:  # offline and something is missing
            raise UserError(
                f"{len(remaining)} of the files of {plan.repo_id} are not downloaded, and Hugging Face cannot be "
                "reached.", "Connect to the internet and retry.", kind="offline",
            )
        message = "Offline: using the copy already downloaded." if plan.from_cache else "Already downloaded."
        progress(plan.total_bytes, plan.total_bytes, message, unit="B")
        return _result(plan, 0, 0, started, message, offline=plan.from_cache)
    check_disk_space(plan, ctx)
    if kept_note:
        progress(plan.cached_bytes, plan.total_bytes, f"{kept_note} Fetching {len(remaining)} more.", unit="B")
    _prepare_huggingface_hub()
    transfer = _Transfer(plan, progress, cancelled)
    errors = _run(ctx, plan, remaining, transfer, cancelled, max_workers)
    if cancelled() or (transfer.stop.is_set() and not errors):
        raise Cancelled()
    if errors:
        _raise_failure(errors[0], plan, ctx)
    _write_ref(ctx, plan)
    fetched_bytes = sum(f.size for f in remaining)
    seconds = time.monotonic() - started
    rate = f" ({format_bytes(fetched_bytes / seconds)}/s)" if seconds > 0 else ""
    message = (f"Downloaded {len(remaining)} file{'s' if len(remaining) != 1 else ''} "
               f"({format_bytes(fetched_bytes)}) in {format_duration(seconds)}{rate}.")
    if kept_note:
        message += f" {kept_note}"
    progress(plan.total_bytes, plan.total_bytes, f"{len(plan.files)} of {len(plan.files)} files", unit="B")
    return _result(plan, len(remaining), fetched_bytes, started, message)


def _run(ctx: HubContext, plan: DownloadPlan, remaining: list[RepoFile], transfer: _Transfer,
         cancelled: CancelledFn, max_workers: int) -> list[tuple[RepoFile, BaseException]]:
    """Download ``remaining`` on a few threads. On a failure no new file starts, running ones finish; on cancel
    every thread stops at its next chunk. Returns the failures (not counting the stops)."""
    errors: list[tuple[RepoFile, BaseException]] = []
    pool = cf.ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(remaining))),
                                 thread_name_prefix="hf-download")
    try:
        futures = {pool.submit(_fetch_one, ctx, plan, f, transfer): f for f in remaining}
        pending = set(futures)
        while pending:
            done, pending = cf.wait(pending, timeout=0.1, return_when=cf.FIRST_COMPLETED)
            for future in done:
                exc = future.exception()
                if exc is not None and not isinstance(exc, _Stop):
                    errors.append((futures[future], exc))
            if errors or (not transfer.stop.is_set() and cancelled()):
                for future in pending:
                    future.cancel()  # not started yet: never starts
            if not transfer.stop.is_set() and cancelled():
                transfer.stop.set()
    except BaseException:  # Ctrl-C in the CLI: stop the threads too, so their partial files go
        transfer.stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return errors


def _raise_failure(failure: tuple[RepoFile, BaseException], plan: DownloadPlan, ctx: HubContext) -> None:
    f, exc = failure
    snapshot = Path(plan.snapshot_dir)
    done = [x for x in plan.files if (snapshot / x.path).is_file()]
    error = translate(exc, repo_id=plan.repo_id, revision=plan.revision, filename=f.path, endpoint=ctx.endpoint,
                      timeout=ctx.timeout)
    if error is None:
        raise exc
    if done:
        kept = (f"Retry: the {len(done)} file{'s' if len(done) != 1 else ''} that finished "
                f"({format_bytes(sum(x.size for x in done))}) are kept.")
        error = UserError(error.message, f"{error.next_step} {kept}".strip() if error.kind in
                          ("auth_required", "access_denied", "bad_token", "disk_full") else kept, kind=error.kind)
    raise error from exc


def _write_ref(ctx: HubContext, plan: DownloadPlan) -> None:
    """Point the branch name at the commit, as snapshot_download does, so offline look-ups of "main" work."""
    if plan.revision and plan.revision != plan.sha:
        ref = storage_folder(ctx.cache_dir, plan.repo_id) / "refs" / plan.revision
        try:
            if not ref.is_file() or ref.read_text(encoding="utf-8").strip() != plan.sha:
                write_text_atomic(ref, plan.sha)
        except OSError as exc:
            log.warning("could not record %s -> %s in the cache: %s", plan.revision, plan.sha, exc)


def _result(plan: DownloadPlan, n_fetched: int, fetched_bytes: int, started: float, message: str,
            offline: bool = False) -> DownloadResult:
    snapshot = Path(plan.snapshot_dir)
    ggufs = sorted(f.path for f in plan.files if f.path.lower().endswith(".gguf"))
    model_path = str(snapshot / ggufs[0]) if ggufs and plan.kind == "gguf" else str(snapshot)
    return DownloadResult(
        repo_id=plan.repo_id, sha=plan.sha, snapshot_dir=str(snapshot), model_path=model_path,
        files=[f.path for f in plan.files], downloaded_files=n_fetched, downloaded_bytes=fetched_bytes,
        kept_files=len(plan.cached), kept_bytes=plan.cached_bytes, seconds=time.monotonic() - started,
        message=message, offline=offline,
    )

