"""Monte Carlo of wide residual MLPs and CNNs (issue 26): the package's Monte-Carlo means
(torch_ntk.monte_carlo_kernels, the Jacobian method on these graphs) against
analytic_kernels, per entry |z| < Z_MAX as the chains' tests (tests/test_monte_carlo.py),
and a deliberately wrong kernel — the coefficients of a sum not squared, a concatenation
weighted equally instead of by width, a padded pool's divisor flipped, the affine
LayerNorm's gain and bias terms dropped — failing the same z-test.

Finite width biases the means by O(1/width) relative, far below the standard errors of
48 samples at these widths (the NTK's per-network spread is O(1/√width)).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torch_ntk as tn
from torch_ntk.layers import Add, AvgPool, Concat, LayerNorm
from torch_ntk.lifting.spec import LayerSpec
from torch_ntk.nn import NTKConv2d, NTKLinear

D = torch.float64
Z_MAX = 5.0
SAMPLES = 48

pytestmark = pytest.mark.usefixtures("one_thread")


class ResMLP(nn.Module):
    """x → fc → 2 × [β·h + α·fc(relu(LayerNorm(h)))] → concat(relu(fc_a h), relu(fc_b h))
    (widths w/4 and 3w/4) → fc → 3 outputs."""

    def __init__(self, w, alpha=1.5, beta=0.6):
        super().__init__()
        self.alpha, self.beta = alpha, beta
        self.inp = NTKLinear(3, w, weight_std=1.2, bias_std=0.3, dtype=D)
        self.norms = nn.ModuleList([nn.LayerNorm(w, dtype=D) for _ in range(2)])
        self.fcs = nn.ModuleList([NTKLinear(w, w, weight_std=1.1, bias_std=0.2, dtype=D)
                                  for _ in range(2)])
        self.a = NTKLinear(w, w // 4, dtype=D)
        self.b = NTKLinear(w, 3 * w // 4, weight_std=0.7, bias_std=0.5, dtype=D)
        self.out = NTKLinear(w, 3, dtype=D)

    def forward(self, x):
        h = self.inp(x)
        for norm, fc in zip(self.norms, self.fcs):
            h = self.beta * h + self.alpha * fc(F.relu(norm(h)))
        return self.out(torch.cat([F.relu(self.a(h)), F.relu(self.b(h))], dim=1))


class ResCNN(nn.Module):
    """stem conv → pre-activation block with GroupNorm(1) → LayerNorm over channels
    (channels-last) → padded average pool (count_include_pad False) → concat with a
    padded-pooled 1×1-conv branch of the input → global average → fc."""

    def __init__(self, c):
        super().__init__()
        self.stem = NTKConv2d(2, c, 3, padding=1, weight_std=1.2, bias_std=0.2, dtype=D)
        self.gn = nn.GroupNorm(1, c, dtype=D)
        self.body = NTKConv2d(c, c, 3, padding=1, weight_std=1.1, bias_std=0.1, dtype=D)
        self.ln = nn.LayerNorm(c, elementwise_affine=False, dtype=D)
        self.side = NTKConv2d(2, c, 1, weight_std=0.8, bias_std=0.4, dtype=D)
        self.out = NTKLinear(2 * c, 3, dtype=D)

    def forward(self, x):
        h = self.stem(x)
        h = h + 0.5 * self.body(torch.relu(self.gn(h)))
        h = self.ln(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        h = F.avg_pool2d(h, 3, 2, padding=1, count_include_pad=False)
        s = F.avg_pool2d(self.side(x), 3, 2, padding=1)
        return self.out(torch.cat([h, s], 1).mean((2, 3)))


def wrong(spec: LayerSpec, how: str) -> LayerSpec:
    """A copy of the spec with one rule deliberately broken (set past the spec's checks,
    which refuse Concat widths that disagree with the parts)."""
    layers = list(spec.layers)
    for k, layer in enumerate(layers):
        if how == "unsquared" and isinstance(layer, Add):
            layers[k] = dataclasses.replace(
                layer, coefficients=tuple(abs(c) ** 0.5 for c in layer.coefficients))
        if how == "equal widths" and isinstance(layer, Concat):
            layers[k] = dataclasses.replace(layer, widths=(1,) * len(layer.widths))
        if how == "no affine" and isinstance(layer, LayerNorm):
            layers[k] = dataclasses.replace(layer, affine=False)
        if how == "divisor" and isinstance(layer, AvgPool) and layer.padded:
            layers[k] = dataclasses.replace(layer, count_include_pad=not layer.count_include_pad)
    broken = LayerSpec(spec.layers, spec.flatten_input, spec.inputs)
    object.__setattr__(broken, "layers", tuple(layers))
    return broken


def z_scores(mc, limit, name):
    mean, se = getattr(mc, name), getattr(mc, name + "_stderr")
    assert bool((se > 0).all())
    return ((mean - getattr(limit, name)) / se).abs()


class MeanBranches(nn.Module):
    """h + 0.5·relu(W₁h) − 2·erf(W₂h) → fc: branches ending in activations (one zero-mean
    of every two), 3 outputs."""

    def __init__(self, w):
        super().__init__()
        self.inp = NTKLinear(3, w, weight_std=1.2, bias_std=0.3, dtype=D)
        self.w1 = NTKLinear(w, w, weight_std=1.4, bias_std=0.2, dtype=D)
        self.w2 = NTKLinear(w, w, weight_std=0.8, bias_std=0.4, dtype=D)
        self.out = NTKLinear(w, 3, dtype=D)

    def forward(self, x):
        h = self.inp(x)
        return self.out(h + 0.5 * torch.relu(self.w1(h)) - 2 * torch.erf(self.w2(h)))


CASES = {
    "residual mlp": (lambda seed: ResMLP(512), (3,), ("unsquared", "equal widths",
                                                             "no affine")),
    "residual cnn": (lambda seed: ResCNN(96), (2, 5, 5), ("divisor",)),
    "mean branches": (lambda seed: MeanBranches(512), (3,), ("unsquared",)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_monte_carlo_means_match_the_limit_and_a_wrong_rule_fails(case):
    make, shape, broken = CASES[case]
    g = torch.Generator().manual_seed(5)
    x1, x2 = torch.randn(4, *shape, dtype=D, generator=g), torch.randn(3, *shape, dtype=D,
                                                                        generator=g)
    mc = tn.monte_carlo_kernels(make, x1, x2, SAMPLES, base_seed=200, progress=False)
    assert mc.method == "hooks"  # the per-network finite-width NTK of a graph model
    spec = tn.lift(make(0))
    limit = tn.analytic_kernels(spec, x1, x2)
    for name in ("nngp", "ntk"):
        z = z_scores(mc, limit, name)
        assert z.max() < Z_MAX, (name, z)
    for how in broken:
        bad = tn.analytic_kernels(wrong(spec, how), x1, x2)
        assert z_scores(mc, bad, "ntk").max() > 2 * Z_MAX, how  # measured ≥ 14
