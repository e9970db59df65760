"""Engines: the llama.cpp builds QuantDesk can run on, which one is selected, and the child environment for it.

"cpu" is what pip built inside llama-cpp-python (Metal on Apple Silicon). "vulkan-<version>" and "cuda-<version>"
are built here (desktop.llama.build) into ``<data>/engines/<name>/``. A child process that loads llama.cpp runs on
the selected engine through ``LLAMA_CPP_LIB_PATH`` (llama-cpp-python reads it at import) plus the library path
(``LD_LIBRARY_PATH``, ``PATH`` on Windows), set for that child only: the GUI process never loads llama.cpp.

A built engine is offered only after its smoke test passed (desktop.llama.smoke writes ``smoke.json`` next to
``engine.json``): the default is the best engine that passed (CUDA, then Vulkan, then the CPU); an engine whose
test failed or crashed is never chosen silently, not even when the user picked it earlier.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import platformdirs

from desktop import paths
from desktop.errors import UserError
from desktop.fileio import write_text_atomic

log = logging.getLogger(__name__)

CACHE_ENV = "QUANTDESK_ENGINE_CACHE"
MANIFEST = "engine.json"
SMOKE = "smoke.json"
CPU = "cpu"
_SELECTED = "selected.json"
_PREFERENCE = {"cuda": 0, "vulkan": 1, "cpu": 2}
_LABELS = {"cpu": "CPU", "vulkan": "Vulkan", "cuda": "CUDA"}
_MAX_JSON = 64 * 1024


def library_version() -> str:
    """The installed llama-cpp-python version: engines are built from exactly its source."""
    return metadata.version("llama-cpp-python")


def cache_root() -> Path:
    """The build cache shared by every data folder of this user (tests and CI reuse one build)."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path(platformdirs.user_cache_dir("quantdesk", appauthor=False)) / "engines"


def engine_name(backend: str, version: str) -> str:
    return f"{backend}-{version}"


def engines_dir(data_dir: Path | None = None) -> Path:
    return (data_dir or paths.data_dir()) / "engines"


def pip_library_dir() -> Path:
    """Where pip put the CPU build's libraries, found without loading them (the GUI process may ask)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("llama-cpp-python is not installed.", "Install QuantDesk again: pip install quantdesk")
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


def loaded_library_dir() -> Path:
    """The folder llama-cpp-python loads (or loaded) libllama from in this process: ``LLAMA_CPP_LIB_PATH`` (an engine
    QuantDesk built, set for this child) or pip's own. Code that opens libggml itself must open it from here, or it
    gets a second, different copy."""
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    return Path(override) if override else pip_library_dir()


@dataclass
class SmokeResult:
    ok: bool
    sentence: str  # what happened, in one sentence
    layers_offloaded: int = 0
    layers_total: int = 0
    gpu_buffers: list[str] = field(default_factory=list)  # "Vulkan0", "CUDA0" ...
    tokens_match: bool = False
    device: str = ""
    seconds: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SmokeResult:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass
class Engine:
    name: str  # "cpu", "vulkan-0.3.36"
    backend: str  # "cpu", "vulkan", "cuda"
    version: str
    lib_dir: Path  # the folder with libllama
    built: bool  # built by QuantDesk (False: pip's CPU build)
    smoke: SmokeResult | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return _LABELS.get(self.backend, self.backend)

    @property
    def stale(self) -> bool:
        """Built from another llama-cpp-python version than the one installed: its libraries no longer match."""
        return self.built and self.version != library_version()

    @property
    def usable(self) -> bool:
        """May be selected: pip's build always; a built engine once its smoke test passed on this machine."""
        if not self.built:
            return True
        return not self.stale and self.smoke is not None and self.smoke.ok

    def status(self) -> str:
        """One sentence on where this engine stands."""
        if not self.built:
            return "Built by pip with llama-cpp-python; runs on the CPU (Metal on Apple Silicon)."
        if self.stale:
            return f"Built for llama-cpp-python {self.version}, but {library_version()} is installed: build it again."
        if self.smoke is None:
            return "Built, not tested yet: run its smoke test before it is offered."
        return self.smoke.sentence


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.loads(f.read(_MAX_JSON))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cpu_engine() -> Engine:
    return Engine(CPU, "cpu", library_version(), pip_library_dir(), built=False)


def load_engine(folder: Path) -> Engine | None:
    manifest = _read_json(folder / MANIFEST)
    if not manifest or manifest.get("backend") not in ("vulkan", "cuda") or not (folder / "lib").is_dir():
        return None
    smoke_data = _read_json(folder / SMOKE)
    smoke = None
    if smoke_data is not None:
        try:
            smoke = SmokeResult.from_dict(smoke_data)
        except TypeError:
            smoke = None
    return Engine(
        name=folder.name,
        backend=str(manifest["backend"]),
        version=str(manifest.get("llama_cpp_python", "")),
        lib_dir=folder / "lib",
        built=True,
        smoke=smoke,
        manifest=manifest,
    )


def list_engines(data_dir: Path | None = None) -> list[Engine]:
    """The CPU engine first, then every built engine in the data folder, best first."""
    found = [cpu_engine()]
    folder = engines_dir(data_dir)
    if folder.is_dir():
        built = [e for e in map(load_engine, sorted(p for p in folder.iterdir() if p.is_dir())) if e is not None]
        found += sorted(built, key=lambda e: (_PREFERENCE.get(e.backend, 9), e.name))
    return found


