"""Independent oracles for the infinite-width kernels, in numpy/scipy only.

Nothing here imports torch_ntk: every formula is written out again from its source, so a
mistake in the package's coefficients, expectations or recursion is not shared.

- The layers' laws at initialization, from the modules' documented initialization:
  ``NTKLinear(weight_std=σ_w, bias_std=σ_b, parametrization="ntk")`` draws W, b ~ N(0, 1)
  and computes (σ_w/√n_in)·W a + σ_b·b, so Var(z) = σ_w²|a|²/n_in + σ_b² and the
  parameters' gradients carry the factors c_w = σ_w²/n_in, c_b = σ_b² (NTK
  parametrization); "standard" draws W ~ N(0, σ_w²/n_in), b ~ N(0, σ_b²) and computes
  W a + b: the same law, c_w = c_b = 1. ``torch.nn.Linear`` draws W and b uniformly on
  ±1/√n_in (kaiming-uniform with a = √5): variance 1/(3 n_in) each, so σ_w² = 1/3,
  σ_b² = 1/(3 n_in), standard parametrization.
- The activations φ and φ′ from their definitions (scipy.special).
- Gaussian expectations E[g(u, v)], (u, v) ~ N(0, [[q11, q12], [q12, q22]]): closed forms
  re-derived below for the ReLU family (Cho & Saul 2009) and erf (Williams 1997), and for
  every activation a piecewise Gauss–Legendre rule in the whitened variables
  u = √q11·z1, v = √q22·(ρ z1 + √(1−ρ²) z2), truncated to |z| ≤ 9 (tail mass < 1e-18),
  with breakpoints where φ or φ′ has a kink (u = 0 and v = 0) and panels of length ≤ 2.3
  (so the poles of tanh/sigmoid at distance ≥ π/(2√q) from the real axis cost nothing).
  Its accuracy is ~1e-13 relative (checked against scipy's dblquad in
  test_independent.py).
- The layerwise recursion (Jacot et al. 2018, Prop. 1 and Thm. 1) written out:

      Σ¹ = σ_w1² ⟨x, x′⟩/n_0 + σ_b1²,               Θ¹ = c_w1 ⟨x, x′⟩ + c_b1
      Σ^{l+1} = σ_w² E[φ(u)φ(v)] + σ_b²,            Σ̇^{l+1} = σ_w² E[φ′(u)φ′(v)]
      Θ^{l+1} = Θ^l Σ̇^{l+1} + c_w n_l E[φ(u)φ(v)] + c_b

  with (u, v) ~ N(0, Σ^l on {x, x′}). In NTK parametrization c_w n_l = σ_w² and
  c_b = σ_b², so this is Jacot's Θ^{l+1} = Θ^l Σ̇^{l+1} + Σ^{l+1}; in standard
  parametrization the weight term carries the width n_l (the kernel at the given
  widths, to leading order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Optional, Sequence

import numpy as np
from scipy import special

SELU_ALPHA = 1.6732632423543772848170429916717  # Klambauer et al. 2017
SELU_SCALE = 1.0507009873554804934193349852946


# ---------------------------------------------------------------------------------------
# layer laws


@dataclass(frozen=True)
class Layer:
    """A dense layer's law: Var(W̃_ij) = weight_var/n_in, Var(b̃) = bias_var; the NTK weight
    and bias terms are c_w·⟨a, a′⟩ and c_b."""

    n_in: int
    weight_var: float
    bias_var: float
    c_w: float
    c_b: float
    ntk_parametrization: bool = True


def ntk_linear(n_in: int, weight_std: float = 1.0, bias_std: float = 0.1,
               parametrization: str = "ntk", bias: bool = True) -> Layer:
    """NTKLinear's documented law (see the module docstring)."""
    wv, bv = weight_std**2, (bias_std**2 if bias else 0.0)
    if parametrization == "ntk":
        return Layer(n_in, wv, bv, wv / n_in, bv)
    return Layer(n_in, wv, bv, 1.0, 1.0 if bias else 0.0, False)


def torch_linear(n_in: int, bias: bool = True) -> Layer:
    """torch.nn.Linear's default init: U(±1/√n_in) for W and b, variance 1/(3 n_in)."""
    return Layer(n_in, 1.0 / 3.0, 1.0 / (3.0 * n_in) if bias else 0.0, 1.0, 1.0 if bias else 0.0,
                 False)


