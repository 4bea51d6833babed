"""The infinite-width kernel of a convolutional network (CNTK with global average pooling).

Builds a small CNN from NTK-parametrized conv layers, computes its exact infinite-width
NTK on random images (the convolutional recursion of Arora et al. 2019, one fused op),
and compares it with the finite-width NTK of the same architecture at growing channel
counts.

    python examples/cnn_limit.py            # 32 images 8×8, 16 … 256 channels
    python examples/cnn_limit.py --quick    # 4 images 6×6, 8 and 32 channels
"""

import argparse
import os

import torch
from torch import nn

import torch_ntk as tn


def cnn(channels):
    return nn.Sequential(
        tn.nn.NTKConv2d(1, channels, 3, padding="same"), nn.ReLU(),
        tn.nn.NTKConv2d(channels, channels, 3, padding="same"), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), tn.NTKLinear(channels, 1),
    ).double()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        default=bool(os.environ.get("TORCH_NTK_EXAMPLES_QUICK")),
                        help="tiny sizes (also: TORCH_NTK_EXAMPLES_QUICK=1)")
    args = parser.parse_args(argv)
    n, side, widths = (4, 6, [8, 32]) if args.quick else (32, 8, [16, 64, 256])
    torch.manual_seed(0)
    images = torch.randn(n, 1, side, side, dtype=torch.float64)  # [N, C, H, W]
    limit = tn.NTK(cnn(widths[0])).limit(images, get="ntk").ntk  # [N, N]
    print(f"CNTK-GAP of {n} images {side}×{side}: diagonal mean {limit.diag().mean():.4f}")
    errors = []
    for width in widths:
        theta0 = tn.NTK(cnn(width)).empirical(images, mode="trace")
        errors.append(((theta0 - limit).norm() / limit.norm()).item())
        print(f"{width:>4} channels: ‖Θ₀ − Θ∞‖/‖Θ∞‖ = {errors[-1]:.4f}")
    return limit, errors


if __name__ == "__main__":
    main()
