"""The package's layout: an import graph built from the source, with no cycle in it.

Every ``import`` and ``from ... import`` of a package module counts, at module level or inside
a function (a lazy import that closes a cycle is still a cycle in the design), and so do
imports under ``TYPE_CHECKING``. ``from pkg import name`` depends on ``pkg.name`` when that is
a module, else on ``pkg``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "ouroboros3d"
LEAVES = ("ouroboros3d.geometry", "ouroboros3d.diffusion")  # the paper's maths import nothing of ours


def _name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module of ``package`` (dotted, from the package's parent) -> the package's modules it imports."""
    files = {_name(p, package.parent): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = here.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for alias in node.names:
                    if f"{base}.{alias.name}" in files:
                        deps.add(f"{base}.{alias.name}")
                    elif base in files:
                        deps.add(base)
        graph[name] = deps - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle(tmp_path):
    package = tmp_path / "ouroboros3d"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from .. import c\n")  # a lazy import counts
    (package / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n")
    (package / "d.py").write_text("import ouroboros3d.a\n")
    graph = import_graph(package)
    assert graph["ouroboros3d.a"] == {"ouroboros3d.sub.b"}
    assert graph["ouroboros3d.sub.b"] == {"ouroboros3d.c"}
    assert graph["ouroboros3d.c"] == {"ouroboros3d.a"}
    assert graph["ouroboros3d.d"] == {"ouroboros3d.a"}
    assert cycles(graph) == [["ouroboros3d.a", "ouroboros3d.c", "ouroboros3d.sub.b"]]


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 40  # the whole package was read
    assert cycles(graph) == []


def test_geometry_and_diffusion_are_leaves():
    graph = import_graph()
    for name, deps in graph.items():
        if name.startswith(LEAVES):
            outside = {d for d in deps if not d.startswith(LEAVES)}
            assert not outside, f"{name} imports {sorted(outside)}"


def test_no_module_is_much_over_400_lines():
    sizes = {
        p.relative_to(ROOT).as_posix(): len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")
    }
    assert {path: n for path, n in sizes.items() if n > 420} == {}
