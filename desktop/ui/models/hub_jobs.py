"""The work behind the Hugging Face panel, as plain job functions ``fn(progress, cancelled, ...)`` over the domain
API (:mod:`desktop.hub.repo`, :mod:`desktop.hub.download`, :mod:`desktop.library`, :mod:`desktop.hub.tokens`). No Qt here:
they run on the job threads and can be called directly in tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from desktop.errors import UserError
from desktop.memory import Machine, machine_from_report
from desktop.hub.repo import RepoReport
from desktop.jobs import CancelledFn, ProgressFn


@dataclass
class InspectOutcome:
    report: RepoReport
    memory: Machine | None  # probed in the job only when no hardware report had arrived


def inspect_job(progress: ProgressFn, cancelled: CancelledFn, *, repo: str, revision: str | None,
                probe_memory: bool) -> InspectOutcome:
    from desktop.hub.sandbox import inspect_repo_isolated

    # In a child process with time and memory limits: a repo's numbers are untrusted (issue 13.1).
    report = inspect_repo_isolated(progress=progress, cancelled=cancelled, repo=repo, revision=revision)
    memory = None
    if probe_memory:  # without llama.cpp: the GUI process never loads it
        from desktop.hardware import report as hardware

        memory = machine_from_report(hardware.collect_report(include_llama=False))
    return InspectOutcome(report, memory)


@dataclass(frozen=True)
class DownloadRequest:
    repo: str
    revision: str | None
    file: str | None  # a GGUF model's first shard (brings all shards); None: the checkpoint for conversion
    label: str


@dataclass
class DownloadOutcome:
    message: str
    snapshot_dir: str
    model_path: str
    added: Path | None  # the library entry's path, for a GGUF


def download_job(progress: ProgressFn, cancelled: CancelledFn, *, request: DownloadRequest) -> DownloadOutcome:
    from desktop.hub.download import download
    from desktop.jobs import check_cancelled
    from desktop.library import Library

    result = download(progress=progress, cancelled=cancelled, repo=request.repo, revision=request.revision,
                      file=request.file)
    added = None
    check_cancelled(cancelled)
    progress(1, 1, "Adding the model to the library…")
    if result.model_path.lower().endswith(".gguf"):
        added = Library().add_file(result.model_path, source=f"Hugging Face: {result.repo_id}").path
    else:  # a checkpoint: listed now (Models page, Quantize sources), not at the next start
        try:
            Library().add_checkpoint(result.snapshot_dir, source=f"Hugging Face: {result.repo_id}",
                                     name=result.repo_id.rsplit("/", 1)[-1])
        except UserError as exc:  # downloaded, but not convertible: say so instead of "next step: quantize"
            return DownloadOutcome(f"{result.message} {exc.message}", result.snapshot_dir, result.model_path, None)
    return DownloadOutcome(result.message, result.snapshot_dir, result.model_path, added)


def save_token_job(progress: ProgressFn, cancelled: CancelledFn, *, token: str) -> None:
    from desktop.hub import tokens

    tokens.save_token(token)
