"""The one registry of elementwise nonlinearities.

Each entry holds an id (the same number as in ``csrc/math/activations.h``), the
function φ and its derivative φ′ in torch, the ``torch.nn`` module types that lift
to it, and, where one exists, the closed form of the Gaussian expectations

    E[φ(u) φ(v)],  E[φ′(u) φ′(v)]   with (u, v) ~ N(0, [[q11, q12], [q12, q22]]).

Closed forms: the ReLU family φ(x) = a·min(x, 0) + b·max(x, 0) (identity, ReLU,
LeakyReLU, Abs; Cho & Saul 2009) and erf (Williams 1997). Every other activation
is integrated by bivariate Gauss–Hermite quadrature (:func:`gaussian_expectations`).

Example::

    >>> act = from_module(torch.nn.LeakyReLU(0.2))
    >>> act.name, act.param
    ('leaky_relu', 0.2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Abs",
    "Activation",
    "Elementwise",
    "Erf",
    "REGISTRY",
    "DEFAULT_QUADRATURE_DEGREE",
    "from_module",
    "from_name",
    "gaussian_expectations",
    "hermite_rule",
    "module_types",
]

# Gauss–Hermite degree per dimension (degree² evaluations per expectation) of the 2-D
# quadrature, used when a spec mixes activations and none is given: the largest
# per-activation default below (sigmoid and softplus 24, SiLU and GELU 32, tanh, ELU and
# SELU 64). Since the Hermite series (csrc/math/hermite.h) serves tanh, sigmoid, SiLU,
# GELU and softplus in the CPU and CUDA ops by default, the quadrature runs for them only
# with an explicit ``quadrature_degree``; ELU and SELU always use it.
#
# Accuracy of each activation's expectations E[φφ], E[φ′φ′] (float64, relative to the
# Cauchy–Schwarz scale, max over q = q11 = q22 ∈ {0.1, 1, 10} and ρ ∈ {−0.9, 0, 0.5, 0.9,
# 0.99}) against nested scipy.integrate.quad, from
# benchmarks/results/activation_accuracy.json (``python -m
# torch_ntk.bench.activation_accuracy``; table in docs/benchmarks.md):
#   identity, relu, leaky_relu, abs, erf (closed forms)     ≤ 6e-16
#   gelu, tanh, sigmoid, silu, softplus (Hermite series)    ≤ 7e-12
#   the same by 2-D quadrature at their default degree      0.026, 0.046, 0.023, 0.0029, 7.6e-4
#     (at q = 10: φ(√q·z) turns faster than the nodes are spaced; ≤ 1e-4 near q = 1)
#   elu (α = 1), selu (2-D quadrature, degree 64)            0.017, 0.027 (the kink at 0;
#     ~6e-3 at q = 1, α = 1.3: tests/test_hermite.py holds 1e-2 there)
DEFAULT_QUADRATURE_DEGREE = 64

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946

Expectations = Callable[[Tensor, Tensor, Tensor, float], tuple[Tensor, Tensor]]


def _abrelu_expectations(a: float, b: float, q11: Tensor, q22: Tensor, q12: Tensor):
    """Closed form for φ = a·min(x,0) + b·max(x,0), θ = atan2(√(q11q22 − q12²), q12)::

    E[φφ]   = ((a²+b²)(s + (π−θ) q12) − 2ab (s − θ q12)) / 2π,   s = √(q11 q22 − q12²)
    E[φ′φ′] = ((a²+b²)(π−θ) + 2ab θ) / 2π

    When an argument requires grad (under grad mode), :class:`_ABReLUDual` computes the same
    values with the closed-form derivatives (autograd of atan2/sqrt is infinite at s = 0).
    """
    if torch.is_grad_enabled() and any(isinstance(q, Tensor) and q.requires_grad
                                       for q in (q11, q22, q12)):
        like = next(q for q in (q12, q11, q22) if isinstance(q, Tensor))
        q11, q22, q12 = (q if isinstance(q, Tensor) else torch.as_tensor(
            q, dtype=like.dtype, device=like.device) for q in (q11, q22, q12))
        return _ABReLUDual.apply(q11, q22, q12, float(a), float(b))
    s = torch.sqrt(torch.clamp(q11 * q22 - q12 * q12, min=0))
    theta = torch.atan2(s, q12)
    sq, ab2 = a * a + b * b, 2 * a * b
    e_phi = (sq * (s + (math.pi - theta) * q12) - ab2 * (s - theta * q12)) / (2 * math.pi)
    e_dphi = (sq * (math.pi - theta) + ab2 * theta) / (2 * math.pi)
    return e_phi, e_dphi


class _ABReLUDual(torch.autograd.Function):
    """(E[φφ], E[φ′φ′]) of the ReLU family with their derivatives in closed form (Price's
    theorem, NTK_MATH §9), c = (b − a)², s = √(q11 q22 − q12²)::

        ∂E[φφ]/∂q12 = E[φ′φ′],           ∂E[φφ]/∂q11 = c·s / (4π q11)
        ∂E[φ′φ′]/∂q12 = c / (2π s),       ∂E[φ′φ′]/∂q11 = −c·q12 / (4π q11 s)

    (q22 like q11). E[φ′φ′] has a kink where s = 0 (ρ = ±1: a point paired with itself or
    its negative; its angle θ grows like the distance): there, and wherever rounding cannot
    resolve s (s ≤ 32·√eps·√(q11 q22)), its derivative is the symmetric subgradient 0, the
    value central differences give. Where q11 = 0 the q11-derivatives are taken as 0.
    No double backward.
    """

    @staticmethod
    def forward(ctx, q11, q22, q12, a, b):
        s = torch.sqrt(torch.clamp(q11 * q22 - q12 * q12, min=0))
        theta = torch.atan2(s, q12)
        sq, ab2 = a * a + b * b, 2 * a * b
        e_phi = (sq * (s + (math.pi - theta) * q12) - ab2 * (s - theta * q12)) / (2 * math.pi)
        e_dphi = (sq * (math.pi - theta) + ab2 * theta) / (2 * math.pi)
        ctx.save_for_backward(q11, q22, q12, s, e_dphi)
        ctx.c = (b - a) ** 2
        return e_phi, e_dphi

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_phi, g_dphi):
        q11, q22, q12, s, e_dphi = ctx.saved_tensors
        c = ctx.c
        eps = torch.finfo(s.dtype).eps
        if g_phi is None:
            g_phi = torch.zeros_like(s)
        if g_dphi is None:
            g_dphi = torch.zeros_like(s)
        resolved = s > 32 * math.sqrt(eps) * torch.sqrt(torch.clamp(q11 * q22, min=0))
        inv_s = torch.where(resolved, 1 / torch.where(resolved, s, 1), 0)
        g_dphi = g_dphi * (c / (2 * math.pi)) * inv_s  # ∂E[φ′φ′]/∂q12, the kink's subgradient 0
        grads = []
        for q, needed in ((q11, ctx.needs_input_grad[0]), (q22, ctx.needs_input_grad[1])):
            if not needed:
                grads.append(None)
                continue
            pos = q > 0
            inv_q = torch.where(pos, 1 / torch.where(pos, q, 1), 0)
            g = (g_phi * (c / (4 * math.pi)) * s - g_dphi * 0.5 * q12) * inv_q
            grads.append(g.sum_to_size(q.shape) if g.shape != q.shape else g)
        g12 = None
        if ctx.needs_input_grad[2]:
            g12 = g_phi * e_dphi + g_dphi
            g12 = g12.sum_to_size(q12.shape) if g12.shape != q12.shape else g12
        return grads[0], grads[1], g12, None, None


def _erf_expectations(q11: Tensor, q22: Tensor, q12: Tensor, param: float):
    """E[erf erf] = (2/π) asin(2q12/√((1+2q11)(1+2q22))), E[erf′erf′] = (4/π)/√(d − 4q12²)."""
    d = (1 + 2 * q11) * (1 + 2 * q22)
    e_phi = (2 / math.pi) * torch.asin(torch.clamp(2 * q12 / torch.sqrt(d), -1, 1))
    e_dphi = (4 / math.pi) / torch.sqrt(d - 4 * q12 * q12)
    return e_phi, e_dphi


def _relu_family(a_of_param: Callable[[float], float]) -> Expectations:
    return lambda q11, q22, q12, p: _abrelu_expectations(a_of_param(p), 1.0, q11, q22, q12)


def _where(cond: Tensor, a, b, like: Tensor) -> Tensor:
    """torch.where in the dtype of ``like`` (scalar branches would give float32)."""
    a = a if isinstance(a, Tensor) else torch.full_like(like, a)
    b = b if isinstance(b, Tensor) else torch.full_like(like, b)
    return torch.where(cond, a, b)


def _gelu(x: Tensor, p: float) -> Tensor:
    return F.gelu(x, approximate="tanh" if p else "none")


def _gelu_derivative(x: Tensor, p: float) -> Tensor:
    if p:
        c = math.sqrt(2 / math.pi)
        t = torch.tanh(c * (x + 0.044715 * x**3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)
    return 0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-0.5 * x * x) / math.sqrt(
        2 * math.pi
    )


class Erf(nn.Module):
    """φ(x) = erf(x) (PyTorch has no module for it)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.erf(x)


