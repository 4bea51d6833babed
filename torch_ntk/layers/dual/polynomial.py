"""Polynomial(coef) = Σ_i coef_i x^i and Monomial(n) = x^n: an exact, finite Hermite series.

φ(√q z) is a polynomial of degree d in z, so its Hermite coefficients a_k(q) vanish for
k > d and are exact from probabilists' Gauss–Hermite with d + 1 nodes; Mehler's formula
then has d + 1 terms:

    E[φ(u)φ(v)] = Σ_{k≤d} a_k(q11) a_k(q22) ρ^k,   a_k(q) = E[φ(√q z) He_k(z)]/√(k!),

and likewise with φ′ (degree d − 1). Exact up to rounding (no truncation, no quadrature
error). :meth:`Polynomial.kernel_map` takes the coefficients as numbers or 0-dim tensors
(differentiable in them: the a_k are linear in the coefficients).
"""

from __future__ import annotations

import math
from typing import ClassVar, Sequence

import numpy as np
import torch
from torch import Tensor

from ...activations import Elementwise

__all__ = ["Monomial", "Polynomial"]


def _series(coef: Sequence[float], q12: Tensor, q11: Tensor, q22: Tensor) -> Tensor:
    d = len(coef) - 1
    like = q12 + q11 + q22
    if d < 0:
        return torch.zeros_like(like)
    z, w = np.polynomial.hermite_e.hermegauss(d + 1)
    w = w / math.sqrt(2 * math.pi)
    z, w = (torch.as_tensor(t, dtype=like.dtype, device=like.device) for t in (z, w))
    he = [torch.ones_like(z), z]
    for k in range(1, d):
        he.append(z * he[k] - k * he[k - 1])
    he = torch.stack(he[:d + 1]) / torch.sqrt(torch.as_tensor(
        [math.factorial(k) for k in range(d + 1)], dtype=like.dtype, device=like.device))[:, None]

    def coefficients(q: Tensor) -> Tensor:  # [..., d + 1]
        x = torch.sqrt(torch.clamp(q, min=0))[..., None] * z
        phi = sum(c * x ** i for i, c in enumerate(coef))
        return (phi * w)[..., None, :].mul(he).sum(-1)

    norm = torch.sqrt(torch.clamp(q11 * q22, min=0))
    rho = torch.where(norm > 0, q12 / torch.where(norm > 0, norm, 1), 0).clamp(-1, 1)
    a1, a2 = coefficients(q11), coefficients(q22)
    out = torch.zeros_like(like)
    for k in range(d, -1, -1):
        out = out * rho + a1[..., k] * a2[..., k]
    return out


class Polynomial(Elementwise):
    """φ(x) = Σ_i coef[i]·x^i, closed-form dual (module doc)."""

    PARAMS: ClassVar[tuple[str, ...]] = ("coef",)

    @staticmethod
    def kernel_map(q12: Tensor, q11: Tensor, q22: Tensor, coef) -> tuple[Tensor, Tensor]:
        """(E[φ(u)φ(v)], E[φ′(u)φ′(v)]) for coefficients ``coef`` (numbers or 0-dim
        tensors, one per power; φ′'s are i·coef[i])."""
        coef = list(coef)
        dcoef = [i * c for i, c in enumerate(coef)][1:]
        return _series(coef, q12, q11, q22), _series(dcoef, q12, q11, q22)

    def __init__(self, coef: Sequence[float]):
        coef = [float(c) for c in coef]
        if not coef or not all(math.isfinite(c) for c in coef):
            raise ValueError(f"Polynomial: coef must be a non-empty sequence of finite "
                             f"numbers; got {coef!r}")
        self.coef = coef
        dcoef = [i * c for i, c in enumerate(coef)][1:]

        def fn(x: Tensor) -> Tensor:
            return sum(c * x ** i for i, c in enumerate(coef)) + 0 * x

        def dfn(x: Tensor) -> Tensor:
            return sum(c * x ** i for i, c in enumerate(dcoef)) + 0 * x

        super().__init__(fn, dfn, name=f"polynomial({coef})",
                         nngp_fn=lambda q12, q11, q22: _series(coef, q12, q11, q22),
                         ntk_fn=lambda q12, q11, q22: _series(dcoef, q12, q11, q22))


class Monomial(Polynomial):
    """φ(x) = x^n."""

    PARAMS: ClassVar[tuple[str, ...]] = ()  # the degree is an integer (Polynomial: coef)
    DISCRETE: ClassVar[tuple[str, ...]] = ("degree",)

    def __init__(self, degree: int):
        if not isinstance(degree, int) or degree < 0:
            raise ValueError(f"Monomial: degree must be a non-negative int; got {degree!r}")
        super().__init__([0.0] * degree + [1.0])
