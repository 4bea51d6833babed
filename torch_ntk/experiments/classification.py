"""Classifiers trained with cross-entropy against kernel gradient descent (Jacot et al. §3).

For a non-quadratic cost, wide networks still follow kernel gradient descent
∂_t f = −η Θ ∇_f C (the paper's §3; its Thm. 2 for any cost), now integrated by an ODE
solver (:func:`torch_ntk.predict.gradient_descent`, no closed form). Data: a few classes
of **scikit-learn's bundled 8×8 digits** (the ``digits`` extra, no download), every image
standardized on its own (‖x‖² = 64), ``train_per_class`` training and ``test_per_class``
test images per class.

Networks: ``depth`` ReLU hidden layers of width w (NTK parametrization, σ_w = ``weight_std``,
β = ``bias_std``), one logit per class, trained by full-batch gradient descent (``steps``
steps of learning rate η) on the mean softmax cross-entropy, ``inits`` initializations per
width. η = ``lr_fraction`` · 2N/λ_max(Θ∞) (the largest stable MSE step, scaled).

Kernel predictions, from each network's own initial function f_0 (train and test):

- ``theta0``: the full empirical NTK Θ₀ [N, N, C, C] at initialization
  (:func:`torch_ntk.empirical_ntk`): the network's linearization;
- ``theta_inf``: the limiting NTK Θ∞ [N, N] (⊗ Id over logits,
  :func:`torch_ntk.analytic_kernels`);

both in continuous time t = step. Per recorded step, on the test images: the **logit gap**
(RMS over images and logits of f_net − f_kernel), the **accuracy gap**
|acc_net − acc_kernel| and the **disagreement** (fraction of images whose argmax differs,
an upper bound of the accuracy gap).
``floor`` is the logit gap between *discrete* kernel gradient descent with Θ₀ (the
linearized network trained by the same steps) and its flow: the part of the Θ₀ gap that
comes from the steps' discretization rather than from finite width.

What it shows (``classification.json`` summary): per width the mean over inits of the
final and the largest-over-time gaps, and the fitted slopes of log gap against log width
(−1/2 is the 1/√w of the kernel's fluctuations).

Run it with ``torch-ntk reproduce classification`` (``--quick`` for fewer widths, inits
and steps).
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Union

import torch
from torch import Tensor, nn

from ..analytic.kernels import analytic_kernels
from ..lifting.lift import mlp_spec
from ..empirical.ntk import empirical_ntk
from ..nn import ntk_mlp
from ..predict import gradient_descent, max_learning_rate
from .common import (
    DTYPES, Stopwatch, check_positive, derive_seed, finish, fmt, loglog_slope, new_figure,
    resolve_device, seeded, with_progress,
)
from .figure3 import digits_available, load_digits

NAME = "classification"
KERNELS = ("theta0", "theta_inf")
LABELS = {"theta0": "Θ₀ (empirical, init)", "theta_inf": "Θ∞ (limit)"}
EXTRA_HINT = ("classification uses scikit-learn's bundled handwritten digits (no download) "
              "and torchdiffeq: pip install 'torch-ntk[digits,ode]'")


def missing_requirements() -> Optional[str]:
    """What to install before the experiment can run, or None when nothing is missing."""
    try:
        import torchdiffeq  # noqa: F401
    except ImportError:
        return EXTRA_HINT
    return None if digits_available() else EXTRA_HINT


@dataclass(frozen=True)
class Config:
    """Settings of the cross-entropy classification experiment."""

    classes: tuple[int, ...] = (3, 5, 8, 9)          # digits used (labels 0 … C−1 in order)
    train_per_class: int = 25
    test_per_class: int = 50
    depth: int = 2                                   # ReLU hidden layers
    widths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048)
    inits: int = 4                                   # networks per width
    steps: int = 400                                 # full-batch GD steps
    records: int = 8                                 # recorded times (plus t = 0)
    lr_fraction: float = 0.5                         # η = lr_fraction · 2N/λ_max(Θ∞)
    weight_std: float = math.sqrt(2.0)
    bias_std: float = 0.1
    rtol: float = 1e-8                               # of the ODE solver (float64)
    dtype: str = "float32"                           # of the trained networks
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive(self, "train_per_class", "test_per_class", "depth", "widths", "inits",
                       "steps", "records")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes) or \
                not all(isinstance(c, int) and 0 <= c <= 9 for c in self.classes):
            raise ValueError(f"classes must be at least two distinct digits 0-9; got "
                             f"{self.classes!r}")
        if self.train_per_class + self.test_per_class > 170:
            raise ValueError(f"train_per_class + test_per_class must be at most 170 (the "
                             f"rarest digit has 174 images); got {self.train_per_class} + "
                             f"{self.test_per_class}")
        if list(self.widths) != sorted(set(self.widths)):
            raise ValueError(f"widths must be increasing; got {self.widths!r}")
        if self.records > self.steps:
            raise ValueError(f"records must be at most steps ({self.steps}); got {self.records}")
        if not 0 < self.lr_fraction <= 1 or not 0 < self.rtol < 1:
            raise ValueError(f"lr_fraction must be in (0, 1] and rtol in (0, 1); got "
                             f"{self.lr_fraction}, {self.rtol}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {self.dtype!r}")


QUICK = {"widths": (64, 256, 1024), "inits": 2, "steps": 200}


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch threads: the ODE solver's many small products
    run fastest on one thread (and are not slowed by other jobs on a shared machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def data(config: Config) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Standardized images x [N, 64], labels [N] in 0 … C−1, and likewise the test set
    (float64, sorted by class; N = C · train_per_class)."""
    pixels, digits = load_digits()
    pixels = pixels - pixels.mean(1, keepdim=True)
    images = pixels / pixels.std(1, correction=0, keepdim=True)
    g = torch.Generator().manual_seed(derive_seed(config.seed, NAME, "data"))
    parts: dict[str, list[Tensor]] = {"x": [], "y": [], "x_test": [], "y_test": []}
    for label, digit in enumerate(config.classes):
        rows = (digits == digit).nonzero().flatten()
        rows = rows[torch.randperm(len(rows), generator=g)]
        train, test = rows[: config.train_per_class], rows[config.train_per_class:][
            : config.test_per_class]
        parts["x"].append(images[train])
        parts["x_test"].append(images[test])
        parts["y"].append(torch.full((len(train),), label))
        parts["y_test"].append(torch.full((len(test),), label))
    return tuple(torch.cat(parts[k]) for k in ("x", "y", "x_test", "y_test"))  # type: ignore


