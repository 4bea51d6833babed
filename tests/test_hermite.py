"""The Hermite-series path of the analytic op (csrc/math/hermite.h) against an
independent 2-D integral.

Reference: E[φ(u)φ(v)] and E[φ′(u)φ′(v)] for (u, v) ~ N(0, [[q1, ρ√(q1q2)], [., q2]]) as
∫∫ φ(√q1 z1) φ(√q2 (ρ z1 + √(1−ρ²) z2)) dN(z1) dN(z2) by a tensor-product composite
Gauss–Legendre rule on [−9, 9]² (8 nodes per panel, panel width min(1/2, 1/√q), well below
the scale on which φ(√q·) turns; its own error is below 1e-12 here, checked against scipy's
dblquad at one point per activation). The op is called with one hidden layer so that
NNGP = E[φφ] and NTK = E[φ′φ′] exactly (input_weight_var 1, ntk terms 0).
"""

import math

import numpy as np
import pytest
import torch

from torch_ntk import ops
from torch_ntk.activations import from_name, hermite_rule

SMOOTH = [("tanh", None), ("sigmoid", None), ("silu", None), ("gelu", 0.0), ("gelu", 1.0),
          ("softplus", 1.0), ("softplus", 3.0)]
RHOS = [-1.0, -0.9, -0.5, 0.0, 0.3, 0.7, 0.95, 1.0]
from scipy.special import erf as _erf  # noqa: E402


