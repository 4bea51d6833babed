"""Render every marked table of README.md and docs/*.md from its JSON; --check compares.

A block is the text between a line ``<!-- table:NAME -->`` and a line
``<!-- /table:NAME -->``. TABLES maps NAME to (the JSON file, "module:function"): the
function takes the parsed JSON and returns the block's markdown. Adding a table is one
line here plus the two marker lines in the document. Modules are imported with scripts/
and the repository root on sys.path ("doc_tables:render_demo",
"torch_ntk.bench.tracker:render_tracker", ...).

    python scripts/render_docs.py            # rewrite the blocks in place
    python scripts/render_docs.py --check    # exit 1 and show a diff where text differs
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ("README.md", "docs/benchmarks.md", "docs/testing.md", "docs/cuda.md")
RESULTS = "benchmarks/results"
EMPIRICAL_CPU = f"{RESULTS}/empirical_cpu.json"

TABLES: dict[str, tuple[str, str]] = {
    "demo": ("docs/figures/demo.json", "doc_tables:render_demo"),
    "cntk_digits": ("docs/figures/cntk-digits.json", "doc_tables:render_cntk_digits"),
    "kip_digits": ("docs/figures/kip-digits.json", "doc_tables:render_kip_digits"),
    "kip_digits_10": ("docs/figures/full/kip-digits-10.json", "doc_tables:render_kip_digits"),
    "kip_digits_50_mlp": ("docs/figures/full/kip-digits-50-mlp-ntk.json",
                          "doc_tables:render_kip_digits"),
    "kip_digits_50_cntk": ("docs/figures/full/kip-digits-50-cntk.json",
                           "doc_tables:render_kip_digits"),
    "classification": ("docs/figures/classification.json",
                       "torch_ntk.experiments.classification:render_classification"),
    "analytic_cpu": (f"{RESULTS}/analytic_cpu.json", "doc_tables:render_analytic"),
    "analytic_cuda": (f"{RESULTS}/analytic_cuda.json", "doc_tables:render_analytic"),
    "analytic_paths_cpu": (f"{RESULTS}/analytic_cpu.json",
                           "torch_ntk.bench.analytic_paths:render_analytic_paths"),
    "any_activation_cpu": (f"{RESULTS}/analytic_cpu.json",
                           "torch_ntk.bench.any_activation:render_any_activation"),
    "analytic_backward_cpu": (f"{RESULTS}/analytic_cpu.json",
                              "torch_ntk.bench.analytic_backward:render_backward"),
    "activation_accuracy": (f"{RESULTS}/activation_accuracy.json",
                            "torch_ntk.bench.activation_accuracy:render_activation_accuracy"),
    "empirical_cpu_cases": (EMPIRICAL_CPU, "doc_tables:render_empirical_cases"),
    "empirical_cpu_kernel": (EMPIRICAL_CPU, "doc_tables:render_empirical_kernel"),
    "empirical_cpu_sweep": (EMPIRICAL_CPU, "doc_tables:render_empirical_sweep"),
    "empirical_cuda_kernel": (f"{RESULTS}/empirical_cuda.json", "doc_tables:render_empirical_kernel"),
    "empirical_cuda_cases": (f"{RESULTS}/empirical_cuda.json", "doc_tables:render_empirical_cases"),
    "cnn_cpu": (f"{RESULTS}/cnn_cpu.json", "torch_ntk.bench.cnn:render_cnn"),
    "cnn_model": (f"{RESULTS}/cnn_model.json", "cnn_model:render_cnn_model"),
    "ptx_check": (f"{RESULTS}/ptx_check.json", "ptx_check:render_ptx_check"),
    "cnn_structured_cpu": (f"{RESULTS}/cnn_structured_cpu.json",
                           "torch_ntk.bench.cnn_structured:render_cnn_structured"),
    "models_cpu": (f"{RESULTS}/models_cpu.json", "torch_ntk.bench.models:render_models"),
    "graph_cpu": (f"{RESULTS}/graph_cpu.json", "torch_ntk.bench.graph:render_graph"),
    "tracker_cpu": (f"{RESULTS}/tracker_cpu.json", "torch_ntk.bench.tracker:render_tracker"),
    "tracker_cuda": (f"{RESULTS}/tracker_cuda.json", "torch_ntk.bench.tracker:render_tracker"),
    "distributed": (f"{RESULTS}/distributed_cpu.json", "benchmarks.distributed:render_distributed"),
    "fx_tutorial": (f"{RESULTS}/fx_tutorial_cpu.json", "benchmarks.fx_tutorial:render_fx_tutorial"),
    "neural_tangents_cpu": (f"{RESULTS}/neural_tangents_cpu.json",
                            "benchmarks.neural_tangents:render_neural_tangents"),
    "mutation_check": (f"{RESULTS}/mutation_check.json", "mutation_check:render_mutation"),
    "setup_times": ("docs/figures/setup_times.json", "time_commands:render_setup_times"),
}

_BLOCK = re.compile(r"(<!-- table:([\w.-]+) -->\n)(.*?)(<!-- /table:\2 -->)", re.S)


def render(name: str) -> str:
    """The markdown of table ``name`` from its JSON (no trailing newline)."""
    if name not in TABLES:
        raise KeyError(f"table {name!r} is not registered in scripts/render_docs.py TABLES")
    path, target = TABLES[name]
    module_name, function = target.split(":")
    for folder in (os.path.join(ROOT, "scripts"), ROOT):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    with open(os.path.join(ROOT, path)) as f:
        payload = json.load(f)
    return getattr(importlib.import_module(module_name), function)(payload).rstrip("\n")


def rendered(text: str) -> tuple[str, list[str]]:
    """``text`` with every block re-rendered, and the names of the blocks found."""
    names: list[str] = []

    def replace(match: re.Match) -> str:
        names.append(match.group(2))
        return f"{match.group(1)}{render(match.group(2))}\n{match.group(4)}"

    return _BLOCK.sub(replace, text), names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if a block differs from its rendering")
    args = parser.parse_args(argv)
    differ = False
    for doc in DOCUMENTS:
        path = os.path.join(ROOT, doc)
        if not os.path.exists(path):
            continue
        with open(path) as f:
            text = f.read()
        opened = re.findall(r"<!-- table:([\w.-]+) -->", text)
        closed = re.findall(r"<!-- /table:([\w.-]+) -->", text)
        new, names = rendered(text)
        if sorted(opened) != sorted(names) or sorted(closed) != sorted(names):
            print(f"{doc}: unmatched table markers: opened {opened}, closed {closed}",
                  file=sys.stderr)
            return 2
        if new == text:
            continue
        differ = True
        if args.check:
            sys.stdout.writelines(difflib.unified_diff(
                text.splitlines(True), new.splitlines(True), f"{doc} (committed)",
                f"{doc} (rendered)"))
        else:
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write(new)
            os.replace(tmp, path)
            print(f"rendered {', '.join(names)} in {doc}")
    return 1 if differ and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
