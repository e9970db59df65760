"""``quantdesk selfcheck``: start the window headless and check what an installed or bundled app needs, and on Linux
whether the system has every library Qt's X11 platform plugin loads: when one is missing, Qt itself only says it
"could not load the Qt platform plugin xcb" and names xcb-cursor0 whatever is missing; this names each one."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

PLATFORM_PLUGIN = "libqxcb.so"
WINDOW_PLATFORMS = ("", "xcb")
"""QT_QPA_PLATFORM values under which the window needs the X11 plugin (unset: Qt's default on a Linux desktop)."""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "selfcheck", help="check that resources, Qt plugins, llama.cpp and child processes work in this install"
    )
    parser.set_defaults(func=run)


def platform_plugin(name: str = PLATFORM_PLUGIN) -> Path | None:
    """Qt's platform plugin file inside the installed (or bundled) PySide6, found without importing Qt."""
    spec = importlib.util.find_spec("PySide6")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(folder) / "Qt" / "plugins" / "platforms" / name
        if candidate.is_file():
            return candidate
    return None


def missing_libraries(plugin: Path) -> list[str]:
    """The shared libraries ``plugin`` needs (directly or through another library) that the system lacks, as the
    dynamic loader resolves them (``ldd``)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    out = subprocess.run([ldd, str(plugin)], capture_output=True, text=True, timeout=60, check=False).stdout
    names = re.findall(r"^\s*(\S+) => not found", out, flags=re.MULTILINE)
    return sorted(set(names))


def debian_package(soname: str) -> str:
    """The Debian/Ubuntu package that usually carries ``soname`` (policy 8.1: name + version, with a hyphen when
    the name ends in a digit): libxcb-icccm.so.4 -> libxcb-icccm4, libxkbcommon-x11.so.0 -> libxkbcommon-x11-0."""
    match = re.fullmatch(r"(.+?)\.so\.(\d+)(?:\..*)?", soname)
    if match is None:
        return soname
    name, version = match.group(1).lower(), match.group(2)
    return f"{name}-{version}" if name[-1].isdigit() else f"{name}{version}"


def window_libraries() -> dict[str, object]:
    """The X11 check: {"needed": whether the window would use it now, "missing": [...], "sentence": ...}."""
    platform = os.environ.get("QT_QPA_PLATFORM", "").split(":")[0]
    needed = sys.platform.startswith("linux") and platform in WINDOW_PLATFORMS
    plugin = platform_plugin() if sys.platform.startswith("linux") else None
    missing = missing_libraries(plugin) if plugin is not None else []
    sentence = ""
    if missing:
        sentence = (f"The window cannot open on X11: this system lacks {', '.join(missing)}, which Qt's platform "
                    f"plugin needs. Install them (Debian/Ubuntu): sudo apt-get install "
                    f"{' '.join(debian_package(m) for m in missing)}")
    return {"needed": needed, "plugin": str(plugin or ""), "missing": missing, "sentence": sentence}


def run(args: argparse.Namespace) -> int:
    from desktop.app import selfcheck

    from desktop.llama.engines import selected_engine

    window = window_libraries()
    result = selfcheck()
    engine = selected_engine()
    result["engine"] = f"{engine.name}: {engine.status()}"  # the llama.cpp build child processes run on
    result["window_libraries"] = window
    if window["needed"]:
        result["checks"]["window_libraries"] = not window["missing"]  # type: ignore[index]
    print(json.dumps(result, indent=2))
    if window["sentence"]:
        print(window["sentence"] if window["needed"] else
              f"(Not needed now, QT_QPA_PLATFORM={os.environ.get('QT_QPA_PLATFORM')}.) {window['sentence']}",
              file=sys.stderr)
    return 0 if all(result["checks"].values()) else 1  # type: ignore[union-attr]