# ---------------------------------------------------------------------------------------
# activations: φ, φ′ and the points where either is not smooth


@dataclass(frozen=True)
class Act:
    name: str
    phi: Callable[[np.ndarray], np.ndarray]
    dphi: Callable[[np.ndarray], np.ndarray]
    kinked: bool  # φ or φ′ not smooth at 0


def _sigmoid(x):
    return special.expit(x)


def act(name: str, param: Optional[float] = None) -> Act:
    """The activation ``name`` with its parameter (the registry's names and defaults:
    leaky_relu slope 0.01, softplus β 1, elu α 1, gelu 0 exact / 1 tanh approximation)."""
    p = param
    if name == "identity":
        return Act(name, lambda x: x, lambda x: np.ones_like(x), False)
    if name == "relu":
        return Act(name, lambda x: np.maximum(x, 0), lambda x: (x > 0) * 1.0, True)
    if name == "leaky_relu":
        a = 0.01 if p is None else p
        return Act(name, lambda x: np.where(x > 0, x, a * x), lambda x: np.where(x > 0, 1.0, a), True)
    if name == "abs":
        return Act(name, np.abs, lambda x: np.sign(x), True)
    if name == "erf":
        return Act(name, special.erf, lambda x: 2 / math.sqrt(math.pi) * np.exp(-x * x), False)
    if name == "tanh":
        return Act(name, np.tanh, lambda x: 1 / np.cosh(x) ** 2, False)
    if name == "sigmoid":
        return Act(name, _sigmoid, lambda x: _sigmoid(x) * _sigmoid(-x), False)
    if name == "silu":
        return Act(name, lambda x: x * _sigmoid(x),
                   lambda x: _sigmoid(x) + x * _sigmoid(x) * _sigmoid(-x), False)
    if name == "gelu":
        if p:  # tanh approximation (Hendrycks & Gimpel)
            c, k = math.sqrt(2 / math.pi), 0.044715

            def phi(x):
                return 0.5 * x * (1 + np.tanh(c * (x + k * x**3)))

            def dphi(x):
                t = np.tanh(c * (x + k * x**3))
                return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * k * x * x)
            return Act(name, phi, dphi, False)
        return Act(name, lambda x: x * special.ndtr(x),
                   lambda x: special.ndtr(x) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi),
                   False)
    if name == "softplus":
        beta = 1.0 if p is None else p
        # torch's Softplus(beta, threshold=20): x itself where βx > 20
        return Act(name, lambda x: np.where(beta * x > 20, x, np.logaddexp(0, beta * x) / beta),
                   lambda x: np.where(beta * x > 20, 1.0, _sigmoid(beta * x)), False)
    if name == "elu":
        alpha = 1.0 if p is None else p
        return Act(name, lambda x: np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0))),
                   lambda x: np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0))), True)
    if name == "selu":
        return Act(name,
                   lambda x: SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0))),
                   lambda x: SELU_SCALE * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(x, 0))),
                   True)
    raise KeyError(name)


# ---------------------------------------------------------------------------------------
# Gaussian expectations


def relu_family_closed_form(a: float, b: float, q11, q22, q12):
    """φ(x) = b·max(x, 0) − a·max(−x, 0), i.e. slope b right of 0, a left of it.

    With r = max(·, 0), θ = arccos(ρ) and J(θ) = sin θ + (π − θ) cos θ (Cho & Saul):
    E[r(u) r(v)] = √(q11 q22) J(θ)/2π, E[r(u) r(−v)] = √(q11 q22) J(π − θ)/2π, and by
    symmetry E[r(−u) r(−v)] = E[r(u) r(v)]. So E[φφ] = (a² + b²) E[r r] − 2ab E[r r(−·)].
    The indicators: P(u > 0, v > 0) = (π − θ)/2π, P(u > 0, v < 0) = θ/2π, so
    E[φ′φ′] = (a² + b²)(π − θ)/2π + 2ab θ/2π.
    """
    q11, q22, q12 = np.broadcast_arrays(*(np.asarray(q, dtype=float) for q in (q11, q22, q12)))
    norm = np.sqrt(q11 * q22)
    rho = np.clip(np.divide(q12, norm, out=np.zeros_like(norm), where=norm > 0), -1, 1)
    theta = np.arccos(rho)

    def j(t):
        return np.sin(t) + (math.pi - t) * np.cos(t)

    rr, rr_minus = norm * j(theta) / (2 * math.pi), norm * j(math.pi - theta) / (2 * math.pi)
    e_phi = (a * a + b * b) * rr - 2 * a * b * rr_minus
    e_dphi = ((a * a + b * b) * (math.pi - theta) + 2 * a * b * theta) / (2 * math.pi)
    return e_phi, e_dphi


