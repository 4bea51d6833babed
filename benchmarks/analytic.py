"""Benchmark: the fused analytic-kernel op against the plain-torch recursion.

    python benchmarks/analytic.py [--quick] [--device cpu|cuda] [--no-compile] [--out PATH]

For each case (activation, depth L = number of dense layers, N, dtype), on the same
inputs in the same process: median time of the fused op (torch_ntk.analytic_kernels),
of the eager plain-torch composite (torch_ntk.reference.analytic_kernels_reference) and
of that composite under torch.compile; speedups against both; the fused op's
pairs·layers per second; its effective bandwidth (Gram read + outputs written) as a
fraction of a same-device copy measured in this run; and the peak extra memory of each
method beyond the inputs (the outputs alone are 2·N²·itemsize bytes).
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

from common import (  # noqa: E402
    machine_info, markdown_table, peak_memory, roofline, time_call, write_json,
)

CASES = {
    ("cpu", False): [
        ("relu", 5, 4000, torch.float32), ("relu", 5, 4000, torch.float64),
        ("erf", 5, 4000, torch.float32), ("tanh", 3, 400, torch.float32),
    ],
    ("cpu", True): [("relu", 5, 1000, torch.float32), ("tanh", 3, 200, torch.float32)],
    ("cuda", False): [
        ("relu", 5, 20000, torch.float32), ("relu", 5, 20000, torch.float64),
        ("erf", 5, 20000, torch.float32), ("tanh", 3, 1000, torch.float32),
    ],
    ("cuda", True): [("relu", 5, 4000, torch.float32), ("tanh", 3, 1000, torch.float32)],
}
# Quadrature cases run every method at this degree (the eager composite holds
# N²·degree² values, so it stops at EAGER_QUADRATURE_MAX_N).
QUADRATURE_DEGREE = 16
EAGER_QUADRATURE_MAX_N = 1000


def _spec(act: str, depth: int):
    return tn.mlp_spec([16] + [512] * (depth - 1) + [1], act, bias_std=0.1)


def _setup(method: str, act: str, depth: int, n: int, dtype, device: str):
    spec = _spec(act, depth)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 16, generator=g, dtype=dtype).to(device)
    degree = None if tn.activations.from_name(act).has_closed_form else QUADRATURE_DEGREE
    if method == "fused":
        return lambda: tn.analytic_kernels(spec, x, quadrature_degree=degree)
    composite = functools.partial(analytic_kernels_reference, spec, quadrature_degree=degree)
    if method == "compiled":
        composite = torch.compile(composite)
    return lambda: composite(x)


def _supported(method: str, act: str, n: int) -> bool:
    closed = tn.activations.from_name(act).has_closed_form
    return method == "fused" or closed or n <= EAGER_QUADRATURE_MAX_N


def run(cases, device: str, repeats: int, methods, ceilings: dict) -> list[dict]:
    rows = []
    for act, depth, n, dtype in cases:
        itemsize = torch.tensor([], dtype=dtype).element_size()
        row = {"activation": act, "depth": depth, "N": n, "dtype": str(dtype).replace("torch.", "")}
        for method in methods:
            if not _supported(method, act, n):
                row[f"{method}_s"] = "n/a"
                continue
            try:
                fn = _setup(method, act, depth, n, dtype, device)
                timing = time_call(fn, repeats=repeats, warmup=2 if method == "compiled" else 1,
                                   device=device)
                setup = functools.partial(_setup, method, act, depth, n, dtype, device)
                mem = peak_memory(setup, device) if method != "compiled" else {}
            except (RuntimeError, torch.OutOfMemoryError) as error:  # recorded, not fatal
                row[f"{method}_s"] = f"failed: {type(error).__name__}"
                continue
            row[f"{method}_s"] = round(timing["median_s"], 4)
            if "peak_extra_bytes" in mem:
                row[f"{method}_peak_MB"] = round(mem["peak_extra_bytes"] / 2**20, 1)
        fused = row["fused_s"]
        for base in ("eager", "compiled"):
            if isinstance(row.get(f"{base}_s"), float):
                row[f"speedup_vs_{base}"] = round(row[f"{base}_s"] / fused, 1)
        pairs = n * (n + 1) / 2  # x2=None: the upper triangle
        row["pair_layers_per_s"] = f"{pairs * (depth - 1) / fused:.3g}"
        bytes_moved = 3 * n * n * itemsize  # Gram read, two outputs written
        row["copy_bw_fraction"] = round(bytes_moved / fused / ceilings["copy_bytes_per_s"], 3)
        row["outputs_MB"] = round(2 * n * n * itemsize / 2**20, 1)
        rows.append(row)
        print(row, flush=True)
    return rows


COLUMNS = [
    ("activation", "activation"), ("depth", "L"), ("N", "N"), ("dtype", "dtype"),
    ("fused_s", "fused s"), ("eager_s", "eager s"), ("compiled_s", "compiled s"),
    ("speedup_vs_eager", "× eager"), ("speedup_vs_compiled", "× compiled"),
    ("pair_layers_per_s", "pair·layers/s"), ("copy_bw_fraction", "of copy BW"),
    ("fused_peak_MB", "fused peak MB"), ("eager_peak_MB", "eager peak MB"),
    ("outputs_MB", "outputs MB"),
]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small cases (a smoke run)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--out", default=None,
                        help="JSON path (default benchmarks/results/analytic_<device>.json)")
    args = parser.parse_args(argv)
    methods = ["fused", "eager"] + ([] if args.no_compile else ["compiled"])
    ceilings = roofline(args.device)
    print({"roofline": ceilings}, flush=True)
    rows = run(CASES[(args.device, args.quick)], args.device, args.repeats, methods, ceilings)
    command = "python benchmarks/analytic.py " + " ".join(argv if argv is not None else sys.argv[1:])
    payload = {"benchmark": "analytic", "machine": machine_info(args.device),
               "roofline": ceilings, "rows": rows, "command": command.strip()}
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"analytic_{args.device}.json")
    write_json(out, payload)
    print(markdown_table(rows, COLUMNS))
    return payload


if __name__ == "__main__":
    main()
