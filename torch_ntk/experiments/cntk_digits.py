"""Convolutional NTKs against trained CNNs on small training sets of handwritten digits.

The small-data comparison of Arora et al. (2020, "Harnessing the power of infinitely wide
deep nets on small-data tasks"), on **scikit-learn's bundled 8×8 digits** (1797 images,
the ``digits`` extra, no download). Every image [1, 8, 8] is standardized on its own
(zero mean, unit variance over its 64 pixels, so ‖x‖² = 64). A fixed test set of
``test`` images is held out; each draw d takes a random permutation of the remaining
images and trains on its first n (nested subsets as n grows).

Methods (test accuracy = argmax of the 10 outputs against the label):

- ``cntk-gap``: kernel regression with the infinite-width NTK of the CNN
  ``depth`` × [NTKConv2d(k×k, 'same') → ReLU] → AdaptiveAvgPool2d(1) → Flatten →
  NTKLinear (:func:`torch_ntk.analytic_kernels`, the fused CNN op);
- ``cntk-flatten``: the same convolutions with a Flatten → NTKLinear readout;
- ``cntk-resnet``: the infinite-width NTK of a small WideResNet-style network written as a
  PyTorch class (``ResNet``: pre-activation residual blocks ``x + block(x)`` of 3×3
  convolutions, identity shortcuts, a 1×1 projection shortcut where the channels double and
  the image halves, global average pooling), lifted as a graph by
  :func:`torch_ntk.analytic_kernels` from the class itself;
- ``myrtle-5``: the Myrtle-5 kernel of Shankar et al. (2020, "Neural kernels without
  tangents"), a chain of 3×3 'same' ReLU convolutions and 2×2 average pools
  (``myrtle``), adapted to 8×8 images: the paper's network on 32×32 images is
  conv, conv, pool, conv, pool, conv, pool, pool, pool (32 → 16 → 8 → 4 → 2 → 1); on
  8×8 images the last three pools become one (8 → 4 → 2 → 1), so every conv sits where it
  sits in the paper relative to the pools and the readout still sees a 1×1 map;
- ``mlp-ntk`` and ``mlp-nngp``: the NTK and NNGP of an MLP with ``depth`` ReLU hidden
  layers on the 64 flattened pixels;
- ``cnn-<width>``: the CNN of ``cntk-gap`` with ``width`` channels per conv layer (NTK
  parametrization), trained with Adam on the cross-entropy for ``epochs`` epochs of
  minibatches of ``batch`` images (learning rate ``lr``, cosine decay to 0), from a new
  initialization per draw.

Kernel regression is the GP posterior mean (:func:`torch_ntk.predict.gp_inference`; the
t = ∞ limit of gradient flow on the MSE) with one-hot targets and a ridge of
``ridge`` × the mean diagonal of the training kernel. The kernels are computed once, on
the test set and the union of the training subsets, and sliced per size and draw.

What it shows (``cntk-digits.json`` summary): per method and training-set size the mean
and standard deviation (over the draws) of the test accuracy.

Run it with ``torch-ntk reproduce cntk-digits`` (``--quick`` for fewer sizes, draws and
widths and a smaller test set).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from ..analytic.kernels import analytic_kernels
from ..lifting.lift import mlp_spec
from ..nn import NTKConv2d, NTKLinear
from ..predict import gp_inference
from .common import (
    DTYPES, Stopwatch, check_positive, derive_seed, finish, new_figure, resolve_device,
    seeded, with_progress,
)
from .figure3 import digits_available, load_digits

NAME = "cntk-digits"
KERNEL_METHODS = ("cntk-gap", "cntk-flatten", "cntk-resnet", "myrtle-5", "mlp-ntk", "mlp-nngp")
CLASSES = 10
EXTRA_HINT = ("cntk-digits uses scikit-learn's bundled handwritten digits (no download), an "
              "optional dependency: pip install 'torch-ntk[digits]' (or pip install scikit-learn)")


def missing_requirements() -> Optional[str]:
    """What to install before the experiment can run, or None when nothing is missing."""
    return None if digits_available() else EXTRA_HINT


@dataclass(frozen=True)
class Config:
    """Settings of the CNTK-on-digits experiment."""

    sizes: tuple[int, ...] = (20, 50, 100, 200, 500, 1000)   # training-set sizes n
    test: int = 500                                          # held-out test images
    draws: int = 3                                           # training subsets (and inits) per n
    depth: int = 3                                           # conv layers of cntk-gap/-flatten
                                                             # (and MLP hidden layers)
    kernel_size: int = 3
    widths: tuple[int, ...] = (16, 64, 128)                  # channels of the trained CNNs
    epochs: int = 100
    batch: int = 32
    lr: float = 0.03                                         # Adam, cosine decay to 0
    ridge: float = 1e-4                                      # × mean diagonal of K(X, X)
    weight_std: float = math.sqrt(2.0)
    bias_std: float = 0.1
    kernel_dtype: str = "float32"                            # of the kernels (solved in float64)
    dtype: str = "float32"                                   # of the trained networks
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive(self, "sizes", "test", "draws", "depth", "kernel_size", "widths",
                       "epochs", "batch")
        if list(self.sizes) != sorted(set(self.sizes)):
            raise ValueError(f"sizes must be increasing; got {self.sizes!r}")
        if self.test + self.sizes[-1] > 1797:
            raise ValueError(f"test + the largest size must be at most 1797 (the data set); got "
                             f"{self.test} + {self.sizes[-1]}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd ('same' padding); got {self.kernel_size}")
        if not self.lr > 0 or not self.ridge >= 0:
            raise ValueError(f"lr must be positive and ridge non-negative; got {self.lr}, "
                             f"{self.ridge}")
        for name in ("kernel_dtype", "dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name} must be one of {sorted(DTYPES)}; got "
                                 f"{getattr(self, name)!r}")


QUICK = {"sizes": (20, 60, 180), "test": 200, "draws": 2, "widths": (16, 64), "epochs": 60}


def cnn(config: Config, width: int, readout: str = "gap", device=None, dtype=None) -> nn.Sequential:
    """``depth`` × [NTKConv2d(k×k, 'same') → ReLU] then the ``readout``: "gap"
    (AdaptiveAvgPool2d(1) → Flatten → NTKLinear(width, 10)) or "flatten" (Flatten →
    NTKLinear(width·64, 10)). Input [N, 1, 8, 8] → output [N, 10]."""
    factory = {"device": device, "dtype": dtype}
    layers: list[nn.Module] = []
    channels = 1
    for _ in range(config.depth):
        layers += [NTKConv2d(channels, width, config.kernel_size, padding="same",
                             weight_std=config.weight_std, bias_std=config.bias_std, **factory),
                   nn.ReLU()]
        channels = width
    if readout == "gap":
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                   NTKLinear(width, CLASSES, bias_std=config.bias_std, **factory)]
    else:
        layers += [nn.Flatten(), NTKLinear(width * 64, CLASSES, bias_std=config.bias_std,
                                           **factory)]
    return nn.Sequential(*layers)


def standardized_digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's digits as images [1797, 1, 8, 8] float64, each with zero mean and unit
    variance over its 64 pixels (‖x‖² = 64), and their labels [1797]."""
    pixels, labels = load_digits()
    pixels = pixels - pixels.mean(1, keepdim=True)
    return (pixels / pixels.std(1, correction=0, keepdim=True)).reshape(-1, 1, 8, 8), labels


