"""The code deps of every DVC stage, from what its script imports.

A stage depends on its script and on every ``ouroboros3d`` module the script reaches through
imports (lazy imports inside functions included); ``ouroboros3d/data`` is listed as one folder.
``tests/test_dvc_deps.py`` fails when dvc.yaml misses one; this rewrites the lists:

    python scripts/dvc_deps.py          # print what would change
    python scripts/dvc_deps.py --write  # rewrite dvc.yaml's ouroboros3d/ entries in place

Only the ``ouroboros3d/`` entries of each ``deps:`` list are rewritten (sorted, where the first
of them stood); data, models, results and other files stay as written, comments included.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "ouroboros3d"
FOLDERS = ("ouroboros3d/data",)  # listed as one dep: a stage that reaches one module reaches them all


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
    return {n for n in names if n.split(".")[0] == PACKAGE}


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


def code_deps(script: Path) -> list[str]:
    """The ``ouroboros3d/`` deps entries of a stage running ``script``, folders collapsed, sorted."""
    out = set()
    for f in code_closure(script):
        if f.startswith(f"{PACKAGE}/"):
            out.add(next((d for d in FOLDERS if f.startswith(d + "/")), f))
    return sorted(out)


def synced(text: str) -> str:
    """dvc.yaml's text with every stage's ``ouroboros3d/`` deps replaced by :func:`code_deps`."""
    lines, out, script = text.split("\n"), [], None
    i = 0
    while i < len(lines):
        line = lines[i]
        if re.match(r"^  \S.*:\s*$", line):  # a new stage
            script = None
        found = re.search(r"python (experiments/\S+\.py)", line)
        if found:
            script = ROOT / found.group(1)
        deps = re.match(r"^(\s*)deps:\s*$", line)
        out.append(line)
        i += 1
        if not deps:
            continue
        item = deps.group(1) + "  - "
        entries = []
        while i < len(lines) and lines[i].startswith(item):
            entries.append(lines[i])
            i += 1
        code = [e for e in entries if e[len(item) :].startswith(f"{PACKAGE}/")]
        if script is None or not code:
            out.extend(entries)
            continue
        first = entries.index(code[0])
        rest = [e for e in entries if e not in code]
        new = [item + d for d in code_deps(script)]
        out.extend(rest[:first] + new + rest[first:])
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite dvc.yaml in place")
    args = parser.parse_args(argv)
    path = ROOT / "dvc.yaml"
    old = path.read_text()
    new = synced(old)
    if args.write:
        path.write_text(new)
    import difflib

    sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "dvc.yaml", "synced"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
