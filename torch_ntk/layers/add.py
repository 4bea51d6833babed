"""The residual sum, a join: z = Σ_i c_i·input_i (``h + f(h)``, ``torch.add``, ``+=``,
``α·h + β·f(h)`` with Python numbers α, β).

Infinite width. When the inputs are independent Gaussian processes given the fork (all but
at most one of them start with their own random weight layer, so they are zero-mean and
independent of the rest: ``torch_ntk.lifting.spec`` checks it and refuses the others), the
covariances and the NTKs of the inputs add with the squares of the coefficients:

    K ← Σ_i c_i²·K_i,   T ← Σ_i c_i²·T_i

(a cross term c_i c_j·E[z_i z_j′] vanishes because one of the two is zero-mean and
independent of the other; the NTK's cross terms likewise, through the independent weights).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional, Union

from torch import nn

from .base import kernel_rule
from .state import KernelState

__all__ = ["Add"]


@dataclass(frozen=True)
class Add:
    """z = Σ_i c_i·input_i over the node's inputs, in their order.

    Attributes:
        coefficients: c_i, one Python float per input (at least two).
        position, source: where it was lifted from (the fx node's name; None by hand).
    """

    role: ClassVar[str] = "join"

    coefficients: tuple
    position: Optional[Union[int, str]] = field(default=None, compare=False)
    source: Optional[nn.Module] = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        coefficients = tuple(float(c) for c in self.coefficients)
        object.__setattr__(self, "coefficients", coefficients)
        if len(coefficients) < 2:
            raise ValueError(f"Add: coefficients needs one entry per input, at least two; got "
                             f"{coefficients}")
        if not all(abs(c) < float("inf") for c in coefficients):
            raise ValueError(f"Add: coefficients must be finite; got {coefficients}")

    @property
    def arity(self) -> int:
        """The number of inputs the node reads."""
        return len(self.coefficients)


@kernel_rule(Add, joins=True)
def add_kernel(layer: Add, states: tuple) -> KernelState:
    """K ← Σ_i c_i²·K_i, T ← Σ_i c_i²·T_i (module doc)."""
    nngp = sum(c * c * s.nngp for c, s in zip(layer.coefficients, states))
    ntk = sum(c * c * s.ntk for c, s in zip(layer.coefficients, states))
    return states[0].replace(nngp=nngp, ntk=ntk)
