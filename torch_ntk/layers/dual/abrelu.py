"""ABReLU(a, b) = a·min(x, 0) + b·max(x, 0) (neural-tangents' ``ABRelu``), any slopes.

For b ≠ 0, φ = b·leaky_relu(x, a/b), so its expectations are b² times the registry's
closed form of leaky_relu(a/b) (Cho & Saul 2009, ``torch_ntk.activations``); for b = 0,
φ(x) = −a·relu(−x), and (−u, −v) has the law of (u, v): a² times ReLU's.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...activations import Elementwise, from_name

__all__ = ["ABReLU"]


class ABReLU(Elementwise):
    """φ(x) = a·min(x, 0) + b·max(x, 0), closed-form dual (module doc)."""

    def __init__(self, a: float = 0.0, b: float = 1.0):
        a, b = float(a), float(b)
        self.a, self.b = a, b
        base = from_name("leaky_relu", a / b) if b != 0 else from_name("relu")
        scale = b * b if b != 0 else a * a

        def nngp(q12: Tensor, q11: Tensor, q22: Tensor) -> Tensor:
            return scale * base.closed_form(q11, q22, q12)[0]

        def ntk(q12: Tensor, q11: Tensor, q22: Tensor) -> Tensor:
            return scale * base.closed_form(q11, q22, q12)[1]

        super().__init__(lambda x: a * torch.clamp(x, max=0) + b * torch.clamp(x, min=0),
                         lambda x: torch.where(x > 0, b, a).to(x.dtype),
                         name=f"abrelu(a={a}, b={b})", kinks=(0.0,), nngp_fn=nngp, ntk_fn=ntk)
