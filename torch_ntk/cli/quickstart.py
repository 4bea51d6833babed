"""The quick demonstration behind ``torch-ntk quickstart`` (formerly ``python -m torch_ntk``).

Builds the default MLP (depth 3, ReLU, NTK parametrization, β = 0.1 as in Jacot et
al. §6), computes its infinite-width NNGP Σ and NTK Θ∞ on points of the unit circle
with the fused op, and compares them with averages over random networks of growing
width: the empirical output covariance f(x)f(x′)ᵀ/n_L and the empirical NTK
(Jacot et al. Prop. 1 and Thm. 1). The relative error should fall as the width grows.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from ..analytic.kernels import analytic_kernels
from ..lifting.lift import mlp_spec
from ..experiments.common import circle, rel_norm
from ..monte_carlo.estimates import monte_carlo_kernels
from ..nn import ntk_mlp


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The quickstart's options (also those of ``torch-ntk quickstart``)."""
    parser.add_argument("--points", type=int, default=8, help="inputs on the unit circle")
    parser.add_argument("--depth", type=int, default=3, help="number of dense layers")
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024],
                        help="hidden widths of the random networks")
    parser.add_argument("--networks", type=int, default=8, help="random networks per width")
    parser.add_argument("--outputs", type=int, default=64,
                        help="output units n_L (each is an independent NNGP sample)")
    return parser


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="torch-ntk quickstart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return run(add_arguments(parser).parse_args(argv))


def run(args: argparse.Namespace) -> dict:
    """Print the comparison for parsed ``args``; return the kernels and the table rows."""
    x = circle(torch.linspace(0, math.pi, args.points, dtype=torch.float64))  # γ ∈ [0, π]
    spec = mlp_spec([2] + [1] * (args.depth - 1) + [1], "relu", bias_std=0.1)
    t0 = time.perf_counter()
    limit = analytic_kernels(spec, x)
    t_limit = time.perf_counter() - t0
    torch.set_printoptions(precision=4, linewidth=120)
    print(f"Infinite-width kernels of a depth-{args.depth} ReLU MLP (NTK parametrization, "
          f"β = 0.1) on {args.points} points of the unit circle, γ ∈ [0, π]:")
    print(f"NNGP Σ (row x0 = (1, 0)):  {limit.nngp[0]}")
    print(f"NTK Θ∞ (row x0 = (1, 0)):  {limit.ntk[0]}")
    print(f"computed by the fused op in {t_limit * 1e3:.2f} ms\n")
    print(f"Averages over {args.networks} random networks (n_L = {args.outputs}) against the limit:")
    print(f"{'width':>8} {'‖Σ_mc − Σ‖/‖Σ‖':>18} {'‖Θ_mc − Θ∞‖/‖Θ∞‖':>20} {'seconds':>9}")
    rows = []
    for width in args.widths:
        t0 = time.perf_counter()
        widths = [2] + [width] * (args.depth - 1) + [args.outputs]
        mc = monte_carlo_kernels(
            lambda seed: ntk_mlp(widths, "relu", bias_std=0.1, dtype=x.dtype), x,
            n_samples=args.networks,
        )
        row = {"width": width, "nngp_error": rel_norm(mc.nngp, limit.nngp),
               "ntk_error": rel_norm(mc.ntk, limit.ntk), "seconds": time.perf_counter() - t0}
        rows.append(row)
        print(f"{width:>8} {row['nngp_error']:>18.4f} {row['ntk_error']:>20.4f} {row['seconds']:>9.2f}")
    print("\nThe NNGP error is Monte-Carlo noise (it shrinks with more networks); the NTK error "
          "also shrinks with width: the kernel of a wide network is deterministic (Jacot Thm. 1).")
    return {"nngp": limit.nngp, "ntk": limit.ntk, "rows": rows}


if __name__ == "__main__":
    main()
