"""The package's import graph: layering, circles, module sizes; one JSON object.

    python -m tests.layers

Layers import downward only: topologies -> bus -> workloads, roles -> tools (the `geoml`
package). Imports under `if TYPE_CHECKING:` are annotations, not dependencies, and are left
out; imports inside functions count (they still run).
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: folder -> (installed package, layer rank)
PACKAGES = {"topologies": ("geoml.topologies", 0), "bus": ("geoml.bus", 1),
            "workloads": ("geoml.workloads", 2), "roles": ("geoml.roles", 3),
            "tools": ("geoml", 4)}


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Installed module name -> source file."""
    out = {}
    for folder, (package, _) in PACKAGES.items():
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `name` imports at run time."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def packages_of(name: str) -> set[str]:
    """The packages enclosing module `name`: importing it runs their __init__ first.

    So `from geoml.cli.x import y` depends on geoml.cli (and what its __init__ imports),
    while a module's own packages are already being imported when it runs."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def layer_of(name: str) -> int:
    for package, rank in sorted(PACKAGES.values(), key=lambda p: -len(p[0])):
        if name == package or name.startswith(package + "."):
            return rank
    raise KeyError(name)


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def report(root: Path = ROOT) -> dict[str, object]:
    mods = modules(root)
    known = set(mods)
    graph = {name: imports(name, path, known) for name, path in mods.items()}
    edges = {n: {p for d in deps for p in (d, *packages_of(d))
                 if p in known and p != n and p not in packages_of(n)}
             for n, deps in graph.items()}
    upward = sorted(f"{n} -> {d}" for n, deps in edges.items() for d in deps
                    if layer_of(d) > layer_of(n))
    sizes = sorted(((len(p.read_text().splitlines()), n) for n, p in mods.items()), reverse=True)
    return {"modules": len(mods), "circles": circles(edges), "upward_imports": upward,
            "largest": [{"module": n, "lines": k} for k, n in sizes[:5]],
            "over_400_lines": [n for k, n in sizes if k > 400]}


if __name__ == "__main__":
    print(json.dumps(report(), indent=2))