class PreActBlock(nn.Module):
    """A pre-activation (ResNet-v2) residual block without normalization: ``x +
    conv2(relu(conv1(relu(x))))`` with 3×3 convolutions (padding 1; ``conv1`` of stride
    ``stride``), or, where the channels or the size change, ``proj(relu(x)) +
    conv2(relu(conv1(relu(x))))`` with ``proj`` a 1×1 convolution of stride ``stride`` (the
    projection shortcut of a WideResNet). [N, c_in, H, W] → [N, c_out, H/stride, W/stride].

    Each summed branch starts with its own weight layer (or is the identity of a conv's
    Gaussian output), so at infinite width the kernel of the sum is the sum of the branches'
    kernels (``NTK_MATH.md`` §8)."""

    def __init__(self, c_in: int, c_out: int, stride: int, weight_std: float, bias_std: float,
                 **factory) -> None:
        super().__init__()
        law = {"weight_std": weight_std, "bias_std": bias_std, **factory}
        self.conv1 = NTKConv2d(c_in, c_out, 3, stride=stride, padding=1, **law)
        self.conv2 = NTKConv2d(c_out, c_out, 3, padding=1, **law)
        self.proj = (NTKConv2d(c_in, c_out, 1, stride=stride, **law)
                     if c_in != c_out or stride != 1 else None)

    def forward(self, x: Tensor) -> Tensor:
        o = torch.relu(x)
        y = self.conv2(torch.relu(self.conv1(o)))
        return x + y if self.proj is None else self.proj(o) + y


