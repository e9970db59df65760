"""``quantdesk hw [--json]``: the hardware report."""

from __future__ import annotations

import argparse
import json

from desktop.hardware.engine_use import engine_use_sentence
from desktop.hardware.report import HardwareReport, collect_report_on_engine
from desktop.jobs import format_bytes


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("hw", help="show what this machine has and what llama.cpp can use")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = collect_report_on_engine()  # llama.cpp's view from the selected engine, in a child process
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report))
    return 0


def format_report(report: HardwareReport) -> str:
    cpu, mem = report.cpu, report.memory
    lines = [
        f"System   {report.os}",
        f"CPU      {cpu.model}",
        f"         {cpu.physical_cores} cores, {cpu.logical_cores} threads, {cpu.architecture}",
        f"         features: {', '.join(cpu.features) or 'none detected'}",
        f"Memory   {format_bytes(mem.total)} total, {format_bytes(mem.available)} available",
    ]
    if report.gpus:
        for gpu in report.gpus:
            extra = ", ".join(
                x
                for x in (
                    f"driver {gpu.driver}" if gpu.driver else "",
                    f"compute {gpu.compute_capability}" if gpu.compute_capability else "",
                    "unified memory" if gpu.unified_memory else "",
                    "estimated" if gpu.source == "estimate" else "",
                )
                if x
            )
            memory = f"{format_bytes(gpu.vram_free)} free of {format_bytes(gpu.vram_total)}" if gpu.vram_total else ""
            backend = f" ({gpu.backend})" if gpu.backend else ""
            lines.append(f"GPU {gpu.index}    {gpu.name}{backend}: {memory}{f'; {extra}' if extra else ''}")
            lines.append(f"         {engine_use_sentence(gpu, report.llama.engine)}")
    else:
        lines.append("GPU      none found")
    llama = report.llama
    if llama.available:
        lines.append(f"Engine   {llama.engine or 'cpu'} ({llama.lib_dir})")
        lines.append(
            f"llama.cpp  llama-cpp-python {llama.version}; GPU offload "
            f"{'available' if llama.supports_gpu_offload else 'not in this build'}"
        )
        lines.append(f"           uses: {', '.join(llama.cpu_features) or 'baseline CPU code'}")
        for dev in llama.devices:
            lines.append(f"           device {dev.name} ({dev.kind}): {dev.description}")
    for note in report.notes:
        lines.append(f"Note     {note}")
    return "\n".join(lines)
