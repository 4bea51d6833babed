"""Gradients of the limit kernels w.r.t. activation parameters (issue 30).

``analytic_kernels(..., activation_params={name: tensor})`` (torch_ntk.analytic.activation_params)
is checked against references independent of its autograd:

- central differences of the forward computed with the parameters as *numbers* under
  no_grad (the fused MLP/CNN op for leaky_relu, ELU, softplus; a freshly built module of the
  dual family, e.g. ``Sin(a + h, b, c)``, for the closed-form families), along random
  output weights: relative 1e-6 (step 1e-5; 1e-4 for the series and the quadrature);
- ``torch.autograd.gradcheck`` (float64; eps 1e-6, atol 1e-5, rtol 1e-3), x2 given and
  x2 = None;
- the recursion written out in this test with dual maps derived here (the arc-cosine form of
  the ReLU family with slopes (a, b); Gaussian moments of a quadratic polynomial; the RBF
  kernel e^{−γ(q11 + q22 − 2q12)}), differentiated by plain autograd: 1e-10, away from
  duplicate points (where the plain arc-cosine form has an infinite derivative);
- at ρ = ±1 (x2 = None's diagonal; x and −x without bias) the gradients are finite and
  match differences of step 1e-4 (the angle of a cross-batch duplicate is resolved only to
  √eps ≈ 1e-8 in float64, so smaller steps see rounding noise).

A deliberately wrong implementation (the slope's gradient cut, as the float parameters
were before) fails the difference check.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from torch_ntk import analytic_kernels, fit_kernel_hyperparameters, mlp_spec
from torch_ntk.activations import from_name
from torch_ntk.analytic import activation_params as ap
from torch_ntk.layers.dual import (ABReLU, Cos, Exp, Gaussian, Monomial, Polynomial, Rbf,
                                   RectifiedMonomial, Sin)
from torch_ntk.layers.elementwise import numeric_activation
from torch_ntk.nn import NTKConv2d, NTKLinear
from torch_ntk.predict import gp_marginal_likelihood

pytestmark = pytest.mark.usefixtures("one_thread")
DTYPE = torch.float64
WIDTHS = [3, 8, 8, 1]


def _inputs(seed=0, n1=4, n2=3):
    """x1 (a zero row) and x2 of another batch (no duplicates: see the module doc)."""
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n1, 3, dtype=DTYPE, generator=g)
    x2 = torch.randn(n2, 3, dtype=DTYPE, generator=g)
    x1[-1] = 0
    return x1, x2


def _flat(k):
    return torch.cat([k.nngp.flatten(), k.ntk.flatten()])


def _check_differences(kernels, reference, values: dict, step: float, rtol: float):
    """Autograd of c·kernels(tensors) against central differences of reference(numbers)
    (no grad) along a random direction of the parameters."""
    g = torch.Generator().manual_seed(5)
    tensors = {k: torch.tensor(v, dtype=DTYPE, requires_grad=True) for k, v in values.items()}
    out = _flat(kernels(tensors))
    c = torch.randn(out.shape, dtype=DTYPE, generator=g)
    grads = torch.autograd.grad((c * out).sum(), list(tensors.values()))
    direction = {k: torch.randn(torch.tensor(v).shape, dtype=DTYPE, generator=g)
                 for k, v in values.items()}
    analytic = sum(float((gr * direction[k]).sum()) for gr, k in zip(grads, tensors))

    def shifted(sign):
        moved = {k: (torch.tensor(v, dtype=DTYPE) + sign * step * direction[k]).tolist()
                 for k, v in values.items()}
        with torch.no_grad():
            return _flat(reference(moved))

    numeric = float((c * (shifted(1) - shifted(-1))).sum()) / (2 * step)
    assert abs(analytic - numeric) <= rtol * max(1.0, abs(numeric)), (analytic, numeric)


# ---- registered activations: the fused op is the reference ----------------------------

REGISTERED = [("leaky_relu", "negative_slope", 0.2, {}, 1e-5, 1e-6),
              ("leaky_relu", "negative_slope", -1.3, {}, 1e-5, 1e-6),
              ("elu", "alpha", 1.3, {"quadrature_degree": 64}, 1e-4, 1e-6),
              ("softplus", "beta", 1.7, {}, 1e-4, 1e-6)]


@pytest.mark.parametrize("act, name, value, kwargs, step, rtol", REGISTERED)
def test_registered_parameter_gradients(act, name, value, kwargs, step, rtol):
    spec = mlp_spec(WIDTHS, act)
    x1, x2 = _inputs()
    p = torch.tensor(value, dtype=DTYPE, requires_grad=True)
    for b in (x2, None):
        k = analytic_kernels(spec, x1, b, activation_params={name: p}, **kwargs)
        assert k.ntk.requires_grad
        with torch.no_grad():  # floats: the fused op
            fused = analytic_kernels(spec, x1, b, activation_params={name: value}, **kwargs)
        tol = 1e-12 if act == "leaky_relu" else 1e-9
        torch.testing.assert_close(_flat(k), _flat(fused), rtol=tol, atol=tol)
        _check_differences(
            lambda t: analytic_kernels(spec, x1, b, activation_params={name: t[name]}, **kwargs),
            lambda v: analytic_kernels(spec, x1, b, activation_params={name: v[name]}, **kwargs),
            {name: value}, step, rtol)
        assert torch.autograd.gradcheck(
            lambda t: analytic_kernels(spec, x1, b, activation_params={name: t}, **kwargs),
            (p,), fast_mode=act != "leaky_relu")


def test_the_fused_op_runs_when_nothing_requires_grad():
    """Float overrides, tensors without grad, or no_grad: the fused op, same values."""
    spec = mlp_spec(WIDTHS, "leaky_relu")
    x1, x2 = _inputs()
    plain = analytic_kernels(mlp_spec(WIDTHS, from_name("leaky_relu", 0.3)), x1, x2)
    for value in (0.3, torch.tensor(0.3, dtype=DTYPE)):
        k = analytic_kernels(spec, x1, x2, activation_params={"negative_slope": value})
        assert k.ntk.grad_fn is None
        torch.testing.assert_close(_flat(k), _flat(plain), rtol=0, atol=0)


def test_a_cut_gradient_fails_the_difference_check(monkeypatch):
    """The slope's gradient cut (the parameter used as a number, as before the override
    existed): the check above catches it."""
    spec = mlp_spec(WIDTHS, "leaky_relu")
    x1, x2 = _inputs()
    rule = ap.REGISTERED["leaky_relu"]

    def cut(q11, q22, q12, p):  # right values, the slope's gradient 0
        return tuple(e + 0 * p for e in rule.closed(q11, q22, q12, p.detach()))

    monkeypatch.setitem(ap.REGISTERED, "leaky_relu", rule._replace(closed=cut))
    with pytest.raises(AssertionError):
        _check_differences(
            lambda t: analytic_kernels(spec, x1, x2, activation_params=t),
            lambda v: analytic_kernels(spec, x1, x2, activation_params=v),
            {"negative_slope": 0.2}, 1e-5, 1e-6)


# ---- the closed-form families: a module rebuilt with the numbers is the reference ------

FAMILIES = [(ABReLU, {"a": -0.3, "b": 1.2}), (Exp, {"a": 0.7, "b": 0.6}),
            (Gaussian, {"a": 1.1, "b": -0.4}), (Sin, {"a": 1.1, "b": 0.9, "c": 0.3}),
            (Cos, {"a": 0.8, "b": 1.2, "c": -0.4}), (Rbf, {"gamma": 0.7}),
            (Polynomial, {"coef": [0.1, 1.0, 0.5]})]


def _family_spec(family, values=None):
    """The MLP spec with the family's activation built with ``values`` (None: its defaults;
    Polynomial: the identity)."""
    if values is None:
        values = {"coef": [0.0, 1.0, 0.0]} if family is Polynomial else {}
    return mlp_spec(WIDTHS, numeric_activation(family(**values)))


@pytest.mark.parametrize("family, values", FAMILIES, ids=[f.__name__ for f, _ in FAMILIES])
def test_family_parameter_gradients(family, values):
    spec = _family_spec(family)  # the defaults: the override must replace them
    x1, x2 = _inputs()
    tensors = {k: torch.tensor(v, dtype=DTYPE, requires_grad=True) for k, v in values.items()}
    for b in (x2, None):
        k = analytic_kernels(spec, x1, b, activation_params=tensors)
        with torch.no_grad():
            built = analytic_kernels(_family_spec(family, values), x1, b)
        torch.testing.assert_close(_flat(k), _flat(built), rtol=1e-12, atol=1e-12)
        _check_differences(lambda t: analytic_kernels(spec, x1, b, activation_params=t),
                           lambda v: analytic_kernels(_family_spec(family, v), x1, b),
                           values, 1e-5, 1e-6)
        names = list(tensors)
        assert torch.autograd.gradcheck(
            lambda *t: analytic_kernels(spec, x1, b, activation_params=dict(zip(names, t))),
            tuple(tensors.values()))


def test_one_mapping_per_layer_and_a_cnn():
    """Different slopes per layer (a sequence, None keeps a layer's), and a CNN (the torch
    walker) against differences of the fused CNN op."""
    spec = mlp_spec([3, 8, 8, 8, 1], "leaky_relu")
    x1, x2 = _inputs()
    s1 = torch.tensor(0.2, dtype=DTYPE, requires_grad=True)
    s3 = torch.tensor(-0.4, dtype=DTYPE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c: analytic_kernels(
        spec, x1, x2, activation_params=[{"negative_slope": a}, None, {"negative_slope": c}]),
        (s1, s3))
    model = nn.Sequential(NTKConv2d(1, 3, 3, padding=1), nn.LeakyReLU(0.1), nn.AvgPool2d(2),
                          NTKConv2d(3, 3, 3, padding=1), nn.LeakyReLU(0.1), nn.Flatten(),
                          NTKLinear(3 * 4, 1)).to(DTYPE)
    g = torch.Generator().manual_seed(2)
    y1 = torch.randn(3, 1, 4, 4, dtype=DTYPE, generator=g)
    y2 = torch.randn(2, 1, 4, 4, dtype=DTYPE, generator=g)
    for b in (y2, None):
        _check_differences(lambda t: analytic_kernels(model, y1, b, activation_params=t),
                           lambda v: analytic_kernels(model, y1, b, activation_params=v),
                           {"negative_slope": 0.1}, 1e-5, 1e-6)
    slope = torch.tensor(0.1, dtype=DTYPE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: analytic_kernels(
        model, y1, y2, activation_params={"negative_slope": t}), (slope,))


# ---- an independent recursion ------------------------------------------------------------

def _recursion(x1, x2, dual, depth, weight_var=1.0, bias_var=0.01):
    """(NNGP, NTK) [N1, N2] by the layer recursion (NTK parametrization), dual(q1, q2, q12)
    -> (E[φφ], E[φ′φ′]), no symmetric tricks."""
    n0 = x1.shape[1]
    q1 = weight_var * (x1 * x1).sum(1)[:, None] / n0 + bias_var
    q2 = weight_var * (x2 * x2).sum(1)[None, :] / n0 + bias_var
    sigma = weight_var * x1 @ x2.T / n0 + bias_var
    theta = sigma
    for _ in range(depth):
        e, ed = dual(q1, q2, sigma)
        theta = theta * weight_var * ed + weight_var * e + bias_var
        sigma = weight_var * e + bias_var
        q1 = weight_var * dual(q1, q1, q1)[0] + bias_var
        q2 = weight_var * dual(q2, q2, q2)[0] + bias_var
    return sigma, theta


def _abrelu(a, b):
    """Cho & Saul's arc-cosine form for φ = a·min(x, 0) + b·max(x, 0)."""
    def dual(q1, q2, q12):
        norm = (q1 * q2).sqrt()
        t = torch.acos((q12 / norm).clamp(-1, 1))
        s = norm * torch.sin(t)
        e = ((a * a + b * b) * (s + (math.pi - t) * q12) - 2 * a * b * (s - t * q12)) / (
            2 * math.pi)
        ed = ((a * a + b * b) * (math.pi - t) + 2 * a * b * t) / (2 * math.pi)
        return e, ed
    return dual