class ResNet(nn.Module):
    """A small WideResNet-style network on [N, 1, 8, 8] digits: a 3×3 conv stem (``width``
    channels), a block at 8×8 with an identity shortcut, a block to ``2·width`` channels at
    4×4 (stride 2, projection shortcut), ReLU, global average pooling and a dense readout
    → [N, 10]. (A WideResNet's BatchNorm couples the images of a batch and has no
    infinite-width kernel; the blocks here have no normalization.)"""

    def __init__(self, width: int, weight_std: float, bias_std: float, **factory) -> None:
        super().__init__()
        law = {"weight_std": weight_std, "bias_std": bias_std, **factory}
        self.stem = NTKConv2d(1, width, 3, padding=1, **law)
        self.block1 = PreActBlock(width, width, 1, **law)
        self.block2 = PreActBlock(width, 2 * width, 2, **law)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = NTKLinear(2 * width, CLASSES, bias_std=bias_std, **factory)

    def forward(self, x: Tensor) -> Tensor:
        h = self.block2(self.block1(self.stem(x)))
        return self.head(self.pool(torch.relu(h)).flatten(1))


def resnet(config: Config, width: int, device=None, dtype=None) -> ResNet:
    """The ``cntk-resnet`` network (``ResNet``) with the config's σ_w, σ_b."""
    return ResNet(width, config.weight_std, config.bias_std, device=device, dtype=dtype)


def myrtle(config: Config, width: int, device=None, dtype=None) -> nn.Sequential:
    """Myrtle-5 on 8×8 images: [conv → ReLU] × 2 → AvgPool2d(2) → conv → ReLU →
    AvgPool2d(2) → conv → ReLU → AvgPool2d(2) → Flatten → NTKLinear(width, 10) (3×3
    'same' convs with the config's σ_w, σ_b; 8×8 → 4×4 → 2×2 → 1×1). Input [N, 1, 8, 8]
    → output [N, 10]."""
    factory = {"device": device, "dtype": dtype}

    def conv(c_in: int) -> list[nn.Module]:
        return [NTKConv2d(c_in, width, 3, padding="same", weight_std=config.weight_std,
                          bias_std=config.bias_std, **factory), nn.ReLU()]
    layers = (conv(1) + conv(width) + [nn.AvgPool2d(2)] + conv(width) + [nn.AvgPool2d(2)]
              + conv(width) + [nn.AvgPool2d(2), nn.Flatten(),
                               NTKLinear(width, CLASSES, bias_std=config.bias_std, **factory)])
    return nn.Sequential(*layers)


def data(config: Config) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """Standardized images [1797, 1, 8, 8] float64, labels [1797], the test indices
    [test] and per draw the indices of its training images [sizes[-1]] (the first n of
    them are the training set of size n)."""
    images, labels = standardized_digits()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(
        derive_seed(config.seed, NAME, "test")))
    test, pool = order[: config.test], order[config.test:]
    draws = []
    for d in range(config.draws):
        g = torch.Generator().manual_seed(derive_seed(config.seed, NAME, "draw", d))
        draws.append(pool[torch.randperm(len(pool), generator=g)[: config.sizes[-1]]])
    return images, labels, test, draws


