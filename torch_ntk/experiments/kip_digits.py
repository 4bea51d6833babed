"""Kernel Inducing Points: a few learned images that train a kernel machine on 8×8 digits.

Kernel Inducing Points (KIP; Nguyen, Chen & Lee, ICLR 2021) learns a small support set
(X_s, Y_s) by gradient descent *through the kernel*: the loss is the error of kernel ridge
regression from the support set on a batch (X_t, Y_t) of real training images,

    L(X_s) = (1/2B) ‖K(X_t, X_s) (K(X_s, X_s) + λ I)⁻¹ Y_s − Y_t‖²_F,
    λ = ridge · mean diag K(X_s, X_s),

with a fresh batch of B training images per step and Adam on the pixels of X_s (and on
Y_s with ``learn_labels``). The gradient goes through :func:`torch_ntk.analytic_kernels`
with inputs that require grad (its differentiable path, ``torch_ntk.analytic.autograd``).

Data: **scikit-learn's bundled 8×8 digits** (the ``digits`` extra, no download), each image
standardized as in ``cntk-digits`` (zero mean, unit variance over its 64 pixels); ``test``
images held out, the rest (1797 − test) are the training pool. Kernels (NTK, NTK
parametrization, σ_w² = 2, σ_b² = 0.01):

- ``mlp-ntk``: an MLP with ``depth`` ReLU hidden layers on the 64 pixels;
- ``cntk``: ``depth`` × [3×3 'same' convolution → ReLU] then a ``cntk_readout`` readout:
  "flatten" (default; same-position covariances per pair) or "gap" (global average
  pooling; full 64 × 64 position planes per pair: much slower). Both run the fused CNN op
  and its compiled backward (``torch_ntk::cnn_kernels_backward``).

For each kernel, support size n (class-balanced: n/10 images per digit) and seed, the
support set starts as n random real training images. Reported (test accuracy of kernel
ridge regression, argmax of the 10 outputs): the learned support set, the same n random
real images before learning ("random"), and all training images ("full"; one number,
the pool is fixed). Mean ± std over ``seeds``.

Run it with ``torch-ntk reproduce kip-digits`` (``--quick``: 2 seeds, fewer steps).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ..analytic.kernels import analytic_kernels, as_spec
from ..lifting.lift import mlp_spec
from ..predict import gp_inference
from . import cntk_digits
from .common import (
    DTYPES, Stopwatch, check_positive, derive_seed, finish, new_figure, resolve_device,
    with_progress,
)
from .figure3 import digits_available

NAME = "kip-digits"
KERNELS = ("mlp-ntk", "cntk")
CLASSES = 10
EXTRA_HINT = ("kip-digits uses scikit-learn's bundled handwritten digits (no download), an "
              "optional dependency: pip install 'torch-ntk[digits]' (or pip install scikit-learn)")


def missing_requirements() -> Optional[str]:
    """What to install before the experiment can run, or None when nothing is missing."""
    return None if digits_available() else EXTRA_HINT


@dataclass(frozen=True)
class Config:
    """Settings of the Kernel Inducing Points experiment."""

    kernels: tuple[str, ...] = KERNELS
    supports: tuple[int, ...] = (10, 50)   # learned images (multiples of 10: class-balanced)
    seeds: int = 5                         # support initializations and batch streams
    steps: int = 200                       # Adam steps
    target_batch: int = 200                # training images per step (the loss's targets)
    lr: float = 0.03                       # Adam on the pixels (images have unit variance)
    learn_labels: bool = False             # also learn Y_s (starting from one-hot)
    ridge: float = 1e-4                    # λ = ridge × mean diag K(X_s, X_s) (also "full")
    test: int = 500                        # held-out test images
    depth: int = 3                         # hidden layers of the MLP, conv layers of the CNTK
    cntk_readout: str = "flatten"          # "flatten" or "gap"
    dtype: str = "float64"
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive(self, "supports", "seeds", "target_batch", "test", "depth")
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be an integer >= 0; got {self.steps!r}")
        if not self.kernels or any(k not in KERNELS for k in self.kernels):
            raise ValueError(f"kernels must name some of {KERNELS}; got {self.kernels!r}")
        if any(n % CLASSES for n in self.supports):
            raise ValueError(f"supports must be multiples of {CLASSES} (the same number of "
                             f"images of every digit); got {self.supports!r}")
        if self.test + max(self.supports) > 1797 - 100 or self.target_batch > 1797 - self.test:
            raise ValueError(f"test + the largest support must leave 100 of the 1797 digits, "
                             f"and target_batch at most the training pool; got test "
                             f"{self.test}, supports {self.supports}, target_batch "
                             f"{self.target_batch}")
        if self.cntk_readout not in ("flatten", "gap"):
            raise ValueError(f"cntk_readout must be 'flatten' or 'gap'; got "
                             f"{self.cntk_readout!r}")
        if not self.lr > 0 or not self.ridge > 0:
            raise ValueError(f"lr and ridge must be positive; got {self.lr}, {self.ridge}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {self.dtype!r}")


QUICK = {"supports": (10,), "seeds": 2, "steps": 100, "target_batch": 100, "test": 300}


def architecture(config: Config, kernel: str):
    """The spec of ``kernel`` ("mlp-ntk": ReLU MLP on 64 pixels, input [N, 64]; "cntk": the
    CNN of ``cntk-digits`` with one channel (only the architecture matters), input
    [N, 1, 8, 8])."""
    if kernel == "mlp-ntk":
        return mlp_spec([64] + [1] * config.depth + [CLASSES], "relu", weight_std=math.sqrt(2.0),
                        bias_std=0.1)
    base = cntk_digits.Config(depth=config.depth)
    return as_spec(cntk_digits.cnn(base, 1, config.cntk_readout))


def ntk(spec, a: Tensor, b: Optional[Tensor] = None) -> Tensor:
    """Θ∞(a, b) [Na, Nb] (b None: a with itself); differentiable when a or b requires grad."""
    return analytic_kernels(spec, a, b, get="ntk", progress=False).ntk


def regression(spec, xs: Tensor, ys: Tensor, x: Tensor, ridge: float) -> Tensor:
    """[N, 10] kernel ridge regression from (xs, ys) at x: Θ(x, xs)(Θ(xs, xs) + λI)⁻¹ ys with
    λ = ridge · mean diag Θ(xs, xs) (differentiable in xs, ys; solved in x's dtype)."""
    k_ss = ntk(spec, xs)
    reg = ridge * k_ss.diagonal().mean()
    eye = torch.eye(k_ss.shape[0], dtype=k_ss.dtype, device=k_ss.device)
    return ntk(spec, x, xs) @ torch.linalg.solve(k_ss + reg * eye, ys)


def accuracy(spec, xs: Tensor, ys: Tensor, x: Tensor, labels: Tensor, ridge: float) -> float:
    """Test accuracy of kernel ridge regression from (xs, ys) (the GP posterior mean of
    ``predict.gp_inference``, float64) at x against ``labels``."""
    with torch.no_grad():
        k_ss = ntk(spec, xs).double()
        fn = gp_inference(k_ss, ys.double(), diag_reg=ridge * float(k_ss.diagonal().mean()))
        mean = fn(ntk(spec, x, xs).double()).test.mean
    return float((mean.argmax(1).cpu() == labels.cpu()).double().mean())


def data(config: Config) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Standardized images [1797, 1, 8, 8] float64, labels [1797], the test indices [test]
    and the training pool's indices [1797 − test]."""
    images, labels = cntk_digits.standardized_digits()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(
        derive_seed(config.seed, NAME, "test")))
    return images, labels, order[: config.test], order[config.test:]