def erf_closed_form(q11, q22, q12):
    """Williams (1997): E[erf(u) erf(v)] = (2/π) arcsin(2q12/√((1+2q11)(1+2q22))); and
    E[erf′(u) erf′(v)] = (4/π) E[e^{−u²−v²}] = (4/π)/√det(I + 2Q) (a Gaussian integral)."""
    q11, q22, q12 = (np.asarray(q, dtype=float) for q in (q11, q22, q12))
    d = (1 + 2 * q11) * (1 + 2 * q22)
    return (2 / math.pi) * np.arcsin(2 * q12 / np.sqrt(d)), (4 / math.pi) / np.sqrt(d - 4 * q12**2)


CLOSED_FORMS = {
    "identity": lambda p, *q: relu_family_closed_form(1.0, 1.0, *q),
    "relu": lambda p, *q: relu_family_closed_form(0.0, 1.0, *q),
    "leaky_relu": lambda p, *q: relu_family_closed_form(0.01 if p is None else p, 1.0, *q),
    "abs": lambda p, *q: relu_family_closed_form(-1.0, 1.0, *q),
    "erf": lambda p, *q: erf_closed_form(*q),
}

_Z_MAX = 9.0
_PANELS = 8        # per side of a breakpoint
_NODES = 20        # Gauss–Legendre nodes per panel
_LEG_T, _LEG_W = np.polynomial.legendre.leggauss(_NODES)


def _panel_rule(lo, hi):
    """Nodes and weights of _PANELS × _NODES Gauss–Legendre on [lo, hi] (arrays of
    intervals, broadcast): shape [..., _PANELS·_NODES]."""
    lo, hi = np.asarray(lo, float)[..., None], np.asarray(hi, float)[..., None]
    edges = lo + (hi - lo) * np.linspace(0, 1, _PANELS + 1)  # [..., P+1]
    a, b = edges[..., :-1, None], edges[..., 1:, None]
    nodes = (a + b) / 2 + (b - a) / 2 * _LEG_T
    weights = (b - a) / 2 * _LEG_W * np.ones_like(nodes)
    return nodes.reshape(*nodes.shape[:-2], -1), weights.reshape(*weights.shape[:-2], -1)


def _split_rule(point):
    """A rule on [−Z, Z] with a breakpoint at ``point`` (clipped into the interval)."""
    point = np.clip(point, -_Z_MAX, _Z_MAX)
    n1, w1 = _panel_rule(-_Z_MAX + 0 * point, point)
    n2, w2 = _panel_rule(point, _Z_MAX + 0 * point)
    return np.concatenate([n1, n2], -1), np.concatenate([w1, w2], -1)


def _gauss(z):
    return np.exp(-z * z / 2) / math.sqrt(2 * math.pi)


def _grids(q11: float, q22: float, q12: float):
    """Weights and points (w1 [n1], u [n1], w2 [n1, n2], v [n1, n2] or [n1]) of the rule for
    (u, v) ~ N(0, [[q11, q12], [q12, q22]]): E[f(u) g(v)] ≈ Σ_i w1_i f(u_i) Σ_j w2_ij g(v_ij).
    For |ρ| = 1, v is a function of u (v = ρ √(q22/q11) u) and w2 is None."""
    su, sv = math.sqrt(max(q11, 0.0)), math.sqrt(max(q22, 0.0))
    rho = q12 / (su * sv) if su * sv > 0 else 0.0
    rho = min(1.0, max(-1.0, rho))
    perp = math.sqrt(max(0.0, 1 - rho * rho))
    z1, w1 = _split_rule(np.array(0.0))
    w1 = w1 * _gauss(z1)
    if perp < 1e-12:
        return w1, su * z1, None, sv * rho * z1
    # v = 0 at z2 = −ρ z1/perp: a breakpoint of the inner rule for each outer node
    z2, w2 = _split_rule(-rho * z1 / perp)          # [n1, n2]
    return w1, su * z1, w2 * _gauss(z2), sv * (rho * z1[:, None] + perp * z2)


