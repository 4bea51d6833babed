"""Figure 3 of Jacot et al. (2018), §6: kernel principal components of handwritten digits,
and training along one of them.

Data: the paper uses a batch of N = 512 MNIST digits. MNIST cannot be downloaded here,
so this uses **scikit-learn's bundled handwritten digits** (1797 images of 8×8 pixels,
n0 = 64, UCI "optdigits"; installed with the optional extra
``pip install 'torch-ntk[digits]'``, no download at run time). A random batch of N
digits is scaled so that every image has ‖x‖² = n0.

(a) Kernel PCA. Θ is the empirical NTK of one wide network (depth 4, ReLU, NTK
parametrization, β = 0.1, width 10000 as in the paper: "an approximation of the
limiting kernel"; ``kernel="analytic"`` uses Θ∞ itself). Its eigenpairs K u_i = λ_i u_i
on the batch are the kernel principal components; the paper reports the eigenvalues of
the operator f ↦ (1/N) Σ_j Θ(·, x_j) f(x_j), i.e. λ_i/N. The PCA is not centred, so the
first component is nearly constant and captures by far the largest share; the batch is
drawn in the plane of the 2nd and 3rd components, coloured by digit.

(b, c) Training along a component. Networks of several widths are trained by full-batch
gradient descent towards f* = f_0 + s·u_c (their own initial function plus a multiple
s = √N of the c-th component, c = 2). In the infinite-width limit the function then
moves on a straight line, f_t − f_0 = (1 − e^{−ηtλ_c/N}) s·u_c (Jacot et al. §5); a
finite network deviates from it. Per recorded step: ``along`` = ⟨f_t − f_0, u_c⟩/s
(the prediction 1 − e^{−ηtλ_c/N}) and ``deviation`` = ‖f_t − f_0 − along·s·u_c‖/s
(0 on the line). The learning rate defaults to N/λ_1, half the largest stable one, and
the number of steps to the time where the predicted residual is e^{−4} of its start.

What it shows (``figure3.json`` summary): ``shares`` (λ_i / Σ_j λ_j, the first
largest), ``constant_overlap`` (|⟨u_1, 1/√N⟩|, near 1), ``operator_eigenvalues``
(λ_i/N, the paper's numbers), ``kernel_vs_limit`` (‖Θ − Θ∞‖/‖Θ∞‖ of the wide
network), and per training width ``max_deviation`` (smaller for wider networks) and
``along_error`` (the largest gap to the predicted exponential).

Run it with ``torch-ntk reproduce figure3`` (``--quick`` for a smaller batch and widths).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch

from ..analytic.kernels import analytic_kernels
from ..lifting.lift import mlp_spec
from ..empirical.ntk import empirical_ntk
from ..nn import ntk_mlp
from ..predict import kernel_pca
from .common import (
    DTYPES, Stopwatch, check_positive, derive_seed, finish, new_figure, with_progress, rel_norm,
    resolve_device, seeded, train_gd,
)

NAME = "figure3"
KERNELS = ("empirical", "analytic")
EXTRA_HINT = ("figure3 uses scikit-learn's bundled handwritten digits (no download), an "
              "optional dependency: pip install 'torch-ntk[digits]' (or pip install scikit-learn)")


def digits_available() -> bool:
    """Whether scikit-learn (the ``digits`` extra) can be imported."""
    try:
        import sklearn.datasets  # noqa: F401
    except ImportError:
        return False
    return True


def missing_requirements() -> Optional[str]:
    """What to install before figure 3 can run, or None when nothing is missing."""
    return None if digits_available() else EXTRA_HINT


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 handwritten digits: images [1797, 64] float64 in [0, 16] and
    labels [1797] int64.

    Raises:
        ImportError: scikit-learn is not installed (the message names the extra).
    """
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as error:
        raise ImportError(EXTRA_HINT) from error
    data = sk_load_digits()
    return torch.as_tensor(data.data, dtype=torch.float64), torch.as_tensor(data.target)


@dataclass(frozen=True)
class Config:
    """Settings of figure 3 (defaults: the paper's where it states them)."""

    digits: int = 512                                  # N, the batch size of the PCA
    depth: int = 4
    kernel_width: int = 10000                          # the wide network whose NTK is used
    kernel: str = "empirical"                          # or "analytic" (Θ∞)
    train_widths: tuple[int, ...] = (100, 1000, 10000)
    inits: int = 1                                     # networks trained per width
    component: int = 2                                 # c: train along u_c
    steps: Optional[int] = None                        # None: until e^{−ηtλ_c/N} = e^{−4}
    lr: Optional[float] = None                         # None: N/λ_1 (half the stable maximum)
    record_every: Optional[int] = None                 # None: about 60 records
    bias_std: float = 0.1
    dtype: str = "float32"                             # of the trained networks
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive(self, "digits", "depth", "kernel_width", "train_widths", "inits",
                       "component")
        if self.record_every is not None:
            check_positive(self, "record_every")
        if self.depth < 2:
            raise ValueError(f"depth must be at least 2 (one hidden layer); got {self.depth}")
        if self.digits < 3 or self.digits > 1797:
            raise ValueError(f"digits must be between 3 and 1797 (the data set); got {self.digits}")
        if self.component > min(self.digits, 10):
            raise ValueError(f"component must be at most {min(self.digits, 10)}; got {self.component}")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}; got {self.kernel!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 0):
            raise ValueError(f"steps must be a non-negative integer (or None); got {self.steps!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be positive (or None for automatic); got {self.lr!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {self.dtype!r}")


