"""Exp(a, b) = a·e^{b x} (neural-tangents' ``Exp``).

E[e^{b(u + v)}] = e^{b² Var(u + v)/2}, so

    E[φ(u)φ(v)] = a²·e^{b²(q11 + q22 + 2q12)/2},   E[φ′(u)φ′(v)] = b²·E[φ(u)φ(v)]
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...activations import Elementwise

__all__ = ["Exp"]


class Exp(Elementwise):
    """φ(x) = a·e^{b x}, closed-form dual (module doc)."""

    def __init__(self, a: float = 1.0, b: float = 1.0):
        a, b = float(a), float(b)
        self.a, self.b = a, b

        def nngp(q12: Tensor, q11: Tensor, q22: Tensor) -> Tensor:
            return a * a * torch.exp(b * b * (q11 + q22 + 2 * q12) / 2)

        def ntk(q12: Tensor, q11: Tensor, q22: Tensor) -> Tensor:
            return b * b * nngp(q12, q11, q22)

        super().__init__(lambda x: a * torch.exp(b * x), lambda x: a * b * torch.exp(b * x),
                         name=f"exp(a={a}, b={b})", nngp_fn=nngp, ntk_fn=ntk)
