"""Figure 2 of Jacot et al. (2018), §6: trained networks against the limiting Gaussian process.

Networks of depth 4 (ReLU, NTK parametrization, β = 0.1) and widths 50 and 1000, each
initialized 10 times, are trained by full-batch gradient descent (learning rate 1.0,
1000 steps) on the same four points of the unit circle (angles γ = −2.2, −0.7, 0.6,
2.1 — the paper shows four points but does not list them) with targets
f*(x) = x1·x2 = sin(2γ)/2. In the infinite-width limit f_t is Gaussian at every time t
(Jacot et al. §5): f_0 ~ GP(0, Σ) and kernel gradient descent with Θ∞ is linear, so
its law is given by :func:`torch_ntk.predict.gradient_descent_mse_ensemble`. The
figure draws the trained functions f_T(cos γ, sin γ) over the 10th, 50th and 90th
percentiles of that Gaussian at t = T.

What it shows (``figure2.json`` summary, per width):

- ``in_band``: the share of (initialization, γ) pairs where f_T lies between the 10th
  and 90th percentiles — 0.8 for draws from the limiting law. Narrow networks fall
  outside more often (their functions are not Gaussian and their kernels move). The
  values at one γ are strongly correlated with their neighbours', so with 10
  initializations the share has a sampling error of roughly ±0.1;
- ``mean_abs_z``: mean |f_T − mean| / std over γ and inits (≈ 0.80 for Gaussian draws);
- ``final_loss``: the training cost at T.

Run it with ``torch-ntk reproduce figure2`` (``--quick`` for fewer steps).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch

from ..analytic.kernels import analytic_kernels
from ..lifting.lift import mlp_spec
from ..nn import ntk_mlp
from ..predict import gradient_descent_mse_ensemble, max_learning_rate
from .common import (
    DTYPES, Stopwatch, check_positive, circle, derive_seed, finish, new_figure, with_progress,
    resolve_device, seeded, train_gd,
)

NAME = "figure2"
Z90 = 1.2815515655446004  # the 90th percentile of N(0, 1)


@dataclass(frozen=True)
class Config:
    """Settings of figure 2 (defaults: the paper's where it states them)."""

    depth: int = 4
    widths: tuple[int, ...] = (50, 1000)
    inits: int = 10
    steps: int = 1000
    lr: float = 1.0
    bias_std: float = 0.1
    train_angles: tuple[float, ...] = (-2.2, -0.7, 0.6, 2.1)  # γ of the training points
    points: int = 201
    dtype: str = "float64"
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive(self, "depth", "widths", "inits", "points")
        if self.depth < 2:
            raise ValueError(f"depth must be at least 2 (one hidden layer); got {self.depth}")
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"steps must be a non-negative integer; got {self.steps!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive; got {self.lr!r}")
        if not self.train_angles:
            raise ValueError("train_angles must list at least one angle")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {self.dtype!r}")


QUICK = {"steps": 400, "points": 101}


def target(x: torch.Tensor) -> torch.Tensor:
    """f*(x) = x1·x2 as an [N, 1] column."""
    return (x[:, 0] * x[:, 1])[:, None]


