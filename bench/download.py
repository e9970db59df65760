"""Download throughput: QuantDesk's download path against huggingface_hub's own ``snapshot_download``.

Both fetch the same checkpoint repo (config, tokenizer files and three safetensors shards, a few hundred MB in
all) from the same mock Hub on 127.0.0.1 (``tests/mockhub.py``, run in its own process so it does not share the
client's interpreter), each run into a fresh Hugging Face cache and in a fresh process. Rounds alternate which
side goes first; the report is the ratio of the median throughputs (target: at least 0.95).

    python bench/download.py [--mb 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REPO_ID = "bench/checkpoint"
SHARDS = 3


def make_repo(folder: Path, total_mb: int) -> dict[str, int]:
    """Write the repo's files into ``folder``: valid safetensors shards (one big F16 tensor each) plus JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    per_shard = total_mb * 1024 * 1024 // SHARDS // 2 * 2
    weight_map = {}
    pattern = bytes(range(256)) * 4096  # 1 MiB
    for i in range(SHARDS):
        name = f"model-{i + 1:05d}-of-{SHARDS:05d}.safetensors"
        tensor = f"model.layers.{i}.mlp.up_proj.weight"
        elements = per_shard // 2
        header = json.dumps({tensor: {"dtype": "F16", "shape": [elements // 1024, 1024],
                                      "data_offsets": [0, elements // 1024 * 1024 * 2]}}).encode()
        header += b" " * (-len(header) % 8)
        with open(folder / name, "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header)
            left = elements // 1024 * 1024 * 2
            while left > 0:
                f.write(pattern[: min(left, len(pattern))])
                left -= len(pattern)
        weight_map[tensor] = name
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 1024,
              "num_hidden_layers": SHARDS, "num_attention_heads": 8, "vocab_size": 32000}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {}, "merges": []}}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return {p.name: p.stat().st_size for p in folder.iterdir()}


def serve(folder: Path) -> None:
    """Child process: serve ``folder`` as REPO_ID until stdin closes."""
    sys.path.insert(0, str(ROOT / "tests"))
    from mockhub import MockHub

    hub = MockHub()
    hub.add_repo(REPO_ID, {p.name: p for p in sorted(folder.iterdir())})
    for f in hub.repos[REPO_ID].files.values():
        _ = f.etag  # hash now, not during the first timed run
    print(hub.start(), flush=True)
    sys.stdin.read()
    hub.stop()


def client(mode: str, endpoint: str, cache: str, files: list[str]) -> None:
    """Child process: one timed download; prints {"seconds": ..., "bytes": ...}."""
    sys.path.insert(0, str(ROOT))
    # Imports happen before the clock starts: the comparison is of the download paths, not of start-up.
    from huggingface_hub import snapshot_download

    from desktop.hub.download import download

    started = time.perf_counter()
    if mode == "reference":
        path = snapshot_download(REPO_ID, allow_patterns=files, cache_dir=cache, endpoint=endpoint)
    else:
        path = download(progress=lambda *a: None, cancelled=lambda: False, repo=REPO_ID).snapshot_dir
    seconds = time.perf_counter() - started
    got = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
    print(json.dumps({"seconds": seconds, "bytes": got}))


def run_client(mode: str, endpoint: str, workdir: Path, files: list[str], index: int) -> dict[str, float]:
    cache = workdir / f"cache-{mode}-{index}"
    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(cache), HF_HOME=str(workdir / "hf-home"),
               QUANTDESK_HOME=str(workdir / "qd-home"), HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
               HF_HUB_DISABLE_TELEMETRY="1", PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring")
    env.pop("HF_TOKEN", None)
    out = subprocess.run(
        [sys.executable, __file__, "--client", mode, "--endpoint", endpoint, "--cache", str(cache),
         "--files", json.dumps(files)],
        env=env, capture_output=True, text=True, check=True, cwd=ROOT,
    )
    shutil.rmtree(cache, ignore_errors=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=300, help="repo size in MB (default 300)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve))
        return 0
    if args.client:
        client(args.client, args.endpoint, args.cache, json.loads(args.files))
        return 0

    with tempfile.TemporaryDirectory(prefix="qd-bench-download-") as tmp:
        workdir = Path(tmp)
        sizes = make_repo(workdir / "repo", args.mb)
        files = sorted(sizes)
        total = sum(sizes.values())
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(workdir / "repo")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert server.stdout is not None
            endpoint = server.stdout.readline().strip()
            print(f"repo: {len(files)} files, {total / 1e6:.0f} MB, served by the mock Hub at {endpoint}")
            rates: dict[str, list[float]] = {"reference": [], "app": []}
            for i in range(args.rounds):
                order = ["reference", "app"] if i % 2 == 0 else ["app", "reference"]
                for mode in order:
                    result = run_client(mode, endpoint, workdir, files, i)
                    assert result["bytes"] == total, (mode, result, total)
                    rate = result["bytes"] / result["seconds"]
                    rates[mode].append(rate)
                    print(f"round {i + 1}  {mode:<9}  {result['seconds']:6.2f} s  {rate / 1e6:8.1f} MB/s")
        finally:
            if server.stdin:
                server.stdin.close()
            server.wait(10)
    ref, app = statistics.median(rates["reference"]), statistics.median(rates["app"])
    ratio = app / ref
    print(f"median: snapshot_download {ref / 1e6:.1f} MB/s, QuantDesk {app / 1e6:.1f} MB/s")
    print(f"throughput ratio (QuantDesk / snapshot_download): {ratio:.3f}  (target >= 0.95: "
          f"{'met' if ratio >= 0.95 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
