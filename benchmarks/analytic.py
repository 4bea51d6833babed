"""Benchmark: the fused analytic-kernel op against the eager plain-torch recursion.

    python benchmarks/analytic.py [--quick] [--device cpu|cuda] [--out results/analytic_cpu.json]

For each case (activation, depth = number of dense layers, N, dtype): median time of
the fused op (torch_ntk.analytic_kernels) and of the eager reference
(torch_ntk.reference.analytic_kernels_reference) on the same inputs in the same
process, their ratio, the fused op's pairs·layers per second, and the peak extra
memory of each beyond the inputs (the outputs alone are 2·N²·itemsize bytes).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_ntk as tn  # noqa: E402
from torch_ntk.reference import analytic_kernels_reference  # noqa: E402

from common import machine_info, markdown_table, peak_memory, time_call, write_json  # noqa: E402

FULL_CASES = [
    ("relu", 5, 4000, torch.float32),
    ("relu", 5, 4000, torch.float64),
    ("erf", 5, 4000, torch.float32),
    ("tanh", 3, 1000, torch.float32),
]
QUICK_CASES = [("relu", 5, 1000, torch.float32), ("tanh", 3, 200, torch.float32)]


def _inputs(n: int, dtype, device):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 16, generator=g, dtype=dtype).to(device)


def _spec(act: str, depth: int):
    return tn.mlp_spec([16] + [512] * (depth - 1) + [1], act, bias_std=0.1)


def _setup(method: str, act: str, depth: int, n: int, dtype, device: str):
    spec, x = _spec(act, depth), _inputs(n, dtype, device)
    if method == "fused":
        return lambda: tn.analytic_kernels(spec, x)
    # The eager reference's quadrature holds N²·degree² values: use a lower degree there.
    degree = None if tn.activations.from_name(act).has_closed_form else 8
    return lambda: analytic_kernels_reference(spec, x, quadrature_degree=degree)


def run(cases, device: str, repeats: int) -> list[dict]:
    rows = []
    for act, depth, n, dtype in cases:
        row = {"activation": act, "depth": depth, "N": n, "dtype": str(dtype).replace("torch.", "")}
        for method in ("fused", "eager"):
            if method == "eager" and not tn.activations.from_name(act).has_closed_form and n > 400:
                row["eager_s"] = "skipped (N²·degree² memory)"
                continue
            fn = _setup(method, act, depth, n, dtype, device)
            timing = time_call(fn, repeats=repeats, device=device)
            mem = peak_memory(functools.partial(_setup, method, act, depth, n, dtype, device), device)
            row[f"{method}_s"] = round(timing["median_s"], 4)
            row[f"{method}_peak_MB"] = round(mem.get("peak_extra_bytes", float("nan")) / 2**20, 1)
        if isinstance(row.get("eager_s"), float):
            row["speedup"] = round(row["eager_s"] / row["fused_s"], 1)
        pairs = n * (n + 1) / 2  # x2=None: the upper triangle
        row["fused_pair_layers_per_s"] = f"{pairs * (depth - 1) / row['fused_s']:.3g}"
        row["outputs_MB"] = round(2 * n * n * torch.tensor([], dtype=dtype).element_size() / 2**20, 1)
        rows.append(row)
        print(row, flush=True)
    return rows


COLUMNS = [
    ("activation", "activation"), ("depth", "L"), ("N", "N"), ("dtype", "dtype"),
    ("fused_s", "fused s"), ("eager_s", "eager s"), ("speedup", "speedup"),
    ("fused_pair_layers_per_s", "pair·layers/s"), ("fused_peak_MB", "fused peak MB"),
    ("eager_peak_MB", "eager peak MB"), ("outputs_MB", "outputs MB"),
]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small cases (a smoke run)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None, help="JSON path (default results/analytic_<device>.json)")
    args = parser.parse_args(argv)
    rows = run(QUICK_CASES if args.quick else FULL_CASES, args.device, args.repeats)
    payload = {"benchmark": "analytic", "machine": machine_info(args.device), "rows": rows,
               "command": "python benchmarks/analytic.py" + (" --quick" if args.quick else "")}
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"analytic_{args.device}.json")
    write_json(out, payload)
    print(markdown_table(rows, COLUMNS))
    return payload


if __name__ == "__main__":
    main()
