"""Check the package's structure: folder order, import circles, sizes, private imports.

    python scripts/structure.py [--root torch_ntk] [--json]

Exits 1 (and prints each offence with file:line) when any rule is broken, else 0:

- **folder order**: no module imports a later group of :data:`ORDER` (the first name after
  the package: ``torch_ntk.empirical.ntk`` is in ``empirical``; the package face
  ``torch_ntk/__init__`` is ``__init__``). Modules of one group may import each other. The
  deprecation shims and the ``__main__`` modules (:data:`EXEMPT`; ``python -m`` entries)
  are not checked, nor imports of the compiled ``_C`` (a leaf); a top-level module
  or folder in no group is an offence (place it in :data:`ORDER`);
- **never rules** (:data:`NEVER`): ``layers/`` never imports ``analytic/`` or
  ``empirical/`` (a layer rule maps a state to a state); ``empirical/`` never imports
  ``analytic/`` (finite width does not go through the limit's code);
- no import circle (function-local imports count: they hide circles, they do not remove
  them); no module over :data:`MAX_LINES` lines; no private import across modules
  (``from .x import _name``; ``x._name`` reached through an imported module is not seen:
  only import statements are read); at most :data:`MAX_TOP_LEVEL` top-level modules
  (``.py`` files beside ``__init__.py``).

It also prints the number of **floors**: the modules on the longest chain of imports
(edges into package faces left out, as for circles), and that chain.

Import edges are read with ``ast`` from every ``from . import`` / ``from .x import`` /
``import torch_ntk.x`` statement.
"""

from __future__ import annotations

import argparse
import ast
import json
import pathlib
import sys
from functools import lru_cache

# Groups in import order: a module may import its own group and earlier ones.
ORDER = (
    ("_utils", "activations"),
    ("nn", "ops", "predict"),
    ("layers",),
    ("lifting",),
    ("analytic",),
    ("empirical",),
    ("monte_carlo", "tracking", "distributed"),
    ("wrapper", "io", "integrations", "__init__"),
    ("cli", "experiments", "bench"),
)
EXEMPT = ("arch", "cnn_analytic", "__main__")  # deprecation shims; `python -m torch_ntk`
EXTENSIONS = ("_C",)  # compiled modules: leaves that import nothing (not files read here)
NEVER = {"layers": ("analytic", "empirical"), "empirical": ("analytic",)}
MAX_LINES = 600
MAX_TOP_LEVEL = 10
RANK = {name: rank for rank, names in enumerate(ORDER) for name in names}


def modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Dotted module name (``torch_ntk.empirical.ntk``; a package by its folder) → file."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = [root.name, *f.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports(mods: dict[str, pathlib.Path]):
    """[(importer, imported module, file, line, imported names)] for every import statement
    whose target is a module of the package (the deepest one the statement names)."""
    out = []
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for a in node.names:
                    if a.name in EXTENSIONS:
                        continue
                    full = f"{target}.{a.name}"
                    dst = full if full in mods else target
                    if dst in mods:
                        out.append((m, dst, f, node.lineno, a.name))
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in mods:
                        out.append((m, a.name, f, node.lineno, None))
    return out


def edges_and_private(mods: dict[str, pathlib.Path], found=None):
    """Edges between modules (into package faces left out) and private imports."""
    found = imports(mods) if found is None else found
    edges = {m: set() for m in mods}
    private = []
    for m, dst, f, line, name in found:
        if name and name.startswith("_") and not name.startswith("__") and dst != m:
            private.append(f"{f}:{line} {dst}.{name}")
        if dst != m and mods[dst].name != "__init__.py":
            edges[m].add(dst)
    return edges, private


def group(module: str) -> str:
    """The group of a dotted module name: its first name after the package's (``__main__``
    for any ``__main__`` module: a program's entry, like the package's own)."""
    parts = module.split(".")
    if parts[-1] == "__main__":
        return "__main__"
    return parts[1] if len(parts) > 1 else "__init__"