def _mean(grids, f, g) -> float:
    w1, u, w2, v = grids
    inner = g(v) if w2 is None else np.sum(w2 * g(v), -1)
    return float(np.sum(w1 * f(u) * inner))


def expectation(g: Callable, q11: float, q22: float, q12: float) -> float:
    """E[g(u, v)] for (u, v) ~ N(0, [[q11, q12], [q12, q22]]) (scalars), g vectorized and
    possibly kinked where u = 0 or v = 0 (see the module docstring)."""
    w1, u, w2, v = _grids(q11, q22, q12)
    if w2 is None:
        return float(np.sum(w1 * g(u, v)))
    return float(np.sum(w1[:, None] * w2 * g(u[:, None] + 0 * v, v)))


def expectations(a: Act, q11: float, q22: float, q12: float) -> tuple[float, float]:
    """(E[φ(u)φ(v)], E[φ′(u)φ′(v)]) by the piecewise rule."""
    grids = _grids(q11, q22, q12)
    return _mean(grids, a.phi, a.phi), _mean(grids, a.dphi, a.dphi)


# ---------------------------------------------------------------------------------------
# the recursion


@dataclass(frozen=True)
class MLP:
    """Dense layers (the first one reads x) with one activation between consecutive ones."""

    layers: tuple[Layer, ...]
    name: str
    param: Optional[float] = None
    closed_form: bool = False  # use the closed form (relu family, erf) instead of quadrature

    def perturbed(self, what: str) -> "MLP":
        """The same network with one deliberate mistake, to show that a test's tolerance
        catches it: "no_bias" (σ_b = 0 everywhere), "sigma_w" (σ_w² × 1.1 in the second
        layer) or "one_layer_less" (the last hidden layer removed)."""
        if what == "no_bias":
            return replace(self, layers=tuple(replace(l, bias_var=0.0, c_b=0.0) for l in self.layers))
        if what == "sigma_w":
            l1 = self.layers[1]
            changed = replace(l1, weight_var=1.1 * l1.weight_var,
                              c_w=l1.c_w * (1.1 if l1.ntk_parametrization else 1.0))
            return replace(self, layers=(self.layers[0], changed) + self.layers[2:])
        if what == "one_layer_less":
            return replace(self, layers=self.layers[:-2] + self.layers[-1:])
        raise KeyError(what)


def _pair_expectations(net: MLP, a: Act, q11, q22, q12):
    if net.closed_form:
        e_phi, e_dphi = CLOSED_FORMS[net.name](net.param, q11, q22, q12)
        return float(e_phi), float(e_dphi)
    return expectations(a, q11, q22, q12)


def _diagonal(net: MLP, a: Act, x: np.ndarray) -> list[float]:
    """Σ^l(x, x) for l = 1 … L of one sample."""
    first = net.layers[0]
    s = [first.weight_var * (x @ x) / first.n_in + first.bias_var]
    for layer in net.layers[1:]:
        e_phi, _ = _pair_expectations(net, a, s[-1], s[-1], s[-1])
        s.append(layer.weight_var * e_phi + layer.bias_var)
    return s


def kernels(net: MLP, x1: np.ndarray, x2: Optional[np.ndarray] = None):
    """(NNGP Σ^L, NTK Θ^L), each [N1, N2], by the recursion of the module docstring."""
    x1 = np.asarray(x1, dtype=float)
    x2 = x1 if x2 is None else np.asarray(x2, dtype=float)
    a = act(net.name, net.param)
    first, rest = net.layers[0], net.layers[1:]
    d1 = [_diagonal(net, a, x) for x in x1]
    d2 = [_diagonal(net, a, x) for x in x2]
    nngp, ntk = np.empty((len(x1), len(x2))), np.empty((len(x1), len(x2)))
    for i, j in np.ndindex(*nngp.shape):
        s12 = first.weight_var * (x1[i] @ x2[j]) / first.n_in + first.bias_var
        theta = first.c_w * (x1[i] @ x2[j]) + first.c_b
        for l, layer in enumerate(rest):
            e_phi, e_dphi = _pair_expectations(net, a, d1[i][l], d2[j][l], s12)
            theta = theta * layer.weight_var * e_dphi + layer.c_w * layer.n_in * e_phi + layer.c_b
            s12 = layer.weight_var * e_phi + layer.bias_var
        nngp[i, j], ntk[i, j] = s12, theta
    return nngp, ntk