def record_steps(config: Config) -> list[int]:
    """0 and ``records`` evenly spaced steps up to ``steps``."""
    return sorted({round(config.steps * k / config.records) for k in range(config.records + 1)})


def train_network(model: nn.Module, x: Tensor, y: Tensor, x_test: Tensor, lr: float,
                  steps: list[int]) -> tuple[Tensor, Tensor]:
    """Full-batch gradient descent on the mean cross-entropy; logits on the training and
    test images at each recorded step ([R, N, C] and [R, M, C], float64)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    train, test = [], []
    for step in range(steps[-1] + 1):
        if step in steps:
            with torch.no_grad():
                train.append(model(x).double())
                test.append(model(x_test).double())
        if step == steps[-1]:
            break
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"the cross-entropy is {value} at step {step}; lower "
                                     "lr_fraction")
        loss.backward()
        opt.step()
    return torch.stack(train).cpu(), torch.stack(test).cpu()


def discrete_kernel_gd(k: Tensor, k_test: Tensor, onehot: Tensor, f0: Tensor, g0: Tensor,
                       lr: float, steps: list[int]) -> Tensor:
    """Test logits [R, M, C] of discrete kernel gradient descent with a full kernel
    k [N, N, C, C] (k_test [M, N, C, C]): f ← f − η K (softmax(f) − Y)/N, the linearized
    network trained by the same steps."""
    n = f0.shape[0]
    f, g, out = f0.clone(), g0.clone(), []
    for step in range(steps[-1] + 1):
        if step in steps:
            out.append(g.clone())
        grad = (torch.softmax(f, -1) - onehot) / n
        f = f - lr * torch.einsum("ijab,jb->ia", k, grad)
        g = g - lr * torch.einsum("ijab,jb->ia", k_test, grad)
    return torch.stack(out)


def gaps(net: Tensor, other: Tensor, y_test: Tensor) -> dict[str, list[float]]:
    """Per recorded step: RMS logit gap, |accuracy difference|, argmax disagreement."""
    rms = (net - other).square().mean((1, 2)).sqrt()
    acc_net = (net.argmax(-1) == y_test).double().mean(1)
    acc_other = (other.argmax(-1) == y_test).double().mean(1)
    disagree = (net.argmax(-1) != other.argmax(-1)).double().mean(1)
    return {"logit": rms.tolist(), "accuracy": (acc_net - acc_other).abs().tolist(),
            "disagreement": disagree.tolist(), "kernel_accuracy": acc_other.tolist()}


def run(config: Config = Config(), out: Optional[Union[str, os.PathLike]] = None,
        progress: bool = False) -> dict[str, Any]:
    """Run the experiment; return the JSON payload and write classification.{json,png}
    into ``out``.

    Raises:
        ImportError: scikit-learn or torchdiffeq is not installed
            (``pip install 'torch-ntk[digits,ode]'``).
    """
    device = resolve_device(config.device)
    watch = Stopwatch()
    x, y, x_test, y_test = data(config)
    classes, n = len(config.classes), len(y)
    steps = record_steps(config)
    times = torch.tensor(steps, dtype=torch.float64)
    onehot = nn.functional.one_hot(y, classes).double()
    spec = mlp_spec([64] + [1] * config.depth + [classes], "relu",
                    weight_std=config.weight_std, bias_std=config.bias_std)
    with watch("kernel inf"):
        k_inf = analytic_kernels(spec, x.to(device), get="ntk").ntk.double().cpu()
        k_inf_test = analytic_kernels(spec, x_test.to(device), x.to(device),
                                      get="ntk").ntk.double().cpu()
    lr = config.lr_fraction * max_learning_rate(k_inf)
    dtype = DTYPES[config.dtype]
    results: dict[str, Any] = {"steps": steps, "lr": lr, "widths": {},
                               "load_average_start": list(os.getloadavg())}
    jobs = [(w, i) for w in config.widths for i in range(config.inits)]
    for w, i in with_progress(jobs, "classification networks", enabled=progress):
        with seeded(derive_seed(config.seed, NAME, "init", w, i)):
            model = ntk_mlp([64] + [w] * config.depth + [classes], "relu",
                            weight_std=config.weight_std, bias_std=config.bias_std,
                            device=device, dtype=dtype)
        xd, x_testd = x.to(device, dtype), x_test.to(device, dtype)
        with watch("kernel theta0"):
            k0 = empirical_ntk(model, xd, mode="full").double().cpu()
            k0_test = empirical_ntk(model, x_testd, xd, mode="full").double().cpu()
        with watch("train"):
            f_net, g_net = train_network(model, xd, y.to(device), x_testd, lr, steps)
        f0, g0 = f_net[0], g_net[0]
        run_gaps: dict[str, Any] = {"net_accuracy": (g_net.argmax(-1) == y_test).double()
                                    .mean(1).tolist(),
                                    "net_motion": (g_net - g0).square().mean((1, 2)).sqrt()
                                    .tolist()}
        with watch("kernel flow"), torch_threads(1):
            flows = {}
            for name, (k, kt) in {"theta0": (k0, k0_test),
                                  "theta_inf": (k_inf, k_inf_test)}.items():
                predict = gradient_descent("cross_entropy", k, y, learning_rate=lr,
                                           rtol=config.rtol, atol=config.rtol * 1e-2)
                flows[name] = predict(times, f0, g0, kt).test
                run_gaps[name] = gaps(g_net, flows[name], y_test)
            flow = flows["theta0"]
            discrete = discrete_kernel_gd(k0, k0_test, onehot, f0, g0, lr, steps)
            run_gaps["floor"] = (discrete - flow).square().mean((1, 2)).sqrt().tolist()
        results["widths"].setdefault(str(w), []).append(run_gaps)
    summary = summarize(config, results)
    results["test_labels"] = y_test
    results["load_average_end"] = list(os.getloadavg())  # the machine may be shared
    return finish(NAME, config, device, results, summary, watch, out, draw)


def summarize(config: Config, results: dict[str, Any]) -> dict[str, Any]:
    """Mean over inits per width of the final and the largest gaps, and log-log slopes."""
    out: dict[str, Any] = {"widths": {}, "slopes": {}, "lr": results["lr"],
                           "steps": results["steps"],
                           "train": config.train_per_class * len(config.classes),
                           "test": config.test_per_class * len(config.classes)}
    for w in config.widths:
        runs = results["widths"][str(w)]

        def mean(values: list[float]) -> float:
            return float(sum(values) / len(values))

        row: dict[str, float] = {
            "net_accuracy": mean([r["net_accuracy"][-1] for r in runs]),
            "net_motion": mean([r["net_motion"][-1] for r in runs]),
            "floor": mean([r["floor"][-1] for r in runs]),
        }
        for k in KERNELS:
            row[f"{k}_logit"] = mean([r[k]["logit"][-1] for r in runs])
            row[f"{k}_logit_max"] = mean([max(r[k]["logit"]) for r in runs])
            row[f"{k}_accuracy"] = mean([r[k]["accuracy"][-1] for r in runs])
            row[f"{k}_disagreement"] = mean([r[k]["disagreement"][-1] for r in runs])
            row[f"{k}_kernel_accuracy"] = mean([r[k]["kernel_accuracy"][-1] for r in runs])
        out["widths"][str(w)] = row
    for k in KERNELS:
        for what in ("logit", "logit_max", "disagreement"):
            out["slopes"][f"{k}_{what}"] = loglog_slope(
                list(config.widths), [out["widths"][str(w)][f"{k}_{what}"]
                                      for w in config.widths])
    return out


def draw(payload: dict[str, Any]):
    """(a) test logit gap over training per width (solid Θ₀, dashed Θ∞, dotted the
    discretization floor); (b) final gaps against width with the fitted slopes;
    (c) argmax disagreement over training."""
    summary, results, cfg = payload["summary"], payload["results"], payload["config"]
    fig, (ax_t, ax_w, ax_d) = new_figure(15.0, 4.6, panels=3)
    if fig is None:
        return None
    steps = results["steps"]
    widths = cfg["widths"]

    def mean_curve(w: int, kernel: str, key: str) -> list[float]:
        runs = results["widths"][str(w)]
        curves = [r[kernel][key] if kernel != "floor" else r["floor"] for r in runs]
        return [sum(c[s] for c in curves) / len(curves) for s in range(len(steps))]

    for j, w in enumerate(widths):
        color = f"C{j}"
        ax_t.plot(steps[1:], mean_curve(w, "theta0", "logit")[1:], "-o", ms=3, color=color,
                  label=f"w = {w}")
        ax_t.plot(steps[1:], mean_curve(w, "theta_inf", "logit")[1:], "--", color=color)
        ax_t.plot(steps[1:], mean_curve(w, "floor", "")[1:], ":", color=color, lw=1)
        ax_d.plot(steps, mean_curve(w, "theta0", "disagreement"), "-o", ms=3, color=color,
                  label=f"w = {w}")
        ax_d.plot(steps, mean_curve(w, "theta_inf", "disagreement"), "--", color=color)
    ax_t.set(yscale="log", xlabel="gradient-descent step t",
             ylabel="test logit gap (RMS)",
             title="network − kernel flow (— Θ₀, -- Θ∞, ⋯ floor)")
    ax_t.legend(fontsize="small")
    ax_d.set(xlabel="gradient-descent step t", ylabel="test argmax disagreement",
             title="test digits classified differently (— Θ₀, -- Θ∞)")
    rows = summary["widths"]
    for k, marker in zip(KERNELS, ("o", "s")):
        ys = [rows[str(w)][f"{k}_logit"] for w in widths]
        slope = summary["slopes"][f"{k}_logit"]
        ax_w.plot(widths, ys, f"-{marker}", label=f"{LABELS[k]}: slope {fmt(slope, '.2f')}")
    ax_w.plot(widths, [rows[str(w)]["floor"] for w in widths], ":", color="gray",
              label="discretization floor (Θ₀)")
    ax_w.set(xscale="log", yscale="log", xlabel="width w",
             ylabel=f"test logit gap at t = {steps[-1]}",
             title=f"gap against width ({cfg['inits']} inits each)")
    ax_w.legend(fontsize="small")
    for ax in (ax_t, ax_w, ax_d):
        ax.grid(alpha=0.3, which="both")
    return fig


def render_classification(payload: dict[str, Any]) -> str:
    """A markdown table of the final gaps per width and the fitted slopes."""
    summary = payload["summary"]
    t = summary["steps"][-1]
    lines = ["| width | net test acc. | net logit change | logit gap Θ₀ | logit gap Θ∞ | "
             "floor (Θ₀ steps vs flow) | acc. gap Θ₀ | acc. gap Θ∞ | disagreement Θ₀ | "
             "disagreement Θ∞ |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for w, r in summary["widths"].items():
        lines.append(
            f"| {w} | {r['net_accuracy']:.3f} | {r['net_motion']:.3f} | "
            f"{r['theta0_logit']:.4f} | {r['theta_inf_logit']:.4f} | {r['floor']:.4f} | "
            f"{r['theta0_accuracy']:.3f} | "
            f"{r['theta_inf_accuracy']:.3f} | {r['theta0_disagreement']:.3f} | "
            f"{r['theta_inf_disagreement']:.3f} |")
    s = summary["slopes"]
    lines.append(f"| slope vs log w | | | {fmt(s['theta0_logit'], '.2f')} | "
                 f"{fmt(s['theta_inf_logit'], '.2f')} | | | | "
                 f"{fmt(s['theta0_disagreement'], '.2f')} | "
                 f"{fmt(s['theta_inf_disagreement'], '.2f')} |")
    return "\n".join(lines) + (
        f"\n\nOn the {summary['test']} test digits at t = {t} steps, mean over inits: logit "
        "gaps are RMS over digits and logits of f_net − f_kernel; net logit change is the RMS "
        "of f_net(t) − f_0, the scale they compare to.")


def report(payload: dict[str, Any]) -> list[str]:
    """The lines ``torch-ntk reproduce classification`` prints."""
    summary = payload["summary"]
    lines = [f"{summary['train']} training / {summary['test']} test digits, η = "
             f"{summary['lr']:.4g}, t = {summary['steps'][-1]} steps; test logit gap (RMS) "
             "network − kernel flow, mean over inits:",
             f"{'width':>7} {'net acc':>8} {'gap Θ0':>9} {'gap Θinf':>9} {'floor':>9} "
             f"{'disagree Θ0':>12} {'disagree Θinf':>14}"]
    for w, r in summary["widths"].items():
        lines.append(f"{w:>7} {r['net_accuracy']:>8.3f} {r['theta0_logit']:>9.4f} "
                     f"{r['theta_inf_logit']:>9.4f} {r['floor']:>9.4f} "
                     f"{r['theta0_disagreement']:>12.3f} {r['theta_inf_disagreement']:>14.3f}")
    s = summary["slopes"]
    lines.append(f"slope of log gap vs log width: Θ0 {fmt(s['theta0_logit'], '.2f')}, "
                 f"Θinf {fmt(s['theta_inf_logit'], '.2f')}")
    return lines
