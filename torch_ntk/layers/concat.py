"""Concatenation along the features of an MLP or the channels of a CNN, a join
(``torch.cat([a, b], dim=1)``).

Infinite width. The next layer averages over all features/channels; the parts' widths
w_i grow in fixed ratios, so the kernels of the parts enter with their share of the width
(no cross terms: each feature belongs to one part):

    K ← Σ_i (w_i / Σ_j w_j)·K_i,   T ← Σ_i (w_i / Σ_j w_j)·T_i

The parts need not be independent. An activation right after a concatenation would see
features of different variances (one per part), which its rule does not model: the spec
refuses it (apply the activation in each branch, before the concatenation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional, Union

from torch import nn

from .base import kernel_rule
from .state import KernelState

__all__ = ["Concat"]


@dataclass(frozen=True)
class Concat:
    """The features (MLP) or channels (CNN) of the node's inputs, in their order.

    Attributes:
        widths: w_i, the features/channels of each input (at least two, each ≥ 1).
        position, source: where it was lifted from (None by hand).
    """

    role: ClassVar[str] = "join"

    widths: tuple
    position: Optional[Union[int, str]] = field(default=None, compare=False)
    source: Optional[nn.Module] = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        widths = tuple(self.widths)
        object.__setattr__(self, "widths", widths)
        if len(widths) < 2 or not all(isinstance(w, int) and w >= 1 for w in widths):
            raise ValueError(f"Concat: widths needs one positive int per input, at least two; "
                             f"got {widths}")

    @property
    def arity(self) -> int:
        """The number of inputs the node reads."""
        return len(self.widths)

    @property
    def width(self) -> int:
        """Σ_i w_i, the features/channels of the output."""
        return sum(self.widths)


@kernel_rule(Concat, joins=True)
def concat_kernel(layer: Concat, states: tuple) -> KernelState:
    """K ← Σ_i (w_i/Σw)·K_i, T ← Σ_i (w_i/Σw)·T_i (module doc)."""
    total = float(layer.width)
    nngp = sum((w / total) * s.nngp for w, s in zip(layer.widths, states))
    ntk = sum((w / total) * s.ntk for w, s in zip(layer.widths, states))
    return states[0].replace(nngp=nngp, ntk=ntk)