def find_engine(name: str, data_dir: Path | None = None) -> Engine:
    engines = list_engines(data_dir)
    for engine in engines:
        if engine.name == name or (engine.built and engine.backend == name):
            return engine
    names = ", ".join(e.name for e in engines)
    raise UserError(f"There is no engine called {name!r} here.", f"Choose one of: {names}; or build one.")


def save_smoke(engine: Engine, result: SmokeResult) -> None:
    if engine.built:
        write_text_atomic(engine.lib_dir.parent / SMOKE, json.dumps(result.__dict__, indent=2))
        engine.smoke = result


def chosen_name(data_dir: Path | None = None) -> str:
    """The engine the user chose, or "" when they left it to QuantDesk."""
    data = _read_json(engines_dir(data_dir) / _SELECTED) or {}
    return str(data.get("engine", ""))


def select_engine(name: str, data_dir: Path | None = None) -> Engine:
    """Remember the user's choice. Refuses an engine that has not passed its smoke test, with the step that fixes it.
    ``"auto"`` hands the choice back to QuantDesk."""
    target = engines_dir(data_dir) / _SELECTED
    if name == "auto":
        target.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(target, json.dumps({"engine": ""}))
        return selected_engine(data_dir)
    engine = find_engine(name, data_dir)
    if not engine.usable:
        raise UserError(f"The {engine.label} engine cannot be used: {engine.status()}",
                        f"Run: quantdesk engine test {engine.name}" if not engine.stale
                        else f"Run: quantdesk engine build {engine.backend}")
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, json.dumps({"engine": engine.name}))
    return engine


def selected_engine(data_dir: Path | None = None) -> Engine:
    """The engine child processes run on: the user's choice while it still passes its smoke test, else the best
    engine that does. Never one whose test failed, crashed or has not run."""
    engines = list_engines(data_dir)
    chosen = chosen_name(data_dir)
    for engine in engines:
        if engine.name == chosen and engine.usable:
            return engine
    if chosen and chosen != CPU:
        log.warning("the chosen engine %s is not usable now; falling back to the best working one", chosen)
    usable = [e for e in engines if e.usable]
    return min(usable, key=lambda e: _PREFERENCE.get(e.backend, 9))


def describe_engines(data_dir: Path | None = None) -> list[dict[str, Any]]:
    """The engines as plain data for a page or ``engine list --json``: name, label, backend, status, usable,
    selected (what children run on now) and chosen (picked by the user rather than automatically)."""
    engines = list_engines(data_dir)
    selected = selected_engine(data_dir).name
    chosen = chosen_name(data_dir)
    return [{"name": e.name, "label": e.label, "backend": e.backend, "version": e.version, "path": str(e.lib_dir),
             "built": e.built, "status": e.status(), "usable": e.usable, "selected": e.name == selected,
             "chosen": e.name == chosen} for e in engines]


def cpu_environment() -> dict[str, str | None]:
    """The child environment for pip's CPU build: no other build's path inherited."""
    return {"LLAMA_CPP_LIB_PATH": None}


def child_environment(engine: Engine | None = None) -> dict[str, str | None]:
    """The environment changes that make a child process load ``engine`` (default: the selected one). A value of
    None removes the variable, so a CPU child never inherits another build's path."""
    if engine is None:
        try:
            engine = selected_engine()
        except (UserError, OSError, metadata.PackageNotFoundError) as exc:
            log.warning("no llama.cpp engine could be selected (%s); the child runs on pip's build", exc)
            return cpu_environment()
    if not engine.built:
        return cpu_environment()
    lib = str(engine.lib_dir)
    var = "PATH" if sys.platform == "win32" else "DYLD_LIBRARY_PATH" if sys.platform == "darwin" else "LD_LIBRARY_PATH"
    current = os.environ.get(var, "")
    return {"LLAMA_CPP_LIB_PATH": lib, var: lib + (os.pathsep + current if current else "")}


def environment_engine_name(env: dict[str, str | None] | None) -> str:
    """The name of the engine a child started with ``env`` runs on (None: the selected engine's)."""
    if env is None:
        try:
            return selected_engine().name
        except (UserError, OSError, metadata.PackageNotFoundError):
            return CPU
    lib = env.get("LLAMA_CPP_LIB_PATH")
    return Path(lib).parent.name if lib else CPU


def offload_shortfall(requested_layers: int, memory: dict[str, Any] | None, engine: str) -> str:
    """The sentence for a load that was asked to put layers on a GPU and put none there (llama.cpp reported no GPU
    buffer), or "" when it did or was not asked. Such a load is never passed off as offloaded."""
    if requested_layers == 0 or (memory or {}).get("gpus"):
        return ""
    if engine in ("", CPU):
        return ("No layer went to the GPU: the CPU engine cannot offload. Build the Vulkan engine on the Hardware "
                "page (or: quantdesk engine build vulkan).")
    return (f"No layer went to the GPU: the {engine} engine found no GPU it can use, so the model runs on the CPU. "
            "The Hardware page says what to install.")
