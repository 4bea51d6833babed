"""The finite-width NTK converges to its infinite-width limit Θ∞ as the width grows.

For ReLU MLPs of growing width, the empirical NTK at initialization Θ₀ (averaged over the
outputs) against the exact limit Θ∞ of the same architecture: the relative error
‖Θ₀ − Θ∞‖/‖Θ∞‖ falls like width^(−1/2) (Jacot et al. 2018, Thm 1).

    python examples/limit_vs_finite_width.py            # widths 64 … 4096, about a minute
    python examples/limit_vs_finite_width.py --quick    # tiny sizes, a few seconds
"""

import argparse
import math
import os

import torch

import torch_ntk as tn


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        default=bool(os.environ.get("TORCH_NTK_EXAMPLES_QUICK")),
                        help="tiny sizes (also: TORCH_NTK_EXAMPLES_QUICK=1)")
    args = parser.parse_args(argv)
    widths = [16, 64] if args.quick else [64, 256, 1024, 4096]
    torch.manual_seed(0)
    x = torch.randn(8 if args.quick else 32, 4, dtype=torch.float64)

    errors = []
    print(f"{'width':>6} {'rel. error':>11}")
    for width in widths:
        net = tn.NTK(tn.ntk_mlp([4, width, width, 1], "relu", dtype=torch.float64))
        theta0 = net.empirical(x, mode="trace")  # [N, N]
        limit = net.limit(x, get="ntk").ntk      # [N, N], the same for every width
        errors.append(((theta0 - limit).norm() / limit.norm()).item())
        print(f"{width:>6} {errors[-1]:>11.4f}")
    slope = (math.log(errors[-1]) - math.log(errors[0])) / (math.log(widths[-1]) - math.log(widths[0]))
    print(f"log-log slope of the error against width: {slope:.2f} (theory: -0.5)")
    return errors


if __name__ == "__main__":
    main()
