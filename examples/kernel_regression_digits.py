"""Kernel regression with the infinite-width NTK on scikit-learn's handwritten digits.

An infinitely wide ReLU MLP trained to convergence by gradient descent on the MSE is
kernel regression with its NTK Θ∞ (Jacot et al. 2018, §5): the test prediction is
Θ∞(x, X) Θ∞(X, X)⁻¹ Y for a network that starts from zero output. No network is trained;
the digits ship with scikit-learn (nothing is downloaded). Needs scikit-learn.

    python examples/kernel_regression_digits.py            # 1000 train, 797 test digits
    python examples/kernel_regression_digits.py --quick    # 100 train, 50 test
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
    parser.add_argument("--depth", type=int, default=3, help="hidden layers (default 3)")
    args = parser.parse_args(argv)
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)          # standardized pixels
    labels = torch.tensor(digits.target)
    n_train, n_test = (100, 50) if args.quick else (1000, len(x) - 1000)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = perm[:n_train], perm[n_train:n_train + n_test]
    y = torch.nn.functional.one_hot(labels[train], 10).double() - 0.1  # centered one-hot

    # Only the architecture matters for the limit: the width given here is not used.
    model = tn.ntk_mlp([64] + [512] * args.depth + [10], "relu", dtype=torch.float64)
    k_train = tn.analytic_kernels(model, x[train], get="ntk").ntk
    k_test = tn.analytic_kernels(model, x[test], x[train], get="ntk").ntk
    predict_fn = tn.predict.gradient_descent_mse(k_train, y,
                                              diag_reg=1e-6 * k_train.diag().mean().item())
    pred = predict_fn(math.inf, None, None, k_test).test  # [n_test, 10]
    accuracy = (pred.argmax(1) == labels[test]).double().mean().item()
    print(f"NTK kernel regression, ReLU MLP with {args.depth} hidden layers, "
          f"{n_train} training digits: test accuracy {accuracy:.3f} on {n_test} digits")
    return accuracy


if __name__ == "__main__":
    main()