def _quadratic(c0, c1, c2):
    """φ = c0 + c1·x + c2·x²: E[u²v²] = q1·q2 + 2q12², odd moments 0."""
    def dual(q1, q2, q12):
        e = c0 * c0 + c0 * c2 * (q1 + q2) + c1 * c1 * q12 + c2 * c2 * (q1 * q2 + 2 * q12 ** 2)
        return e, c1 * c1 + 4 * c2 * c2 * q12
    return dual


def _rbf(gamma):
    def dual(q1, q2, q12):
        e = torch.exp(-gamma * (q1 + q2 - 2 * q12))
        return e, 2 * gamma * e
    return dual


INDEPENDENT = [
    ("leaky", lambda: mlp_spec(WIDTHS, "leaky_relu"), {"negative_slope": 0.2},
     lambda p: _abrelu(p["negative_slope"], 1.0)),
    ("abrelu", lambda: mlp_spec(WIDTHS, numeric_activation(ABReLU())), {"a": -0.3, "b": 1.2},
     lambda p: _abrelu(p["a"], p["b"])),
    ("quadratic", lambda: mlp_spec(WIDTHS, numeric_activation(Polynomial([0.0, 1.0, 0.0]))),
     {"coef": [0.1, 1.0, 0.5]}, lambda p: _quadratic(*p["coef"].unbind(0))),
    ("rbf", lambda: mlp_spec(WIDTHS, numeric_activation(Rbf())), {"gamma": 0.7},
     lambda p: _rbf(p["gamma"])),
]


