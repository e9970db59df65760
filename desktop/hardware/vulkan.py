"""Vulkan device limits ggml's API does not expose, read from the Vulkan loader itself.

One matters for planning: ``maxStorageBufferRange``. llama.cpp's Vulkan backend cannot run an operation on a weight
larger than that, so such a weight (a big tied output matrix) and its compute stay on the host. It is 4 GiB on most
discrete GPUs but 128 MiB on Mesa's lavapipe and 1-2 GiB on some integrated GPUs.

The report calls this in its child process, only when the engine has a Vulkan device. Everything read is bounded
(fixed-size structs); any failure returns an empty map, never an error.
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

_INSTANCE_CREATE_INFO = 1  # VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO
_NAME_OFFSET = 20  # VkPhysicalDeviceProperties.deviceName (after five uint32 fields)
_NAME_SIZE = 256
_LIMITS_OFFSET = 296  # VkPhysicalDeviceLimits, 8-byte aligned after deviceName and pipelineCacheUUID
_STORAGE_RANGE_OFFSET = _LIMITS_OFFSET + 7 * 4  # the eighth uint32 of the limits
_PROPERTIES_SIZE = 1024  # sizeof(VkPhysicalDeviceProperties) is 824; room to spare
_MAX_DEVICES = 16


class _InstanceCreateInfo(ctypes.Structure):
    _fields_ = [
        ("sType", ctypes.c_uint32),
        ("pNext", ctypes.c_void_p),
        ("flags", ctypes.c_uint32),
        ("pApplicationInfo", ctypes.c_void_p),
        ("enabledLayerCount", ctypes.c_uint32),
        ("ppEnabledLayerNames", ctypes.c_void_p),
        ("enabledExtensionCount", ctypes.c_uint32),
        ("ppEnabledExtensionNames", ctypes.c_void_p),
    ]


def _loader() -> ctypes.CDLL | None:
    names = {"win32": ["vulkan-1.dll"], "darwin": ["libvulkan.1.dylib", "libMoltenVK.dylib"]}.get(
        sys.platform, ["libvulkan.so.1", "libvulkan.so"])
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def storage_buffer_limits() -> dict[str, int]:
    """Device name -> maxStorageBufferRange in bytes, for every Vulkan physical device; {} without a loader."""
    lib = _loader()
    if lib is None:
        return {}
    instance = ctypes.c_void_p()
    info = _InstanceCreateInfo(sType=_INSTANCE_CREATE_INFO)
    try:
        if lib.vkCreateInstance(ctypes.byref(info), None, ctypes.byref(instance)) != 0:
            return {}
    except (OSError, AttributeError) as exc:
        log.info("Vulkan instance not created (%s)", exc)
        return {}
    found: dict[str, int] = {}
    try:
        count = ctypes.c_uint32(0)
        lib.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), None)
        n = min(int(count.value), _MAX_DEVICES)
        devices = (ctypes.c_void_p * max(n, 1))()
        count.value = n
        if n == 0 or lib.vkEnumeratePhysicalDevices(instance, ctypes.byref(count), devices) not in (0, 5):  # 5: INCOMPLETE
            return {}
        for index in range(min(int(count.value), n)):
            props = (ctypes.c_uint8 * _PROPERTIES_SIZE)()
            lib.vkGetPhysicalDeviceProperties(ctypes.c_void_p(devices[index]), props)
            raw = bytes(props[_NAME_OFFSET:_NAME_OFFSET + _NAME_SIZE]).split(b"\0", 1)[0]
            limit = int.from_bytes(bytes(props[_STORAGE_RANGE_OFFSET:_STORAGE_RANGE_OFFSET + 4]), sys.byteorder)
            found[raw.decode("utf-8", "replace")] = limit
    finally:
        lib.vkDestroyInstance(instance, None)
    return found
