"""Benchmark: the fused analytic-kernel op against the plain-torch recursion.

    torch-ntk bench analytic [--quick] [--device cpu|cuda] [--out DIR]
    python benchmarks/analytic.py [--quick] [--device cpu|cuda] [--no-compile] [--out PATH]

For each case (activation, depth L = number of dense layers, N, dtype), on the same
inputs in the same process: median time of the fused op (torch_ntk.analytic_kernels),
of the eager plain-torch composite (torch_ntk.reference.analytic_kernels_reference) and
of that composite under torch.compile (compiled before the timing; the first call's
time, compilation included, is reported as "compile s"); speedups against both; the
fused op's pairs·layers per second; its effective bandwidth (Gram read + outputs
written) as a fraction of a same-device copy measured in this run; and the peak extra
memory of each method beyond the inputs (the outputs alone are 2·N²·itemsize bytes);
and max |Θ_fused − Θ_eager| / max |Θ_eager| (the two must agree).
On CUDA times come from CUDA events and memory from torch.cuda.max_memory_allocated.
The compiled baseline runs only for the cases marked so (compilation dominates a GPU
run's time); the others say "skipped".

Symmetry: for x2 = None the fused op computes the N(N+1)/2 pairs of one triangle while
the eager and compiled composites compute all N²; the rendered table prints that factor
(2N/(N+1)) beside their ratios and the ratio per pair. The X2_CASES rows time x2 ≠ x1
(another batch of N), where every method computes the same N² pairs (factor 1).
Every run written into the same JSON is kept (``runs``); the table shows the median and
range over them. On the CPU the payload also holds "any_activation"
(``torch_ntk.bench.any_activation``: Mish by the numeric series against the GELU series);
on every device "backward" (``torch_ntk.bench.analytic_backward``: the compiled backward of
the MLP op against its forward and the torch composite's backward).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

import torch

import torch_ntk as tn
from torch_ntk.analytic.reference import analytic_kernels_reference

from .common import (
    keep_runs, machine_info, markdown_table, parse_suite_args, peak_memory, results_dir,
    roofline, sync, time_call, write_json,
)

# (activation, depth, N, dtype, compile the composite too)
CASES = {
    ("cpu", False): [
        ("relu", 5, 4000, torch.float32, True), ("relu", 5, 4000, torch.float64, True),
        ("erf", 5, 4000, torch.float32, True), ("tanh", 3, 400, torch.float32, True),
    ],
    ("cpu", True): [("relu", 5, 1000, torch.float32, True), ("tanh", 3, 200, torch.float32, False)],
    # Target (issue 4): ReLU, depth 5, N = 20000, float32 ≥ 10× eager, ≥ 1× compiled.
    ("cuda", False): [
        ("relu", 5, 20000, torch.float32, True), ("relu", 5, 20000, torch.float64, False),
        ("erf", 5, 20000, torch.float32, False), ("tanh", 3, 1000, torch.float32, False),
    ],
    # A smoke run: compiling would take 20 s of its 30.
    ("cuda", True): [("relu", 5, 2000, torch.float32, False), ("tanh", 3, 300, torch.float32, False)],
}
# x2 ≠ x1 (a second batch of N): every method computes the same N² pairs.
X2_CASES = {
    ("cpu", False): [("relu", 5, 4000, torch.float32, False)],
    ("cpu", True): [("relu", 5, 1000, torch.float32, False)],
    ("cuda", False): [("relu", 5, 20000, torch.float32, False)],
    ("cuda", True): [("relu", 5, 2000, torch.float32, False)],
}
# Quadrature cases run every method at this degree (the eager composite holds
# N²·degree² values, so it stops at EAGER_QUADRATURE_MAX_N).
QUADRATURE_DEGREE = 16
EAGER_QUADRATURE_MAX_N = 1000


def _spec(act: str, depth: int):
    return tn.mlp_spec([16] + [512] * (depth - 1) + [1], act, bias_std=0.1)


def _setup(method: str, act: str, depth: int, n: int, dtype, device: str,
           backend: str = "inductor", distinct: bool = False):
    spec = _spec(act, depth)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 16, generator=g, dtype=dtype).to(device)
    x2 = torch.randn(n, 16, generator=g, dtype=dtype).to(device) if distinct else None
    degree = None if tn.activations.from_name(act).has_closed_form else QUADRATURE_DEGREE
    if method == "fused":
        return lambda: tn.analytic_kernels(spec, x, x2, quadrature_degree=degree)
    composite = functools.partial(analytic_kernels_reference, spec, quadrature_degree=degree)
    if method == "compiled":
        composite = torch.compile(composite, backend=backend)
    return lambda: composite(x, x2)


def _supported(method: str, act: str, n: int) -> bool:
    closed = tn.activations.from_name(act).has_closed_form
    return method == "fused" or closed or n <= EAGER_QUADRATURE_MAX_N


def _measure(method: str, case: tuple, device: str, repeats: int, backend: str,
             distinct: bool = False) -> dict:
    act, depth, n, dtype, _ = case
    fn = _setup(method, act, depth, n, dtype, device, backend, distinct)
    out = {}
    if method == "compiled":  # the first call compiles; a second one settles any recompile
        t0 = time.perf_counter()
        fn()
        sync(device)
        out["compile_s"] = round(time.perf_counter() - t0, 2)
    timing = time_call(fn, repeats=repeats, warmup=1, device=device)
    out["seconds"] = timing["median_s"]
    if method != "compiled" or device == "cuda":
        setup = functools.partial(_setup, method, act, depth, n, dtype, device,
                                  distinct=distinct)
        mem = peak_memory(setup, device) if method != "compiled" else peak_memory(lambda: fn, device)
        if "peak_extra_bytes" in mem:
            out["peak_MB"] = round(mem["peak_extra_bytes"] / 2**20, 1)
    return out


def run(cases, device: str, repeats: int, methods, ceilings: dict,
        backend: str = "inductor", x2_cases=()) -> list[dict]:
    rows = []
    for case, distinct in [(c, False) for c in cases] + [(c, True) for c in x2_cases]:
        act, depth, n, dtype, compile_it = case
        itemsize = torch.tensor([], dtype=dtype).element_size()
        row = {"activation": act, "depth": depth, "N": n, "dtype": str(dtype).replace("torch.", ""),
               "x2": "x2≠x1" if distinct else "None"}
        for method in methods:
            if not _supported(method, act, n):
                row[f"{method}_s"] = "n/a"
                continue
            if method == "compiled" and not compile_it:
                row[f"{method}_s"] = "skipped"
                continue
            try:
                result = _measure(method, case, device, repeats, backend, distinct)
            except torch.OutOfMemoryError as error:  # recorded, not fatal
                row[f"{method}_s"] = "failed: out of memory"
                row[f"{method}_error"] = str(error).splitlines()[0][:300]
                continue
            except Exception as error:  # a compiler failure is a result too, not a crash
                row[f"{method}_s"] = f"failed: {type(error).__name__}"
                row[f"{method}_error"] = str(error).strip().splitlines()[0][:300] if str(error) else ""
                continue
            finally:
                if device == "cuda":
                    torch.cuda.empty_cache()
            row[f"{method}_s"] = round(result["seconds"], 5)
            if "compile_s" in result:
                row["compile_s"] = result["compile_s"]
            if "peak_MB" in result:
                row[f"{method}_peak_MB"] = result["peak_MB"]
        if isinstance(row.get("fused_s"), float) and isinstance(row.get("eager_s"), float):
            # The two must agree: max |NTK_fused − NTK_eager| / max |NTK_eager|.
            k_fused = _setup("fused", act, depth, n, dtype, device, distinct=distinct)()[1]
            k_eager = _setup("eager", act, depth, n, dtype, device, distinct=distinct)()[1]
            diff = float((k_fused - k_eager).abs().max() / k_eager.abs().max())
            row["max_rel_diff"] = float(f"{diff:.2e}")
            del k_fused, k_eager
        fused = row["fused_s"]
        if isinstance(fused, float):
            for base in ("eager", "compiled"):
                if isinstance(row.get(f"{base}_s"), float):
                    row[f"speedup_vs_{base}"] = round(row[f"{base}_s"] / fused, 1)
            pairs = n * n if distinct else n * (n + 1) / 2  # x2=None: the upper triangle
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
    ("compile_s", "compile s"),
    ("speedup_vs_eager", "× eager"), ("speedup_vs_compiled", "× compiled"),
    ("pair_layers_per_s", "pair·layers/s"), ("copy_bw_fraction", "of copy BW"),
    ("fused_peak_MB", "fused peak MB"), ("eager_peak_MB", "eager peak MB"),
    ("compiled_peak_MB", "compiled peak MB"), ("outputs_MB", "outputs MB"),
    ("max_rel_diff", "max rel diff fused vs eager"),
]


def render_analytic(payload: dict) -> str:
    """The main table (markdown) of an analytic payload: fused op against the eager and
    compiled plain-torch recursion."""
    return markdown_table(payload["rows"], COLUMNS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small cases (a smoke run)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend of the compiled baseline (default inductor)")
    parser.add_argument("--paths", action="store_true",
                        help="also time the op against its previous paths (analytic_paths.py)")
    parser.add_argument("--baseline-tree", default=None,
                        help="with --paths: a checkout with its own built _C to compare against")
    parser.add_argument("--out", default=None,
                        help="JSON path (default benchmarks/results/analytic_<device>.json)")
    return parser


def main(argv=None, *, default_dir: str | None = None, prog: str = "python -m torch_ntk.bench.analytic") -> dict:
    """Run the benchmark with command-line arguments ``argv``; returns the JSON payload."""
    parser = build_parser()
    args, argv = parse_suite_args(parser, argv, prog)
    methods = ["fused", "eager"] + ([] if args.no_compile else ["compiled"])
    t0 = time.perf_counter()
    ceilings = roofline(args.device)
    print({"roofline": ceilings}, flush=True)
    rows = run(CASES[(args.device, args.quick)], args.device, args.repeats, methods, ceilings,
               args.compile_backend, X2_CASES[(args.device, args.quick)])
    payload = {"benchmark": "analytic", "machine": machine_info(args.device), "quick": args.quick,
               "roofline": ceilings, "rows": rows}
    if args.device == "cpu":  # issue 31: a numeric-series activation against the GELU series
        from .any_activation import render_any_activation, run_any_activation
        payload["any_activation"] = run_any_activation(quick=args.quick)
        print(render_any_activation(payload))
    # issue 30: the compiled backward of the MLP op against its forward and the composite's
    from .analytic_backward import render_backward, run_backward
    payload["backward"] = run_backward(quick=args.quick, device=args.device)
    print(render_backward(payload))
    if args.paths and args.device == "cpu":
        from .analytic_paths import render_analytic_paths, run_paths
        payload["paths"] = run_paths(args.baseline_tree, quick=args.quick)
        print(render_analytic_paths(payload))
    payload.update({"load_end": [round(v, 2) for v in os.getloadavg()],
                    "wall_s": round(time.perf_counter() - t0, 1),
                    "command": " ".join([prog, *argv])})
    out = args.out or os.path.join(default_dir or results_dir(), f"analytic_{args.device}.json")
    write_json(out, keep_runs(out, payload))
    print(markdown_table(rows, COLUMNS))
    print(f"\nJSON: {out}")
    return payload


if __name__ == "__main__":
    main()