def run(config: Config = Config(), out: Optional[Union[str, os.PathLike]] = None,
        progress: bool = False) -> dict[str, Any]:
    """Run figure 2; return the JSON payload and write figure2.{json,png} into ``out``."""
    device = resolve_device(config.device)
    dtype = DTYPES[config.dtype]
    watch = Stopwatch()
    f64 = torch.float64
    gamma = torch.linspace(-math.pi, math.pi, config.points, dtype=f64)
    xs = circle(gamma)
    x_train = circle(torch.tensor(config.train_angles, dtype=f64))
    y_train = target(x_train)

    spec = mlp_spec([2] + [1] * (config.depth - 1) + [1], "relu", bias_std=config.bias_std)
    with watch("gaussian process"):
        k_tt = analytic_kernels(spec, x_train)
        k_st = analytic_kernels(spec, xs, x_train)
        k_ss = analytic_kernels(spec, xs, get="nngp").nngp
        predict_fn = gradient_descent_mse_ensemble(k_tt.ntk, k_tt.nngp, y_train, config.lr)
        times = torch.tensor([float(config.steps), math.inf], dtype=f64)
        law = predict_fn(times, k_st.ntk, k_st.nngp, k_ss).test
        mean = law.mean[..., 0]                                   # [2, P]
        std = torch.diagonal(law.covariance, dim1=1, dim2=2).clamp_min(0).sqrt()  # [2, P]
        stable_lr = max_learning_rate(k_tt.ntk)

    dev = {"device": device, "dtype": dtype}
    xs_d, xt_d, yt_d = xs.to(**dev), x_train.to(**dev), y_train.to(**dev)
    band = {"p10": mean[0] - Z90 * std[0], "p50": mean[0], "p90": mean[0] + Z90 * std[0]}
    results: dict[str, Any] = {
        "gamma": gamma, "train_angles": list(config.train_angles), "y_train": y_train[:, 0],
        "gp_t": {**band, "std": std[0]},
        "gp_inf": {"p10": mean[1] - Z90 * std[1], "p50": mean[1], "p90": mean[1] + Z90 * std[1],
                   "std": std[1]},
        "max_stable_lr_limit": stable_lr, "widths": {},
    }
    summary: dict[str, Any] = {"max_stable_lr_limit": stable_lr, "expected_in_band": 0.8,
                               "expected_mean_abs_z": math.sqrt(2 / math.pi), "widths": {}}
    sd = std[0].clamp_min(1e-12)
    for width in config.widths:
        widths = [2] + [width] * (config.depth - 1) + [1]
        functions, losses = [], []
        with watch(f"width {width}"):
            for i in with_progress(range(config.inits), f"figure2 width {width}", enabled=progress):
                with seeded(derive_seed(config.seed, NAME, width, i)):
                    model = ntk_mlp(widths, "relu", bias_std=config.bias_std, **dev)
                curve = train_gd(model, xt_d, yt_d, config.steps, config.lr, progress=progress,
                                 desc=f"width {width} init {i}")
                with torch.no_grad():
                    functions.append(model(xs_d)[:, 0].to("cpu", f64))
                losses.append(curve[-1])
        f = torch.stack(functions)                                 # [inits, P]
        inside = (f >= band["p10"]) & (f <= band["p90"])
        z = ((f - mean[0]) / sd).abs()
        summary["widths"][str(width)] = {
            "in_band": float(inside.double().mean()),
            "mean_abs_z": float(z.mean()),
            "rms_to_median": float((f - mean[0]).square().mean().sqrt()),
            "final_loss": sum(losses) / len(losses),
            "seconds": watch.seconds[f"width {width}"],
        }
        results["widths"][str(width)] = {"functions": f, "final_loss": losses}
    return finish(NAME, config, device, results, summary, watch, out, draw)


def draw(payload: dict[str, Any]):
    """The trained functions of each width over the GP's 10/50/90 percentile band."""
    res, summary, cfg = payload["results"], payload["summary"], payload["config"]
    widths = list(res["widths"])
    fig, axes = new_figure(5.0 * len(widths), 4.0, len(widths))
    if fig is None:
        return None
    gamma, gp = res["gamma"], res["gp_t"]
    values = gp["p10"] + gp["p90"] + [v for w in widths for fn in res["widths"][w]["functions"]
                                      for v in fn]
    lo, hi = min(values), max(values)
    for ax, w in zip(axes, widths):
        ax.fill_between(gamma, gp["p10"], gp["p90"], color="0.85", label="GP 10–90th percentile")
        ax.plot(gamma, gp["p10"], color="0.5", lw=0.8)
        ax.plot(gamma, gp["p90"], color="0.5", lw=0.8)
        ax.plot(gamma, gp["p50"], color="k", lw=1.5, ls="--", label="GP median")
        for i, fn in enumerate(res["widths"][w]["functions"]):
            ax.plot(gamma, fn, color="C0", lw=0.8, alpha=0.8,
                    label=f"networks at t = {cfg['steps']}" if i == 0 else None)
        ax.plot(res["train_angles"], res["y_train"], "o", color="C3", ms=6, label="training points")
        s = summary["widths"][w]
        pad = 0.05 * (hi - lo)
        ax.set(xlabel="γ   (x = (cos γ, sin γ))", ylim=(lo - pad, hi + pad),
               title=f"n = {w}: {100 * s['in_band']:.0f}% inside the band (Gaussian: 80%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("f(x)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=4,
               fontsize="small")
    fig.suptitle(f"Figure 2: depth-{cfg['depth']} ReLU networks ({cfg['inits']} initializations "
                 f"per width) after {cfg['steps']} GD steps vs. the infinite-width Gaussian law")
    return fig


def report(payload: dict[str, Any]) -> list[str]:
    """The lines ``torch-ntk reproduce figure2`` prints."""
    cfg, summary = payload["config"], payload["summary"]
    lines = [f"depth-{cfg['depth']} ReLU networks after {cfg['steps']} GD steps against the "
             f"10/50/90th percentiles of the infinite-width Gaussian law at t = {cfg['steps']}:",
             f"{'width':>7} {'inside band':>12} {'mean |z|':>9} {'final loss':>11}"]
    for w, s in summary["widths"].items():
        lines.append(f"{w:>7} {100 * s['in_band']:>11.1f}% {s['mean_abs_z']:>9.3f} "
                     f"{s['final_loss']:>11.2e}")
    lines.append(f"{'Gaussian':>7} {80.0:>11.1f}% {summary['expected_mean_abs_z']:>9.3f}")
    return lines
