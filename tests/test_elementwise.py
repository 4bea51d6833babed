"""Any elementwise activation in the limit (issue 31): the numeric Hermite series split at
the kinks, the lifted torch modules, Elementwise, ELU/SELU exact.

Reference: the NNGP/NTK recursion written out in numpy with every Gaussian expectation by
an independent 2-D composite Gauss–Legendre rule in the variables (u, v) themselves
(:func:`gauss2d`): u on ±13√q11 split at φ's kinks, every 2 in u, and graded towards
the points where the conditional mean of v crosses a kink, v | u on its ±13 sd split
likewise (kinks, every 2 in v), 3 panels of 20 nodes per piece; φ and
φ′ written again in numpy from their definitions. :func:`test_reference_against_scipy`
checks that rule against scipy.integrate.dblquad (split at the kinks) to 1e-9.
Errors are measured against the Cauchy–Schwarz scale: |K − K_ref|_ij / √(K_ref,ii K_ref,jj).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special
from torch import nn

import torch_ntk as tn
from torch_ntk.activations import Elementwise
from torch_ntk.layers import dual
from torch_ntk.analytic.fused import cnn_op_args
from torch_ntk.nn import NTKLinear

SW2, SB2 = 1.5, 0.1  # σ_w², σ_b² of every layer
NORMS = (0.1, 0.3, 1.0, 3.0, 10.0)


def _sig(x):
    return special.expit(x)


def _softplus(x, beta=1.0, threshold=20.0):
    return np.where(beta * x > threshold, x, np.logaddexp(0, beta * x) / beta)


SELU_A, SELU_L = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
C_GELU = math.sqrt(2 / math.pi)

# name: (module factory, φ, φ′, kinks), φ and φ′ in numpy from the definitions
CASES = {
    "mish": (nn.Mish, lambda x: x * np.tanh(_softplus(x)),
             lambda x: np.tanh(_softplus(x)) + x * (1 - np.tanh(_softplus(x)) ** 2) * _sig(x), ()),
    "hardswish": (nn.Hardswish, lambda x: x * np.clip(x + 3, 0, 6) / 6,
                  lambda x: np.where(x < -3, 0, np.where(x > 3, 1, (2 * x + 3) / 6)), (-3, 3)),
    "hardtanh": (lambda: nn.Hardtanh(-0.37, 1.91), lambda x: np.clip(x, -0.37, 1.91),
                 lambda x: ((x > -0.37) & (x < 1.91)).astype(float), (-0.37, 1.91)),
    "relu6": (nn.ReLU6, lambda x: np.clip(x, 0, 6), lambda x: ((x > 0) & (x < 6)).astype(float),
              (0, 6)),
    "softsign": (nn.Softsign, lambda x: x / (1 + np.abs(x)), lambda x: 1 / (1 + np.abs(x)) ** 2,
                 (0,)),
    "celu": (lambda: nn.CELU(0.7), lambda x: np.where(x > 0, x, 0.7 * np.expm1(x / 0.7)),
             lambda x: np.where(x > 0, 1, np.exp(x / 0.7)), (0,)),
    "leaky_relu": (lambda: nn.LeakyReLU(0.3), lambda x: np.where(x > 0, x, 0.3 * x),
                   lambda x: np.where(x > 0, 1, 0.3), (0,)),
    "silu": (nn.SiLU, lambda x: x * _sig(x), lambda x: _sig(x) * (1 + x * (1 - _sig(x))), ()),
    "softplus_threshold": (lambda: nn.Softplus(beta=2.0, threshold=3.0),
                           lambda x: _softplus(x, 2.0, 3.0),
                           lambda x: np.where(2 * x > 3, 1, _sig(2 * x)), (1.5,)),
    "softplus": (lambda: nn.Softplus(beta=0.5), lambda x: _softplus(x, 0.5),
                 lambda x: np.where(0.5 * x > 20, 1, _sig(0.5 * x)), (40,)),
    "threshold": (lambda: nn.Threshold(0.5, -1.0), lambda x: np.where(x > 0.5, x, -1.0),
                  lambda x: (x > 0.5).astype(float), (0.5,)),
    "hardsigmoid": (nn.Hardsigmoid, lambda x: np.clip(x / 6 + 0.5, 0, 1),
                    lambda x: ((x > -3) & (x < 3)) / 6, (-3, 3)),
    "tanhshrink": (nn.Tanhshrink, lambda x: x - np.tanh(x), lambda x: np.tanh(x) ** 2, ()),
    "softshrink": (lambda: nn.Softshrink(0.5),
                   lambda x: np.where(x > 0.5, x - 0.5, np.where(x < -0.5, x + 0.5, 0)),
                   lambda x: (np.abs(x) > 0.5).astype(float), (-0.5, 0.5)),
    "hardshrink": (lambda: nn.Hardshrink(0.5), lambda x: np.where(np.abs(x) > 0.5, x, 0),
                   lambda x: (np.abs(x) > 0.5).astype(float), (-0.5, 0.5)),
    "logsigmoid": (nn.LogSigmoid, lambda x: -np.logaddexp(0, -x), lambda x: _sig(-x), ()),
    "elu": (lambda: nn.ELU(1.3), lambda x: np.where(x > 0, x, 1.3 * np.expm1(x)),
            lambda x: np.where(x > 0, 1, 1.3 * np.exp(x)), (0,)),
    "selu": (nn.SELU, lambda x: SELU_L * np.where(x > 0, x, SELU_A * np.expm1(x)),
             lambda x: SELU_L * np.where(x > 0, 1, SELU_A * np.exp(x)), (0,)),
    "gelu": (nn.GELU, lambda x: x * special.ndtr(x),
             lambda x: special.ndtr(x) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi), ()),
    "gelu_tanh": (lambda: nn.GELU(approximate="tanh"),
                  lambda x: 0.5 * x * (1 + np.tanh(C_GELU * (x + 0.044715 * x ** 3))),
                  lambda x: 0.5 * (1 + np.tanh(C_GELU * (x + 0.044715 * x ** 3))) + 0.5 * x * (
                      1 - np.tanh(C_GELU * (x + 0.044715 * x ** 3)) ** 2) * C_GELU * (
                      1 + 3 * 0.044715 * x * x), ()),
    "sigmoid": (nn.Sigmoid, _sig, lambda x: _sig(x) * (1 - _sig(x)), ()),
    "tanh": (nn.Tanh, np.tanh, lambda x: 1 - np.tanh(x) ** 2, ()),
    "user_quick_gelu": (lambda: Elementwise(lambda x: x * torch.sigmoid(1.702 * x),
                                            name="quick_gelu"),
                        lambda x: x * _sig(1.702 * x),
                        lambda x: _sig(1.702 * x) * (1 + 1.702 * x * (1 - _sig(1.702 * x))), ()),
    "user_sin_kinked": (lambda: Elementwise(lambda x: torch.sin(torch.abs(x)), kinks=(0,)),
                        lambda x: np.sin(np.abs(x)), lambda x: np.sign(x) * np.cos(np.abs(x)),
                        (0,)),
}

# the closed-form families (torch_ntk.layers.dual), also lifted in the depth-3 test
CLOSED = {
    "sin": (lambda: dual.Sin(1.2, 0.7, 0.3), lambda x: 1.2 * np.sin(0.7 * x + 0.3),
            lambda x: 0.84 * np.cos(0.7 * x + 0.3), ()),
    "cos": (lambda: dual.Cos(0.9, 1.1), lambda x: 0.9 * np.cos(1.1 * x),
            lambda x: -0.99 * np.sin(1.1 * x), ()),
    "rbf": (lambda: dual.Rbf(0.5), lambda x: math.sqrt(2) * np.sin(x + math.pi / 4),
            lambda x: math.sqrt(2) * np.cos(x + math.pi / 4), ()),
    "gaussian": (lambda: dual.Gaussian(1.5, -0.4), lambda x: 1.5 * np.exp(-0.4 * x * x),
                 lambda x: -1.2 * x * np.exp(-0.4 * x * x), ()),
    "sign": (dual.Sign, np.sign, lambda x: 0 * x, (0,)),
    "abrelu": (lambda: dual.ABReLU(-0.3, 1.7), lambda x: np.where(x > 0, 1.7 * x, -0.3 * x),
               lambda x: np.where(x > 0, 1.7, -0.3), (0,)),
    "abrelu_b0": (lambda: dual.ABReLU(0.8, 0.0), lambda x: np.where(x > 0, 0, 0.8 * x),
                  lambda x: np.where(x > 0, 0, 0.8), (0,)),
    "rect_monomial_0": (lambda: dual.RectifiedMonomial(0), lambda x: (x > 0).astype(float),
                        lambda x: 0 * x, (0,)),
    "rect_monomial_2": (lambda: dual.RectifiedMonomial(2), lambda x: np.maximum(x, 0) ** 2,
                        lambda x: 2 * np.maximum(x, 0), (0,)),
    "polynomial": (lambda: dual.Polynomial([0.1, 1.0, 0.3]),
                   lambda x: 0.1 + x + 0.3 * x * x, lambda x: 1 + 0.6 * x, ()),
}
# fast-growing ones: checked on single expectations only
POINT_ONLY = {
    "exp": (lambda: dual.Exp(0.8, 0.6), lambda x: 0.8 * np.exp(0.6 * x),
            lambda x: 0.48 * np.exp(0.6 * x), ()),
    "rect_monomial_1": (lambda: dual.RectifiedMonomial(1), lambda x: np.maximum(x, 0),
                        lambda x: (x > 0).astype(float), (0,)),
    "rect_monomial_3": (lambda: dual.RectifiedMonomial(3), lambda x: np.maximum(x, 0) ** 3,
                        lambda x: 3 * np.maximum(x, 0) ** 2, (0,)),
    "monomial_3": (lambda: dual.Monomial(3), lambda x: x ** 3, lambda x: 3 * x * x, ()),
}
CASES.update(CLOSED)
OSCILLATING = {"sin", "cos", "rbf", "user_sin_kinked"}  # the reference's grid covers all x


# ---- the independent reference -------------------------------------------------------

_T, _W = np.polynomial.legendre.leggauss(20)


def _grid(reach: float) -> np.ndarray:
    """Breakpoints every 2 in x on |x| ≤ min(reach, 200) (φ may turn or oscillate anywhere)."""
    r = 2.0 * math.ceil(min(reach, 200.0) / 2)
    return np.arange(-r, r + 1.0, 2.0)


def _rule(edges: np.ndarray, panels: int):
    """Nodes and weights [..., pieces·panels·20] of ``panels`` uniform panels per piece
    between consecutive ``edges`` [..., E]."""
    lo, hi = edges[..., :-1], edges[..., 1:]
    f = np.arange(panels + 1) / panels
    cuts = lo[..., None] + (hi - lo)[..., None] * f  # [..., pieces, panels + 1]
    a, b = cuts[..., :-1], cuts[..., 1:]
    half = ((b - a) / 2)[..., None]
    x = ((a + b) / 2)[..., None] + half * _T
    w = half * _W
    return x.reshape(*edges.shape[:-1], -1), w.reshape(*edges.shape[:-1], -1)


def _pdf(x, var):
    return np.exp(-x * x / (2 * var)) / np.sqrt(2 * np.pi * var)


def gauss2d(phi, dphi, kinks, q11, q22, q12, oscillates=False):
    """(E[φ(u)φ(v)], E[φ′(u)φ′(v)]) by the composite rule of the module doc (breakpoints
    every 2 on |x| ≤ 20, or over the whole range when φ ``oscillates``)."""
    kinks = np.asarray(kinks, float)
    s1 = math.sqrt(q11)
    rho = max(-1.0, min(1.0, q12 / math.sqrt(q11 * q22)))
    sd = math.sqrt(max(q22 * (1 - rho * rho), 0.0))
    slope = rho * math.sqrt(q22) / s1  # E[v | u] = slope·u
    edges = [-13 * s1, 13 * s1, *kinks, *_grid(13 * s1 if oscillates else 20.0)]
    if slope != 0:
        width = sd / abs(slope)
        for t in kinks:
            edges += [t / slope + g * width for g in (0, *(2.0 ** np.arange(-5, 8)),
                                                        *(-(2.0 ** np.arange(-5, 8))))]
    edges = np.unique(np.clip(edges, -13 * s1, 13 * s1))
    u, wu = _rule(edges, 3)
    wu = wu * _pdf(u, q11)
    mean = slope * u
    if sd < 1e-300:
        g, dg = phi(mean), dphi(mean)
    else:
        reach = np.max(np.abs(mean)) + 13 * sd if oscillates else 20.0
        inner = np.concatenate([kinks, _grid(reach)])
        e2 = np.sort(np.concatenate([np.stack([mean - 13 * sd, mean + 13 * sd], -1),
                                     np.clip(inner[None, :] + 0 * mean[:, None],
                                             (mean - 13 * sd)[:, None],
                                             (mean + 13 * sd)[:, None])], -1), -1)
        v, wv = _rule(e2, 3)
        wv = wv * _pdf(v - mean[:, None], sd * sd)
        g, dg = (phi(v) * wv).sum(-1), (dphi(v) * wv).sum(-1)
    return float((wu * phi(u) * g).sum()), float((wu * dphi(u) * dg).sum())


def reference(case: str, x: np.ndarray, depth: int = 3):
    """(NNGP, NTK) [N, N] of the NTK-parametrized MLP n0 → w (φ) ×depth → 1."""
    _, phi, dphi, kinks = CASES[case]
    n = x.shape[0]
    sigma = SW2 * x @ x.T / x.shape[1] + SB2
    theta = sigma.copy()
    for _ in range(depth):
        e = np.empty((n, n))
        ed = np.empty((n, n))
        for i in range(n):
            for j in range(i, n):
                e[i, j], ed[i, j] = gauss2d(phi, dphi, kinks, sigma[i, i], sigma[j, j],
                                            sigma[i, j], case in OSCILLATING)
                e[j, i], ed[j, i] = e[i, j], ed[i, j]
        theta = theta * SW2 * ed + SW2 * e + SB2
        sigma = SW2 * e + SB2
    return sigma, theta


def _inputs(dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(len(NORMS), 3, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True) * torch.tensor(NORMS, dtype=torch.float64)[:, None]
    return x.to(dtype)


def model(case: str, depth: int = 3, width: int = 16) -> nn.Module:
    layers = [NTKLinear(3, width, weight_std=math.sqrt(SW2), bias_std=math.sqrt(SB2))]
    for k in range(depth):
        layers += [CASES[case][0](), NTKLinear(width, 1 if k == depth - 1 else width,
                                               weight_std=math.sqrt(SW2),
                                               bias_std=math.sqrt(SB2))]
    return nn.Sequential(*layers).double()


def cs_error(got: torch.Tensor, ref: np.ndarray) -> float:
    scale = np.sqrt(np.outer(np.diag(ref), np.diag(ref)))
    return float(np.max(np.abs(got.double().numpy() - ref) / scale))


_REFS: dict = {}


def _reference_of(case: str):
    if case not in _REFS:
        _REFS[case] = reference(case, _inputs().numpy())
    return _REFS[case]


# ---- tests -----------------------------------------------------------------------------

def test_reference_against_scipy():
    """The test's 2-D rule against scipy.integrate.dblquad split at the kinks (1e-9 abs on
    O(1) values), on kinked and smooth φ, ρ up to 0.999 and q from 0.05 to 20."""
    points = [("relu6", 2.0, 5.0, 0.999 * math.sqrt(10)), ("hardswish", 20.0, 0.05, -0.3),
              ("mish", 1.0, 3.0, 0.9 * math.sqrt(3)), ("softshrink", 0.5, 0.7, 0.4)]
    for case, q11, q22, q12 in points:
        _, phi, dphi, kinks = CASES[case]
        ours = gauss2d(phi, dphi, kinks, q11, q22, q12)
        cov = np.array([[q11, q12], [q12, q22]])
        inv, det = np.linalg.inv(cov), np.linalg.det(cov)

        def dens(v, u):
            return math.exp(-0.5 * (inv[0, 0] * u * u + 2 * inv[0, 1] * u * v
                                    + inv[1, 1] * v * v)) / (2 * math.pi * math.sqrt(det))

        cuts_u = sorted({-12 * math.sqrt(q11), *kinks, 12 * math.sqrt(q11)})
        cuts_v = sorted({-12 * math.sqrt(q22), *kinks, 12 * math.sqrt(q22)})
        for k, f in enumerate((phi, dphi)):
            total = 0.0
            for a, b in zip(cuts_u[:-1], cuts_u[1:]):
                for c, d in zip(cuts_v[:-1], cuts_v[1:]):
                    total += integrate.dblquad(
                        lambda v, u: float(f(np.array(u)) * f(np.array(v))) * dens(v, u),
                        a, b, c, d, epsabs=1e-12, epsrel=1e-12)[0]
            assert abs(total - ours[k]) < 1e-9, (case, k, total, ours[k])


@pytest.mark.parametrize("case", sorted(CASES))
def test_depth3_float64_against_reference(case):
    """NNGP and NTK of a depth-3 network (3 activations), inputs of norms 0.1 … 10,
    float64: 1e-8 against the reference (Cauchy–Schwarz scale)."""
    ref_nngp, ref_ntk = _reference_of(case)
    with torch.no_grad():
        got = tn.analytic_kernels(model(case), _inputs())
    assert cs_error(got.nngp, ref_nngp) < 1e-8
    assert cs_error(got.ntk, ref_ntk) < 1e-8


@pytest.mark.parametrize("case", ["mish", "relu6", "elu", "hardswish", "user_quick_gelu"])
def test_depth3_float32_and_cross_batch(case):
    """float32 inputs within 1e-6; x2 ≠ x1 (a cross batch) equals the symmetric run."""
    ref_nngp, ref_ntk = _reference_of(case)
    x = _inputs(torch.float32)
    got = tn.analytic_kernels(model(case).float(), x)
    assert got.ntk.dtype == torch.float32
    assert cs_error(got.nngp, ref_nngp) < 1e-6
    assert cs_error(got.ntk, ref_ntk) < 1e-6
    x64 = _inputs()
    cross = tn.analytic_kernels(model(case), x64[:2], x64[2:])
    err = np.abs(cross.ntk.numpy() - ref_ntk[:2, 2:]) / np.sqrt(
        np.outer(np.diag(ref_ntk)[:2], np.diag(ref_ntk)[2:]))
    assert err.max() < 1e-8


def test_a_wrong_kink_would_fail():
    """Mutation check: the same φ with its kinks undeclared (Hardtanh(−0.37, 1.91) as an
    Elementwise without kinks; they are off the rules' grid of 0.5) misses 1e-8 (the split
    matters), and a wrong φ′ misses it by far."""
    ref_nngp, ref_ntk = _reference_of("hardtanh")
    x = _inputs()
    clamp = lambda t: torch.clamp(t, -0.37, 1.91)  # noqa: E731
    undeclared = nn.Sequential(*[Elementwise(clamp, name="hardtanh")
                                 if isinstance(m, nn.Hardtanh) else m for m in model("hardtanh")])
    got = tn.analytic_kernels(undeclared, x)
    assert cs_error(got.ntk, ref_ntk) > 1e-8
    wrong = nn.Sequential(*[Elementwise(clamp, kinks=(-0.37, 1.91),
                                        derivative=lambda t: (t > -0.37).double())
                            if isinstance(m, nn.Hardtanh) else m for m in model("hardtanh")])
    assert cs_error(tn.analytic_kernels(wrong, x).ntk, ref_ntk) > 1e-3


@pytest.mark.parametrize("case", sorted({**CLOSED, **POINT_ONLY}))
def test_closed_form_against_reference(case):
    """Each closed-form family's (E[φφ], E[φ′φ′]) against the test's 2-D rule, 1e-10 relative
    to the Cauchy–Schwarz scale, at q from 0.05 to 4 and ρ from −0.95 to 1; and the
    family lifts to its closed form (not the series)."""
    factory, phi, dphi, kinks = {**CLOSED, **POINT_ONLY}[case]
    spec = tn.lift(nn.Sequential(nn.Linear(2, 4), factory(), nn.Linear(4, 1)))
    act = spec.activations[0]
    assert act.has_closed_form
    for q11, q22, rho in ((0.05, 0.3, 0.5), (1.0, 2.0, -0.95), (4.0, 0.5, 0.9), (1.5, 1.5, 1.0),
                          (2.0, 3.0, 0.0)):
        q12 = rho * math.sqrt(q11 * q22)
        got = act.closed_form(*(torch.tensor([v], dtype=torch.float64) for v in (q11, q22, q12)))
        ref = gauss2d(phi, dphi, kinks, q11, q22, q12)
        for k in range(2):
            scale = math.sqrt(gauss2d(phi, dphi, kinks, q11, q11, q11)[k]
                              * gauss2d(phi, dphi, kinks, q22, q22, q22)[k]) or 1.0
            assert abs(float(got[k]) - ref[k]) <= 1e-10 * scale, (q11, q22, rho, k)


def test_monte_carlo_of_a_user_function():
    """Monte Carlo sanity: a user φ (x·σ(1.702x)) in a depth-2 NTK-parametrized network of
    width 512, 48 random networks: |MC − limit| < 5 standard errors + 3% (the O(1/width)
    bias) for the NNGP and the NTK."""
    act = lambda: Elementwise(lambda t: t * torch.sigmoid(1.702 * t))  # noqa: E731

    def build(seed):
        return nn.Sequential(NTKLinear(3, 512, weight_std=math.sqrt(SW2), bias_std=math.sqrt(SB2)),
                             act(), NTKLinear(512, 512, weight_std=math.sqrt(SW2),
                                              bias_std=math.sqrt(SB2)),
                             act(), NTKLinear(512, 1, weight_std=math.sqrt(SW2),
                                              bias_std=math.sqrt(SB2))).double()

    x = _inputs()[1:4]
    limit = tn.analytic_kernels(build(0), x)
    mc = tn.monte_carlo_kernels(build, x, n_samples=48, progress=False)
    for name in ("nngp", "ntk"):
        mean, se = getattr(mc, name), getattr(mc, name + "_stderr")
        ref = getattr(limit, name)
        assert ((mean - ref).abs() <= 5 * se + 0.03 * ref.abs()).all(), name


def test_cnn_with_a_numeric_activation_equals_the_mlp():
    """1×1 convolutions on 1×1 images are dense layers: the CNN walker with Mish, ReLU6 and
    ELU between them equals the MLP kernels (1e-12), and the fused CNN op is not used."""
    for act in (nn.Mish, nn.ReLU6, lambda: nn.ELU(1.3)):
        torch.manual_seed(0)
        cnn = nn.Sequential(tn.nn.NTKConv2d(3, 8, 1, weight_std=1.2), act(),
                            tn.nn.NTKConv2d(8, 8, 1, weight_std=1.2), act(), nn.Flatten(),
                            NTKLinear(8, 1, weight_std=1.2)).double()
        mlp = nn.Sequential(NTKLinear(3, 8, weight_std=1.2), act(), NTKLinear(8, 8, weight_std=1.2),
                            act(), NTKLinear(8, 1, weight_std=1.2)).double()
        x = _inputs()[:4]
        got = tn.analytic_kernels(cnn, x[:, :, None, None])
        ref = tn.analytic_kernels(mlp, x)
        assert torch.allclose(got.ntk, ref.ntk, rtol=1e-12, atol=1e-12)
        assert torch.allclose(got.nngp, ref.nngp, rtol=1e-12, atol=1e-12)
    assert cnn_op_args(tn.lift(cnn)) is not None  # ELU has an op code …
    mish = tn.lift(nn.Sequential(tn.nn.NTKConv2d(3, 8, 1), nn.Mish(), nn.Flatten(),
                                 NTKLinear(8, 1)))
    assert cnn_op_args(mish) is None  # … Mish has none: the walker runs


def test_functional_forms_lift_like_their_modules():
    """F.mish, F.hardtanh(min, max), F.relu6, F.softplus(β, threshold), F.celu, F.softshrink,
    x.clamp(lo, hi), torch.clamp(x, min=0), torch.sin, x.exp(), torch.sign in a forward read
    by torch.fx give the kernels of the module versions (1e-12: ReLU's closed form against
    the series of a clamp)."""
    import torch.nn.functional as F

    class Net(nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.a, self.b, self.fn = NTKLinear(3, 8), NTKLinear(8, 1), fn

        def forward(self, x):
            return self.b(self.fn(self.a(x)))

    pairs = [(lambda t: F.mish(t), nn.Mish()), (lambda t: F.hardtanh(t, -0.5, 2.0),
                                                 nn.Hardtanh(-0.5, 2.0)),
             (lambda t: F.relu6(t), nn.ReLU6()), (lambda t: F.softplus(t, 2.0, 3.0),
                                                  nn.Softplus(2.0, 3.0)),
             (lambda t: F.celu(t, 0.7), nn.CELU(0.7)), (lambda t: F.softshrink(t, 0.5),
                                                        nn.Softshrink(0.5))]
    pairs += [(lambda t: t.clamp(-0.5, 2.0), nn.Hardtanh(-0.5, 2.0)),
              (lambda t: torch.clamp(t, min=0.0), nn.ReLU()),
              (lambda t: torch.sin(t), dual.Sin()), (lambda t: t.exp(), dual.Exp()),
              (lambda t: torch.sign(t), dual.Sign())]
    x = _inputs()[:3]
    for functional, module in pairs:
        spec = tn.lift(Net(functional).double())
        (act,) = spec.activations
        got = tn.analytic_kernels(spec, x)
        ref = tn.analytic_kernels(nn.Sequential(NTKLinear(3, 8), module, NTKLinear(8, 1)), x)
        assert torch.allclose(got.ntk, ref.ntk, rtol=1e-12, atol=1e-12)
        assert torch.allclose(got.nngp, ref.nngp, rtol=1e-12, atol=1e-12)


def test_elu_selu_exact_by_default_and_quadrature_on_request():
    """ELU/SELU take the series split at 0 by default (1e-8: the depth-3 tests); an explicit
    quadrature_degree still runs the op's 2-D Gauss–Hermite quadrature: on these inputs
    (norms up to 10) its NTK is 8.3e-2 off (measured), the error the series removes."""
    ref_nngp, ref_ntk = _reference_of("elu")
    quad = tn.analytic_kernels(model("elu"), _inputs(), quadrature_degree=64)
    assert 1e-3 < cs_error(quad.ntk, ref_ntk) < 0.2


@pytest.mark.parametrize("fn, match", [
    (lambda x: x.softmax(-1), "not elementwise"),
    (lambda x: x.sum(0), "not elementwise"),
    (lambda x: x - x.mean(), "not elementwise"),
])
def test_a_function_that_is_not_elementwise_is_refused(fn, match):
    with pytest.raises(ValueError, match=match):
        Elementwise(fn)


def test_bad_functions_and_arguments():
    x = _inputs()
    net = lambda act: nn.Sequential(NTKLinear(3, 4), act, NTKLinear(4, 1)).double()  # noqa
    with pytest.raises(ValueError, match=r"φ is nan at x = .*finite on the real line"):
        tn.analytic_kernels(net(Elementwise(torch.log)), x)
    with pytest.raises(ValueError, match=r"grows too fast.*exp\(x²\)"):
        tn.analytic_kernels(net(Elementwise(lambda t: torch.exp(t * t))), x)
    from torch_ntk.layers.numeric_series import numeric_expectations
    one = torch.ones(1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"grows too fast.*at variance q = 1 .*beyond \|z\|"):
        numeric_expectations(lambda t: torch.exp(0.3 * t * t), lambda t: t, (), one, one, one)
    with pytest.raises(ValueError, match="give both nngp_fn and ntk_fn"):
        Elementwise(torch.sin, nngp_fn=lambda *q: q[0])
    with pytest.raises(TypeError, match="fn must be callable"):
        Elementwise(3.0)
    with pytest.raises(TypeError, match="kinks must be a sequence of numbers"):
        Elementwise(torch.sin, kinks=("a",))
    with pytest.raises(ValueError, match="gradients through the activation"):
        tn.analytic_kernels(net(nn.Mish()), x.clone().requires_grad_(True))
    with pytest.raises(ValueError, match="degree must be 0, 1, 2 or 3"):
        dual.RectifiedMonomial(4)
    with pytest.raises(ValueError, match=r"Gaussian\(b=1.0\): E\[φ\(u\)²\] is infinite"):
        tn.analytic_kernels(net(dual.Gaussian(1.0, 1.0)), x)


def test_user_kernel_map_is_used():
    """Elementwise(fn, nngp_fn, ntk_fn): the limit uses the given map (erf's, Williams 1997)
    and equals the registered erf to rounding; a deliberately wrong map changes it."""
    def nngp(q12, q11, q22):
        return (2 / math.pi) * torch.asin(2 * q12 / torch.sqrt((1 + 2 * q11) * (1 + 2 * q22)))

    def ntk(q12, q11, q22):
        return (4 / math.pi) / torch.sqrt((1 + 2 * q11) * (1 + 2 * q22) - 4 * q12 * q12)

    x = _inputs()
    mk = lambda act: nn.Sequential(NTKLinear(3, 4), act, NTKLinear(4, 1)).double()  # noqa
    got = tn.analytic_kernels(mk(Elementwise(torch.erf, nngp_fn=nngp, ntk_fn=ntk)), x)
    ref = tn.analytic_kernels(mk(tn.nn.Erf()), x)
    assert torch.allclose(got.ntk, ref.ntk, rtol=1e-13)
    wrong = tn.analytic_kernels(mk(Elementwise(torch.erf, nngp_fn=nngp,
                                               ntk_fn=lambda *q: 2 * ntk(*q))), x)
    assert not torch.allclose(wrong.ntk, ref.ntk, rtol=1e-3)


def test_gradients_are_refused_or_take_the_differentiable_path():
    """Under grad: a numeric-series activation is refused (MLP and CNN), a closed-form
    family is differentiated (autograd against central differences of the no-grad kernels,
    1e-6), and ELU in a CNN takes the differentiable quadrature (autograd against central
    differences of the no-grad kernels at quadrature_degree=64, 1e-5; a detached series
    would miss the activation's share of the gradient)."""
    x = _inputs()[:3].clone().requires_grad_(True)
    cnn = nn.Sequential(tn.nn.NTKConv2d(3, 4, 1), nn.Mish(), nn.Flatten(), NTKLinear(4, 1))
    with pytest.raises(ValueError, match="gradients through the activation"):
        tn.analytic_kernels(cnn.double(), x[:, :, None, None])
    sin = nn.Sequential(NTKLinear(3, 4), dual.Sin(1.0, 0.8), NTKLinear(4, 1)).double()
    k = tn.analytic_kernels(sin, x)
    (g,) = torch.autograd.grad(k.ntk.sum(), x)
    d = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        plus = tn.analytic_kernels(sin, x + 1e-5 * d).ntk.sum()
        minus = tn.analytic_kernels(sin, x - 1e-5 * d).ntk.sum()
    scale = max(1, float(g.abs().max()))
    assert abs(float((g * d).sum()) - float(plus - minus) / 2e-5) < 1e-6 * scale
    elu = nn.Sequential(tn.nn.NTKConv2d(3, 4, 1), nn.ELU(), nn.Flatten(),
                        NTKLinear(4, 1)).double()
    k = tn.analytic_kernels(elu, x[:, :, None, None])
    (g,) = torch.autograd.grad(k.ntk.sum(), x)
    with torch.no_grad():
        plus, minus = (tn.analytic_kernels(elu, (x + s * 1e-5 * d)[:, :, None, None],
                                           quadrature_degree=64).ntk.sum() for s in (1, -1))
    scale = max(1, float(g.abs().max()))
    assert abs(float((g * d).sum()) - float(plus - minus) / 2e-5) < 1e-5 * scale
