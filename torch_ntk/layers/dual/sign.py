"""Sign() = sign(x) (neural-tangents' ``Sign``).

E[sign(u) sign(v)] = (2/π)·asin(ρ), ρ = q12/√(q11 q22) (0 where a variance is 0: sign(0) = 0);
φ′ = 0 almost everywhere — the derivative autograd computes, so E[φ′φ′] = 0 (a network
trained by torch gets no gradient through a sign).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...activations import Elementwise

__all__ = ["Sign"]


class Sign(Elementwise):
    """φ(x) = sign(x), closed-form dual (module doc)."""

    def __init__(self):
        def nngp(q12: Tensor, q11: Tensor, q22: Tensor) -> Tensor:
            norm = torch.sqrt(torch.clamp(q11 * q22, min=0))
            rho = torch.where(norm > 0, q12 / torch.where(norm > 0, norm, 1), 0)
            return (2 / math.pi) * torch.asin(rho.clamp(-1, 1))

        def ntk(q12: Tensor, q11: Tensor, q22: Tensor) -> Tensor:
            return torch.zeros_like(q12 + q11 + q22)

        super().__init__(torch.sign, torch.zeros_like, name="sign", kinks=(0.0,),
                         nngp_fn=nngp, ntk_fn=ntk)