@pytest.mark.parametrize("name, spec, values, dual", INDEPENDENT,
                         ids=[c[0] for c in INDEPENDENT])
def test_gradients_match_an_independent_recursion(name, spec, values, dual):
    x1, x2 = _inputs(3)
    ours = {k: torch.tensor(v, dtype=DTYPE, requires_grad=True) for k, v in values.items()}
    theirs = {k: torch.tensor(v, dtype=DTYPE, requires_grad=True) for k, v in values.items()}
    k = analytic_kernels(spec(), x1, x2, activation_params=ours)
    nngp, ntk = _recursion(x1, x2, dual(theirs), len(WIDTHS) - 2)
    torch.testing.assert_close(k.nngp, nngp, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k.ntk, ntk, rtol=1e-12, atol=1e-12)
    c = torch.randn(2, *ntk.shape, dtype=DTYPE, generator=torch.Generator().manual_seed(4))
    got = torch.autograd.grad((c[0] * k.nngp + c[1] * k.ntk).sum(), list(ours.values()))
    want = torch.autograd.grad((c[0] * nngp + c[1] * ntk).sum(), list(theirs.values()))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ---- ρ = ±1 --------------------------------------------------------------------------

@pytest.mark.parametrize("act, values", [("leaky_relu", {"negative_slope": 0.2}),
                                         (ABReLU, {"a": -0.3, "b": 1.2})])