QUICK = {"digits": 128, "kernel_width": 2000, "train_widths": (50, 500, 2000)}


def batch(config: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """The N digits of the run: inputs [N, 64] float64 with ‖x‖² = 64, labels [N]."""
    images, labels = load_digits()
    g = torch.Generator().manual_seed(derive_seed(config.seed, NAME, "batch"))
    index = torch.randperm(images.shape[0], generator=g)[: config.digits]
    x = images[index]
    x = x / x.norm(dim=1, keepdim=True) * math.sqrt(x.shape[1])
    return x, labels[index]


def run(config: Config = Config(), out: Optional[Union[str, os.PathLike]] = None,
        progress: bool = False) -> dict[str, Any]:
    """Run figure 3; return the JSON payload and write figure3.{json,png} into ``out``.

    Raises:
        ImportError: scikit-learn is not installed (``pip install 'torch-ntk[digits]'``).
    """
    device = resolve_device(config.device)
    watch = Stopwatch()
    f64 = torch.float64
    x, labels = batch(config)
    n, n0 = x.shape
    spec = mlp_spec([n0] + [1] * (config.depth - 1) + [1], "relu", bias_std=config.bias_std)

    with watch("kernel"):
        limit = analytic_kernels(spec, x, get="ntk").ntk
        if config.kernel == "empirical":
            widths = [n0] + [config.kernel_width] * (config.depth - 1) + [1]
            with seeded(derive_seed(config.seed, NAME, "kernel network")):
                wide = ntk_mlp(widths, "relu", bias_std=config.bias_std, device=device, dtype=f64)
            kernel = empirical_ntk(wide, x.to(device), mode="trace", progress=progress).cpu()
            del wide
        else:
            kernel = limit
    with watch("pca"):
        pca = kernel_pca(kernel)
        pca_limit = kernel_pca(limit, 10)
        values = pca.eigenvalues
        shares = values / values.sum()
        u = pca.eigenvectors[:, :10]
        constant = torch.full((n,), 1 / math.sqrt(n), dtype=f64)
    lr = config.lr if config.lr is not None else n / float(values[0])
    c = config.component - 1
    lam_c = float(values[c])
    direction = u[:, c]
    scale = math.sqrt(n)

    steps = config.steps
    if steps is None:
        steps = math.ceil(4 * n / (lr * lam_c)) if lam_c > 0 else 100
    every = config.record_every or max(1, steps // 60)
    record_steps = list(range(0, steps + 1, every))
    if record_steps[-1] != steps:
        record_steps.append(steps)
    predicted = [1 - math.exp(-lr * t * lam_c / n) for t in record_steps]
    dtype = DTYPES[config.dtype]
    x_d, dir_d = x.to(device, dtype), direction.to(device, dtype)
    results: dict[str, Any] = {
        "labels": labels, "coordinates": (u[:, 1:3] * scale).T, "record_steps": record_steps,
        "predicted_along": predicted, "widths": {},
    }
    summary: dict[str, Any] = {
        "digits": n, "kernel": config.kernel, "lr": lr, "steps": steps,
        "max_stable_lr": 2 * n / float(values[0]),
        "operator_eigenvalues": (values[:10] / n), "shares": shares[:10],
        "limit_operator_eigenvalues": pca_limit.eigenvalues / n,
        "constant_overlap": abs(float(u[:, 0] @ constant)),
        "kernel_vs_limit": rel_norm(kernel, limit) if config.kernel == "empirical" else 0.0,
        "component": config.component, "widths": {},
    }
    for width in config.train_widths:
        widths = [n0] + [width] * (config.depth - 1) + [1]
        along_runs, deviation_runs, losses = [], [], []
        with watch(f"width {width}"):
            for i in with_progress(range(config.inits), f"figure3 width {width}",
                                   enabled=progress and config.inits > 1):
                with seeded(derive_seed(config.seed, NAME, width, i)):
                    model = ntk_mlp(widths, "relu", bias_std=config.bias_std, device=device,
                                    dtype=dtype)
                with torch.no_grad():
                    f0 = model(x_d)[:, 0]
                y = (f0 + scale * dir_d)[:, None]
                along, deviation = [], []

                def record(step: int) -> None:
                    with torch.no_grad():
                        moved = (model(x_d)[:, 0] - f0).double().cpu()
                    a = float(moved @ direction) / scale
                    along.append(a)
                    deviation.append(float((moved - a * scale * direction).norm()) / scale)

                curve = train_gd(model, x_d, y, steps, lr, progress=progress,
                                 desc=f"figure3 width {width} init {i}",
                                 every=every, callback=record)
                if steps % every:
                    record(steps)
                along_runs.append(along)
                deviation_runs.append(deviation)
                losses.append(curve[-1])
                del model
        a_mean = torch.tensor(along_runs, dtype=f64).mean(0)
        d_mean = torch.tensor(deviation_runs, dtype=f64).mean(0)
        summary["widths"][str(width)] = {
            "max_deviation": float(d_mean.max()),
            "final_along": float(a_mean[-1]),
            "predicted_final_along": predicted[-1],
            "along_error": float((a_mean - torch.tensor(predicted, dtype=f64)).abs().max()),
            "final_loss": sum(losses) / len(losses),
            "seconds": watch.seconds[f"width {width}"],
        }
        results["widths"][str(width)] = {"along": along_runs, "deviation": deviation_runs}
    return finish(NAME, config, device, results, summary, watch, out, draw)


def draw(payload: dict[str, Any]):
    """(a) the batch in the plane of components 2 and 3; (b) deviation from the straight
    line; (c) progress along the component against the predicted exponential."""
    res, summary, cfg = payload["results"], payload["summary"], payload["config"]
    fig, (ax_a, ax_b, ax_c) = new_figure(15.0, 4.4, 3)
    if fig is None:
        return None
    (c2, c3), labels = res["coordinates"], res["labels"]
    for digit in range(10):
        idx = [i for i, label in enumerate(labels) if label == digit]
        if not idx:
            continue
        xs, ys = [c2[i] for i in idx], [c3[i] for i in idx]
        ax_a.scatter(xs, ys, s=9, color=f"C{digit}", alpha=0.7)
        ax_a.annotate(str(digit), (sum(xs) / len(xs), sum(ys) / len(ys)), fontsize=13,
                      fontweight="bold", ha="center", va="center", color=f"C{digit}",
                      bbox={"boxstyle": "circle,pad=0.15", "fc": "white", "ec": f"C{digit}"})
    ev = summary["operator_eigenvalues"]
    ax_a.set(xlabel="2nd component", ylabel="3rd component", title=(
        f"(a) {summary['digits']} digits; λ/N = {ev[0]:.3g}, {ev[1]:.3g}, {ev[2]:.3g}"))

    c = summary["component"]
    steps = res["record_steps"]
    for k, (w, r) in enumerate(res["widths"].items()):
        for j, (a, d) in enumerate(zip(r["along"], r["deviation"])):
            label = f"n = {w}" if j == 0 else None
            ax_b.plot(a, d, ".-", color=f"C{k}", ms=3, lw=1, label=label)
            ax_c.plot(steps, a, color=f"C{k}", lw=1.2, label=label)
    ax_b.axhline(0, color="k", lw=2, ls="--", label="n = ∞ (straight line)")
    ax_b.set(xlabel=f"⟨f_t − f_0, u_{c}⟩ / s  (progress along component {c})",
             ylabel="distance from the line / s", title="(b) deviation from the straight line")
    ax_b.legend(fontsize="small")
    ax_c.plot(steps, res["predicted_along"], color="k", lw=2, ls="--",
              label="1 − exp(−ηtλ_c/N)  (n = ∞)")
    ax_c.set(xlabel="gradient-descent step t", ylabel=f"progress along component {c}",
             title=f"(c) convergence along component {c} (η = {summary['lr']:.3g})")
    ax_c.legend(fontsize="small")
    for ax in (ax_a, ax_b, ax_c):
        ax.grid(alpha=0.3)
    kernel = (f"empirical NTK of a width-{cfg['kernel_width']} network"
              if cfg["kernel"] == "empirical" else "infinite-width NTK Θ∞")
    fig.suptitle(f"Figure 3: kernel principal components of scikit-learn's 8×8 digits "
                 f"({kernel}, depth {cfg['depth']}) and training along component {c}")
    return fig


def report(payload: dict[str, Any]) -> list[str]:
    """The lines ``torch-ntk reproduce figure3`` prints."""
    cfg, summary = payload["config"], payload["summary"]
    ev = ", ".join(f"{v:.4g}" for v in summary["operator_eigenvalues"][:3])
    shares = ", ".join(f"{v:.3f}" for v in summary["shares"][:3])
    kernel = (f"empirical NTK of a width-{cfg['kernel_width']} network "
              f"(‖Θ − Θ∞‖/‖Θ∞‖ = {summary['kernel_vs_limit']:.3f})"
              if cfg["kernel"] == "empirical" else "Θ∞")
    c = summary["component"]
    lines = [f"kernel PCA of {summary['digits']} digits with the {kernel}:",
             f"  eigenvalues λ/N = {ev}; shares of the trace {shares}; |⟨u_1, 1/√N⟩| = "
             f"{summary['constant_overlap']:.4f}",
             f"training along component {c} for {summary['steps']} steps (lr {summary['lr']:.3g}):",
             f"{'width':>7} {'max deviation':>14} {'progress':>9} {'predicted':>10} {'max gap':>8}"]
    for w, s in summary["widths"].items():
        lines.append(f"{w:>7} {s['max_deviation']:>14.4f} {s['final_along']:>9.4f} "
                     f"{s['predicted_final_along']:>10.4f} {s['along_error']:>8.4f}")
    return lines
