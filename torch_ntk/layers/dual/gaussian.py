"""Gaussian(a, b) = a·e^{b x²} (neural-tangents' ``Gaussian``; b < 0 for a bump).

With Σ = [[q11, q12], [q12, q22]] and D = det(I − 2bΣ) = (1 − 2b q11)(1 − 2b q22) − 4b² q12²,
E[e^{b(u² + v²)}] = D^{−1/2} and E[uv e^{b(u² + v²)}] = D^{−1/2}·[Σ(I − 2bΣ)^{−1}]_12 = q12/D^{3/2}:

    E[φ(u)φ(v)] = a²/√D,   E[φ′(u)φ′(v)] = 4a²b²·q12/D^{3/2}     (φ′ = 2abx·e^{b x²})

finite only while 1 − 2b q > 0 for both variances (b ≤ 0 always): otherwise a ValueError.
:func:`gaussian_dual` is differentiable in a and b when they are 0-dim tensors.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ...activations import Elementwise

__all__ = ["Gaussian", "gaussian_dual"]


def gaussian_dual(q12: Tensor, q11: Tensor, q22: Tensor, a, b) -> tuple[Tensor, Tensor]:
    """(E[φ(u)φ(v)], E[φ′(u)φ′(v)]) of φ = a·e^{b x²} (module doc); a, b numbers or 0-dim
    tensors. ValueError where E[φ(u)²] is infinite (b > 0 and 2b·q ≥ 1)."""
    if b > 0 and bool((2 * b * torch.maximum(q11, q22) >= 1).any()):
        raise ValueError(f"Gaussian(b={float(b)}): E[φ(u)²] is infinite for a variance "
                         f"q ≥ 1/(2b) = {1 / (2 * float(b)):.4g}; use b ≤ 0 or smaller inputs")
    det = (1 - 2 * b * q11) * (1 - 2 * b * q22) - 4 * b * b * q12 * q12
    return a * a / torch.sqrt(det), 4 * a * a * b * b * q12 / det ** 1.5


class Gaussian(Elementwise):
    """φ(x) = a·e^{b x²}, closed-form dual (module doc)."""

    PARAMS: ClassVar[tuple[str, ...]] = ("a", "b")
    kernel_map = staticmethod(gaussian_dual)

    def __init__(self, a: float = 1.0, b: float = -1.0):
        a, b = float(a), float(b)
        self.a, self.b = a, b
        super().__init__(lambda x: a * torch.exp(b * x * x),
                         lambda x: 2 * a * b * x * torch.exp(b * x * x),
                         name=f"gaussian(a={a}, b={b})",
                         nngp_fn=lambda q12, q11, q22: gaussian_dual(q12, q11, q22, a, b)[0],
                         ntk_fn=lambda q12, q11, q22: gaussian_dual(q12, q11, q22, a, b)[1])
