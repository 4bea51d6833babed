"""``torch-ntk demo``: the theory of Jacot et al. (2018) at work, in about a minute on a CPU.

Data (embedded, nothing is downloaded): 10 points (cos γ, sin γ) of the unit circle at
fixed angles, with targets f*(γ) = sin(2γ)/2 + cos(3γ)/4; functions are drawn on 121
angles γ ∈ [−π, π].

For NTK-parametrized ReLU MLPs (depth 3, β = 0.1, one output) of widths 64 … 4096:

1. **The NTK converges to Θ∞.** The empirical NTK of ``inits`` random networks per
   width on the 121 angles against the infinite-width Θ∞ (one fused op):
   ‖Θ_0 − Θ∞‖/‖Θ∞‖ falls like n^(−1/2) (Jacot Thm. 1).
2. **Training barely moves it.** ``nets`` networks per width are trained by full-batch
   gradient descent on the cost (1/2N) Σ (f(x_i) − y_i)², while a
   :class:`~torch_ntk.KernelDriftTracker` records the NTK on the training set:
   the drift ‖Θ_T − Θ_0‖/‖Θ_0‖ shrinks with width (Thm. 2; about n^(−1) in practice).
3. **Training is kernel regression.** Each trained network is compared with what
   :func:`torch_ntk.predict.gradient_descent_mse` predicts from its own initial
   function and (i) its own initial NTK, (ii) Θ∞: the gap
   ‖f_T − f_pred‖/‖f_T − f_0‖ on the 121 angles (relative to how far training moved the
   function) shrinks with width.

Prints a table and writes ``demo.json`` (every number), ``demo_kernels.png``,
``demo_training.png`` and the tracker's own plot of the widest network
(``demo_drift_widest.png``) into the output folder.
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
from ..predict import gradient_descent_mse, max_learning_rate
from ..tracking.tracker import KernelDriftTracker
from .common import (
    DTYPES, Stopwatch, check_positive, circle, derive_seed, finish, fmt, loglog_slope,
    new_figure, with_progress, rel_norm, resolve_device, seeded, train_gd,
)

NAME = "demo"

# The embedded training set: angles γ_i of the points (cos γ_i, sin γ_i).
TRAIN_ANGLES = (-2.95, -2.3, -1.75, -1.05, -0.5, 0.2, 0.75, 1.4, 2.05, 2.6)


def target(gamma: torch.Tensor) -> torch.Tensor:
    """f*(γ) = sin(2γ)/2 + cos(3γ)/4."""
    return torch.sin(2 * gamma) / 2 + torch.cos(3 * gamma) / 4


@dataclass(frozen=True)
class Config:
    """Settings of the demo."""

    widths: tuple[int, ...] = (64, 256, 1024, 4096)
    depth: int = 3
    inits: int = 4                  # random networks per width for the kernel comparison
    nets: int = 2                   # of which trained (≤ inits)
    steps: int = 300
    lr: Optional[float] = None      # None: N/λ_max(Θ∞), half the largest stable rate
    record_every: int = 20          # tracker records
    bias_std: float = 0.1
    points: int = 121
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive(self, "widths", "depth", "inits", "nets", "record_every", "points")
        if self.depth < 2:
            raise ValueError(f"depth must be at least 2 (one hidden layer); got {self.depth}")
        if self.nets > self.inits:
            raise ValueError(f"nets ({self.nets}) must not exceed inits ({self.inits})")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer; got {self.steps!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be positive (or None for automatic); got {self.lr!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {self.dtype!r}")


QUICK = {"widths": (32, 128, 512), "inits": 2, "nets": 1, "steps": 100, "points": 61}


def run(config: Config = Config(), out: Optional[Union[str, os.PathLike]] = None,
        progress: bool = False, echo=None) -> dict[str, Any]:
    """Run the demo; return the JSON payload and write the files into ``out``.

    ``echo(line)`` receives the table rows as they are computed (e.g. ``print``).
    """
    device = resolve_device(config.device)
    dtype = DTYPES[config.dtype]
    f64 = torch.float64
    watch = Stopwatch()
    gamma = torch.linspace(-math.pi, math.pi, config.points, dtype=f64)
    g_train = torch.tensor(TRAIN_ANGLES, dtype=f64)
    x_grid, x_train = circle(gamma), circle(g_train)
    y_train = target(g_train)[:, None]
    n_grid, n_train = len(gamma), len(g_train)
    z = torch.cat([x_grid, x_train])  # every kernel is computed once on grid ∪ train

    spec = mlp_spec([2] + [1] * (config.depth - 1) + [1], "relu", bias_std=config.bias_std)
    with watch("limit"):
        limit = analytic_kernels(spec, z, get="ntk").ntk
    lim_gg, lim_gt, lim_tt = limit[:n_grid, :n_grid], limit[:n_grid, n_grid:], limit[n_grid:, n_grid:]
    stable = max_learning_rate(lim_tt)
    lr = config.lr if config.lr is not None else stable / 2
    dev = {"device": device, "dtype": dtype}
    z_d, xt_d, yt_d = z.to(**dev), x_train.to(**dev), y_train.to(**dev)

    header = (f"{'width':>6} {'params':>10} {'‖Θ₀−Θ∞‖/‖Θ∞‖':>14} {'drift':>8} "
              f"{'loss':>9} {'gap Θ₀':>8} {'gap Θ∞':>8} {'sec':>6}")
    if echo:
        echo(f"depth-{config.depth} ReLU MLPs, NTK parametrization, β = {config.bias_std}; "
             f"{n_train} training points on the unit circle; lr = {lr:.3g} "
             f"(largest stable for Θ∞: {stable:.3g}); {config.steps} steps")
        echo(header)
    rows, curves = [], {}
    for width in config.widths:
        widths = [2] + [width] * (config.depth - 1) + [1]
        errors, drifts, gaps0, gaps_inf, losses, histories, examples = [], [], [], [], [], [], {}
        with watch(f"width {width}"):
            for i in with_progress(range(config.inits), f"demo width {width}", enabled=progress):
                with seeded(derive_seed(config.seed, NAME, width, i)):
                    model = ntk_mlp(widths, "relu", bias_std=config.bias_std, **dev)
                k0 = empirical_ntk(model, z_d, mode="trace", progress=False).to("cpu", f64)
                errors.append(rel_norm(k0[:n_grid, :n_grid], lim_gg))
                if i == 0:
                    examples["theta_row"] = k0[n_grid // 2, :n_grid]  # x0 = (1, 0)
                if i >= config.nets:
                    continue
                with torch.no_grad():
                    f0 = model(z_d)[:, 0].to("cpu", f64)
                f0_grid, f0_train = f0[:n_grid], f0[n_grid:, None]
                tracker = KernelDriftTracker(model, xt_d, yt_d, every=config.record_every,
                                             infinite_width=False)
                curve = train_gd(model, xt_d, yt_d, config.steps, lr, progress=progress,
                                 desc=f"width {width} net {i}", optimizer_hook=tracker.attach)
                tracker.detach()
                with torch.no_grad():
                    f_t = model(z_d)[:n_grid, 0].to("cpu", f64)
                moved = torch.linalg.norm(f_t - f0_grid)
                preds = {}
                for key, (k_tt, k_gt) in {"theta0": (k0[n_grid:, n_grid:], k0[:n_grid, n_grid:]),
                                          "limit": (lim_tt, lim_gt)}.items():
                    predict_fn = gradient_descent_mse(k_tt, y_train, lr)
                    preds[key] = predict_fn(float(config.steps), f0_train, f0_grid[:, None],
                                            k_gt).test[:, 0]
                gaps0.append(float(torch.linalg.norm(f_t - preds["theta0"]) / moved))
                gaps_inf.append(float(torch.linalg.norm(f_t - preds["limit"]) / moved))
                drifts.append(tracker.history[-1].drift)
                losses.append(curve[-1])
                histories.append([(r.step, r.drift) for r in tracker.history])
                if i == 0:
                    examples.update(f_trained=f_t, f_init=f0_grid, f_pred_limit=preds["limit"],
                                    f_pred_theta0=preds["theta0"], loss_curve=curve)
                    if width == max(config.widths):
                        widest_tracker = tracker
                del model
        params = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))
        row = {
            "width": width, "params": params,
            "kernel_error": sum(errors) / len(errors),
            "drift": sum(drifts) / len(drifts),
            "final_loss": sum(losses) / len(losses),
            "gap_theta0": sum(gaps0) / len(gaps0),
            "gap_limit": sum(gaps_inf) / len(gaps_inf),
            "seconds": watch.seconds[f"width {width}"],
        }
        rows.append(row)
        curves[str(width)] = {**examples, "drift_history": histories,
                              "kernel_errors": errors, "drifts": drifts}
        if echo:
            echo(f"{width:>6} {params:>10,} {row['kernel_error']:>14.4f} {row['drift']:>8.4f} "
                 f"{row['final_loss']:>9.2e} {row['gap_theta0']:>8.4f} {row['gap_limit']:>8.4f} "
                 f"{row['seconds']:>6.1f}")
    ws = [r["width"] for r in rows]
    summary = {
        "lr": lr, "max_stable_lr_limit": stable, "rows": rows,
        "slope_kernel_error": loglog_slope(ws, [r["kernel_error"] for r in rows]),
        "slope_drift": loglog_slope(ws, [r["drift"] for r in rows]),
        "slope_gap_theta0": loglog_slope(ws, [r["gap_theta0"] for r in rows]),
        "slope_gap_limit": loglog_slope(ws, [r["gap_limit"] for r in rows]),
    }
    if echo:
        echo(f"log-log slopes against width: kernel error {summary['slope_kernel_error']:.2f} "
             f"(theory −0.5), drift {summary['slope_drift']:.2f} (−0.5 … −1), gap to kernel "
             f"regression {summary['slope_gap_theta0']:.2f} (Θ₀) / "
             f"{summary['slope_gap_limit']:.2f} (Θ∞)")
    results = {
        "gamma": gamma, "train_angles": g_train, "y_train": y_train[:, 0],
        "limit_row": lim_gg[n_grid // 2], "widths": curves,
    }
    extra = {}
    if out is not None and config.nets:
        try:
            extra["demo_drift_widest.png"] = widest_tracker.plot()
        except ImportError:  # matplotlib missing: the JSON is still written
            pass
    return finish(NAME, config, device, results, summary, watch, out, draw, extra)


def draw(payload: dict[str, Any]) -> dict[str, Any]:
    """demo_kernels.png (kernel convergence and the slopes) and demo_training.png
    (trained functions against kernel regression, drift over training)."""
    return {"demo_kernels.png": _draw_kernels(payload),
            "demo_training.png": _draw_training(payload)}


def _draw_kernels(payload: dict[str, Any]):
    res, summary, cfg = payload["results"], payload["summary"], payload["config"]
    fig, (ax_k, ax_s) = new_figure(11.0, 4.2, 2)
    if fig is None:
        return None
    gamma = res["gamma"]
    for k, (w, c) in enumerate(res["widths"].items()):
        ax_k.plot(gamma, c["theta_row"], color=f"C{k}", lw=1, label=f"n = {w}")
    ax_k.plot(gamma, res["limit_row"], color="k", lw=2, ls="--", label="Θ∞ (n = ∞)")
    ax_k.set(xlabel="γ   (x = (cos γ, sin γ), x0 = (1, 0))", ylabel="Θ(x0, x) at initialization",
             title="one random network per width against the limit")
    ax_k.legend(fontsize="small")
    rows = summary["rows"]
    ws = [r["width"] for r in rows]
    for key, label, slope in (
        ("kernel_error", "‖Θ₀ − Θ∞‖/‖Θ∞‖ at init", "slope_kernel_error"),
        ("drift", "drift ‖Θ_T − Θ₀‖/‖Θ₀‖ in training", "slope_drift"),
        ("gap_theta0", "‖f_T − f_pred(Θ₀)‖/‖f_T − f₀‖", "slope_gap_theta0"),
        ("gap_limit", "‖f_T − f_pred(Θ∞)‖/‖f_T − f₀‖", "slope_gap_limit"),
    ):
        ax_s.loglog(ws, [r[key] for r in rows], "o-",
                    label=f"{label}  (slope {fmt(summary[slope], '.2f')})")
    ref = rows[0]["kernel_error"]
    ax_s.loglog(ws, [ref * (w / ws[0]) ** -0.5 for w in ws], "k:", lw=1, label="∝ n^(−1/2)")
    ax_s.set(xlabel="width n", title="finite-width effects shrink with width")
    ax_s.legend(fontsize="x-small")
    for ax in (ax_k, ax_s):
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"torch-ntk demo: depth-{cfg['depth']} ReLU MLPs in NTK parametrization")
    return fig


def _draw_training(payload: dict[str, Any]):
    res, summary, cfg = payload["results"], payload["summary"], payload["config"]
    fig, (ax_f, ax_g, ax_d) = new_figure(15.0, 4.2, 3)
    if fig is None:
        return None
    gamma = res["gamma"]
    widths = [w for w in res["widths"] if "f_trained" in res["widths"][w]]
    for k, w in enumerate(res["widths"]):
        c = res["widths"][w]
        if w not in widths:
            continue
        if w in (widths[0], widths[-1]):
            ax_f.plot(gamma, c["f_trained"], color=f"C{k}", lw=1.2, label=f"network, n = {w}")
        gap = [a - b for a, b in zip(c["f_trained"], c["f_pred_theta0"])]
        ax_g.plot(gamma, gap, color=f"C{k}", lw=1, label=f"n = {w}")
        for j, hist in enumerate(c["drift_history"]):
            steps, drift = zip(*hist[1:]) if len(hist) > 1 else ((), ())
            ax_d.plot(steps, drift, color=f"C{k}", lw=1, label=f"n = {w}" if j == 0 else None)
    ax_f.plot(gamma, res["widths"][widths[-1]]["f_pred_limit"], "k--", lw=1,
              label=f"kernel regression with Θ∞ (f₀ of n = {widths[-1]})")
    ax_f.plot(res["train_angles"], res["y_train"], "ko", ms=4, label="training points")
    ax_f.set(xlabel="γ", ylabel="f(cos γ, sin γ)",
             title=f"trained functions after {cfg['steps']} GD steps (lr {summary['lr']:.3g})")
    ax_f.legend(fontsize="x-small")
    ax_g.axhline(0, color="k", lw=1)
    ax_g.set(xlabel="γ", ylabel="f_T − f_pred(Θ₀)",
             title="network minus kernel regression with its own Θ₀")
    ax_g.legend(fontsize="small")
    ax_d.set_yscale("log")
    ax_d.set(xlabel="gradient-descent step", title="kernel drift (KernelDriftTracker)",
             ylabel="‖Θ_t − Θ₀‖/‖Θ₀‖ on the training set")
    ax_d.legend(fontsize="small", loc="center right")
    for ax in (ax_f, ax_g, ax_d):
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("Wide networks train like kernel regression with a fixed kernel")
    return fig