def _phi(name, p):
    """φ and φ′ in numpy, written here from their definitions (not from the package)."""
    if name == "tanh":
        return np.tanh, lambda x: 1 - np.tanh(x) ** 2
    if name == "sigmoid":
        s = lambda x: 0.5 * (1 + np.tanh(x / 2))  # noqa: E731
        return s, lambda x: s(x) * (1 - s(x))
    if name == "silu":
        s = lambda x: 0.5 * (1 + np.tanh(x / 2))  # noqa: E731
        return lambda x: x * s(x), lambda x: s(x) * (1 + x * (1 - s(x)))
    if name == "softplus":
        f = lambda x: np.logaddexp(0, p * x) / p  # noqa: E731
        return (lambda x: np.where(p * x > 20, x, f(x)),
                lambda x: np.where(p * x > 20, 1.0, 0.5 * (1 + np.tanh(p * x / 2))))
    if name == "gelu" and p == 0.0:
        return (lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))),
                lambda x: 0.5 * (1 + _erf(x / math.sqrt(2))) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi))
    c = math.sqrt(2 / math.pi)  # GELU, tanh form

    def d(x):
        t = np.tanh(c * (x + 0.044715 * x ** 3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)
    return lambda x: 0.5 * x * (1 + np.tanh(c * (x + 0.044715 * x ** 3))), d


def _rule(q):
    h = min(0.5, 1.0 / math.sqrt(q))
    edges = np.linspace(-9, 9, int(math.ceil(18 / h)) + 1)
    x, w = np.polynomial.legendre.leggauss(8)
    a, b = edges[:-1, None], edges[1:, None]
    z = ((b - a) / 2 * x + (a + b) / 2).ravel()
    wz = ((b - a) / 2 * w).ravel() * np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    return z, wz


def reference(name, p, q1, q2, rhos):
    """[len(rhos)] E[φφ], E[φ′φ′] by the composite rule (float64)."""
    f, df = _phi(name, p)
    z, w = _rule(max(q1, q2, 1.0))
    u = math.sqrt(q1) * z
    fu, dfu = f(u) * w, df(u) * w
    e, ed = [], []
    for rho in rhos:
        s = math.sqrt(max(0.0, 1 - rho * rho))
        v = math.sqrt(q2) * (rho * z[:, None] + s * z[None, :])
        e.append(fu @ f(v) @ w)
        ed.append(dfu @ df(v) @ w)
    return np.array(e), np.array(ed)


def op_expectations(name, p, q1, q2, rhos, dtype=torch.float64, hermite_series=True, degree=64):
    """The op's E[φφ], E[φ′φ′] for one x1 (variance q1) against x2 rows (q2, each ρ)."""
    act = from_name(name, p)
    x1 = torch.tensor([[math.sqrt(q1), 0.0]], dtype=torch.float64)
    x2 = torch.tensor([[math.sqrt(q2) * r, math.sqrt(q2) * math.sqrt(max(0.0, 1 - r * r))]
                       for r in rhos], dtype=torch.float64)
    nodes, weights = hermite_rule(degree)
    nngp, ntk = ops.analytic_kernels(
        x1.to(dtype), x2.to(dtype), 1.0, 0.0, 0.0, 1.0, [act.id], [float(act.param)], [1.0], [0.0],
        [0.0], [0.0], nodes, weights, False, True, True, hermite_series)
    return nngp[0].double().numpy(), ntk[0].double().numpy()


def _check(name, p, q1, q2, dtype, tol):
    got_e, got_ed = op_expectations(name, p, q1, q2, RHOS, dtype)
    ref_e, ref_ed = reference(name, p, q1, q2, RHOS)
    # The Cauchy–Schwarz scales sqrt(E[φ(u)²] E[φ(v)²]) (and for φ′) of the expectations.
    (n1, d1), (n2, d2) = reference(name, p, q1, q1, [1.0]), reference(name, p, q2, q2, [1.0])
    err = np.abs(got_e - ref_e) / math.sqrt(n1[0] * n2[0])
    err_d = np.abs(got_ed - ref_ed) / math.sqrt(d1[0] * d2[0])
    assert err.max() <= tol, (name, p, q1, q2, dict(zip(RHOS, err)))
    assert err_d.max() <= tol, (name, p, q1, q2, dict(zip(RHOS, err_d)))


@pytest.mark.parametrize("name, p", SMOOTH)
@pytest.mark.parametrize("q1, q2", [(1e-3, 1e-3), (0.1, 0.03), (1.0, 1.0), (1.0, 2.5), (10.0, 10.0),
                                    (100.0, 30.0)])
def test_series_float64_matches_independent_integral(name, p, q1, q2):
    _check(name, p, q1, q2, torch.float64, 1e-8)


@pytest.mark.parametrize("name, p", SMOOTH)
def test_reference_rule_against_scipy_dblquad(name, p):
    """The test's own rule against scipy's adaptive 2-D integration at q = 1, ρ = 0.5."""
    from scipy import integrate
    f, _ = _phi(name, p)
    rho, s = 0.5, math.sqrt(0.75)
    g = lambda z2, z1: float(f(np.array(z1)) * f(np.array(rho * z1 + s * z2))) * math.exp(  # noqa: E731
        -(z1 * z1 + z2 * z2) / 2) / (2 * math.pi)
    expected, _ = integrate.dblquad(g, -9, 9, -9, 9, epsabs=1e-12, epsrel=1e-12)
    assert abs(reference(name, p, 1.0, 1.0, [rho])[0][0] - expected) <= 1e-11


@pytest.mark.parametrize("name, p", [("tanh", None), ("gelu", 1.0), ("silu", None)])
@pytest.mark.parametrize("q1, q2", [(1e-3, 1e-3), (1.0, 2.5), (10.0, 3.0)])
def test_series_float32_within_rounding(name, p, q1, q2):
    # float32 tables and Horner in float32: a few units of 6e-8 times the number of terms.
    _check(name, p, q1, q2, torch.float32, 2e-6)


def _coefficients(name, p, q, kmax=64):
    """a_k, b_k (k < kmax) and E[φ²], E[φ′²] by the test's own rule, in numpy."""
    f, df = _phi(name, p)
    z, w = _rule(max(q, 1.0))
    fz, dfz = f(math.sqrt(q) * z), df(math.sqrt(q) * z)
    h = [np.ones_like(z), z.copy()]
    for k in range(1, kmax - 1):
        h.append((z * h[k] - math.sqrt(k) * h[k - 1]) / math.sqrt(k + 1))
    H = np.stack(h)
    return H @ (w * fz), H @ (w * dfz), w @ (fz * fz), w @ (dfz * dfz)


@pytest.mark.parametrize("name, p", [("tanh", None), ("gelu", 0.0), ("softplus", 3.0)])
@pytest.mark.parametrize("q1, q2", [(1.0, 1.0), (3.0, 10.0)])
def test_truncation_error_within_the_cauchy_schwarz_bound(name, p, q1, q2):
    """|Σ_{k≥K} a_k a′_k ρ^k| ≤ r_K r′_K |ρ|^K · scale for K = 8, 16, ..., 64 on a ρ grid, the
    truncated series from the test's coefficients against the independent 2-D integral."""
    a1, b1, na1, nb1 = _coefficients(name, p, q1)
    a2, b2, na2, nb2 = _coefficients(name, p, q2)
    rhos = [-1.0, -0.8, -0.3, 0.2, 0.6, 0.9, 1.0]
    ref_e, ref_ed = reference(name, p, q1, q2, rhos)
    checked = 0
    for K in range(8, 65, 8):
        r = [math.sqrt(max(n - (c[:K] ** 2).sum(), 0.0) / n) for c, n in
             ((a1, na1), (a2, na2), (b1, nb1), (b2, nb2))]
        for m, rho in enumerate(rhos):
            powers = rho ** np.arange(K)
            err = abs((a1[:K] * a2[:K] * powers).sum() - ref_e[m]) / math.sqrt(na1 * na2)
            err_d = abs((b1[:K] * b2[:K] * powers).sum() - ref_ed[m]) / math.sqrt(nb1 * nb2)
            slack = 3e-12  # the rules' own rounding
            assert err <= r[0] * r[1] * abs(rho) ** K + slack
            assert err_d <= r[2] * r[3] * abs(rho) ** K + slack
            checked += err > 10 * slack
    assert checked > 0, "the grid must hold truncation errors above the rounding"


def _nested_quad(f, q, rho):
    """E[f(u) f(v)] for q11 = q22 = q by nested scipy quad, split at the kinks u = 0, v = 0."""
    from scipy import integrate
    s, sq = math.sqrt(1 - rho * rho), math.sqrt(q)
    pdf = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731

    def inner(z1):
        kink = -rho * z1 / s
        val, _ = integrate.quad(lambda z2: f(sq * (rho * z1 + s * z2)) * pdf(z2), -10, 10,
                                points=[kink] if abs(kink) < 10 else None, epsabs=1e-13, limit=200)
        return f(sq * z1) * val * pdf(z1)
    return integrate.quad(inner, -10, 10, points=[0.0], epsabs=1e-13, limit=200)[0]


# The accuracy reached for the kinked ELU (α ≠ 1) and SELU by 2-D Gauss–Hermite quadrature of
# degree 64 (their default path; no series), relative to the Cauchy–Schwarz scale at q = 1:
# stated in torch_ntk/activations.py and held here.
KINK_ACCURACY = {"elu": 1e-2, "selu": 1e-2}


@pytest.mark.parametrize("name, p", [("elu", 1.3), ("selu", 0.0)])
def test_kinked_activations_reach_the_stated_accuracy(name, p):
    alpha = p if name == "elu" else 1.6732632423543772848170429916717
    scale = 1.0 if name == "elu" else 1.0507009873554804934193349852946
    df = lambda x: scale * (1.0 if x > 0 else alpha * math.exp(x))  # noqa: E731
    f = lambda x: scale * (x if x > 0 else alpha * (math.exp(x) - 1))  # noqa: E731
    rhos = [-0.5, 0.5, 0.9]
    got_e, got_ed = op_expectations(name, p, 1.0, 1.0, rhos, hermite_series=True)
    n_f, n_df = _nested_quad(f, 1.0, 1.0 - 1e-12), _nested_quad(df, 1.0, 1.0 - 1e-12)
    for m, rho in enumerate(rhos):
        assert abs(got_e[m] - _nested_quad(f, 1.0, rho)) / n_f <= KINK_ACCURACY[name]
        assert abs(got_ed[m] - _nested_quad(df, 1.0, rho)) / n_df <= KINK_ACCURACY[name]


@pytest.mark.parametrize("name", ["relu", "tanh"])
def test_symmetric_blocked_pass_matches_rectangular_pass(name):
    """x2=None writes blocks of 16 rows and their mirror tiles (256 columns); N = 300 spans
    several of both. Off-diagonal entries equal the x2=x pass (which computes every pair
    itself) to rounding; the result is exactly symmetric."""
    import torch_ntk as tn
    spec = tn.mlp_spec([5, 64, 64, 64, 1], name, bias_std=0.1)
    x = torch.randn(300, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    sym = tn.analytic_kernels(spec, x)
    rect = tn.analytic_kernels(spec, x, x)
    assert torch.equal(sym.ntk, sym.ntk.T) and torch.equal(sym.nngp, sym.nngp.T)
    off = ~torch.eye(300, dtype=torch.bool)
    for a, b in ((sym.ntk, rect.ntk), (sym.nngp, rect.nngp)):
        assert float((a - b)[off].abs().max() / b.abs().max()) <= 1e-12
        # The diagonal: exact variances against ~sqrt(eps) angles from rounding (ReLU's kink).
        assert float((a - b).diagonal().abs().max() / b.abs().max()) <= 1e-7



def test_series_with_zero_inputs():
    """Zero inputs (q = 0 at the first hidden layer, no bias) give exact zeros in the NNGP
    (φ = tanh, φ(0) = 0) and leave the other pairs as without them (pairs are independent)."""
    import torch_ntk as tn
    spec = tn.mlp_spec([5, 64, 64, 64, 1], "tanh", bias_std=0.0)
    x = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x[1] = 0
    x[4] = 0
    keep = [0, 2, 3, 5]
    for x2 in (None, x[:3]):
        k = tn.analytic_kernels(spec, x, x2)
        assert torch.isfinite(k.ntk).all() and torch.isfinite(k.nngp).all()
        assert float(k.nngp[[1, 4]].abs().max()) == 0.0
        sub = tn.analytic_kernels(spec, x[keep], None if x2 is None else x2[[0, 2]])
        cols = keep if x2 is None else [0, 2]
        assert float((k.ntk[keep][:, cols] - sub.ntk).abs().max()) <= 1e-12


def test_sqrt_table_is_correctly_rounded():
    """csrc/math/hermite.h's table of sqrt(k), k = 0 .. K_max (constant memory on the GPU,
    read by every thread at the same k, instead of a per-thread array): each entry is the
    correctly rounded double of sqrt(k), i.e. what sqrt(double(k)) gives in IEEE
    arithmetic, so the recurrence of h_k is unchanged by the table."""
    import math
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "csrc" / "math" / "hermite.h").read_text()
    body = re.search(r"#define TNTK_HERMITE_SQRT_K \{(.*?)\}", text, re.S).group(1)
    values = [float(v) for v in body.replace("\\", " ").split(",") if v.strip()]
    k_max = int(re.search(r"constexpr int kHermiteMaxTerms = (\d+);", text).group(1))
    assert len(values) == k_max + 1
    assert values == [math.sqrt(k) for k in range(k_max + 1)]
