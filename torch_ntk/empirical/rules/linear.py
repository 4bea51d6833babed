"""The empirical NTK rule of dense layers: ``nn.Linear`` and ``NTKLinear``.

For z = s_w·W a + s_b·b (s_w = s_b = 1 for nn.Linear and standard parametrization;
σ_w/√n_in and σ_b for NTK parametrization), the layer's term of the NTK is

    Θ_kk′(x, x′) = (c_w·⟨a(x), a(x′)⟩ + c_b) · ⟨δ_k(x), δ_k′(x′)⟩,   c_w = s_w², c_b = s_b²,

so its factors are the inputs A [N, n_in] and the cotangents D [N, n_L, m] with (c_w, c_b):
never the [N, n_L, m·n_in] Jacobian. The plans contract the factors of all dense layers
of a block in one call of the fused :func:`torch_ntk.ops.structured_ntk`.

On any leading dims (a sequence [N, T, n_in], the hook engine's :func:`linear_parts`), the
weight's per-sample Jacobian is J_k = Σ_t d_kt ⊗ a_t, so its term sums over position pairs,

    Θ_kk′(x, x′) = c_w Σ_{t,s} ⟨a_t, a′_s⟩⟨d_kt, d′_k′s⟩ + c_b ⟨Σ_t d_kt, Σ_s d′_k′s⟩,

the input Gram over position pairs times the cotangent Gram ("grams"), or J materialized
("gradients"), whichever :mod:`~torch_ntk.empirical.rules.parts`' FLOP model finds cheaper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

from torch import Tensor, nn

from ... import ops
from ...nn import NTKLinear
from . import ntk_rule, parameter_coefficients
from .parts import Direct, ModuleFactors, Outer

__all__ = ["DenseFactors", "linear", "linear_coefficients", "linear_parts"]


@dataclass
class DenseFactors:
    """A dense layer's factors for a batch: Θ = (c_w·A A′ᵀ + c_b) ⊙ D D′ᵀ.

    inputs: A [N, n_in]; cotangents: D [N, n_L, m]; cw, cb: c_w and c_b.
    """

    inputs: Tensor
    cotangents: Tensor
    cw: float
    cb: float

    def __iter__(self) -> Iterator[Tensor]:
        """Its tensors (for memory accounting)."""
        return iter((self.inputs, self.cotangents))

    def ntk(self, other: Optional["DenseFactors"], mode: str,
            workspace_bytes: Optional[int] = None) -> Tensor:
        """This layer's Θ(x, x′) in ``mode`` (other None: x′ = x, exactly symmetric)."""
        a2 = None if other is None else [other.inputs]
        d2 = None if other is None else [other.cotangents]
        return ops.structured_ntk([self.inputs], [self.cotangents], a2, d2, [self.cw],
                                  [self.cb], mode, workspace_bytes=workspace_bytes)


def linear_coefficients(module: nn.Module) -> tuple[float, float]:
    """(c_w, c_b) of an nn.Linear (1, 1) or NTKLinear (σ_w²/n_in, σ_b² in NTK
    parametrization), 0 for a frozen or absent parameter."""
    return parameter_coefficients(module, module.in_features)


def linear_parts(module: nn.Module, inputs: Tensor, cotangents: Tensor) -> ModuleFactors:
    """The hook engine's factors of a dense layer on any leading dims: inputs
    [N, *, n_in], cotangents [N, n_L, *, n_out] → the weight's Outer part (a [N, 1, T, n_in],
    √c_w·d [N, n_L, 1, T, n_out], T = prod(*)) and the bias' Direct part √c_b·Σ_t d_t."""
    n, nl = cotangents.shape[:2]
    if (inputs.shape[0] != n or inputs.shape[-1] != module.in_features
            or cotangents.shape[2:-1] != inputs.shape[1:-1]):
        raise ValueError(f"linear rule: inputs must be [N, *, {module.in_features}] and "
                         f"cotangents [N, n_L, *, n_out]; got {list(inputs.shape)} and "
                         f"{list(cotangents.shape)}")
    cw, cb = linear_coefficients(module)
    d = cotangents.reshape(n, nl, 1, -1, cotangents.shape[-1])
    parts = []
    if cw:
        a = inputs.reshape(n, 1, -1, inputs.shape[-1])
        parts.append(Outer(a, d if cw == 1 else d * cw ** 0.5))
    if cb:
        bias = d.sum(3).reshape(n, nl, -1)
        parts.append(Direct(bias if cb == 1 else bias * cb ** 0.5))
    return ModuleFactors(parts)


@ntk_rule(nn.Linear, NTKLinear, coefficients=linear_coefficients, hook=linear_parts,
          positionwise=True)
def linear(module: nn.Module, inputs: Tensor, cotangents: Tensor) -> DenseFactors:
    """Factors of a dense layer: inputs [N, n_in], cotangents [N, n_L, n_out]."""
    if inputs.dim() != 2 or cotangents.dim() != 3 or cotangents.shape[0] != inputs.shape[0]:
        raise ValueError(f"linear rule: inputs must be [N, n_in] and cotangents [N, n_L, n_out]; "
                         f"got {list(inputs.shape)} and {list(cotangents.shape)}")
    cw, cb = linear_coefficients(module)
    return DenseFactors(inputs, cotangents, cw, cb)