class Abs(nn.Module):
    """φ(x) = |x|."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.abs(x)


def _no_param(module: nn.Module) -> float:
    return 0.0


def _softplus_beta(module: nn.Softplus) -> float:
    if module.threshold != 20:
        raise ValueError(
            f"nn.Softplus(threshold={module.threshold}) is not supported; use the default "
            "threshold 20"
        )
    return float(module.beta)


@dataclass(frozen=True)
class _Entry:
    """One activation: φ, φ′, the Gaussian expectations' closed form (None: quadrature),
    its default parameter, how to build its module, the module types that compute it
    (``modules``) and how to read the parameter from such a module (``param_of``)."""

    id: int
    fn: Callable[[Tensor, float], Tensor]
    derivative: Callable[[Tensor, float], Tensor]
    closed_form: Optional[Expectations]
    default_param: float
    make_module: Callable[[float], nn.Module]
    description: str
    quadrature_degree: int = 0  # default Gauss–Hermite degree (0: closed form)
    modules: tuple[type, ...] = ()
    param_of: Callable[[nn.Module], float] = _no_param
    # the kinks of φ (points where φ or φ′ is not smooth) as a function of the parameter,
    # for an activation the numeric Hermite series serves by default
    # (``torch_ntk.layers.numeric_series``); None: the op's closed form, series or quadrature
    numeric_kinks: Optional[Callable[[float], tuple]] = None


REGISTRY: dict[str, _Entry] = {
    "identity": _Entry(
        0, lambda x, p: x, lambda x, p: torch.ones_like(x), _relu_family(lambda p: 1.0), 0.0,
        lambda p: nn.Identity(), "φ(x) = x (the ReLU family with a = b = 1)",
    ),
    "relu": _Entry(
        1, lambda x, p: torch.relu(x), lambda x, p: (x > 0).to(x.dtype),
        _relu_family(lambda p: 0.0), 0.0, lambda p: nn.ReLU(), "φ(x) = max(x, 0) (Cho & Saul 2009)",
        modules=(nn.ReLU,),
    ),
    "leaky_relu": _Entry(
        2, lambda x, p: F.leaky_relu(x, p), lambda x, p: _where(x > 0, 1.0, p, x),
        _relu_family(lambda p: p), 0.01, lambda p: nn.LeakyReLU(p),
        "φ(x) = max(x, 0) + p·min(x, 0), p the negative slope",
        modules=(nn.LeakyReLU,), param_of=lambda m: float(m.negative_slope),
    ),
    "abs": _Entry(
        3, lambda x, p: torch.abs(x), lambda x, p: _where(x > 0, 1.0, -1.0, x),
        _relu_family(lambda p: -1.0), 0.0, lambda p: Abs(), "φ(x) = |x| (the ReLU family, a = −1)",
        modules=(Abs,),
    ),
    "erf": _Entry(
        4, lambda x, p: torch.erf(x), lambda x, p: (2 / math.sqrt(math.pi)) * torch.exp(-x * x),
        _erf_expectations, 0.0, lambda p: Erf(), "φ(x) = erf(x) (closed form: Williams 1997)",
        modules=(Erf,),
    ),
    "gelu": _Entry(
        5, _gelu, _gelu_derivative, None, 0.0,
        lambda p: nn.GELU(approximate="tanh" if p else "none"),
        "φ(x) = x·Φ(x); p = 1 selects the tanh approximation", 32,
        modules=(nn.GELU,), param_of=lambda m: 0.0 if m.approximate == "none" else 1.0,
    ),
    "tanh": _Entry(
        6, lambda x, p: torch.tanh(x), lambda x, p: 1 - torch.tanh(x) ** 2, None, 0.0,
        lambda p: nn.Tanh(), "φ(x) = tanh(x)", 64, modules=(nn.Tanh,),
    ),
    "sigmoid": _Entry(
        7, lambda x, p: torch.sigmoid(x),
        lambda x, p: torch.sigmoid(x) * (1 - torch.sigmoid(x)), None, 0.0,
        lambda p: nn.Sigmoid(), "φ(x) = 1 / (1 + e^{−x})", 24, modules=(nn.Sigmoid,),
    ),
    "silu": _Entry(
        8, lambda x, p: F.silu(x),
        lambda x, p: torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x))), None, 0.0,
        lambda p: nn.SiLU(), "φ(x) = x·sigmoid(x)", 32, modules=(nn.SiLU,),
    ),
    "softplus": _Entry(
        9, lambda x, p: F.softplus(x, beta=p, threshold=20.0),
        lambda x, p: _where(p * x > 20, 1.0, torch.sigmoid(p * x), x), None, 1.0,
        lambda p: nn.Softplus(beta=p), "φ(x) = log(1 + e^{βx}) / β (linear where βx > 20)", 24,
        modules=(nn.Softplus,), param_of=_softplus_beta,
    ),
    "elu": _Entry(
        10, lambda x, p: F.elu(x, alpha=p),
        lambda x, p: _where(x > 0, 1.0, p * torch.exp(x), x), None, 1.0,
        lambda p: nn.ELU(alpha=p), "φ(x) = x for x > 0, α(e^x − 1) otherwise", 64,
        modules=(nn.ELU,), param_of=lambda m: float(m.alpha), numeric_kinks=lambda p: (0.0,),
    ),
    "selu": _Entry(
        11, lambda x, p: F.selu(x),
        lambda x, p: _SELU_SCALE * _where(x > 0, 1.0, _SELU_ALPHA * torch.exp(x), x),
        None, 0.0, lambda p: nn.SELU(), "φ(x) = λ·elu(x, α) with Klambauer et al.'s constants", 64,
        modules=(nn.SELU,), numeric_kinks=lambda p: (0.0,),
    ),
}

# Module type → registered name (nn.Identity is not here: lifting skips it).
_BY_MODULE_TYPE: dict[type, str] = {
    t: name for name, entry in REGISTRY.items() for t in entry.modules
}


def module_types() -> tuple[type, ...]:
    """The ``nn.Module`` types that compute a registered activation."""
    return tuple(_BY_MODULE_TYPE)


@dataclass(frozen=True)
class Activation:
    """A registered nonlinearity with its parameter (slope, β or α; 0 when unused).

    ``source`` is the module it was lifted from (None when built by name); it takes no
    part in comparisons.
    """

    name: str
    param: float = 0.0
    source: Optional[nn.Module] = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.name not in REGISTRY:
            raise ValueError(
                f"unknown activation {self.name!r}; registered: {', '.join(sorted(REGISTRY))}"
            )
        if self.name == "softplus" and not self.param > 0:
            raise ValueError(f"softplus beta must be positive; got {self.param}")

    @property
    def id(self) -> int:
        return REGISTRY[self.name].id

    @property
    def default_quadrature_degree(self) -> int:
        """Gauss–Hermite degree used by default (0 for closed-form activations)."""
        return REGISTRY[self.name].quadrature_degree

    @property
    def has_closed_form(self) -> bool:
        return REGISTRY[self.name].closed_form is not None

    def __call__(self, x: Tensor) -> Tensor:
        """φ(x), elementwise."""
        return REGISTRY[self.name].fn(x, self.param)

    def derivative(self, x: Tensor) -> Tensor:
        """φ′(x), elementwise."""
        return REGISTRY[self.name].derivative(x, self.param)

    def module(self) -> nn.Module:
        """A fresh ``nn.Module`` computing φ."""
        return REGISTRY[self.name].make_module(self.param)

    def closed_form(self, q11: Tensor, q22: Tensor, q12: Tensor) -> tuple[Tensor, Tensor]:
        """(E[φ(u)φ(v)], E[φ′(u)φ′(v)]) in closed form, elementwise over broadcast shapes."""
        expectations = REGISTRY[self.name].closed_form
        if expectations is None:
            raise ValueError(f"activation {self.name!r} has no closed form; use quadrature")
        return expectations(q11, q22, q12, self.param)


def from_name(name: str, param: Optional[float] = None) -> Activation:
    """The registered activation ``name`` (its default parameter unless ``param`` is given)."""
    if name not in REGISTRY:
        raise ValueError(
            f"unknown activation {name!r}; registered: {', '.join(sorted(REGISTRY))}"
        )
    return Activation(name, REGISTRY[name].default_param if param is None else float(param))


def from_module(module: nn.Module) -> Optional[Activation]:
    """The registered activation that ``module`` computes, or None if it is not one.

    A module of a registered type, or of a subclass that keeps its ``forward``, is
    that activation, bound to the module (``Activation.source``); a subclass with its
    own ``forward`` computes something else, so it is not one.

    Raises ValueError for a registered module type with unsupported settings
    (Softplus with a threshold other than 20).
    """
    for cls in type(module).__mro__:
        name = _BY_MODULE_TYPE.get(cls)
        if name is not None:
            if type(module).forward is not cls.forward:
                return None
            return Activation(name, REGISTRY[name].param_of(module), module)
    return None


def hermite_rule(degree: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Gauss–Hermite nodes and weights for the weight e^{−t²} (numpy's hermgauss)."""
    if not isinstance(degree, int) or degree < 1:
        raise ValueError(f"quadrature degree must be a positive integer; got {degree!r}")
    nodes, weights = np.polynomial.hermite.hermgauss(degree)
    return torch.as_tensor(nodes, dtype=dtype), torch.as_tensor(weights, dtype=dtype)