def kernels(config: Config, images: Tensor, train: Tensor, test: Tensor, device: torch.device,
            watch: Stopwatch, progress: bool) -> dict[str, tuple[Tensor, Tensor]]:
    """Per kernel method (K(X, X) [P, P], K(X_test, X) [T, P]) float64 on the P images
    ``train`` and the T images ``test`` (indices into ``images``)."""
    dtype = DTYPES[config.kernel_dtype]
    x = images[train].to(device, dtype)
    x_test = images[test].to(device, dtype)
    out: dict[str, tuple[Tensor, Tensor]] = {}
    mlp = mlp_spec([64] + [1] * config.depth + [CLASSES], "relu", weight_std=config.weight_std,
                   bias_std=config.bias_std)
    models = {"cntk-gap": cnn(config, 1, "gap"), "cntk-flatten": cnn(config, 1, "flatten"),
              "cntk-resnet": resnet(config, 1), "myrtle-5": myrtle(config, 1)}
    for name in with_progress(list(models) + ["mlp"], "cntk-digits kernels", enabled=progress):
        with watch(f"kernel {name}"):
            if name == "mlp":
                flat, flat_test = x.flatten(1), x_test.flatten(1)
                train_k = analytic_kernels(mlp, flat)
                test_k = analytic_kernels(mlp, flat_test, flat)
                out["mlp-ntk"] = (train_k.ntk.double().cpu(), test_k.ntk.double().cpu())
                out["mlp-nngp"] = (train_k.nngp.double().cpu(), test_k.nngp.double().cpu())
            else:
                train_k = analytic_kernels(models[name], x, get="ntk").ntk
                test_k = analytic_kernels(models[name], x_test, x, get="ntk").ntk
                out[name] = (train_k.double().cpu(), test_k.double().cpu())
    return out


def kernel_accuracy(k_train: Tensor, k_test: Tensor, y_train: Tensor, y_test: Tensor,
                    ridge: float) -> float:
    """Test accuracy of kernel regression on one-hot targets: argmax of
    K(X_test, X) (K(X, X) + ridge·mean(diag K)·I)⁻¹ Y against ``y_test``."""
    onehot = nn.functional.one_hot(y_train, CLASSES).double()
    reg = ridge * float(k_train.diagonal().mean())
    mean = gp_inference(k_train, onehot, diag_reg=reg)(k_test).test.mean
    return float((mean.argmax(1) == y_test).double().mean())


def train_cnn(config: Config, width: int, x: Tensor, y: Tensor, x_test: Tensor, y_test: Tensor,
              seed: int) -> dict[str, float]:
    """Train a fresh width-``width`` CNN (GAP readout) with Adam on the cross-entropy;
    return its final training loss and accuracy and its test accuracy."""
    with seeded(seed):
        model = cnn(config, width, "gap", device=x.device, dtype=x.dtype)
        n = x.shape[0]
        steps_per_epoch = math.ceil(n / config.batch)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, config.epochs * steps_per_epoch)
        for _ in range(config.epochs):
            order = torch.randperm(n, device=x.device)
            for i in range(steps_per_epoch):
                idx = order[i * config.batch:(i + 1) * config.batch]
                opt.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
                sched.step()
    with torch.no_grad():
        logits = model(x)
        return {"train_loss": float(nn.functional.cross_entropy(logits, y)),
                "train_accuracy": float((logits.argmax(1) == y).double().mean()),
                "accuracy": float((model(x_test).argmax(1) == y_test).double().mean())}


