"""``quantdesk plan MODEL.gguf --ctx N [--gpu-layers L] [--json]``: how many layers fit on this machine's GPU(s)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from desktop import memory
from desktop.jobs import format_bytes


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="plan GPU offload for a GGUF: layers that fit, memory per device",
        description="Predict how many layers of MODEL fit on the GPU(s) the installed llama.cpp can use, at a "
        "context length, with the memory per device (weights, KV cache, compute, GPU overhead, margin). "
        "Sizes are decimal: 1 GB = 1,000,000,000 bytes.",
    )
    parser.add_argument("model", help="a .gguf file (any shard of a split model)")
    parser.add_argument("--ctx", type=int, default=4096, help="context length in tokens (default 4096)")
    parser.add_argument("--gpu-layers", type=int, default=None, help="judge this many GPU layers (default: the most that fit)")
    parser.add_argument("--cache-type", default="f16", choices=list(memory.KV_CACHE_TYPES), help="KV cache type")
    parser.add_argument("--flash-attn", default="auto", choices=memory.FLASH_ATTN_CHOICES,
                        help="flash attention (default auto: llama.cpp's choice for the backend)")
    parser.add_argument(
        "--gpu-memory",
        type=float,
        action="append",
        metavar="GB",
        help="plan for a GPU with this much free memory instead of the detected ones (repeat for several)",
    )
    parser.add_argument("--backend", default="CUDA", help="llama.cpp backend of the --gpu-memory GPUs (default CUDA)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(func=run)


def detected_machine() -> memory.Machine:
    """This machine: the GPUs the installed llama.cpp can use and free RAM (the host alone when detection fails)."""
    return memory.this_machine()


def run(args: argparse.Namespace) -> int:
    from desktop.gguf.reader import read_gguf

    info = read_gguf(args.model)
    shape = memory.shape_from_gguf(info)
    machine = detected_machine()
    if args.gpu_memory:
        machine = memory.Machine(tuple(memory.GpuBudget(f"GPU {i}", int(gb * 10**9), int(gb * 10**9), backend=args.backend)
                                       for i, gb in enumerate(args.gpu_memory)), machine.host)
    options = memory.PlanOptions(n_ctx=args.ctx, cache_type_k=args.cache_type, flash_attn=args.flash_attn)
    plan = memory.plan_offload(shape, gpus=machine.gpus, host=machine.host, options=options,
                               n_gpu_layers=args.gpu_layers)
    if args.json:
        data = plan.as_dict()
        data["model"] = {"path": str(info.path), "name": info.name, "architecture": info.architecture,
                         "n_ctx_train": info.context_length, "n_layer": shape.n_layer}
        data["gpus_left_out"] = list(machine.left_out)
        print(json.dumps(data, indent=2))
    else:
        print(f"{info.name}: {plan.message}")
        print(f"GPU layers: {plan.n_gpu_layers} of {plan.total_layers} (most that fit: {plan.max_gpu_layers}); "
              f"flash attention {'on' if plan.flash_attn else 'off'}, KV cache {plan.cache_type_k}")
        for device in [*plan.gpus, plan.host]:
            b = device.breakdown
            overhead = f", {device.backend} overhead {format_bytes(b.overhead)}" if device.kind == "gpu" else ""
            print(
                f"  {device.name}: weights {format_bytes(b.weights)}, KV cache {format_bytes(b.kv_cache)}, "
                f"compute {format_bytes(b.compute)}{overhead}, margin {format_bytes(b.margin)} = "
                f"{format_bytes(b.total)} of {format_bytes(max(0, device.budget_bytes))}"
            )
        for sentence in machine.left_out:
            print(f"  Not used: {sentence}")
    return 0 if plan.fits else 2
