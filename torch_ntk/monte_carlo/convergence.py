"""The convergence study: Monte-Carlo error against the analytic kernel vs width and samples.

The random-feature estimate's error falls as the hidden width n and the number of
networks P grow; :func:`convergence_study` tabulates it and fits log–log slopes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..analytic.kernels import KERNEL_NAMES, analytic_kernels
from .samples import Moments, RunningEstimate
from .random_features import SpecOrWidths, build_network, spec_at_width
from .._utils.runtime import progress_bar
from .._utils.validation import check_batch, check_choices, check_increasing_ints, check_int

__all__ = ["ConvergenceRecord", "ConvergenceStudy", "SlopeFit", "convergence_study"]


@dataclass(frozen=True)
class ConvergenceRecord:
    """One row of a :class:`ConvergenceStudy` (errors relative to ‖K∞‖_F).

    kernel: "nngp" or "ntk". width: n, the hidden width. n_samples: P, networks averaged.
    n_features: n·P, the random features behind the estimate (one network ≈ n).
    error: √(mean over repeats of ‖K̂_P − K∞‖²_F) / ‖K∞‖_F, K∞ from analytic_kernels.
    error_spread: standard deviation over repeats of the relative error.
    stderr: ‖s‖_F / (√P ‖K∞‖_F), the error the sampling variance alone predicts (s: the
        per-network standard deviation of each entry, pooled over all repeats' samples
        at this width); error ≫ stderr means the finite-width bias dominates.
    bias: ‖mean of all samples at this width − K∞‖_F / ‖K∞‖_F, the finite-width bias
        estimate (same in every row of a width), with noise floor ``bias_stderr``
        = ‖s‖_F / (√(repeats·P_max) ‖K∞‖_F).
    repeats: independent runs (disjoint seeds) behind the row.
    """

    kernel: str
    width: int
    n_samples: int
    n_features: int
    error: float
    error_spread: float
    stderr: float
    bias: float
    bias_stderr: float
    repeats: int


@dataclass(frozen=True)
class SlopeFit:
    """Least-squares fit log(error) = slope·log(variable) + intercept.

    kernel: "nngp" or "ntk". along: "n_samples" (P varies, width fixed at ``at``) or
    "width" (n varies, P fixed at ``at``). points: how many (variable, error) pairs.
    expected: −0.5, the slope of a purely variance-limited error (P^−½ or n^−½);
    a finite-width bias flattens the P-slope, and steepens the n-slope towards −1.
    """

    kernel: str
    along: str
    at: int
    slope: float
    intercept: float
    points: int
    expected: float = -0.5


@dataclass(frozen=True)
class ConvergenceStudy:
    """Result of :func:`convergence_study`: the table and the fitted slopes."""

    records: tuple[ConvergenceRecord, ...]
    slopes: tuple[SlopeFit, ...]

    def rows(self) -> list[dict]:
        """The records as dicts (e.g. for ``pandas.DataFrame(study.rows())``)."""
        return [dataclasses.asdict(r) for r in self.records]

    def slope(self, kernel: str, along: str, at: int) -> float:
        """The fitted slope for ``kernel`` along "n_samples" (at a width) or "width" (at P)."""
        for fit in self.slopes:
            if (fit.kernel, fit.along, fit.at) == (kernel, along, at):
                return fit.slope
        raise KeyError(f"no slope for kernel={kernel!r}, along={along!r}, at={at!r}")


def convergence_study(
    spec_or_widths: SpecOrWidths,
    x1: Tensor,
    x2: Optional[Tensor] = None,
    *,
    widths: Sequence[int] = (64, 256, 1024),
    sample_counts: Sequence[int] = (1, 2, 4, 8, 16, 32),
    repeats: int = 4,
    get: Union[str, Sequence[str]] = ("nngp", "ntk"),
    base_seed: int = 0,
    activation="relu",
    weight_std: float = 1.0,
    bias_std: float = 0.1,
    parametrization: str = "ntk",
    method: str = "auto",
    progress: Optional[bool] = None,
) -> ConvergenceStudy:
    """How the random-feature estimate's error against the analytic kernel falls with the
    hidden width n and the number of networks P.

    For each width n and each repeat r, networks of the architecture at width n are
    drawn with seeds base_seed + r·P_max + i (i < P_max = max(sample_counts); the same
    seeds at every width) and the estimates K̂_P (running means of the random-feature
    Grams: the readout NNGP and the trace NTK, both means over the outputs, see :func:`random_features`) are
    compared with :func:`torch_ntk.analytic_kernels` at each P in ``sample_counts``.
    Expect error ≈ C/√(nP) + bias(n), bias = O(1/n) (0 for one hidden layer): slopes
    near −½ along P while the variance dominates and along n at small P.

    Args:
        spec_or_widths, activation, weight_std, bias_std, parametrization: the
            architecture (see :func:`random_network`); its hidden widths are replaced by
            each entry of ``widths``.
        x1: [N1, n_0], x2: [N2, n_0] or None — the inputs (float64 recommended).
        widths: hidden widths n (positive, increasing).
        sample_counts: P values (positive, increasing).
        repeats: independent runs per width (≥ 1; ≥ 2 for ``error_spread``).
        get: "nngp", "ntk" or both.
        base_seed: seed of the first network.
        method: ``empirical_ntk``'s method for the NTK samples.
        progress: as in :func:`monte_carlo_kernels` (one bar for the whole study).

    Returns:
        :class:`ConvergenceStudy`: ``records`` (one :class:`ConvergenceRecord` per
        kernel × width × P) and ``slopes`` (:class:`SlopeFit` along P per width when
        there are ≥ 2 sample counts, along n per P when there are ≥ 2 widths).

    Cost: len(widths) × repeats × P_max networks (one empirical NTK each).
    """
    name = "convergence_study"
    wanted = check_choices(name, "get", get, KERNEL_NAMES)
    widths = check_increasing_ints(name, "widths", widths)
    counts = check_increasing_ints(name, "sample_counts", sample_counts)
    repeats = check_int(name, "repeats", repeats, minimum=1)
    base_seed = check_int(name, "base_seed", base_seed, minimum=None)
    specs = {n: spec_at_width(name, spec_or_widths, n, activation, weight_std, bias_std,
                              parametrization) for n in widths}
    x1 = check_batch(name, "x1", x1)
    if x2 is x1:
        x2 = None
    if x2 is not None:
        x2 = check_batch(name, "x2", x2, like=x1)
    p_max = counts[-1]
    bar = progress_bar(len(widths) * repeats * p_max, progress=progress, desc=name,
                       unit="network")
    records, slopes = [], []
    try:
        for n in widths:
            spec = specs[n]
            target = analytic_kernels(spec, x1, x2, get=wanted)
            norms = {k: float(torch.linalg.norm(getattr(target, k).double())) for k in wanted}
            for k, norm in norms.items():
                if not norm > 0:
                    raise ValueError(
                        f"{name}: the analytic {k} kernel is zero on these inputs at width {n}, "
                        "so relative errors are undefined"
                    )
            errors = {(k, p): [] for k in wanted for p in counts}
            pooled = {k: Moments() for k in wanted}  # over every sample at this width

            def make(seed: int, spec=spec) -> nn.Module:
                return build_network(spec, x1.dtype, x1.device)

            for r in range(repeats):
                run = RunningEstimate.create(name, make, x1, x2, wanted, "readout", method,
                                             None, None)
                for i in range(p_max):
                    seed = base_seed + r * p_max + i
                    run.add(seed)
                    if bar is not None:
                        bar.update(1)
                    if i + 1 in counts:
                        est = run.estimate()
                        for k in wanted:
                            diff = getattr(est, k) - getattr(target, k).double()
                            errors[(k, i + 1)].append(float(torch.linalg.norm(diff)) / norms[k])
                for k in wanted:
                    pooled[k].merge(run.moments[k])
            for k in wanted:
                if pooled[k].n > 1:
                    sd = (pooled[k].m2 / (pooled[k].n - 1)).sqrt()
                    sd_norm = float(torch.linalg.norm(sd)) / norms[k]
                else:
                    sd_norm = math.nan
                bias = float(torch.linalg.norm(pooled[k].mean - getattr(target, k).double()))
                bias /= norms[k]
                for p in counts:
                    e = torch.tensor(errors[(k, p)], dtype=torch.float64)
                    records.append(ConvergenceRecord(
                        k, n, p, n * p, float(e.square().mean().sqrt()),
                        float(e.std()) if repeats > 1 else math.nan, sd_norm / math.sqrt(p),
                        bias, sd_norm / math.sqrt(repeats * p_max), repeats,
                    ))
    finally:
        if bar is not None:
            bar.close()

    for k in wanted:
        if len(counts) >= 2:
            for n in widths:
                rows = [r for r in records if r.kernel == k and r.width == n]
                slopes.append(_fit_log_slope(k, "n_samples", n, [r.n_samples for r in rows],
                                             [r.error for r in rows]))
        if len(widths) >= 2:
            for p in counts:
                rows = [r for r in records if r.kernel == k and r.n_samples == p]
                slopes.append(_fit_log_slope(k, "width", p, [r.width for r in rows],
                                             [r.error for r in rows]))
    return ConvergenceStudy(tuple(records), tuple(slopes))


def _fit_log_slope(kernel: str, along: str, at: int, xs: Sequence[float],
                   ys: Sequence[float]) -> SlopeFit:
    """Least-squares line through (log x, log y)."""
    lx = torch.log(torch.tensor(xs, dtype=torch.float64))
    ly = torch.log(torch.tensor(ys, dtype=torch.float64))
    lxc = lx - lx.mean()
    slope = float((lxc * (ly - ly.mean())).sum() / lxc.square().sum())
    intercept = float(ly.mean() - slope * lx.mean())
    return SlopeFit(kernel, along, at, slope, intercept, len(xs))