def order_violations(mods, found) -> tuple[list[str], list[str], list[str]]:
    """(imports of a later group, imports a never rule forbids, modules in no group)."""
    later, never, unplaced = [], [], set()
    for m, dst, f, line, _ in found:
        src, to = group(m), group(dst)
        if src in EXEMPT or src == to:
            continue
        for g in (src, to):
            if g not in RANK and g not in EXEMPT:
                unplaced.add(g)
        if to in NEVER.get(src, ()):
            never.append(f"{f}:{line} {m} imports {dst} ({src}/ never imports {to}/)")
        if src in RANK and to in RANK and RANK[to] > RANK[src]:
            later.append(f"{f}:{line} {m} imports {dst} ({to} comes after {src})")
    for m in mods:
        g = group(m)
        if g not in RANK and g not in EXEMPT:
            unplaced.add(g)
    return later, never, sorted(unplaced)


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


def longest_chain(edges: dict[str, set]) -> list[str]:
    """The longest import chain m0 → m1 → … (m_i imports m_{i+1}); edges must be acyclic."""

    @lru_cache(maxsize=None)
    def chain(v: str) -> tuple[str, ...]:
        best: tuple[str, ...] = ()
        for w in sorted(edges[v]):
            c = chain(w)
            if len(c) > len(best):
                best = c
        return (v, *best)

    return list(max((chain(v) for v in sorted(edges)), key=len, default=()))


def report(root: pathlib.Path) -> dict:
    mods = modules(root)
    found = imports(mods)
    edges, private = edges_and_private(mods, found)
    sizes = sorted(((len(f.read_text().splitlines()), str(f)) for f in mods.values()),
                   reverse=True)
    later, never, unplaced = order_violations(mods, found)
    top = sorted(f.stem for f in root.glob("*.py") if f.name != "__init__.py")
    found_cycles = cycles(edges)
    chain = [] if found_cycles else longest_chain(edges)
    return {
        "modules": len(mods),
        "lines": sum(s for s, _ in sizes),
        "largest": sizes[:5],
        "over_600": [f for s, f in sizes if s > MAX_LINES],
        "import_cycles": found_cycles,
        "private_imports": private,
        "order_violations": later,
        "never_violations": never,
        "unplaced_groups": unplaced,
        "top_level_modules": top,
        "floors": len(chain),
        "longest_chain": chain,
    }


def failures(r: dict) -> int:
    """How many rules the report breaks."""
    return sum(bool(r[k]) for k in ("over_600", "import_cycles", "private_imports",
                                    "order_violations", "never_violations",
                                    "unplaced_groups")) + (len(r["top_level_modules"])
                                                           > MAX_TOP_LEVEL)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="torch_ntk")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    r = report(pathlib.Path(args.root))
    broken = failures(r)
    if args.json:
        print(json.dumps(r, indent=1))
        return 1 if broken else 0

    def listing(title: str, items: list) -> None:
        print(f"{title}: {len(items)}")
        for item in items:
            print("    " + (" <-> ".join(item) if isinstance(item, list) else str(item)))

    print(f"{r['modules']} modules, {r['lines']} lines")
    print("largest: " + ", ".join(f"{f} {s}" for s, f in r["largest"]))
    listing(f"modules over {MAX_LINES} lines", r["over_600"])
    listing("import cycles", r["import_cycles"])
    listing("cross-module private imports", r["private_imports"])
    listing("imports of a later group (folder order: "
            + " -> ".join(", ".join(g) for g in ORDER) + ")", r["order_violations"])
    listing("imports a never rule forbids (" + "; ".join(
        f"{k}/ never imports {', '.join(v)}/" for k, v in NEVER.items()) + ")",
        r["never_violations"])
    listing("top-level modules or folders in no group", r["unplaced_groups"])
    top = r["top_level_modules"]
    print(f"top-level modules: {len(top)} (at most {MAX_TOP_LEVEL}) {top}")
    print(f"floors (modules on the longest import chain): {r['floors']}")
    if r["longest_chain"]:
        print("    " + " -> ".join(r["longest_chain"]))
    print(f"rules broken: {broken}" if broken else "all rules hold")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