def mlp(widths: Sequence[int], name: str, param=None, weight_std=1.0, bias_std=0.1,
        parametrization="ntk", bias=True, linear=False, closed_form=False) -> MLP:
    """The oracle's description of ``[NTKLinear or nn.Linear](widths[i], widths[i+1])`` with
    the activation between them (the output width does not enter the per-output kernels)."""
    if linear:
        layers = tuple(torch_linear(n, bias) for n in widths[:-1])
    else:
        layers = tuple(ntk_linear(n, weight_std, bias_std, parametrization, bias)
                       for n in widths[:-1])
    return MLP(layers, name, param, closed_form)


def rel_err(a, b) -> float:
    """max |a − b| / max |b|."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


# ---------------------------------------------------------------------------------------
# Monte Carlo of wide one-hidden-layer networks, drawn from the documented laws


def monte_carlo_one_hidden(name: str, param, x1: np.ndarray, x2: np.ndarray, *, width: int,
                           n_out: int, samples: int, weight_std=1.0, bias_std=0.1,
                           parametrization="ntk", seed=0):
    """Sample means and standard errors over ``samples`` networks [n_0, width, n_out] of the
    NNGP estimate f(x1)·f(x2)ᵀ/n_out and the NTK Σ_p ∂f_k(x1)/∂θ_p ∂f_k(x2)/∂θ_p averaged
    over the outputs k (per-sample gradients written out by the chain rule).

    "ntk": W, b ~ N(0, 1), z = (σ_w/√n_in) W a + σ_b b; "standard": W ~ N(0, σ_w²/n_in),
    b ~ N(0, σ_b²), z = W a + b; "torch": nn.Linear's U(±1/√n_in) for W and b.
    With one hidden layer the mean over networks is the infinite-width kernel at any width
    (the hidden pre-activations are exactly Gaussian), so z-scores are exact tests.
    Returns {"nngp": (mean, stderr), "ntk": (mean, stderr)}, each [N1, N2].
    """
    rng = np.random.default_rng(seed)
    x = np.concatenate([x1, x2])
    n0, n_a = x.shape[1], len(x1)
    a = act(name, param)

    def draw(n_in, n_out_, size):
        if parametrization == "ntk":
            w, b = rng.standard_normal((size, n_in, n_out_)), rng.standard_normal((size, 1, n_out_))
            return w, b, weight_std / math.sqrt(n_in), bias_std
        if parametrization == "standard":
            w = rng.normal(0, weight_std / math.sqrt(n_in), (size, n_in, n_out_))
            return w, rng.normal(0, bias_std, (size, 1, n_out_)), 1.0, 1.0
        bound = 1 / math.sqrt(n_in)
        w = rng.uniform(-bound, bound, (size, n_in, n_out_))
        return w, rng.uniform(-bound, bound, (size, 1, n_out_)), 1.0, 1.0

    nngp, ntk = [], []
    for start in range(0, samples, 50):  # 50 networks at a time
        p = min(50, samples - start)
        w1, b1, s_w1, s_b1 = draw(n0, width, p)
        w2, b2, s_w2, s_b2 = draw(width, n_out, p)
        z = s_w1 * x @ w1 + s_b1 * b1                      # [p, N, width]
        h, dh = a.phi(z), a.dphi(z)
        f = s_w2 * h @ w2 + s_b2 * b2                      # [p, N, n_out]
        gram_f = f @ f.transpose(0, 2, 1) / n_out
        # δ_k = ∂f_k/∂z = s_w2 · φ′(z) ⊙ W2[:, k]; mean over k of ⟨δ_k(x), δ_k(x′)⟩:
        w2_sq = (w2**2).mean(-1)                            # [p, width]
        dd = s_w2**2 * (dh * w2_sq[:, None, :]) @ dh.transpose(0, 2, 1)
        gram_x = x @ x.T
        gram_h = h @ h.transpose(0, 2, 1)
        theta = s_w1**2 * gram_x * dd + s_b1**2 * dd + s_w2**2 * gram_h + s_b2**2
        nngp.append(gram_f[:, :n_a, n_a:])
        ntk.append(theta[:, :n_a, n_a:])
    out = {}
    for key, values in (("nngp", np.concatenate(nngp)), ("ntk", np.concatenate(ntk))):
        out[key] = (values.mean(0), values.std(0, ddof=1) / math.sqrt(samples))
    return out
