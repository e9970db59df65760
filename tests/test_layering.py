"""The house rules: the domain modules stay Qt-free (only desktop/ui, desktop/workers and desktop/app.py may import
Qt), no domain module imports desktop.ui or desktop.workers, and no two modules import each other in a circle."""

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
    assert {"report.py", "jobs.py", "process.py", "library.py", "cli.py"} <= names


def test_no_domain_module_imports_qt() -> None:
    offenders = {str(p.relative_to(ROOT)): _qt_imports(p) for p in domain_modules()}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_checker_catches_a_qt_import(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom PySide6.QtCore import QObject\nimport pyqtgraph as pg\n")
    assert _qt_imports(sample) == ["PySide6.QtCore", "pyqtgraph"]


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = ("desktop",) + path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _desktop_imports(path: Path, known: set[str], root: Path = ROOT) -> set[str]:
    """The desktop modules ``path`` imports (``from desktop.x import y`` counts ``desktop.x.y`` when that is a
    module), at any depth in the file: a lazy import inside a function closes a circle all the same."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m in known and m != name}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    return {name: _desktop_imports(path, set(files), root) for name, path in files.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (a package importing its own children is no circle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w.startswith(v + "."):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles() -> None:
    assert circles(import_graph()) == []


def test_no_domain_module_imports_the_gui_layers() -> None:
    graph = import_graph()
    domain = {_module_name(p) for p in domain_modules()}
    offenders = {m: sorted(t for t in graph[m] if t.startswith(("desktop.ui", "desktop.workers")))
                 for m in domain if m in graph}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_the_circle_finder_finds_a_circle_and_a_lazy_import(tmp_path: Path) -> None:
    pkg = tmp_path / "desktop"
    (pkg / "feat").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "feat" / "__init__.py").write_text("from desktop.feat import a\n")
    (pkg / "feat" / "a.py").write_text("from desktop.feat.b import thing\n")
    (pkg / "feat" / "b.py").write_text("def thing():\n    from desktop.feat import a\n")
    (pkg / "c.py").write_text("from desktop.feat import b\n")
    assert circles(import_graph(pkg)) == [["desktop.feat.a", "desktop.feat.b"]]
