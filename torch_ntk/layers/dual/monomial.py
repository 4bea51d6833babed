"""RectifiedMonomial(n) = max(x, 0)^n, n = 0 … 3 (Cho & Saul 2009's arc-cosine kernels).

With θ = arccos ρ, ρ = q12/√(q11 q22):

    E[φ(u)φ(v)] = (q11 q22)^{n/2} J_n(θ)/(2π),
    J_0 = π − θ,   J_1 = sin θ + (π − θ) cos θ,
    J_2 = 3 sin θ cos θ + (π − θ)(1 + 2 cos²θ),
    J_3 = 4 sin³θ + 15 sin θ cos²θ + (π − θ)(9 sin²θ cos θ + 15 cos³θ),

and φ′ = n·max(x, 0)^{n−1}, so E[φ′(u)φ′(v)] = n² (q11 q22)^{(n−1)/2} J_{n−1}(θ)/(2π)
(0 for n = 0: the step's derivative autograd computes).
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from ...activations import Elementwise

__all__ = ["RectifiedMonomial"]


def _j(n: int, theta: Tensor) -> Tensor:
    s, c, r = torch.sin(theta), torch.cos(theta), math.pi - theta
    if n == 0:
        return r
    if n == 1:
        return s + r * c
    if n == 2:
        return 3 * s * c + r * (1 + 2 * c * c)
    return 4 * s ** 3 + 15 * s * c * c + r * (9 * s * s * c + 15 * c ** 3)


def _expectation(n: int, q12: Tensor, q11: Tensor, q22: Tensor) -> Tensor:
    prod = torch.clamp(q11 * q22, min=0)
    norm = torch.sqrt(prod)
    rho = torch.where(norm > 0, q12 / torch.where(norm > 0, norm, 1), 0).clamp(-1, 1)
    return prod ** (n / 2) * _j(n, torch.arccos(rho)) / (2 * math.pi)


class RectifiedMonomial(Elementwise):
    """φ(x) = max(x, 0)^n, n ∈ {0, 1, 2, 3}, closed-form dual (module doc)."""

    PARAMS: ClassVar[tuple[str, ...]] = ()
    DISCRETE: ClassVar[tuple[str, ...]] = ("degree",)  # an integer: no gradient

    def __init__(self, degree: int = 1):
        if degree not in (0, 1, 2, 3):
            raise ValueError(f"RectifiedMonomial: degree must be 0, 1, 2 or 3; got {degree!r} "
                             "(higher degrees: Elementwise(lambda x: torch.relu(x) ** n, "
                             "kinks=(0,)) takes the numeric series)")
        n = int(degree)
        self.degree = n

        def ntk(q12: Tensor, q11: Tensor, q22: Tensor) -> Tensor:
            if n == 0:
                return torch.zeros_like(q12 + q11 + q22)
            return n * n * _expectation(n - 1, q12, q11, q22)

        fn = (lambda x: (x > 0).to(x.dtype)) if n == 0 else (
            lambda x: torch.clamp(x, min=0) ** n)
        dfn = (lambda x: torch.zeros_like(x)) if n == 0 else (
            lambda x: n * torch.clamp(x, min=0) ** (n - 1) * (x > 0).to(x.dtype))
        super().__init__(fn, dfn, name=f"rectified_monomial({n})", kinks=(0.0,),
                         nngp_fn=lambda q12, q11, q22: _expectation(n, q12, q11, q22),
                         ntk_fn=ntk)