def test_no_nan_at_rho_plus_and_minus_one(act, values):
    """x2 = None (ρ = 1 on the diagonal, exactly) and x2 = [x, −x] for x in x1 without bias
    (ρ = ±1 in the first layer): finite gradients that match differences of step 1e-4."""
    activation = act if isinstance(act, str) else numeric_activation(act())
    spec = mlp_spec([3, 8, 8, 8, 1], activation, bias_std=0.0)
    built = (lambda v: spec) if isinstance(act, str) else (
        lambda v: mlp_spec([3, 8, 8, 8, 1], numeric_activation(act(**v)), bias_std=0.0))
    x1, _ = _inputs(1)
    x2 = torch.stack([x1[0], -x1[0], x1[1]])
    for b in (None, x2):
        tensors = {k: torch.tensor(v, dtype=DTYPE, requires_grad=True) for k, v in values.items()}
        k = analytic_kernels(spec, x1, b, activation_params=tensors)
        grads = torch.autograd.grad(k.ntk.sum() + k.nngp.sum(), list(tensors.values()))
        assert all(bool(torch.isfinite(g).all()) for g in grads)
        _check_differences(lambda t: analytic_kernels(spec, x1, b, activation_params=t),
                           lambda v: analytic_kernels(built(v), x1, b,
                                                      activation_params=v if isinstance(
                                                          act, str) else None),
                           values, 1e-4, 1e-6)


# ---- bad input -------------------------------------------------------------------------

