"""Benchmark: the structured finite-width CNN NTK against torch.func and the Gram GEMM floor.

    torch-ntk bench cnn_structured [--quick] [--out DIR]
    python benchmarks/cnn_structured.py [--quick] [--repeats R] [--out PATH]

The issue's network: ``depth`` 3×3 "same" convolutions of ``width`` channels with ReLU,
global average pooling and a dense readout to n_L outputs, on 1×8×8 images, N samples,
x2 = None, float32 (CPU, or CUDA with --device cuda). In one process, interleaved round after round (a busy machine
slows them alike), it times:

- ``structured``: ``empirical_ntk(model, x, mode, method="structured")`` (the contraction
  order of each conv layer chosen by the FLOP model; ``NTKInfo.contractions`` recorded);
- ``grams``: the same with every conv layer forced to the patch-Gram order (b) (only in
  the cases marked so: elsewhere its FLOP model predicts minutes per call);
- ``jacobian``: ``method="jacobian"`` (per-sample Jacobians by torch.func, then Grams);
- ``torch_func``: the PyTorch NTK tutorial's recipe, ``vmap(jacrev(f))`` over the samples
  and an einsum per parameter (``Naf,Mbf->NMab`` summed; trace mode takes its mean over
  the diagonal a = b);
- ``gemm_floor``: the Gram GEMMs alone that order (a) cannot avoid — per conv and dense
  layer one [N·c, F] × [F, N·c] product of random matrices (F the layer's per-output
  gradient length n_L·C_out·(C_in|Q| + 1) in trace mode, C_out·(C_in|Q| + 1) in full mode
  with c = n_L) — a lower bound for any method that forms the kernel from gradients.

It reports the ratios torch_func/structured and jacobian/structured, structured/gemm_floor
(how close to the floor), and max |Θ_structured − Θ_torch_func| / max |Θ_torch_func|.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

import torch_ntk as tn
from torch_ntk.empirical.cnn_plan import ConvStructuredPlan
from torch_ntk.nn import NTKConv2d, NTKLinear

from .common import (
    across_runs, interleaved, keep_runs, load_average, machine_info, machine_line,
    markdown_table, median_range, parse_suite_args, results_dir, runs_line, summary,
    symmetry_factor, write_json,
)

# (width, depth, hw, N, n_L, mode, time the "grams" order too)
CASES = {
    False: [(128, 3, 8, 256, 1, "trace", True), (128, 3, 8, 256, 10, "trace", False),
            (128, 3, 8, 64, 10, "full", False)],
    True: [(16, 2, 8, 16, 1, "trace", True), (16, 2, 8, 16, 3, "full", True)],
}


def network(width: int, depth: int, n_out: int) -> nn.Sequential:
    """``depth`` × (NTKConv2d 3×3 "same", ReLU), global average pooling, NTKLinear."""
    layers: list = []
    channels = 1
    for _ in range(depth):
        layers += [NTKConv2d(channels, width, 3, padding="same"), nn.ReLU()]
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), NTKLinear(width, n_out)]
    return nn.Sequential(*layers)


def torch_func_ntk(model: nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    """The PyTorch NTK tutorial's Jacobian contraction: [N, N, n_L, n_L] ("full") or the
    mean over outputs of its diagonal ("trace")."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p, xi):
        return functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)

    jac = vmap(jacrev(f), (None, 0))(params, x)
    total = None
    for j in jac.values():
        j = j.flatten(2)
        if mode == "full":
            term = torch.einsum("Naf,Mbf->NMab", j, j)
        else:
            term = torch.einsum("Naf,Maf->NM", j, j) / j.shape[1]
        total = term if total is None else total + term
    return total


def gemm_floor_operands(model: nn.Module, n: int, n_out: int, mode: str) -> list[torch.Tensor]:
    """Random [N·c, F] operands of the Gram GEMMs of order (a), one per conv/dense layer."""
    g = torch.Generator().manual_seed(1)
    mats = []
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if own:
            per_output = sum(p.numel() for p in own)
            if mode == "full":
                mats.append(torch.randn(n * n_out, per_output, generator=g))
            else:
                mats.append(torch.randn(n, n_out * per_output, generator=g))
    return mats