class _SafeSqrt(torch.autograd.Function):
    """√x with derivative 0 where x = 0 (instead of ∞)."""

    @staticmethod
    def forward(ctx, x):
        y = torch.sqrt(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return torch.where(y > 0, g / (2 * torch.where(y > 0, y, 1)), 0)


def gaussian_expectations(
    act: Activation,
    q11: Tensor,
    q22: Tensor,
    q12: Tensor,
    degree: int = DEFAULT_QUADRATURE_DEGREE,
) -> tuple[Tensor, Tensor]:
    """(E[φ(u)φ(v)], E[φ′(u)φ′(v)]) by bivariate Gauss–Hermite quadrature, in torch.

    u = √(2q11)·t_i, v = √(2q22)(ρ t_i + √(1−ρ²) t_j), E[g] ≈ (1/π) Σ_ij w_i w_j g(u, v).
    Elementwise over the broadcast shape of the arguments; memory O(numel · degree²).
    The plain-torch oracle for the compiled quadrature.
    """
    q11, q22, q12 = torch.broadcast_tensors(q11, q22, q12)
    t, w = hermite_rule(degree, q11.dtype)
    t, w = t.to(q11.device), w.to(q11.device)
    norm = torch.sqrt(torch.clamp(q11 * q22, min=0))
    rho = torch.where(norm > 0, q12 / torch.where(norm > 0, norm, 1), 0)
    if torch.is_grad_enabled() and rho.requires_grad:
        # differentiable: the clamp passes gradients through (rounding can put ρ past ±1),
        # and √(1 − ρ²) has derivative 0 at ρ = ±1, where it multiplies Σ_j w_j t_j(…) = 0
        # and where ρ is at its extreme (dρ = 0), instead of ∞·0
        rho = rho + (rho.clamp(-1, 1) - rho).detach()
        perp = _SafeSqrt.apply(torch.clamp(1 - rho * rho, min=0))
    else:
        rho = rho.clamp(-1, 1)
        perp = torch.sqrt(torch.clamp(1 - rho * rho, min=0))
    su = torch.sqrt(torch.clamp(2 * q11, min=0))[..., None, None]
    sv = torch.sqrt(torch.clamp(2 * q22, min=0))[..., None, None]
    ti, tj = t[:, None], t[None, :]
    u = su * ti
    v = sv * (rho[..., None, None] * ti + perp[..., None, None] * tj)
    ww = (w[:, None] * w[None, :]) / math.pi
    e_phi = (ww * act(u) * act(v)).sum((-1, -2))
    e_dphi = (ww * act.derivative(u) * act.derivative(v)).sum((-1, -2))
    return e_phi, e_dphi


def quadrature_degree_for(activations: Sequence[Activation], force_quadrature: bool = False) -> int:
    """The largest default Gauss–Hermite degree among ``activations`` (≥ 1; closed forms
    count as DEFAULT_QUADRATURE_DEGREE when ``force_quadrature``)."""
    return max([a.default_quadrature_degree or (
        DEFAULT_QUADRATURE_DEGREE if force_quadrature else 1) for a in activations], default=1)


__all__.append("quadrature_degree_for")


class Elementwise(nn.Module):
    """Any elementwise φ as a module that lifts to the infinite-width limit.

    Args:
        fn: φ, a torch function applied elementwise (``torch.sin``,
            ``lambda x: x * torch.sigmoid(1.702 * x)``); checked on a probe input: a function
            that is not elementwise (its value at an entry depends on other entries, or the
            shape changes) is refused.
        derivative: φ′ (elementwise), or None: by autograd of ``fn`` (the derivative torch
            trains with; where φ jumps it is the almost-everywhere derivative).
        name: a label for reprs and refusals (default: ``fn``'s name).
        kinks: the points t_j where φ or one of its first derivatives is not smooth (ReLU6:
            (0, 6)). The numeric Hermite series integrates each smooth piece between them
            separately (``torch_ntk.layers.numeric_series``); an undeclared kink costs
            accuracy (algebraic instead of geometric convergence), never a crash.
        nngp_fn, ntk_fn: the user's kernel map, both or neither: ``nngp_fn(q12, q11, q22)``
            = E[φ(u)φ(v)] and ``ntk_fn(q12, q11, q22)`` = E[φ′(u)φ′(v)] for
            (u, v) ~ N(0, [[q11, q12], [q12, q22]]), elementwise over broadcast tensors
            (neural-tangents' ``Elementwise(fn, nngp_fn, d_nngp_fn)`` order). Used instead of
            the numeric series.

    Infinite width: E[φ(u)φ(v)] = Σ_k a_k(q11) a_k(q22) ρ^k (Mehler), a_k(q) the Hermite
    coefficients of φ(√q·z), by a Gauss–Legendre rule split at the kinks; pairs the
    truncated series does not meet to 1e-11 (float64) fall back to a 2-D rule split at the
    kinks. φ must vary on scales ≳ 0.5 in x (the panel width of the rules) and have
    E[φ(√q z)²] < ∞ with its mass inside |z| < 13 (exp(x²) is refused with a ValueError).

    Example::

        >>> act = Elementwise(lambda x: x * torch.sigmoid(1.702 * x), name="quick_gelu")
        >>> model = nn.Sequential(nn.Linear(3, 64), act, nn.Linear(64, 1))
    """

    def __init__(self, fn: Callable[[Tensor], Tensor],
                 derivative: Optional[Callable[[Tensor], Tensor]] = None,
                 name: Optional[str] = None, kinks: Sequence[float] = (),
                 nngp_fn: Optional[Callable] = None, ntk_fn: Optional[Callable] = None):
        super().__init__()
        for arg, value in (("fn", fn), ("derivative", derivative), ("nngp_fn", nngp_fn),
                           ("ntk_fn", ntk_fn)):
            if value is not None and not callable(value):
                raise TypeError(f"Elementwise: {arg} must be callable; got "
                                f"{type(value).__name__}")
        if fn is None:
            raise TypeError("Elementwise: fn must be callable; got None")
        if (nngp_fn is None) != (ntk_fn is None):
            raise ValueError("Elementwise: give both nngp_fn and ntk_fn (E[φ(u)φ(v)] and "
                             "E[φ′(u)φ′(v)]) or neither (then the numeric series computes them)")
        try:
            kinks = tuple(sorted(float(t) for t in kinks))
        except (TypeError, ValueError) as error:
            raise TypeError(f"Elementwise: kinks must be a sequence of numbers; got "
                            f"{kinks!r}") from error
        if not all(math.isfinite(t) for t in kinks):
            raise ValueError(f"Elementwise: kinks must be finite; got {kinks}")
        self.fn, self.derivative_fn, self.kinks = fn, derivative, kinks
        self.nngp_fn, self.ntk_fn = nngp_fn, ntk_fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        check_elementwise(self.name, fn)
        if derivative is not None:
            check_elementwise(self.name + " (derivative)", derivative)

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def derivative(self, x: Tensor) -> Tensor:
        """φ′(x), elementwise (``derivative`` or autograd of ``fn``)."""
        if self.derivative_fn is not None:
            return self.derivative_fn(x)
        return autograd_derivative(self.fn, x)

    def extra_repr(self) -> str:
        return f"{self.name}, kinks={self.kinks}" if self.kinks else self.name


def autograd_derivative(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """φ′(x) of an elementwise ``fn`` by autograd (0 where fn does not depend on x)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        y = fn(x)
        if not y.requires_grad:
            return torch.zeros_like(x)
        (g,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
    return torch.zeros_like(x) if g is None else g.detach()


def check_elementwise(name: str, fn: Callable[[Tensor], Tensor]) -> None:
    """ValueError unless ``fn`` maps a probe tensor to one of its shape, entry by entry:
    fn(x)[perm] equals fn(x[perm]) and fn of one entry equals that entry of fn(x)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64) * 2
    hint = ("the limit needs an elementwise φ (one value per entry, from that entry only); "
            "use torch_ntk.monte_carlo_kernels or empirical_ntk for other functions")
    try:
        y = fn(x)
    except Exception as error:  # noqa: BLE001 - the user's function: report any failure
        raise ValueError(f"Elementwise({name}): fn failed on a probe tensor [4, 5] float64 "
                         f"({type(error).__name__}: {error}); {hint}") from error
    if not isinstance(y, Tensor) or y.shape != x.shape:
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ValueError(f"Elementwise({name}): fn is not elementwise: a [4, 5] input gave "
                         f"{shape}; {hint}")
    perm = torch.randperm(x.numel(), generator=g)
    permuted = fn(x.reshape(-1)[perm].reshape(4, 5)).reshape(-1)
    single = torch.stack([fn(x.reshape(-1)[i:i + 1])[0] for i in range(3)])
    same = torch.allclose(permuted, y.reshape(-1)[perm], rtol=1e-12, atol=1e-12,
                          equal_nan=True) and torch.allclose(
        single, y.reshape(-1)[:3], rtol=1e-12, atol=1e-12, equal_nan=True)
    if not same:
        raise ValueError(f"Elementwise({name}): fn is not elementwise: its value at an entry "
                         f"depends on the other entries (checked on a probe input); {hint}")


__all__ += ["autograd_derivative", "check_elementwise"]
