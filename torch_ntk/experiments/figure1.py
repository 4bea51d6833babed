"""Figure 1 of Jacot et al. (2018), §6: the NTK converges to a fixed limit as width grows.

Networks of depth L = 4 (ReLU, NTK parametrization, β = 0.1, one output) and two
widths, 500 and 10000, each initialized 10 times. For x0 = (1, 0) and
x = (cos γ, sin γ), γ ∈ [−π, π], the empirical NTK Θ(x0, x) is computed at
initialization and after 200 steps of full-batch gradient descent (learning rate 1.0)
on the least-squares cost (1/2N) Σ (f(x_i) − x_i1 x_i2)² over N random N(0, 1) inputs
(the paper approximates f*(x) = x1 x2 and does not state N; here N = 32). The
infinite-width Θ∞(x0, x) is drawn for reference.

What it shows (summary keys in ``figure1.json``, per width):

- ``init_spread``: the spread of Θ_0(x0, ·) across initializations (mean over γ of the
  standard deviation over inits, relative to the mean of Θ∞) — smaller for the wider
  network: the kernel becomes deterministic (Thm. 1);
- ``init_error``: mean over inits of ‖Θ_0 − Θ∞‖/‖Θ∞‖, and ``mean_kernel_error`` the
  same for the average over inits (the expectation is close to Θ∞ at both widths);
- ``drift``: mean over inits of ‖Θ_T − Θ_0‖/‖Θ_0‖ — the kernel moves less during
  training at the larger width (Thm. 2), and ``inflation``, the mean relative change of
  Θ(x0, ·) (the paper notes the NTK "inflates" for the narrow network).

Run it with ``torch-ntk reproduce figure1`` (``--quick`` for smaller widths).
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
from ..predict import max_learning_rate
from .common import (
    DTYPES, Stopwatch, check_positive, circle, derive_seed, finish, fmt, new_figure,
    with_progress, rel_norm, resolve_device, seeded, train_gd,
)

NAME = "figure1"


@dataclass(frozen=True)
class Config:
    """Settings of figure 1 (defaults: the paper's where it states them)."""

    depth: int = 4                       # dense layers L
    widths: tuple[int, ...] = (500, 10000)
    inits: int = 10                      # initializations per width
    steps: int = 200                     # gradient-descent steps
    lr: float = 1.0
    bias_std: float = 0.1                # β
    train_points: int = 32               # N random N(0, 1) inputs, target x1·x2
    points: int = 201                    # angles γ on [−π, π] where Θ(x0, ·) is drawn
    dtype: str = "float32"               # of the networks (kernels compared in float64)
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive(self, "depth", "widths", "inits", "train_points", "points")
        if self.depth < 2:
            raise ValueError(f"depth must be at least 2 (one hidden layer); got {self.depth}")
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be a non-negative integer; got {self.steps!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive; got {self.lr!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {self.dtype!r}")


QUICK = {"widths": (100, 1000), "points": 101}


def run(config: Config = Config(), out: Optional[Union[str, os.PathLike]] = None,
        progress: bool = False) -> dict[str, Any]:
    """Run figure 1; return the JSON payload and write figure1.{json,png} into ``out``."""
    device = resolve_device(config.device)
    dtype = DTYPES[config.dtype]
    watch = Stopwatch()
    gamma = torch.linspace(-math.pi, math.pi, config.points, dtype=torch.float64)
    xs = circle(gamma)
    x0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(derive_seed(config.seed, NAME, "data"))
    x_train = torch.randn(config.train_points, 2, generator=g, dtype=torch.float64)
    y_train = (x_train[:, 0] * x_train[:, 1])[:, None]

    spec = mlp_spec([2] + [1] * (config.depth - 1) + [1], "relu", bias_std=config.bias_std)
    with watch("limit"):
        limit = analytic_kernels(spec, x0, xs, get="ntk").ntk[0]
        stable_lr = max_learning_rate(analytic_kernels(spec, x_train, get="ntk").ntk)

    dev = {"device": device, "dtype": dtype}
    x0_d, xs_d = x0.to(**dev), xs.to(**dev)
    xt_d, yt_d = x_train.to(**dev), y_train.to(**dev)
    results: dict[str, Any] = {
        "gamma": gamma, "limit": limit, "x_train": x_train, "y_train": y_train[:, 0],
        "max_stable_lr_limit": stable_lr, "widths": {},
    }
    summary: dict[str, Any] = {"max_stable_lr_limit": stable_lr, "widths": {}}
    for width in config.widths:
        widths = [2] + [width] * (config.depth - 1) + [1]
        theta0, theta_t, losses = [], [], []
        with watch(f"width {width}"):
            bar = with_progress(range(config.inits), f"figure1 width {width}", enabled=progress)
            for i in bar:
                with seeded(derive_seed(config.seed, NAME, width, i)):
                    model = ntk_mlp(widths, "relu", bias_std=config.bias_std, **dev)
                theta0.append(empirical_ntk(model, x0_d, xs_d, mode="trace", progress=False)[0])
                curve = train_gd(model, xt_d, yt_d, config.steps, config.lr, progress=progress,
                                 desc=f"width {width} init {i}")
                theta_t.append(empirical_ntk(model, x0_d, xs_d, mode="trace", progress=False)[0])
                losses.append(curve)
                del model
        t0 = torch.stack(theta0).double().cpu()
        tt = torch.stack(theta_t).double().cpu()
        mean_limit = float(limit.mean())

        def spread(k: torch.Tensor) -> float:  # undefined (None in JSON) for one init
            return float(k.std(0).mean() / mean_limit) if len(k) > 1 else math.nan

        row = {
            "init_spread": spread(t0),
            "trained_spread": spread(tt),
            "init_error": sum(rel_norm(k, limit) for k in t0) / len(t0),
            "mean_kernel_error": rel_norm(t0.mean(0), limit),
            "drift": sum(rel_norm(a, b) for a, b in zip(tt, t0)) / len(t0),
            "inflation": float(((tt.mean(1) - t0.mean(1)) / t0.mean(1)).mean()),
            "initial_loss": sum(c[0] for c in losses) / len(losses),
            "final_loss": sum(c[-1] for c in losses) / len(losses),
            "seconds": watch.seconds[f"width {width}"],
        }
        summary["widths"][str(width)] = row
        results["widths"][str(width)] = {"theta_init": t0, "theta_trained": tt,
                                         "loss_final": [c[-1] for c in losses]}
    if len(config.widths) >= 2:
        narrow, wide = str(min(config.widths)), str(max(config.widths))
        s = summary["widths"]
        summary["spread_ratio_wide_to_narrow"] = s[wide]["init_spread"] / s[narrow]["init_spread"]
        summary["drift_ratio_wide_to_narrow"] = s[wide]["drift"] / s[narrow]["drift"]
    return finish(NAME, config, device, results, summary, watch, out, draw)


def draw(payload: dict[str, Any]):
    """Θ(x0, x_γ) at init and after training, per width, against Θ∞."""
    res, summary, cfg = payload["results"], payload["summary"], payload["config"]
    widths = list(res["widths"])
    fig, axes = new_figure(5.0 * len(widths), 4.0, len(widths))
    if fig is None:
        return None
    gamma = res["gamma"]
    for ax, w in zip(axes, widths):
        r, s = res["widths"][w], summary["widths"][w]
        for i, (a, b) in enumerate(zip(r["theta_init"], r["theta_trained"])):
            ax.plot(gamma, a, color="C0", lw=0.8, alpha=0.7, label="t = 0" if i == 0 else None)
            ax.plot(gamma, b, color="C3", lw=0.8, alpha=0.7,
                    label=f"t = {cfg['steps']}" if i == 0 else None)
        ax.plot(gamma, res["limit"], color="k", lw=2.0, ls="--", label="Θ∞ (n = ∞)")
        ax.set(xlabel="γ   (x = (cos γ, sin γ), x0 = (1, 0))", title=(
            f"n = {w}: spread {fmt(s['init_spread'], '.3f')}, drift {s['drift']:.3f}"))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Θ(x0, x)")
    axes[0].legend(fontsize="small")
    fig.suptitle(f"Figure 1: NTK of depth-{cfg['depth']} ReLU networks, {cfg['inits']} "
                 f"initializations per width, before and after {cfg['steps']} GD steps")
    values = [v for w in widths for key in ("theta_init", "theta_trained")
              for curve in res["widths"][w][key] for v in curve] + list(res["limit"])
    lo, hi = min(values), max(values)
    for ax in axes:
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    return fig


def report(payload: dict[str, Any]) -> list[str]:
    """The lines ``torch-ntk reproduce figure1`` prints."""
    cfg, summary = payload["config"], payload["summary"]
    lines = [f"Θ(x0, x) of depth-{cfg['depth']} ReLU networks, {cfg['inits']} initializations "
             f"per width, before and after {cfg['steps']} GD steps (lr {cfg['lr']}):",
             f"{'width':>7} {'spread at init':>15} {'‖Θ₀−Θ∞‖/‖Θ∞‖':>14} "
             f"{'‖E[Θ₀]−Θ∞‖':>12} {'drift':>7} {'inflation':>10} {'final loss':>11}"]
    for w, s in summary["widths"].items():
        lines.append(f"{w:>7} {fmt(s['init_spread'], '>15.4f')} {s['init_error']:>14.4f} "
                     f"{s['mean_kernel_error']:>12.4f} {s['drift']:>7.4f} {s['inflation']:>+10.4f} "
                     f"{s['final_loss']:>11.2e}")
    return lines
