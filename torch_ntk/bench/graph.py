"""Benchmark: graph kernels (residual blocks) on the fused op against their baselines.

    torch-ntk bench graph [--quick] [--device cpu|cuda] [--out DIR]
    python -m torch_ntk.bench.graph [--quick] [--device cpu|cuda] [--repeats R] [--out PATH]

Two comparisons, float32, x2 = None, on the same inputs in the same process:

- **residual CNN** (the issue's case): a 3×3 convolution, two residual blocks
  h + conv(relu(conv(relu(h)))) (3×3, padding 1, 16 channels), ReLU, global average pool
  and a dense readout, on 1×8×8 images. The fused op (``torch_ntk.analytic_kernels`` on
  the graph spec: ``torch_ntk::cnn_kernels`` with skip registers) against the package's
  torch walker (``torch_ntk.analytic.cnn.cnn_kernels``, the registered rules of each node
  kind); target ≥ 20×. The walker holds [N, N, P, P] planes: beyond WALKER_MAX_BYTES its
  row says "skipped" (no estimate is given);
- **residual MLP, depth 10** (10 dense layers: the input layer, four blocks
  h + dense(relu(dense(relu(h)))), the readout after a ReLU) against the chain MLP op
  (``torch_ntk::analytic_kernels``) of 10 dense layers with ReLUs, N = 4000 on 32
  features; target: the residual MLP within 1.5× of the chain. (On the CPU the residual
  MLP runs on the MLP op's graph program, ``torch_ntk.analytic.fused.mlp_graph_args``; on
  CUDA on the CNN op as 1×1 images.)

Times are medians after a warm-up (``torch_ntk.bench.cnn.timed``); each row also gives
max |fused − reference| / max |reference|. The payload records the machine (CPU model and
its vector flags from lscpu, threads) and the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

import torch_ntk as tn
from torch_ntk.activations import from_name
from torch_ntk.analytic.cnn import cnn_kernels as walker_kernels
from torch_ntk.layers import Add, Conv, Dense, GlobalAvgPool
from torch_ntk.lifting.spec import LayerSpec

from .cnn import timed
from .common import (
    load_average, machine_info, machine_line, markdown_table, parse_suite_args, results_dir,
    write_json,
)

CASES = {
    # (kind, N): "cnn" the residual CNN (fused vs walker), "mlp" residual vs chain MLP
    ("cpu", False): [("cnn", 100), ("cnn", 200), ("cnn", 1000), ("mlp", 4000)],
    ("cpu", True): [("cnn", 12), ("mlp", 200)],
    ("cuda", False): [("cnn", 200), ("cnn", 2000), ("mlp", 4000)],
    ("cuda", True): [("cnn", 24), ("mlp", 200)],
}
WALKER_TENSORS = 6            # planes [N, N, P, P] alive at once in the walker
WALKER_MAX_BYTES = 3 * 2**30  # skip the walker beyond this estimated peak
WIDTH = 16
MLP_FEATURES = 32
MLP_DEPTH = 10


def _conv(c_in: int) -> Conv:
    return Conv(c_in, WIDTH, (3, 3), padding=((1, 1), (1, 1)), weight_var=2.0, bias_var=0.05)


def residual_cnn(c0: int = 1) -> LayerSpec:
    """conv → 2 × [h + conv(relu(conv(relu(h))))] → relu → GAP → dense (a graph spec)."""
    relu = from_name("relu")
    layers, inputs = [_conv(c0)], [(-1,)]
    for _ in range(2):
        fork = len(layers) - 1
        for layer in (relu, _conv(WIDTH), relu, _conv(WIDTH)):
            inputs.append((len(layers) - 1,))
            layers.append(layer)
        inputs.append((fork, len(layers) - 1))
        layers.append(Add((1.0, 1.0)))
    for layer in (relu, GlobalAvgPool(), Dense(WIDTH, 1, 1.0, 0.0)):
        inputs.append((len(layers) - 1,))
        layers.append(layer)
    return LayerSpec(tuple(layers), inputs=tuple(inputs))


def residual_mlp(depth: int = MLP_DEPTH, n0: int = MLP_FEATURES) -> LayerSpec:
    """``depth`` dense layers: the input layer, (depth − 2) / 2 blocks
    h + dense(relu(dense(relu(h)))), relu, the readout."""
    relu = from_name("relu")
    layers, inputs = [Dense(n0, WIDTH, 2.0, 0.05)], [(-1,)]
    for _ in range((depth - 2) // 2):
        fork = len(layers) - 1
        for layer in (relu, Dense(WIDTH, WIDTH, 2.0, 0.05), relu, Dense(WIDTH, WIDTH, 2.0, 0.05)):
            inputs.append((len(layers) - 1,))
            layers.append(layer)
        inputs.append((fork, len(layers) - 1))
        layers.append(Add((1.0, 1.0)))
    for layer in (relu, Dense(WIDTH, 1, 1.0, 0.0)):
        inputs.append((len(layers) - 1,))
        layers.append(layer)
    return LayerSpec(tuple(layers), inputs=tuple(inputs))


def chain_mlp(depth: int = MLP_DEPTH, n0: int = MLP_FEATURES) -> LayerSpec:
    """``depth`` dense layers with ReLUs between them (a chain spec: the MLP op)."""
    relu = from_name("relu")
    layers: list = [Dense(n0, WIDTH, 2.0, 0.05)]
    for k in range(1, depth):
        layers += [relu, Dense(WIDTH, 1 if k == depth - 1 else WIDTH, 2.0, 0.05)]
    return LayerSpec(tuple(layers))


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(f"{float((a.double() - b.double()).abs().max() / b.double().abs().max()):.2e}")


def run_case(case: tuple, device: str, repeats: int) -> dict:
    kind, n = case
    g = torch.Generator().manual_seed(0)
    row: dict = {"N": n, "x2": "None", "dtype": "float32", "device": device}
    if kind == "cnn":
        row["case"] = "residual CNN (2 blocks, GAP), 1x8x8"
        spec = residual_cnn()
        x = torch.randn(n, 1, 8, 8, generator=g).to(device)
        fused, k_fused = timed(lambda: tn.analytic_kernels(spec, x).ntk, repeats, device)
        row["fused_s"] = round(fused["median_s"], 4)
        need = WALKER_TENSORS * n * n * 64 * 64 * 4
        if need > WALKER_MAX_BYTES:
            row["baseline_s"] = f"skipped: needs ~{need / 2**30:.0f} GB"
        else:
            walk, k_walk = timed(lambda: walker_kernels(spec, x).ntk, repeats, device)
            row["baseline_s"] = round(walk["median_s"], 4)
            row["ratio"] = round(walk["median_s"] / fused["median_s"], 1)
            row["max_rel_diff"] = _diff(k_fused, k_walk)
        row["baseline"] = "torch walker"
    else:
        row["case"] = f"residual MLP depth {MLP_DEPTH}, {MLP_FEATURES} features"
        spec, chain = residual_mlp(), chain_mlp()
        x = torch.randn(n, MLP_FEATURES, generator=g).to(device)
        fused, k_fused = timed(lambda: tn.analytic_kernels(spec, x).ntk, repeats, device)
        base, _ = timed(lambda: tn.analytic_kernels(chain, x).ntk, repeats, device)
        row["fused_s"] = round(fused["median_s"], 4)
        row["baseline_s"] = round(base["median_s"], 4)
        row["baseline"] = f"chain MLP op, depth {MLP_DEPTH}"
        row["ratio"] = round(base["median_s"] / fused["median_s"], 2)
        sub = slice(0, min(n, 64))  # the walker on a block of rows, as the values' check
        row["max_rel_diff"] = _diff(tn.analytic_kernels(spec, x[sub]).ntk,
                                    walker_kernels(spec, x[sub].double()).ntk)
    print(row, flush=True)
    return row


COLUMNS = [("case", "case"), ("N", "N"), ("x2", "x2"), ("fused_s", "fused s"),
           ("baseline", "baseline"), ("baseline_s", "baseline s"),
           ("ratio", "baseline / fused"), ("max_rel_diff", "max rel diff")]


def render_graph(payload: dict) -> str:
    """The markdown table of a payload, its machine line, and the targets judged on
    measured ratios: residual CNN ≥ 20× the walker; residual MLP within 1.5× of the chain
    (ratio ≥ 1/1.5)."""
    lines = [markdown_table(payload["rows"], COLUMNS), "",
             f"{machine_line(payload['machine'])}; load average "
             f"{payload.get('load_before', float('nan')):.1f} before, "
             f"{payload.get('load_after', float('nan')):.1f} after; run "
             f"{payload['wall_s']:.0f} s{' (quick: a smoke run, not a measurement)' if payload.get('quick') else ''}.",
             ""]
    for row in payload["rows"]:
        if "ratio" not in row:
            continue
        if row["case"].startswith("residual CNN"):
            lines.append(f"- Residual CNN N = {row['N']}: {row['ratio']}× the torch walker "
                         f"(target ≥ 20×: {'met' if row['ratio'] >= 20 else 'missed'}).")
        else:
            lines.append(f"- Residual MLP N = {row['N']}: {1 / row['ratio']:.2f}× the chain "
                         f"MLP op's time (target ≤ 1.5×: "
                         f"{'met' if 1 / row['ratio'] <= 1.5 else 'missed'}).")
    return "\n".join(lines).rstrip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small cases (a smoke run)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=None,
                        help="JSON path (default benchmarks/results/graph_<device>.json)")
    return parser


def main(argv=None, *, default_dir: str | None = None,
         prog: str = "python -m torch_ntk.bench.graph") -> dict:
    """Run the benchmark with command-line arguments ``argv``; returns the JSON payload."""
    parser = build_parser()
    args, argv = parse_suite_args(parser, argv, prog)
    t0 = time.perf_counter()
    load_before = load_average()
    rows = [run_case(case, args.device, args.repeats) for case in CASES[(args.device, args.quick)]]
    payload = {"benchmark": "graph", "machine": machine_info(args.device), "quick": args.quick,
               "rows": rows, "wall_s": round(time.perf_counter() - t0, 1),
               "load_before": load_before, "load_after": load_average(),
               "command": " ".join([prog, *argv])}
    out = args.out or os.path.join(default_dir or results_dir(), f"graph_{args.device}.json")
    write_json(out, payload)
    print(render_graph(payload))
    print(f"\nJSON: {out}")
    return payload


if __name__ == "__main__":
    main()
