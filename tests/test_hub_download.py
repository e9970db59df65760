"""Downloads from the mock Hub over real HTTP on loopback into a real Hugging Face cache: snapshots, sharded GGUF,
cancel mid-file, a dropped connection, retry keeping finished files, 401 then a token, disk space, offline."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pytest
from mockhub import (  # noqa: F401 - fixtures
    MockHub,
    checkpoint_files,
    files_under,
    gguf_files,
    hf_cache_dir,
    memory_keyring,
    mock_hub,
)

from desktop.errors import Cancelled, UserError
from desktop.hub.search import cached_repos
from desktop.hub.download import DownloadResult, download
from desktop.jobs import Progress, ProgressTracker

pytestmark = pytest.mark.usefixtures("memory_keyring")


class Recorder:
    """A progress callback that keeps every report, and an event set once ``done`` passes ``threshold``."""

    def __init__(self, threshold: float = -1) -> None:
        self.calls: list[tuple[float, float, str]] = []
        self.reports: list[Progress] = []
        self.threshold = threshold
        self.passed = threading.Event()

    def __call__(self, done: float, total: float, message: str = "", /, **fields: object) -> None:
        self.calls.append((done, total, message))
        self.reports.append(Progress.of(done, total, message, **fields))
        if self.threshold >= 0 and done > self.threshold:
            self.passed.set()


def pull(repo: str, progress: Recorder | None = None, **kwargs: object) -> DownloadResult:
    return download(progress=progress or Recorder(), cancelled=lambda: False, repo=repo, **kwargs)  # type: ignore[arg-type]


def leftovers() -> list[Path]:
    return [p for p in files_under(hf_cache_dir()) if p.name.endswith(".incomplete")]


def test_checkpoint_snapshot_filtered_for_conversion(mock_hub: MockHub) -> None:  # noqa: F811
    files = checkpoint_files()
    mock_hub.add_repo("org/tiny-llama", files)
    progress = Recorder()
    result = pull("org/tiny-llama", progress)
    snapshot = Path(result.snapshot_dir)
    assert snapshot.parent.parent.name == "models--org--tiny-llama"
    assert snapshot.is_relative_to(hf_cache_dir())
    got = sorted(p.relative_to(snapshot).as_posix() for p in files_under(snapshot))
    assert got == sorted(result.files)
    assert "README.md" not in got and "original/consolidated.pth" not in got and ".gitattributes" not in got
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json"} <= set(got)
    for name in got:
        expected = files[name]
        assert (snapshot / name).read_bytes() == (expected.encode() if isinstance(expected, str) else expected)
    # Progress is in bytes, never goes back, ends at the total, and talks in plain words.
    total = sum(len(files[n]) for n in got)
    dones = [d for d, t, _ in progress.calls if t]
    assert dones == sorted(dones) and progress.calls[-1][:2] == (total, total)
    # as data: bytes (unit "B") and a plain note; speed and ETA are the reader's, never in the note
    transfer = [p for p in progress.reports if p.note.endswith(" files")]
    assert transfer and all(p.unit == "B" for p in transfer)
    assert not any(" left" in p.note or "/s" in p.note for p in progress.reports)
    tracker = ProgressTracker()
    tracker.update(transfer[-1])
    assert tracker.line().startswith(f"{transfer[-1].note} · ") and " MB of " in tracker.line()
    assert result.message.startswith("Downloaded") and result.model_path == str(snapshot)
    # Offline, the cached repo is listed and a second pull uses it without the network.
    mock_hub.stop()
    assert [r.repo_id for r in cached_repos()] == ["org/tiny-llama"]
    assert cached_repos()[0].kind == "checkpoint"
    again = pull("org/tiny-llama")
    assert again.offline and again.snapshot_dir == result.snapshot_dir and again.downloaded_files == 0


def test_single_sharded_gguf_with_all_its_shards(mock_hub: MockHub, tmp_path: Path) -> None:  # noqa: F811
    q4 = gguf_files(tmp_path, "tiny-Q4_K_M", "Q4_K_M", shards=2)
    q8 = gguf_files(tmp_path, "tiny-Q8_0", "Q8_0")
    mock_hub.add_repo("org/tiny-GGUF", {**q4, **q8, "README.md": "x"}, tags=["gguf"])
    with pytest.raises(UserError) as info:
        pull("org/tiny-GGUF")  # two models: which one?
    assert info.value.kind == "choose_file" and "--file" in info.value.next_step
    with pytest.raises(UserError) as info:
        pull("org/tiny-GGUF", file="tiny")
    assert info.value.kind == "ambiguous"
    result = pull("org/tiny-GGUF", file="q4_k_m")
    snapshot = Path(result.snapshot_dir)
    got = sorted(p.name for p in files_under(snapshot))
    assert got == sorted(q4)
    for name, source in q4.items():
        assert (snapshot / name).read_bytes() == source.read_bytes()
    assert result.model_path == str(snapshot / "tiny-Q4_K_M-00001-of-00002.gguf")
    assert mock_hub.count("GET", "tiny-Q8_0.gguf") == 0
    # Asking for one shard brings the whole model; asking again fetches nothing.
    again = pull("org/tiny-GGUF", file="tiny-Q4_K_M-00002-of-00002.gguf")
    assert again.downloaded_files == 0 and again.kept_files == 2 and "Already downloaded" in again.message


def test_cancel_mid_file_stops_within_a_second_and_leaves_nothing(mock_hub: MockHub) -> None:  # noqa: F811
    big = bytes(range(256)) * (16 * 4096)  # 16 MiB
    mock_hub.add_repo("org/slow", {"config.json": "{}", "model.safetensors": big, "tokenizer.json": "{}"},
                      pipeline_tag=None)
    mock_hub.throttle("org/slow", "model.safetensors", bytes_per_second=4 * 1024 * 1024)
    progress = Recorder(threshold=1024 * 1024)  # a first MiB of the big file arrived
    cancel = threading.Event()
    outcome: list[BaseException] = []

    def job() -> None:
        try:
            download(progress=progress, cancelled=cancel.is_set, repo="org/slow", file="*")
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=job)
    worker.start()
    assert progress.passed.wait(30), progress.calls
    cancel.set()
    asked = time.monotonic()
    worker.join(5)
    stopped_after = time.monotonic() - asked
    assert not worker.is_alive()
    assert stopped_after < 1.0, stopped_after
    assert len(outcome) == 1 and isinstance(outcome[0], Cancelled)
    assert leftovers() == []
    blobs = [p for p in files_under(hf_cache_dir()) if "/blobs/" in p.as_posix()]
    assert all(p.stat().st_size != len(big) for p in blobs)  # the big file never looks finished
    snapshot_files = [p.name for p in files_under(hf_cache_dir()) if "/snapshots/" in p.as_posix()]
    assert "model.safetensors" not in snapshot_files


def test_dropped_connection_resumes_within_the_call(mock_hub: MockHub) -> None:  # noqa: F811
    files = checkpoint_files(shards=1)
    mock_hub.add_repo("org/tiny-llama", files)
    drop_at = 2_500_000  # past the first chunks huggingface_hub writes (1 MiB each)
    assert len(files["model.safetensors"]) > 2 * drop_at
    mock_hub.drop_after("org/tiny-llama", "model.safetensors", nbytes=drop_at)
    result = pull("org/tiny-llama")
    weights = Path(result.snapshot_dir) / "model.safetensors"
    assert weights.read_bytes() == files["model.safetensors"]
    ranges = [r.range for r in mock_hub.requests if r.filename == "model.safetensors" and r.method == "GET"]
    assert ranges[0] is None and len(ranges) == 2
    resumed_at = int(ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= drop_at  # picked up near where the connection dropped, not from the start
    assert leftovers() == []


def test_failure_keeps_finished_files_and_retry_says_so(mock_hub: MockHub) -> None:  # noqa: F811
    files = checkpoint_files(shards=2)
    mock_hub.add_repo("org/tiny-llama", files)
    bigger = max(("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"),
                 key=lambda n: len(files[n]))
    # The connection drops mid-file, then the server fails the resume: the download gives up on that file.
    mock_hub.drop_after("org/tiny-llama", bigger, nbytes=50_000)
    mock_hub.fail(500, "org/tiny-llama", bigger, method="GET", skip=1)
    with pytest.raises(UserError) as info:
        pull("org/tiny-llama", max_workers=1)
    error = info.value
    assert error.kind == "server_error" and bigger in error.message
    assert "are kept" in error.next_step
    assert leftovers() == []
    gets_before = {name: mock_hub.count("GET", name) for name in files}
    result = pull("org/tiny-llama", max_workers=1)
    assert result.downloaded_files == 1 and result.kept_files == len(result.files) - 1
    assert "Kept" in result.message
    for name in result.files:
        assert (Path(result.snapshot_dir) / name).read_bytes() == (
            files[name].encode() if isinstance(files[name], str) else files[name])
        if name != bigger:
            assert mock_hub.count("GET", name) == gets_before[name]  # finished files were not fetched again


def test_401_then_a_token_from_the_keyring(mock_hub: MockHub, memory_keyring, caplog: pytest.LogCaptureFixture,  # noqa: F811
                                           capsys: pytest.CaptureFixture[str], isolated_home: Path) -> None:
    from desktop.hub import tokens
    from desktop.hub.errors import TOKEN_KINDS

    secret = "hf_mock_secret_token_0123456789"
    mock_hub.add_token(secret)
    mock_hub.add_repo("org/gated-GGUF", {"m-Q4_K_M.gguf": b"GGUF" + bytes(4096)}, gated=True)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(UserError) as info:
        pull("org/gated-GGUF")
    assert info.value.kind in TOKEN_KINDS and info.value.kind == "auth_required"
    assert [r.status for r in mock_hub.requests if r.kind == "resolve"] == [401]
    tokens.save_token(secret)  # what the token dialog does
    result = pull("org/gated-GGUF")
    assert result.downloaded_files == 1
    assert all(r.authorized for r in mock_hub.requests[-2:])
    # The token lives in the keyring only: not in logs, output, or any file QuantDesk or the cache wrote.
    assert memory_keyring.store and secret not in caplog.text
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    for path in files_under(isolated_home):
        assert secret.encode() not in path.read_bytes(), path


def test_not_enough_disk_space_is_refused_before_starting(mock_hub: MockHub) -> None:  # noqa: F811
    mock_hub.add_repo("org/huge-GGUF", {"huge-Q8_0.gguf": 2**60}, tags=["gguf"])  # an exabyte, never stored
    with pytest.raises(UserError) as info:
        pull("org/huge-GGUF")
    assert info.value.kind == "disk_full" and "free" in info.value.message
    assert mock_hub.count("GET", "huge-Q8_0.gguf") == 0 and mock_hub.count("HEAD", "huge-Q8_0.gguf") == 0


def test_missing_file_pattern_and_unsupported_repo(mock_hub: MockHub) -> None:  # noqa: F811
    mock_hub.add_repo("org/tiny-llama", checkpoint_files())
    with pytest.raises(UserError) as info:
        pull("org/tiny-llama", file="*.gguf")
    assert info.value.kind == "not_found" and "quantdesk inspect" in info.value.next_step
    mock_hub.add_repo("org/pickles", {"pytorch_model.bin": b"\x80\x02" * 600, "config.json": "{}"})
    with pytest.raises(UserError) as info:
        pull("org/pickles")
    assert info.value.kind == "unsupported" and "pickle" in info.value.message
    assert mock_hub.count("GET", "pytorch_model.bin") == 0


def test_cli_pull_honours_hf_endpoint(mock_hub: MockHub, tmp_path: Path,  # noqa: F811
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from desktop.cli import main

    q4 = gguf_files(tmp_path, "tiny-Q4_K_M", "Q4_K_M", shards=2)
    mock_hub.add_repo("org/tiny-GGUF", q4, tags=["gguf"])
    assert main(["pull", "org/tiny-GGUF", "--file", "Q4_K_M"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Downloaded 2 files")
    assert Path(out[1]).name == "tiny-Q4_K_M-00001-of-00002.gguf" and Path(out[1]).is_file()
    assert main(["pull", "org/missing"]) == 1
    err = capsys.readouterr().err
    assert "There is no model called org/missing" in err and "Traceback" not in err
