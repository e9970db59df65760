"""The native token loop: ``resources/native/qdloop.c``, built once per machine and loaded where replies are generated.

Python between two tokens costs more than its own few microseconds: on a model fast enough for them to show, a
Python loop of sample-and-decode ran at 0.95-0.97 of the same loop in C on the same context (bench/chat.py's notes),
and at GPU speed the gap is larger. The helper runs pick, stamp, decode for a whole chunk of tokens; Python handles
the chunk's text afterwards (see :func:`desktop.llama.generate.generate`).

It links against nothing: llama.cpp's functions are handed over as pointers from the library this process loaded, so
it serves every engine. The source ships as a resource; the bundle carries a prebuilt copy, a pip install builds it on
first use with the C compiler llama-cpp-python itself was built with, into the data folder (keyed by the source and
the compiler). Without a compiler, or with ``QUANTDESK_NATIVE_LOOP=0``, :func:`native_loop` is None and generation
runs its Python loop: the same replies, a little slower.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from desktop import paths, resources

log = logging.getLogger(__name__)

SOURCE = "native/qdloop.c"
LIB_NAME = "qdloop.dll" if sys.platform == "win32" else "libqdloop.dylib" if sys.platform == "darwin" else "libqdloop.so"
DISABLE_ENV = "QUANTDESK_NATIVE_LOOP"  # "0": always the Python loop
COMPILE_TIMEOUT_S = 120

# qd_run's *status
CHUNK, EOG, STOPPED, DECODE_FAILED, NO_LOGITS = range(5)


class LoopParams(ctypes.Structure):
    """``struct qd_loop`` (qdloop.c)."""

    _fields_ = [
        ("ctx", ctypes.c_void_p),
        ("sampler", ctypes.c_void_p),
        ("vocab", ctypes.c_void_p),
        ("batch", ctypes.c_void_p),
        ("decode", ctypes.c_void_p),
        ("sample", ctypes.c_void_p),
        ("is_eog", ctypes.c_void_p),
        ("logits_ith", ctypes.c_void_p),
        ("n_vocab", ctypes.c_int32),
        ("argmax", ctypes.c_int32),
        ("check_eog", ctypes.c_int32),
        ("pos", ctypes.c_int32),
        ("stop", ctypes.c_void_p),
    ]


class NativeLoop:
    """The loaded helper: :meth:`params` describes one reply, :meth:`run` generates one chunk of it."""

    def __init__(self, lib: Any, path: Path) -> None:
        import llama_cpp

        self.path = path
        self._lib = lib
        lib.qd_now.restype = ctypes.c_double
        lib.qd_batch_size.restype = ctypes.c_int32
        lib.qd_loop_size.restype = ctypes.c_int32
        out_int = ctypes.POINTER(ctypes.c_int32)
        lib.qd_run.argtypes = [ctypes.POINTER(LoopParams), ctypes.c_int32, ctypes.c_int32, out_int,
                               ctypes.POINTER(ctypes.c_double), out_int, out_int, out_int]
        lib.qd_run.restype = ctypes.c_int32
        if lib.qd_batch_size() != ctypes.sizeof(llama_cpp.llama_batch) or lib.qd_loop_size() != ctypes.sizeof(LoopParams):
            raise OSError("the native loop's struct layouts differ from this llama-cpp-python's")
        self.now = lib.qd_now
        self.abort_callback = llama_cpp.ggml_abort_callback(ctypes.cast(lib.qd_should_abort, ctypes.c_void_p).value)
        self._run = lib.qd_run
        self._functions = {name: ctypes.cast(getattr(llama_cpp, name), ctypes.c_void_p).value
                           for name in ("llama_decode", "llama_sampler_sample", "llama_vocab_is_eog",
                                        "llama_get_logits_ith")}

    def params(self, session: Any, chain: Any, *, argmax: bool, check_eog: bool, pos: int,
               stop_flag: ctypes.c_int32) -> LoopParams:
        f = self._functions
        return LoopParams(
            ctx=_address(session.ctx), sampler=_address(chain), vocab=_address(session.vocab),
            batch=ctypes.addressof(session.batch),
            decode=f["llama_decode"], sample=f["llama_sampler_sample"], is_eog=f["llama_vocab_is_eog"],
            logits_ith=f["llama_get_logits_ith"], n_vocab=session.n_vocab, argmax=int(argmax),
            check_eog=int(check_eog), pos=pos, stop=ctypes.addressof(stop_flag),
        )

    def run(self, params: LoopParams, pending: int, n_max: int, tokens: Any, stamps: Any) -> tuple[int, int, int, int]:
        """Decode ``pending`` (unless -1), then pick up to ``n_max`` tokens into ``tokens``/``stamps`` (this
        helper's clock: :meth:`now`). Returns (picked, status, decodes made, llama_decode's last code)."""
        status, decoded, rc = ctypes.c_int32(), ctypes.c_int32(), ctypes.c_int32()
        picked = self._run(ctypes.byref(params), pending, n_max, tokens, stamps, ctypes.byref(status),
                           ctypes.byref(decoded), ctypes.byref(rc))
        return int(picked), status.value, decoded.value, rc.value


def _address(pointer: Any) -> int | None:
    """The address behind a ctypes pointer or void pointer (llama-cpp-python returns both kinds)."""
    if pointer is None or isinstance(pointer, int):
        return pointer
    return ctypes.cast(pointer, ctypes.c_void_p).value


def _compilers() -> list[list[str]]:
    """Compile commands to try, each ending where the source and output go."""
    found = []
    cc = os.environ.get("CC")
    names = [cc] if cc else []
    names += ["gcc", "clang", "cl"] if sys.platform == "win32" else ["cc", "gcc", "clang"]
    for name in names:
        exe = shutil.which(name)
        if not exe:
            continue
        if Path(exe).stem.lower() == "cl":
            found.append([exe, "/nologo", "/O2", "/LD"])
        elif sys.platform == "win32":
            found.append([exe, "-O3", "-shared"])
        else:
            found.append([exe, "-O3", "-shared", "-fPIC", "-std=c11"])
    return found


def compile_loop(output: Path, command: list[str] | None = None) -> str:
    """Build the helper into ``output`` (written under a temporary name, then renamed). Returns "" when built,
    else why not, in a sentence."""
    commands = [command] if command else _compilers()
    if not commands:
        return "no C compiler was found (cc, gcc or clang; cl on Windows)"
    source = resources.path(SOURCE)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f"{output.stem}.{os.getpid()}.{threading.get_ident()}.partial{output.suffix}")
    problems = []
    for argv in commands:
        if Path(argv[0]).stem.lower() == "cl":
            full = [*argv, str(source), f"/Fe:{partial}"]
        else:
            full = [*argv, str(source), "-o", str(partial)]
        try:
            done = subprocess.run(full, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, cwd=output.parent)
        except (OSError, subprocess.SubprocessError) as exc:
            problems.append(f"{Path(argv[0]).name}: {exc}")
            continue
        if done.returncode == 0 and partial.exists():
            os.replace(partial, output)
            return ""
        problems.append(f"{Path(argv[0]).name} exited with {done.returncode}: {(done.stderr or done.stdout)[-400:]}")
        partial.unlink(missing_ok=True)
    return "the C compiler could not build it (" + "; ".join(problems) + ")"


def cache_path(data_dir: Path | None = None) -> Path:
    """Where this machine's build lives: keyed by the source, the compiler and the machine."""
    commands = _compilers()
    key = hashlib.sha256()
    key.update(resources.path(SOURCE).read_bytes())
    key.update(" ".join(commands[0] if commands else []).encode())
    key.update(f"{sys.platform}-{platform.machine()}".encode())
    return (data_dir or paths.data_dir()) / "native" / key.hexdigest()[:16] / LIB_NAME