def run_case(case: tuple, repeats: int, device: str) -> dict:
    width, depth, hw, n, n_out, mode, with_grams = case
    torch.manual_seed(0)
    model = network(width, depth, n_out).eval().to(device)
    x = torch.randn(n, 1, hw, hw).to(device)
    row = {"width": width, "depth": depth, "image": f"1x{hw}x{hw}", "N": n, "n_L": n_out,
           "mode": mode, "params": sum(p.numel() for p in model.parameters())}
    results: dict = {}

    def structured():
        k, info = tn.empirical_ntk(model, x, mode=mode, method="structured", progress=False,
                                   return_info=True)
        results["structured"], results["info"] = k, info

    def grams():
        ConvStructuredPlan.forced_order = "grams"
        try:
            results["grams"] = tn.empirical_ntk(model, x, mode=mode, method="structured",
                                                progress=False)
        finally:
            ConvStructuredPlan.forced_order = None

    def jacobian():
        results["jacobian"] = tn.empirical_ntk(model, x, mode=mode, method="jacobian",
                                               progress=False)

    def func():
        results["torch_func"] = torch_func_ntk(model, x, mode)

    mats = [a.to(device) for a in gemm_floor_operands(model, n, n_out, mode)]

    def floor():
        for a in mats:
            torch.mm(a, a.t())

    calls = {"structured": structured, "grams": grams, "jacobian": jacobian,
             "torch_func": func, "gemm_floor": floor}
    if not with_grams:  # its FLOP model is many times order (a)'s: minutes per call
        del calls["grams"]
    for fn in calls.values():  # warm-up (and the results compared below)
        fn()
    times = interleaved(calls, repeats, device)
    med = {key: summary(times[key])["median_s"] for key in calls}
    for key in calls:
        row[f"{key}_s"] = float(f"{med[key]:.4g}")
    ref = results["torch_func"]
    scale = float(ref.abs().max())
    for key in [k for k in ("structured", "grams", "jacobian") if k in calls]:
        row[f"{key}_rel_diff"] = float(f"{float((results[key] - ref).abs().max()) / scale:.2e}")
    row["contractions"] = list(results["info"].contractions)
    row["torch_func_over_structured"] = round(med["torch_func"] / med["structured"], 2)
    row["jacobian_over_structured"] = round(med["jacobian"] / med["structured"], 2)
    row["structured_over_floor"] = round(med["structured"] / med["gemm_floor"], 2)
    row["floor_gflop"] = round(sum(2.0 * a.shape[0] ** 2 * a.shape[1] for a in mats) / 1e9, 1)
    row["load"] = round(load_average(), 1)
    print(row, flush=True)
    return row


COLUMNS = [
    ("width", "width"), ("depth", "conv layers"), ("N", "N"), ("n_L", "n_L"), ("mode", "mode"),
    ("structured_s", "structured s"), ("grams_s", "grams order s"),
    ("jacobian_s", "method=jacobian s"), ("torch_func_s", "vmap(jacrev) s"),
    ("gemm_floor_s", "Gram GEMMs alone s"), ("torch_func_over_structured", "× vmap(jacrev)"),
    ("jacobian_over_structured", "× jacobian"), ("sym_factor", "sym. factor"),
    ("structured_over_floor", "structured ÷ floor"),
    ("torch_func_over_floor", "vmap(jacrev) ÷ floor"),
    ("structured_rel_diff", "rel diff vs vmap(jacrev)"), ("load", "load"),
]


MATCH = ("width", "depth", "N", "n_L", "mode")


def render_cnn_structured(payload: dict) -> str:
    """The markdown table of a payload of this benchmark and its machine line
    (docs/benchmarks.md). x2 = None: the structured method computes the N(N+1)/2 pairs of
    one triangle, vmap(jacrev), method=jacobian and the GEMM floor all N²: "sym. factor"
    (2N/(N+1)) is in their ratios. Ratios are the median (min–max, n) over kept runs."""
    rows = []
    for row in payload["rows"]:
        r = dict(row, torch_func_over_floor=round(row["torch_func_s"] / row["gemm_floor_s"], 2),
                 sym_factor=f"{symmetry_factor(row['N']):.2f}")
        for key in ("torch_func_over_structured", "jacobian_over_structured"):
            values = across_runs(payload, row, key, MATCH)
            if len(values) > 1:
                r[key] = median_range(values)
        rows.append(r)
    return "\n".join([
        markdown_table(rows, COLUMNS), "",
        f"{machine_line(payload['machine'])}; medians of "
        f"{payload.get('repeats', '?')} interleaved rounds after a warm-up; run "
        f"{payload['wall_s']:.0f} s. {runs_line(payload)}"])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small cases (a smoke run)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None,
                        help="JSON path (default benchmarks/results/cnn_structured_cpu.json)")
    return parser


def main(argv=None, *, default_dir: str | None = None,
         prog: str = "python -m torch_ntk.bench.cnn_structured") -> dict:
    """Run the benchmark with command-line arguments ``argv``; returns the JSON payload."""
    parser = build_parser()
    args, argv = parse_suite_args(parser, argv, prog)
    t0 = time.perf_counter()
    rows = [run_case(case, args.repeats, args.device) for case in CASES[args.quick]]
    payload = {"benchmark": "cnn_structured", "machine": machine_info(args.device),
               "quick": args.quick, "repeats": args.repeats, "rows": rows, "wall_s": round(time.perf_counter() - t0, 1),
               "command": " ".join([prog, *argv])}
    out = args.out or os.path.join(default_dir or results_dir(),
                                   f"cnn_structured_{args.device}.json")
    write_json(out, keep_runs(out, payload))
    print(render_cnn_structured(payload))
    print(f"\nJSON: {out}")
    return payload


if __name__ == "__main__":
    main()
