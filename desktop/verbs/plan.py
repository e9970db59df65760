"""``quantdesk plan MODEL.gguf --ctx N [--gpu-layers L] [--json]``: how many layers fit on this machine's GPU(s)."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from desktop.memory import offload
from desktop.jobs import format_bytes

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="plan GPU offload for a GGUF: layers that fit, memory per device",
        description="Predict how many layers of MODEL fit on this machine's GPU(s) at a context length, "
        "with the memory breakdown (weights, KV cache, compute, margin) per GPU and for the host.",
    )
    parser.add_argument("model", help="a .gguf file (any shard of a split model)")
    parser.add_argument("--ctx", type=int, default=4096, help="context length in tokens (default 4096)")
    parser.add_argument("--gpu-layers", type=int, default=None, help="judge this many GPU layers (default: the most that fit)")
    parser.add_argument("--cache-type", default="f16", choices=sorted(offload.KV_CACHE_TYPES), help="KV cache type")
    parser.add_argument("--flash-attn", action="store_true", help="plan for flash attention (smaller compute buffer)")
    parser.add_argument(
        "--gpu-memory",
        type=float,
        action="append",
        metavar="GB",
        help="plan for a GPU with this much free memory instead of the detected ones (repeat for several)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.set_defaults(func=run)


def detected_budgets() -> tuple[list[offload.GpuBudget], offload.HostBudget]:
    """This machine's GPUs and free RAM; with no hardware report available, the host alone."""
    try:
        from desktop.hardware.report import collect_report

        return offload.budgets_from_hardware(collect_report())
    except Exception as exc:  # noqa: BLE001 - detection is best effort; the plan still works for the CPU
        log.info("hardware detection unavailable (%s); planning for the CPU only", exc)
    import psutil

    memory = psutil.virtual_memory()
    return [], offload.HostBudget(int(memory.available), int(memory.total))


def run(args: argparse.Namespace) -> int:
    from desktop.gguf.reader import read_gguf

    info = read_gguf(args.model)
    shape = offload.model_shape(info)
    gpus, host = detected_budgets()
    if args.gpu_memory:
        gpus = [
            offload.GpuBudget(f"GPU {i}", int(gb * 1000**3), int(gb * 1000**3)) for i, gb in enumerate(args.gpu_memory)
        ]
    options = offload.PlanOptions(n_ctx=args.ctx, cache_type_k=args.cache_type, flash_attn=args.flash_attn)
    plan = offload.plan_offload(shape, gpus=gpus, host=host, options=options, n_gpu_layers=args.gpu_layers)
    if args.json:
        data = plan.as_dict()
        data["model"] = {"path": str(info.path), "name": info.name, "architecture": info.architecture,
                         "n_ctx_train": info.context_length, "n_layer": shape.n_layer}
        print(json.dumps(data, indent=2))
    else:
        print(f"{info.name}: {plan.message}")
        print(f"GPU layers: {plan.n_gpu_layers} of {plan.total_layers} (most that fit: {plan.max_gpu_layers})")
        for device in [*plan.gpus, plan.host]:
            b = device.breakdown
            print(
                f"  {device.name}: weights {format_bytes(b.weights)}, KV cache {format_bytes(b.kv_cache)}, "
                f"compute {format_bytes(b.compute)}, margin {format_bytes(b.margin)} = {format_bytes(b.total)} "
                f"of {format_bytes(max(0, device.budget_bytes))}"
            )
    return 0 if plan.fits else 2