def run(config: Config = Config(), out: Optional[Union[str, os.PathLike]] = None,
        progress: bool = False) -> dict[str, Any]:
    """Run the experiment; return the JSON payload and write cntk-digits.{json,png} into
    ``out``.

    Raises:
        ImportError: scikit-learn is not installed (``pip install 'torch-ntk[digits]'``).
    """
    device = resolve_device(config.device)
    watch = Stopwatch()
    load_before, cpu_before = os.getloadavg()[0], time.process_time()
    images, labels, test, draws = data(config)
    union = torch.unique(torch.cat(draws))            # sorted indices of all training images
    where = {int(i): j for j, i in enumerate(union)}  # image index → row of the kernels
    grams = kernels(config, images, union, test, device, watch, progress)
    y_test = labels[test]
    methods = list(KERNEL_METHODS) + [f"cnn-{w}" for w in config.widths]
    acc = {m: [[math.nan] * config.draws for _ in config.sizes] for m in methods}
    trained: dict[str, Any] = {f"cnn-{w}": [[None] * config.draws for _ in config.sizes]
                               for w in config.widths}
    dtype = DTYPES[config.dtype]
    x_test = images[test].to(device, dtype)
    y_test_d = y_test.to(device)
    with watch("kernel regression"):
        for s, n in enumerate(config.sizes):
            for d, order in enumerate(draws):
                rows = torch.tensor([where[int(i)] for i in order[:n]])
                for m in KERNEL_METHODS:
                    k_train, k_test = grams[m]
                    acc[m][s][d] = kernel_accuracy(k_train[rows][:, rows], k_test[:, rows],
                                                   labels[order[:n]], y_test, config.ridge)
    for w in config.widths:
        with watch(f"cnn-{w}"):
            jobs = [(s, d) for s in range(len(config.sizes)) for d in range(config.draws)]
            for s, d in with_progress(jobs, f"cntk-digits width {w}", enabled=progress):
                index = draws[d][: config.sizes[s]]
                result = train_cnn(config, w, images[index].to(device, dtype),
                                   labels[index].to(device), x_test, y_test_d,
                                   derive_seed(config.seed, NAME, "cnn", w, config.sizes[s], d))
                acc[f"cnn-{w}"][s][d] = result["accuracy"]
                trained[f"cnn-{w}"][s][d] = result
    summary: dict[str, Any] = {"sizes": list(config.sizes), "test": config.test,
                               "chance": 1 / CLASSES, "training": "Adam, cross-entropy",
                               # the machine's 1-minute load average at the start and the
                               # end, and this process's CPU seconds: run times on a shared
                               # machine mean little without them
                               "load_average": [load_before, os.getloadavg()[0]],
                               "cpu_seconds": time.process_time() - cpu_before,
                               "methods": {}}
    for m in methods:
        t = torch.tensor(acc[m], dtype=torch.float64)
        spread = t.std(1) if config.draws > 1 else torch.full((len(config.sizes),), math.nan)
        summary["methods"][m] = {"mean": t.mean(1), "std": spread}
    results = {"accuracy": acc, "trained": trained, "test_indices": test,
               "train_indices": torch.stack(draws)}
    return finish(NAME, config, device, results, summary, watch, out, draw)


def draw(payload: dict[str, Any]):
    """Test accuracy against the training-set size (log x), one line per method with a
    band of ± one standard deviation over the draws."""
    summary, cfg = payload["summary"], payload["config"]
    fig, (ax,) = new_figure(7.5, 5.0)
    if fig is None:
        return None
    sizes = summary["sizes"]
    for k, (m, s) in enumerate(summary["methods"].items()):
        style = "-o" if m in KERNEL_METHODS else "--s"
        mean = [math.nan if v is None else v for v in s["mean"]]
        std = [0.0 if v is None else v for v in s["std"]]
        ax.plot(sizes, mean, style, color=f"C{k}", ms=4, label=m)
        ax.fill_between(sizes, [a - b for a, b in zip(mean, std)],
                        [a + b for a, b in zip(mean, std)], color=f"C{k}", alpha=0.15)
    ax.axhline(summary["chance"], color="k", lw=0.8, ls=":", label="chance")
    ax.set_xscale("log")
    ax.set_xticks(sizes, labels=[str(n) for n in sizes])
    ax.set_xticks([], minor=True)
    ax.set(xlabel="training images n", ylabel=f"test accuracy ({summary['test']} images)",
           title=(f"8×8 digits: kernel regression vs trained CNNs ({cfg['depth']} conv layers, "
                  f"{cfg['draws']} draws)"))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small", loc="lower right")
    return fig


def report(payload: dict[str, Any]) -> list[str]:
    """The lines ``torch-ntk reproduce cntk-digits`` prints: a table of mean ± std test
    accuracy per method (rows) and training-set size (columns)."""
    summary = payload["summary"]
    sizes = summary["sizes"]
    lines = [f"test accuracy on {summary['test']} held-out digits (mean ± std over draws; "
             f"CNNs: {summary['training']}):",
             f"{'method':>13} " + " ".join(f"{f'n = {n}':>13}" for n in sizes)]
    for m, s in summary["methods"].items():
        cells = []
        for mean, std in zip(s["mean"], s["std"]):
            cells.append(f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}")
        lines.append(f"{m:>13} " + " ".join(f"{c:>13}" for c in cells))
    return lines
