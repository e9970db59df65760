"""A stand-in for the ``pynvml`` module (NVIDIA's nvidia-ml-py) for machines without an NVIDIA driver.

It imitates the real module's interface: the same function names and return shapes (memory and utilization
structs with the same fields, names as ``str``, compute capability as a tuple) and the same error classes, where
``NVMLError(value)`` turns into the matching ``NVMLError_*`` subclass as the real one does.
"""

from __future__ import annotations

import types
from dataclasses import dataclass

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12

_MESSAGES = {
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
}


class NVMLError(Exception):
    """As in the real module: ``NVMLError(code)`` returns an instance of the code's subclass; no ``__init__``."""

    _valClassMapping: dict[int, type[NVMLError]] = {}  # noqa: N815 - the real attribute name

    def __new__(typ, value: int):  # type: ignore[no-untyped-def]  # noqa: N804
        if typ == NVMLError:
            typ = NVMLError._valClassMapping.get(value, typ)
        obj = Exception.__new__(typ)
        obj.value = value
        return obj

    def __str__(self) -> str:
        return _MESSAGES.get(self.value, "Unknown Error")


def _subclass(name: str, value: int) -> type[NVMLError]:
    def new(typ, *args):  # type: ignore[no-untyped-def]
        return NVMLError.__new__(typ, value)

    cls = type(name, (NVMLError,), {"__new__": new})
    NVMLError._valClassMapping[value] = cls
    return cls


NVMLError_NotSupported = _subclass("NVMLError_NotSupported", NVML_ERROR_NOT_SUPPORTED)
NVMLError_DriverNotLoaded = _subclass("NVMLError_DriverNotLoaded", NVML_ERROR_DRIVER_NOT_LOADED)
NVMLError_LibraryNotFound = _subclass("NVMLError_LibraryNotFound", NVML_ERROR_LIBRARY_NOT_FOUND)


@dataclass
class FakeGpu:
    name: str
    total: int
    used: int
    capability: tuple[int, int] = (8, 9)
    utilization: int | None = 37  # None: the card answers "Not Supported"


@dataclass
class c_nvmlMemory_t:  # noqa: N801 - the real struct's name
    total: int
    free: int
    used: int


@dataclass
class c_nvmlUtilization_t:  # noqa: N801
    gpu: int
    memory: int


def make_module(gpus: list[FakeGpu], init_error: int | None = None, driver: str = "550.54.14") -> types.ModuleType:
    state = {"initialised": 0, "shutdowns": 0}
    mod = types.ModuleType("pynvml")
    mod.NVMLError = NVMLError  # type: ignore[attr-defined]
    mod.NVMLError_NotSupported = NVMLError_NotSupported  # type: ignore[attr-defined]
    mod.NVMLError_DriverNotLoaded = NVMLError_DriverNotLoaded  # type: ignore[attr-defined]
    mod.NVMLError_LibraryNotFound = NVMLError_LibraryNotFound  # type: ignore[attr-defined]
    mod.state = state  # type: ignore[attr-defined]

    def check() -> None:
        if not state["initialised"]:
            raise NVMLError(13)  # NVML_ERROR_UNINITIALIZED in the real module

    def nvmlInit() -> None:  # noqa: N802 - the real names
        if init_error is not None:
            raise NVMLError(init_error)
        state["initialised"] += 1

    def nvmlShutdown() -> None:  # noqa: N802
        check()
        state["initialised"] -= 1
        state["shutdowns"] += 1

    def nvmlSystemGetDriverVersion() -> str:  # noqa: N802
        check()
        return driver

    def nvmlDeviceGetCount() -> int:  # noqa: N802
        check()
        return len(gpus)

    def nvmlDeviceGetHandleByIndex(index: int) -> FakeGpu:  # noqa: N802
        check()
        return gpus[index]

    def nvmlDeviceGetName(handle: FakeGpu) -> str:  # noqa: N802
        return handle.name

    def nvmlDeviceGetMemoryInfo(handle: FakeGpu) -> c_nvmlMemory_t:  # noqa: N802
        return c_nvmlMemory_t(total=handle.total, free=handle.total - handle.used, used=handle.used)

    def nvmlDeviceGetCudaComputeCapability(handle: FakeGpu) -> tuple[int, int]:  # noqa: N802
        return handle.capability

    def nvmlDeviceGetUtilizationRates(handle: FakeGpu) -> c_nvmlUtilization_t:  # noqa: N802
        if handle.utilization is None:
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return c_nvmlUtilization_t(gpu=handle.utilization, memory=10)

    for fn in (
        nvmlInit,
        nvmlShutdown,
        nvmlSystemGetDriverVersion,
        nvmlDeviceGetCount,
        nvmlDeviceGetHandleByIndex,
        nvmlDeviceGetName,
        nvmlDeviceGetMemoryInfo,
        nvmlDeviceGetCudaComputeCapability,
        nvmlDeviceGetUtilizationRates,
    ):
        setattr(mod, fn.__name__, fn)
    return mod