def library_path(data_dir: Path | None = None) -> tuple[Path | None, str]:
    """The helper to load (the bundle's prebuilt copy, else this machine's build, made now if missing) and, when
    there is none, why."""
    bundled = resources.path("native/" + LIB_NAME)
    if bundled.exists():
        return bundled, ""
    target = cache_path(data_dir)
    if target.exists():
        return target, ""
    problem = compile_loop(target)
    return (None, problem) if problem else (target, "")


_lock = threading.Lock()
_loaded: dict[str, Any] = {}


def native_loop() -> NativeLoop | None:
    """The helper for this process (built and loaded once), or None: then :data:`unavailable` says why."""
    with _lock:
        if "loop" in _loaded:
            return _loaded["loop"]
        loop: NativeLoop | None = None
        if os.environ.get(DISABLE_ENV, "").strip() == "0":
            reason = f"switched off ({DISABLE_ENV}=0)"
        else:
            path, reason = library_path()
            if path is not None:
                try:
                    loop = NativeLoop(ctypes.CDLL(str(path)), path)
                except (OSError, AttributeError) as exc:
                    reason = f"{path} could not be loaded ({exc})"
        if loop is None:
            log.warning("generation runs its Python loop: the native loop is unavailable: %s", reason)
        _loaded["loop"], _loaded["reason"] = loop, reason
        return loop


def unavailable() -> str:
    """Why :func:`native_loop` returned None ("" when it did not, or was not asked yet)."""
    return "" if _loaded.get("loop") is not None else str(_loaded.get("reason", ""))


def check_job(*, progress: Any, cancelled: Any) -> dict[str, str]:
    """Which token loop a child gets on this install (selfcheck): "native" with the helper's path, or "python" and
    why."""
    loop = native_loop()
    return {"loop": "native" if loop else "python", "path": str(loop.path) if loop else "", "note": unavailable()}
