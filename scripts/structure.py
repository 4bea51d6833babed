"""Measure the package's structure: import circles, module sizes, cross-module private imports.

    python scripts/structure.py [--root torch_ntk] [--json]

Import edges are read with ``ast`` from every ``from . import`` / ``from .x import`` /
``import torch_ntk.x`` statement, function-local ones included (they hide circles, they do
not remove them). A private import is ``from .x import _name`` (or ``x._name`` reached
through an imported module is not counted: only import statements are read).
"""

from __future__ import annotations

import argparse
import ast
import json
import pathlib
import sys


def modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = list(f.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def edges_and_private(mods: dict[str, pathlib.Path]):
    edges = {m: set() for m in mods}
    private = []
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for a in node.names:
                    full = f"{target}.{a.name}"
                    dst = full if full in mods else target
                    targets.append(dst)
                    if a.name.startswith("_") and not a.name.startswith("__") and dst in mods \
                            and dst != m and a.name != "_C":
                        private.append(f"{f}:{node.lineno} {dst}.{a.name}")
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for dst in targets:
                if dst in mods and dst != m and mods[dst].name != "__init__.py":
                    edges[m].add(dst)
    return edges, private


def cycles(edges: dict[str, set]) -> list[list[str]]:
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in edges:
        if v not in index:
            visit(v)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="torch_ntk")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    mods = modules(pathlib.Path(args.root))
    edges, private = edges_and_private(mods)
    sizes = sorted(((len(f.read_text().splitlines()), str(f)) for f in mods.values()), reverse=True)
    report = {
        "modules": len(mods),
        "lines": sum(s for s, _ in sizes),
        "largest": sizes[:5],
        "over_600": [f for s, f in sizes if s > 600],
        "import_cycles": cycles(edges),
        "private_imports": private,
    }
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    print(f"{report['modules']} modules, {report['lines']} lines")
    print("largest: " + ", ".join(f"{f} {s}" for s, f in report["largest"]))
    print(f"modules over 600 lines: {len(report['over_600'])} {report['over_600']}")
    print(f"import cycles: {len(report['import_cycles'])}")
    for c in report["import_cycles"]:
        print("    " + " <-> ".join(c))
    print(f"cross-module private imports: {len(private)}")
    for p in private:
        print("    " + p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