def distill(config: Config, spec, x_pool: Tensor, y_pool: Tensor, n: int, seed: int
            ) -> dict[str, Any]:
    """Learn a support set of n images from the pool (x_pool [P, ...], y_pool [P]): start
    from n/10 random images of each digit, then ``steps`` Adam steps on the KIP loss with a
    fresh batch of ``target_batch`` pool images each. Returns the initial and learned
    images and labels and the loss before each step."""
    g = torch.Generator().manual_seed(seed)
    start = torch.cat([torch.nonzero(y_pool == c).flatten()[
        torch.randperm(int((y_pool == c).sum()), generator=g)[: n // CLASSES]]
        for c in range(CLASSES)])
    onehot = nn.functional.one_hot(y_pool, CLASSES).to(x_pool.dtype)
    xs = x_pool[start].clone().requires_grad_(True)
    ys = onehot[start].clone().requires_grad_(config.learn_labels)
    opt = torch.optim.Adam([xs, ys] if config.learn_labels else [xs], lr=config.lr)
    losses = []
    for _ in range(config.steps):
        batch = torch.randperm(len(y_pool), generator=g)[: config.target_batch].to(x_pool.device)
        opt.zero_grad(set_to_none=True)
        pred = regression(spec, xs, ys, x_pool[batch], config.ridge)
        loss = 0.5 * (pred - onehot[batch]).square().sum(1).mean()
        losses.append(float(loss.detach()))
        loss.backward()
        opt.step()
    return {"initial": x_pool[start], "initial_labels": onehot[start], "images": xs.detach(),
            "labels": ys.detach(), "losses": losses}


def run(config: Config = Config(), out: Optional[Union[str, os.PathLike]] = None,
        progress: bool = False) -> dict[str, Any]:
    """Run the experiment; return the JSON payload and write kip-digits.{json,png} into
    ``out``.

    Raises:
        ImportError: scikit-learn is not installed (``pip install 'torch-ntk[digits]'``).
    """
    device = resolve_device(config.device)
    dtype = DTYPES[config.dtype]
    watch = Stopwatch()
    images, labels, test, pool = data(config)
    y_pool, y_test = labels[pool].to(device), labels[test]
    summary: dict[str, Any] = {"test": config.test, "train": len(pool), "chance": 1 / CLASSES,
                               "kernels": {}}
    results: dict[str, Any] = {"test_indices": test, "kernels": {}}
    for kernel in config.kernels:
        spec = architecture(config, kernel)
        shape = (-1, 64) if kernel == "mlp-ntk" else (-1, 1, 8, 8)
        x_pool = images[pool].reshape(shape).to(device, dtype)
        x_test = images[test].reshape(shape).to(device, dtype)
        with watch(f"{kernel} full"):
            full = accuracy(spec, x_pool, nn.functional.one_hot(y_pool, CLASSES).to(dtype),
                            x_test, y_test, config.ridge)
        summary["kernels"][kernel] = {"full": full, "supports": {}}
        results["kernels"][kernel] = {"full": full, "supports": {}}
        for n in config.supports:
            runs = {"learned": [], "random": [], "losses": [], "images": None}
            jobs = range(config.seeds)
            with watch(f"{kernel} {n}"):
                for s in with_progress(jobs, f"kip {kernel} n={n}", enabled=progress):
                    got = distill(config, spec, x_pool, y_pool, n,
                                  derive_seed(config.seed, NAME, kernel, n, s))
                    runs["random"].append(accuracy(spec, got["initial"], got["initial_labels"],
                                                   x_test, y_test, config.ridge))
                    runs["learned"].append(accuracy(spec, got["images"], got["labels"],
                                                    x_test, y_test, config.ridge))
                    runs["losses"].append(got["losses"])
                    if s == 0:  # the figure's images
                        runs["images"] = {k: got[k].reshape(n, 8, 8).cpu().double()
                                          for k in ("initial", "images")}
                        runs["images"]["labels"] = got["labels"].argmax(1).cpu()
            cell: dict[str, Any] = {}
            for key in ("learned", "random"):
                t = torch.tensor(runs[key], dtype=torch.float64)
                cell[key] = {"mean": float(t.mean()),
                             "std": float(t.std()) if config.seeds > 1 else math.nan}
            cell["gain"] = cell["learned"]["mean"] - cell["random"]["mean"]
            summary["kernels"][kernel]["supports"][str(n)] = cell
            results["kernels"][kernel]["supports"][str(n)] = runs
    return finish(NAME, config, device, results, summary, watch, out, draw)


def draw(payload: dict[str, Any]):
    """Per kernel, the smallest support set of seed 0: its random real starting images
    (top row) and the learned images (bottom row), with their labels."""
    results, cfg = payload["results"]["kernels"], payload["config"]
    n = min(cfg["supports"])
    cols = min(n, 10)
    rows = 2 * len(results)
    fig, (first,) = new_figure(1.1 * cols + 0.6, 1.25 * rows + 0.5)
    if fig is None:
        return None
    fig.delaxes(first)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, (kernel, result) in enumerate(results.items()):
        shown = result["supports"][str(n)]["images"]
        for k, key in enumerate(("initial", "images")):
            for c in range(cols):
                ax = axes[2 * r + k][c]
                ax.imshow(shown[key][c], cmap="gray_r")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(str(shown["labels"][c]), fontsize="small")
            axes[2 * r + k][0].set_ylabel(f"{kernel}\n{'random' if k == 0 else 'learned'}",
                                          fontsize="small")
    fig.suptitle(f"Kernel Inducing Points on 8×8 digits: {n} support images before (random "
                 f"real) and after {cfg['steps']} Adam steps (seed 0)")
    return fig


def report(payload: dict[str, Any]) -> list[str]:
    """The lines ``torch-ntk reproduce kip-digits`` prints: test accuracy of the learned
    and the random support sets (mean ± std over seeds) and of the full training set."""
    s, cfg = payload["summary"], payload["config"]
    lines = [f"test accuracy on {s['test']} held-out digits (mean ± std over {cfg['seeds']} "
             f"seeds; kernel ridge regression with the NTK):",
             f"{'kernel':>8} {'support':>7} {'learned':>15} {'random':>15} {'gain':>7} "
             f"{'all ' + str(s['train']) + ' train':>16}"]
    for kernel, k in s["kernels"].items():
        for n, cell in k["supports"].items():
            parts = [f"{cell[key]['mean']:.3f} ± {fmt_std(cell[key]['std'])}"
                     for key in ("learned", "random")]
            lines.append(f"{kernel:>8} {n:>7} {parts[0]:>15} {parts[1]:>15} "
                         f"{cell['gain']:>+7.3f} {k['full']:>16.3f}")
    return lines


def fmt_std(value: Optional[float]) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else \
        f"{value:.3f}"