def test_activation_param_errors():
    x = torch.randn(4, 3, dtype=DTYPE)
    leaky = mlp_spec(WIDTHS, "leaky_relu")
    cases = [
        (leaky, {"negative_slope": torch.tensor(0.1, dtype=torch.float32)}, ValueError,
         r"layer 1 \(leaky_relu\): negative_slope must have the dtype of x1"),
        (leaky, {"negative_slope": torch.tensor(0.1, dtype=DTYPE, device="meta")}, ValueError,
         "must be on x1's device"),
        (leaky, {"negative_slope": torch.ones(2, dtype=DTYPE)}, ValueError,
         r"must be a number or a 0-dim tensor; got shape \[2\]"),
        (leaky, {"negative_slope": float("nan")}, ValueError, "must be finite"),
        (leaky, {"negative_slope": True}, TypeError, "must be a number or a 0-dim tensor"),
        (leaky, {"alpha": 1.0}, ValueError,
         "has no parameter 'alpha'; its parameters: negative_slope"),
        (mlp_spec(WIDTHS, "relu"), {"negative_slope": 0.1}, ValueError,
         "has no parameter 'negative_slope'; it has none"),
        (mlp_spec(WIDTHS, "gelu"), {"approximate": 1.0}, ValueError,
         "'approximate' is a discrete setting"),
        (mlp_spec(WIDTHS, "softplus"), {"beta": -1.0}, ValueError,
         "softplus beta must be positive"),
        (mlp_spec(WIDTHS, numeric_activation(RectifiedMonomial(2))), {"degree": 1}, ValueError,
         "'degree' is a discrete setting"),
        (mlp_spec(WIDTHS, numeric_activation(Monomial(2))), {"coef": [1.0, 0.0, 1.0]},
         ValueError, "it has none"),
        (mlp_spec(WIDTHS, numeric_activation(Polynomial([0.0, 1.0]))),
         {"coef": torch.ones(3, dtype=DTYPE)}, ValueError, r"one entry per coefficient \(2\)"),
        (mlp_spec(WIDTHS, numeric_activation(Polynomial([0.0, 1.0]))), {"coef": 1.0},
         ValueError, "sequence or 1-D tensor of 2 entries"),
        (mlp_spec(WIDTHS, numeric_activation(Rbf())), {"gamma": 0.0}, ValueError,
         "Rbf: gamma must be positive"),
        (mlp_spec(WIDTHS, numeric_activation(nn.CELU(0.5))), {"alpha": 1.0}, ValueError,
         "numeric Hermite series has no parameters to override"),
        (leaky, [{"negative_slope": 0.1}], ValueError,
         r"one entry \(a mapping or None\) per activation layer \(2\); got 1"),
        (leaky, [0.1, None], TypeError, "for layer 1 must be a mapping"),
        (leaky, 0.1, TypeError, "activation_params must be a mapping"),
    ]
    for spec, params, error, message in cases:
        with pytest.raises(error, match=message):
            analytic_kernels(spec, x, activation_params=params)


# ---- fitting the slope by the GP marginal likelihood -------------------------------------

def test_fit_recovers_the_slope_of_the_gp_that_drew_the_data():
    """y drawn from the NNGP of a leaky ReLU MLP of slope −0.5; the fit starts at 0.2 and
    lands near −0.5 (within 0.1), with evidence at least the true parameters'."""
    g = torch.Generator().manual_seed(0)
    n = 80
    x = torch.randn(n, 3, dtype=DTYPE, generator=g) * torch.empty(n, 1, dtype=DTYPE).uniform_(
        0.3, 2.5, generator=g)
    spec = mlp_spec([3, 1, 1, 1], "leaky_relu", weight_std=1.0, bias_std=0.3)
    k = analytic_kernels(spec, x, activation_params={"negative_slope": -0.5}).nngp
    y = torch.linalg.cholesky(k + 0.05 * torch.eye(n, dtype=DTYPE)) @ torch.randn(
        n, 8, dtype=DTYPE, generator=g)
    true = float(gp_marginal_likelihood(k, y, 0.05))
    fitted = fit_kernel_hyperparameters(spec, x, y, activation_params={"negative_slope": 0.2})
    slope = fitted.activation_params["negative_slope"]
    assert slope == pytest.approx(-0.5, abs=0.1)
    assert float(fitted.log_evidence[-1]) >= true - 1e-6
    assert all(a.param == slope for a in fitted.spec.activations)
    again = gp_marginal_likelihood(analytic_kernels(fitted.spec, x).nngp, y, fitted.diag_reg)
    assert float(again) == pytest.approx(float(fitted.log_evidence[-1]), rel=1e-10)
    with pytest.raises(ValueError, match="has no parameter 'beta'"):
        fit_kernel_hyperparameters(spec, x, y, activation_params={"beta": 1.0})
    with pytest.raises(TypeError, match="activation_params must be a mapping"):
        fit_kernel_hyperparameters(spec, x, y, activation_params=[0.2])
