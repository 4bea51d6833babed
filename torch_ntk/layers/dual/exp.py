"""Exp(a, b) = a·e^{b x} (neural-tangents' ``Exp``).

E[e^{b(u + v)}] = e^{b² Var(u + v)/2}, so

    E[φ(u)φ(v)] = a²·e^{b²(q11 + q22 + 2q12)/2},   E[φ′(u)φ′(v)] = b²·E[φ(u)φ(v)]

(:func:`exp_dual`; differentiable in a and b when they are 0-dim tensors).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ...activations import Elementwise

__all__ = ["Exp", "exp_dual"]


def exp_dual(q12: Tensor, q11: Tensor, q22: Tensor, a, b) -> tuple[Tensor, Tensor]:
    """(E[φ(u)φ(v)], E[φ′(u)φ′(v)]) of φ = a·e^{b x} (module doc); a, b numbers or 0-dim
    tensors."""
    e_phi = a * a * torch.exp(b * b * (q11 + q22 + 2 * q12) / 2)
    return e_phi, b * b * e_phi


class Exp(Elementwise):
    """φ(x) = a·e^{b x}, closed-form dual (module doc)."""

    PARAMS: ClassVar[tuple[str, ...]] = ("a", "b")
    kernel_map = staticmethod(exp_dual)

    def __init__(self, a: float = 1.0, b: float = 1.0):
        a, b = float(a), float(b)
        self.a, self.b = a, b
        super().__init__(lambda x: a * torch.exp(b * x), lambda x: a * b * torch.exp(b * x),
                         name=f"exp(a={a}, b={b})",
                         nngp_fn=lambda q12, q11, q22: exp_dual(q12, q11, q22, a, b)[0],
                         ntk_fn=lambda q12, q11, q22: exp_dual(q12, q11, q22, a, b)[1])
