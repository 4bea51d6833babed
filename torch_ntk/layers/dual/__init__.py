"""Closed-form dual activations (neural-tangents' families), one file each.

Each family is an :class:`~torch_ntk.activations.Elementwise` subclass whose kernel map is
its closed form ``(E[φ(u)φ(v)], E[φ′(u)φ′(v)])`` for (u, v) ~ N(0, [[q11, q12], [q12, q22]]);
it lifts through ``torch_ntk.layers.elementwise`` like any Elementwise and the limit uses
the closed form instead of the numeric series:

- ``sin``: Sin(a, b, c) = a·sin(b x + c), Cos, Rbf(γ) = √2 sin(√(2γ) x + π/4)
- ``exp``: Exp(a, b) = a·e^{b x}
- ``gaussian``: Gaussian(a, b) = a·e^{b x²}
- ``sign``: Sign() = sign(x)
- ``abrelu``: ABReLU(a, b) = a·min(x, 0) + b·max(x, 0)
- ``monomial``: RectifiedMonomial(n) = max(x, 0)^n (n = 0 … 3; Cho & Saul 2009)
- ``polynomial``: Polynomial(coef) = Σ_i coef_i x^i, Monomial(n) = x^n (exact finite
  Hermite series)

φ′ is the derivative autograd computes (0 for Sign and the step n = 0, as torch trains).

A family with real parameters names them in ``PARAMS`` (its constructor's arguments, read
back as attributes) and gives ``kernel_map(q12, q11, q22, **params) -> (E[φφ], E[φ′φ′])``
in torch that takes numbers or 0-dim tensors: ``analytic_kernels(...,
activation_params=...)`` overrides them and differentiates through it
(``torch_ntk.analytic.activation_params``). ``DISCRETE`` names integer settings (degrees).
"""

from .abrelu import ABReLU
from .exp import Exp
from .gaussian import Gaussian
from .monomial import RectifiedMonomial
from .polynomial import Monomial, Polynomial
from .sign import Sign
from .sin import Cos, Rbf, Sin

__all__ = ["ABReLU", "Cos", "Exp", "Gaussian", "Monomial", "Polynomial", "Rbf",
           "RectifiedMonomial", "Sign", "Sin"]


def _register_functionals() -> None:
    """torch.sin / x.sin(), cos, exp and sign under torch.fx lift to their families."""
    import torch

    from ..base import lifts_functional

    for name, family in (("sin", Sin), ("cos", Cos), ("exp", Exp), ("sign", Sign)):
        build = (lambda family: lambda call: [family()])(family)
        lifts_functional(("call_function", getattr(torch, name)), ("call_method", name))(build)


_register_functionals()
