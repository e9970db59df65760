"""``quantdesk selfcheck`` names the libraries Qt's X11 platform plugin needs and the system lacks. On a minimal
Debian the window failed with Qt's generic "xcb-cursor0" message while libxcb-icccm4 and libxcb-keysyms1 were the
missing ones, and selfcheck said all was fine. Here they are hidden from the dynamic loader in a mount namespace
of the test's own (a copy of the library folder without them, bound over it), as on such a system."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from desktop.verbs.selfcheck import debian_package, platform_plugin

REPO = Path(__file__).resolve().parent.parent
HIDDEN = ("libxcb-icccm.so.4", "libxcb-keysyms.so.1")


def _library_dir(plugin: Path) -> Path | None:
    """The folder the loader finds the hidden libraries in (None when the system lacks them already)."""
    out = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True, check=True).stdout
    found = re.search(rf"{re.escape(HIDDEN[0])} => (\S+)", out)
    return Path(os.path.realpath(found.group(1))).parent if found and found.group(1) != "not" else None


def _without_libraries(command: list[str], plugin: Path, tmp_path: Path) -> list[str]:
    folder = _library_dir(plugin)
    if folder is None:
        return command
    copy = tmp_path / "libs"  # hard links: no bytes copied, and the originals are never touched
    script = ('set -e; cp -al "$1/." "$2/"; for name in $3; do rm -f "$2/$name"*; done; '
              'mount --bind "$2" "$1"; shift 3; exec "$@"')
    copy.mkdir()
    names = " ".join(HIDDEN)
    return ["unshare", "-m", "bash", "-c", script, "hide", str(folder), str(copy), names, *command]


def _selfcheck(tmp_path: Path, platform: str | None) -> subprocess.CompletedProcess[str]:
    plugin = platform_plugin()
    assert plugin is not None and plugin.name == "libqxcb.so"
    env = {**os.environ, "PYTHONPATH": str(REPO), "QUANTDESK_HOME": str(tmp_path / "home")}
    env.pop("QT_QPA_PLATFORM", None)
    if platform is not None:
        env["QT_QPA_PLATFORM"] = platform
    command = _without_libraries([sys.executable, "-m", "desktop", "selfcheck"], plugin, tmp_path)
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def test_selfcheck_names_the_missing_x11_libraries_and_their_packages(tmp_path: Path) -> None:
    out = _selfcheck(tmp_path, None)  # as a user starts it on a desktop
    assert out.returncode == 1, out.stdout + out.stderr
    report = out.stdout[: out.stdout.rindex("}") + 1]
    import json

    data = json.loads(report)
    assert data["checks"]["window_libraries"] is False
    assert set(HIDDEN) <= set(data["window_libraries"]["missing"])
    assert "libxcb-icccm.so.4" in out.stderr and "libxcb-keysyms.so.1" in out.stderr
    assert "sudo apt-get install" in out.stderr and "libxcb-icccm4" in out.stderr and "libxcb-keysyms1" in out.stderr


def test_headless_runs_do_not_fail_on_them_but_still_say_it(tmp_path: Path) -> None:
    out = _selfcheck(tmp_path, "offscreen")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Not needed now, QT_QPA_PLATFORM=offscreen" in out.stderr and "libxcb-icccm4" in out.stderr


def test_debian_package_names() -> None:
    assert debian_package("libxcb-icccm.so.4") == "libxcb-icccm4"
    assert debian_package("libxcb-keysyms.so.1") == "libxcb-keysyms1"
    assert debian_package("libxkbcommon-x11.so.0") == "libxkbcommon-x11-0"
    assert debian_package("libX11-xcb.so.1") == "libx11-xcb1"
    assert debian_package("libxcb-render-util.so.0.0.0") == "libxcb-render-util0"
