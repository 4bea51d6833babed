"""Sin(a, b, c) = a·sin(b x + c); Cos and Rbf are Sins (neural-tangents' ``Sin``, ``Cos``, ``Rbf``).

With sin α sin β = ½[cos(α − β) − cos(α + β)] and E[cos(b(u ± v) + d)] =
cos(d)·e^{−b² Var(u ± v)/2}:

    E[φ(u)φ(v)]   = a²/2 · (e^{−b²(q11 + q22 − 2q12)/2} − cos(2c)·e^{−b²(q11 + q22 + 2q12)/2})
    E[φ′(u)φ′(v)] = a²b²/2 · (e^{−b²(q11 + q22 − 2q12)/2} + cos(2c)·e^{−b²(q11 + q22 + 2q12)/2})
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...activations import Elementwise

__all__ = ["Cos", "Rbf", "Sin"]


class Sin(Elementwise):
    """φ(x) = a·sin(b x + c), closed-form dual (module doc)."""

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0):
        a, b, c = float(a), float(b), float(c)
        self.a, self.b, self.c = a, b, c

        def nngp(q12: Tensor, q11: Tensor, q22: Tensor) -> Tensor:
            minus = torch.exp(-b * b * (q11 + q22 - 2 * q12) / 2)
            plus = torch.exp(-b * b * (q11 + q22 + 2 * q12) / 2)
            return a * a / 2 * (minus - math.cos(2 * c) * plus)

        def ntk(q12: Tensor, q11: Tensor, q22: Tensor) -> Tensor:
            minus = torch.exp(-b * b * (q11 + q22 - 2 * q12) / 2)
            plus = torch.exp(-b * b * (q11 + q22 + 2 * q12) / 2)
            return a * a * b * b / 2 * (minus + math.cos(2 * c) * plus)

        super().__init__(lambda x: a * torch.sin(b * x + c),
                         lambda x: a * b * torch.cos(b * x + c),
                         name=f"sin(a={a}, b={b}, c={c})", nngp_fn=nngp, ntk_fn=ntk)


class Cos(Sin):
    """φ(x) = a·cos(b x + c) = a·sin(b x + c + π/2)."""

    def __init__(self, a: float = 1.0, b: float = 1.0, c: float = 0.0):
        super().__init__(a, b, float(c) + math.pi / 2)


class Rbf(Sin):
    """φ(x) = √2·sin(√(2γ) x + π/4): E[φ(u)φ(v)] = e^{−γ(q11 + q22 − 2q12)} (an RBF kernel
    of the pre-activations; neural-tangents' ``Rbf``)."""

    def __init__(self, gamma: float = 1.0):
        if not gamma > 0:
            raise ValueError(f"Rbf: gamma must be positive; got {gamma}")
        super().__init__(math.sqrt(2), math.sqrt(2 * float(gamma)), math.pi / 4)
