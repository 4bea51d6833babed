"""Sin(a, b, c) = a·sin(b x + c); Cos and Rbf are Sins (neural-tangents' ``Sin``, ``Cos``, ``Rbf``).

With sin α sin β = ½[cos(α − β) − cos(α + β)] and E[cos(b(u ± v) + d)] =
cos(d)·e^{−b² Var(u ± v)/2}:

    E[φ(u)φ(v)]   = a²/2 · (e^{−b²(q11 + q22 − 2q12)/2} − cos(2c)·e^{−b²(q11 + q22 + 2q12)/2})
    E[φ′(u)φ′(v)] = a²b²/2 · (e^{−b²(q11 + q22 − 2q12)/2} + cos(2c)·e^{−b²(q11 + q22 + 2q12)/2})

(:func:`sin_dual`; differentiable in a, b, c when they are 0-dim tensors). Cos(a, b, c) is
Sin(a, b, c + π/2); Rbf(γ) is Sin(√2, √(2γ), π/4), differentiable in γ.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from ...activations import Elementwise

__all__ = ["Cos", "Rbf", "Sin", "sin_dual"]


def sin_dual(q12: Tensor, q11: Tensor, q22: Tensor, a, b, c) -> tuple[Tensor, Tensor]:
    """(E[φ(u)φ(v)], E[φ′(u)φ′(v)]) of φ = a·sin(b x + c) (module doc); a, b, c numbers or
    0-dim tensors."""
    minus = torch.exp(-b * b * (q11 + q22 - 2 * q12) / 2)
    plus = torch.exp(-b * b * (q11 + q22 + 2 * q12) / 2)
    cos2c = torch.cos(2 * c) if isinstance(c, Tensor) else math.cos(2 * c)
    return a * a / 2 * (minus - cos2c * plus), a * a * b * b / 2 * (minus + cos2c * plus)


class Sin(Elementwise):
    """φ(x) = a·sin(b x + c), closed-form dual (module doc)."""

    PARAMS: ClassVar[tuple[str, ...]] = ("a", "b", "c")
    kernel_map = staticmethod(sin_dual)

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0):
        a, b, c = float(a), float(b), float(c)
        self.a, self.b, self.c = a, b, c
        super().__init__(lambda x: a * torch.sin(b * x + c),
                         lambda x: a * b * torch.cos(b * x + c),
                         name=f"sin(a={a}, b={b}, c={c})",
                         nngp_fn=lambda q12, q11, q22: sin_dual(q12, q11, q22, a, b, c)[0],
                         ntk_fn=lambda q12, q11, q22: sin_dual(q12, q11, q22, a, b, c)[1])


class Cos(Sin):
    """φ(x) = a·cos(b x + c) = a·sin(b x + c + π/2)."""

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0):
        super().__init__(a, b, float(c) + math.pi / 2)
        self.c = float(c)  # its own phase (the Sin's is c + π/2)

    @staticmethod
    def kernel_map(q12: Tensor, q11: Tensor, q22: Tensor, a, b, c) -> tuple[Tensor, Tensor]:
        return sin_dual(q12, q11, q22, a, b, c + math.pi / 2)


class Rbf(Sin):
    """φ(x) = √2·sin(√(2γ) x + π/4): E[φ(u)φ(v)] = e^{−γ(q11 + q22 − 2q12)} (an RBF kernel
    of the pre-activations; neural-tangents' ``Rbf``)."""

    PARAMS: ClassVar[tuple[str, ...]] = ("gamma",)

    def __init__(self, gamma: float = 1.0):
        if not gamma > 0:
            raise ValueError(f"Rbf: gamma must be positive; got {gamma}")
        super().__init__(math.sqrt(2), math.sqrt(2 * float(gamma)), math.pi / 4)
        self.gamma = float(gamma)

    @staticmethod
    def kernel_map(q12: Tensor, q11: Tensor, q22: Tensor, gamma) -> tuple[Tensor, Tensor]:
        b = torch.sqrt(2 * gamma) if isinstance(gamma, Tensor) else math.sqrt(2 * gamma)
        return sin_dual(q12, q11, q22, math.sqrt(2), b, math.pi / 4)
