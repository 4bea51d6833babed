"""The infinite-width kernel state a layer's rule maps to the next (neural-tangents' ``Kernel``).

For a batch of input pairs (x, x′) the state after a layer holds

- ``nngp`` K: the covariance of the layer's features (per channel, averaged over
  channels), and ``ntk`` T: their NTK, each of shape

  - ``[B..., H, W, H′, W′]`` with ``sets == 2`` (full position planes: K_{p,p′} for every
    position p of x and p′ of x′),
  - ``[B..., H, W]`` with ``sets == 1`` (same-position diagonals K_{p,p}),
  - ``[B...]`` with ``sets == 0`` (after the readout: plain features);

  B... are the batch dims of the pairs ([N] for self pairs, [N1, N2] for cross pairs);
- ``var1``, ``var2``: the variances K(x, x)_{p,p} and K(x′, x′)_{p′,p′} of the current
  features, viewed to broadcast against ``nngp`` (set by the walker for rules registered
  with ``variances=True``, None otherwise);
- ``degree``, ``force_quadrature``, ``series``: how activations without a closed form
  integrate (``series``: ``quadrature_degree`` was left None, so ELU/SELU take the numeric
  Hermite series of ``torch_ntk.layers.numeric_series``);
- ``gain_term``: True right after an affine LayerNorm, whose trained gain γ adds to each
  feature's NTK the product u·u′ of the features themselves (``ntk`` holds its mean, the
  normalized K): an activation then needs E[φ′(u)φ′(v)·u·v], not E[φ′φ′]·K (set by the
  LayerNorm rule, read by the activation rule, dropped by every other ``replace``).

A rule returns ``state.replace(nngp=..., ntk=..., sets=...)`` and switches on no other
layer type.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

__all__ = ["KernelState"]


@dataclass(frozen=True)
class KernelState:
    """K, T (and the per-side variances) of a batch of pairs after a layer (module doc)."""

    nngp: Tensor
    ntk: Tensor
    sets: int
    var1: Optional[Tensor] = None
    var2: Optional[Tensor] = None
    degree: int = 0
    force_quadrature: bool = False
    gain_term: bool = False
    series: bool = False

    @classmethod
    def of_inputs(cls, gram: Tensor, sets: int, degree: int = 0,
                  force_quadrature: bool = False, series: bool = False) -> "KernelState":
        """The state at the input: K the input Gram (over positions), T = 0."""
        return cls(gram, torch.zeros_like(gram), sets, None, None, degree, force_quadrature,
                   series=series)

    def replace(self, **changes) -> "KernelState":
        """A copy with ``changes`` (the per-side variances and ``gain_term`` are dropped
        unless given: they belong to one layer's input)."""
        changes.setdefault("var1", None)
        changes.setdefault("var2", None)
        changes.setdefault("gain_term", False)
        return dataclasses.replace(self, **changes)

    def variance(self) -> Tensor:
        """Var at each position of a self-pair state (pairs (x, x)): [B, H, W] or [B]."""
        if self.sets < 2:
            return self.nngp
        b, h, w = self.nngp.shape[0], self.nngp.shape[-2], self.nngp.shape[-1]
        return torch.diagonal(self.nngp.reshape(b, h * w, h * w), dim1=1, dim2=2).reshape(b, h, w)

    def position_axes(self) -> range:
        """The position axes of ``nngp`` (h, w or h, w, h′, w′; empty after the readout)."""
        return range(self.nngp.dim() - 2 * self.sets, self.nngp.dim())
