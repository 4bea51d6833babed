"""ABReLU(a, b) = a·min(x, 0) + b·max(x, 0) (neural-tangents' ``ABRelu``), any slopes.

φ = (b − a)·relu(x) + a·x and E[relu(u)·v] = q12/2, so with ReLU's closed form (Cho & Saul
2009, ``torch_ntk.activations``):

    E[φ(u)φ(v)]   = (b − a)²·E[relu(u) relu(v)] + ab·q12
    E[φ′(u)φ′(v)] = (b − a)²·E[relu′(u) relu′(v)] + ab

Polynomial in (a, b), so :func:`abrelu_dual` is differentiable in a and b when they are
0-dim tensors (``analytic_kernels(..., activation_params={"a": ..., "b": ...})``); ReLU's
closed form carries the kink at ρ = ±1 (its derivative there is the symmetric subgradient).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ...activations import Elementwise, from_name

__all__ = ["ABReLU", "abrelu_dual"]

_RELU = from_name("relu")


def abrelu_dual(q12: Tensor, q11: Tensor, q22: Tensor, a, b) -> tuple[Tensor, Tensor]:
    """(E[φ(u)φ(v)], E[φ′(u)φ′(v)]) of φ = a·min(x, 0) + b·max(x, 0) (module doc); a, b
    numbers or 0-dim tensors; q's broadcast."""
    e_phi, e_dphi = _RELU.closed_form(q11, q22, q12)
    c = (b - a) ** 2
    return c * e_phi + a * b * q12, c * e_dphi + a * b


class ABReLU(Elementwise):
    """φ(x) = a·min(x, 0) + b·max(x, 0), closed-form dual (module doc)."""

    PARAMS: ClassVar[tuple[str, ...]] = ("a", "b")
    kernel_map = staticmethod(abrelu_dual)

    def __init__(self, a: float = 0.0, b: float = 1.0):
        a, b = float(a), float(b)
        self.a, self.b = a, b
        super().__init__(lambda x: a * torch.clamp(x, max=0) + b * torch.clamp(x, min=0),
                         lambda x: torch.where(x > 0, b, a).to(x.dtype),
                         name=f"abrelu(a={a}, b={b})", kinks=(0.0,),
                         nngp_fn=lambda q12, q11, q22: abrelu_dual(q12, q11, q22, a, b)[0],
                         ntk_fn=lambda q12, q11, q22: abrelu_dual(q12, q11, q22, a, b)[1])
