"""What a model load used, as the engine child reports it: flash attention as llama.cpp resolved it, the buffers
from llama.cpp's log grouped into host and per-GPU weights / KV cache / compute, and NVML's used-memory delta."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from desktop.errors import UserError

__all__ = ["FLASH_ATTN_VALUES", "flash_attn_setting", "memory_report", "nvml_delta", "nvml_used_bytes",
           "parse_buffer_sizes", "resolved_flash_attn"]

_BUFFER_RE = re.compile(r"(?P<buffer>\S+)\s+(?P<part>model|KV|compute|output|RS) buffer size =\s*(?P<mib>[\d.]+) MiB")
_PART_NAMES = {"model": "weights", "KV": "kv_cache", "RS": "kv_cache", "compute": "compute", "output": "compute"}
FLASH_ATTN_VALUES = {"auto": None, "off": False, "on": True}  # for ContextOptions.flash_attn (None: llama.cpp decides)
_FLASH_RESOLVED_RE = re.compile(r"(?:Flash Attention (?:was auto, set to )?|flash_attn\s*=\s*)(enabled|disabled)")


def flash_attn_setting(value: Any, cache_type_v: str) -> str:
    """"auto", "on" or "off" from a request (bools accepted). llama.cpp refuses a quantized V cache unless flash
    attention is on (even "auto"), so a quantized V turns "auto" into "on" and "off" into a clear error."""
    setting = ("on" if value else "off") if isinstance(value, bool) else str(value or "auto").lower()
    if setting not in FLASH_ATTN_VALUES:
        raise UserError(f"Flash attention '{value}' is not auto, on or off.", "Choose auto, on or off.")
    if cache_type_v not in ("f16", "f32", "bf16"):
        if setting == "off":
            raise UserError(f"llama.cpp needs flash attention for a {cache_type_v} V cache.",
                            "Set flash attention to auto or on, or use an f16 KV cache.")
        setting = "on"
    return setting


def resolved_flash_attn(log_text: str, setting: str) -> bool:
    """Whether llama.cpp ran with flash attention: its last word in the log, else the setting ("auto": on)."""
    found = _FLASH_RESOLVED_RE.findall(log_text)
    return found[-1] == "enabled" if found else setting != "off"


def parse_buffer_sizes(log_text: str) -> list[dict[str, Any]]:
    """The buffers llama.cpp allocated, from its log lines ("CPU_Mapped model buffer size = 12.34 MiB")."""
    found = []
    for match in _BUFFER_RE.finditer(log_text):
        found.append(
            {
                "buffer": match.group("buffer"),
                "part": _PART_NAMES[match.group("part")],
                "bytes": int(float(match.group("mib")) * 1024 * 1024),
            }
        )
    return found


def _is_host_buffer(name: str) -> bool:
    return name.upper().startswith("CPU") or name.endswith("_Host")


def memory_report(buffers: Sequence[Mapping[str, Any]], nvml: list[dict[str, int]] | None = None) -> dict[str, Any]:
    """Group llama.cpp's buffers into host and per-GPU weights / KV cache / compute (bytes)."""
    host = {"weights": 0, "kv_cache": 0, "compute": 0}
    gpus: dict[str, dict[str, Any]] = {}
    for buffer in buffers:
        name = str(buffer["buffer"])
        if _is_host_buffer(name):
            target = host
        else:
            device = name.removesuffix("_Mapped")
            target = gpus.setdefault(device, {"name": device, "weights": 0, "kv_cache": 0, "compute": 0})
        target[buffer["part"]] += int(buffer["bytes"])
    return {"host": host, "gpus": list(gpus.values()), "buffers": list(buffers), "nvml": nvml}


def nvml_used_bytes(nvml: Any = None) -> list[int] | None:
    """Used memory of each NVIDIA GPU from NVML, or None where there is no NVIDIA driver."""
    try:
        if nvml is None:
            import pynvml as nvml  # type: ignore[no-redef]
        nvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no library: nothing to report
        return None
    try:
        used = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            used.append(int(nvml.nvmlDeviceGetMemoryInfo(handle).used))
        return used
    except Exception:  # noqa: BLE001
        return None
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def nvml_delta(before: list[int] | None, after: list[int] | None) -> list[dict[str, int]] | None:
    if before is None or after is None or len(before) != len(after):
        return None
    return [
        {"index": i, "used_before": b, "used_after": a, "delta": a - b} for i, (b, a) in enumerate(zip(before, after))
    ]
