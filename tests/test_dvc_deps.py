"""Every DVC stage depends on the code it runs: the transitive ``ouroboros3d`` imports of its script.

A stage whose deps miss a module it imports goes stale silently when that module changes;
this test fails instead, naming the stage and the missing files.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _module_file(name: str) -> Path | None:
    base = ROOT / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """Names of the ouroboros3d modules a file imports (lazy imports inside functions included)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            names |= {f"{base}.{a.name}" for a in node.names}
    return {n for n in names if n.split(".")[0] == "ouroboros3d"}


def code_closure(script: Path) -> set[str]:
    """The script and every ouroboros3d source file it reaches, as repository-relative paths."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
                found = _module_file(".".join(parts[:i]))
                if found is not None:
                    todo.append(found)
    return {str(p.relative_to(ROOT)) for p in seen}


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def test_every_stage_depends_on_the_code_it_imports():
    problems = []
    for name, stage in _stages().items():
        match = re.search(r"python (\S+\.py)", stage["cmd"])
        if not match:
            continue
        deps = {d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])}
        missing = sorted(
            f for f in code_closure(ROOT / match.group(1)) if not any(f == d or f.startswith(d + "/") for d in deps)
        )
        if missing:
            problems.append(f"{name}: {missing}")
    assert not problems, "stages missing code deps:\n" + "\n".join(problems)


def test_closure_follows_relative_and_lazy_imports():
    closure = code_closure(ROOT / "experiments" / "train.py")
    # train.py -> ouroboros3d.build -> (lazy) .model -> .splatting
    assert {"ouroboros3d/build.py", "ouroboros3d/model.py", "ouroboros3d/splatting.py"} <= closure
    assert "ouroboros3d/__init__.py" in closure and "ouroboros3d/_compat.py" in closure
