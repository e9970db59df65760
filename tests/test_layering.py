"""The domain modules stay Qt-free: only desktop/ui, desktop/workers and desktop/app.py may import Qt."""

from __future__ import annotations

import ast
from pathlib import Path

import desktop

ROOT = Path(desktop.__file__).parent
QT_PACKAGES = ("PySide6", "PyQt5", "PyQt6", "pyqtgraph", "superqt", "qtpy")


def _qt_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found += [n for n in names if n.split(".")[0] in QT_PACKAGES]
    return found


def domain_modules() -> list[Path]:
    allowed = {ROOT / "ui", ROOT / "workers"}
    return [
        p
        for p in ROOT.rglob("*.py")
        if not any(parent in allowed for parent in p.parents) and p != ROOT / "app.py"
    ]


def test_there_are_domain_modules_to_check() -> None:
    names = {p.name for p in domain_modules()}
    assert {"hardware.py", "jobs.py", "process.py", "library.py", "cli.py"} <= names


def test_no_domain_module_imports_qt() -> None:
    offenders = {str(p.relative_to(ROOT)): _qt_imports(p) for p in domain_modules()}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_checker_catches_a_qt_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom PySide6.QtCore import QObject\nimport pyqtgraph as pg\n")
    assert _qt_imports(sample) == ["PySide6.QtCore", "pyqtgraph"]
