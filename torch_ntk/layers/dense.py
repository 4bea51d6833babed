"""The dense layer: its descriptor, lifting, infinite-width rule and fused-op encoding.

Infinite width (after the readout, or in an MLP): K ← σ_w²·K + σ_b², T ← tw·K + tb + σ_w²·T
with tw = c_w·n_in and tb = c_b (σ_w², σ_b² for NTK parametrization; n_in, 1 for standard).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional, Union

from torch import nn

from ..nn import NTKLinear
from .base import LiftOptions, Position, WeightLaw, check_law, kernel_rule, lifts, op_encoding
from .state import KernelState

__all__ = ["DENSE", "Dense"]

DENSE = 5  # the fused CNN op's layer code


@dataclass(frozen=True)
class Dense(WeightLaw):
    """A dense layer: its law at initialization and its parametrization.

    At initialization z = W̃ a + b̃ with Var(W̃_ij) = σ_w²/n_in and Var(b̃_i) = σ_b²
    (whatever the parametrization). The parametrization decides the NTK: the layer
    contributes (c_w·⟨a, a′⟩ + c_b)·⟨δ, δ′⟩, see ``ntk_weight_coef``/``ntk_bias_coef``.

    Attributes:
        in_features, out_features: n_in and n_out.
        weight_var: σ_w² — the law of the function has Var(z_i) = σ_w²·|a|²/n_in + σ_b².
        bias_var: σ_b² (0 when the layer has no bias).
        parametrization: "ntk" or "standard".
        has_bias: whether b exists (and so contributes to the NTK).
        position: index of the module in the lifted model (None for hand-built specs).
        source: the module it was lifted from (None for hand-built specs).
    """

    role: ClassVar[str] = "dense"

    in_features: int
    out_features: int
    weight_var: float = 1.0
    bias_var: float = 0.01
    parametrization: str = "ntk"
    has_bias: bool = True
    position: Optional[Union[int, str]] = field(default=None, compare=False)
    source: Optional[nn.Module] = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_law("Dense", self)


@lifts(NTKLinear, nn.Linear)
def lift_dense(position: Position, module: nn.Module, options: LiftOptions) -> Dense:
    """NTKLinear with its own law; nn.Linear with ``options``' variances, by default
    PyTorch's initialization (U(±1/√fan_in): σ_w² = 1/3, σ_b² = 1/(3·fan_in), standard)."""
    has_bias = module.bias is not None
    if isinstance(module, NTKLinear):
        return Dense(
            module.in_features, module.out_features, module.weight_std**2,
            module.bias_std**2 if has_bias else 0.0, module.parametrization, has_bias, position,
            module,
        )
    fan_in = module.in_features
    weight_var, bias_var = options.linear_weight_var, options.linear_bias_var
    weight_var = 1.0 / 3.0 if weight_var is None else float(weight_var)
    bias_var = 1.0 / (3.0 * fan_in) if bias_var is None else float(bias_var)
    return Dense(
        fan_in, module.out_features, weight_var, bias_var if has_bias else 0.0, "standard",
        has_bias, position, module,
    )


def linear_map(layer, state: KernelState, k, t) -> KernelState:
    """K ← σ_w²·k + σ_b², T ← tw·k + tb + σ_w²·t (k, t: the state's K, T after the layer's
    window mean for a convolution)."""
    tw = layer.ntk_weight_coef * layer.in_features
    return state.replace(nngp=layer.weight_var * k + layer.bias_var,
                         ntk=tw * k + layer.ntk_bias_coef + layer.weight_var * t)


@kernel_rule(Dense)
def dense_kernel(layer: Dense, state: KernelState) -> KernelState:
    """K ← σ_w²·K + σ_b², T ← tw·K + tb + σ_w²·T."""
    return linear_map(layer, state, state.nngp, state.ntk)


def law_floats(layer) -> list[float]:
    """σ_w², σ_b², tw, tb of a Dense or Conv layer (the op's floats for it)."""
    return [float(layer.weight_var), float(layer.bias_var),
            float(layer.ntk_weight_coef * layer.in_features), float(layer.ntk_bias_coef)]


@op_encoding(Dense)
def dense_encoding(layer: Dense) -> tuple[int, list[int], list[float]]:
    """DENSE | no ints | σ_w², σ_b², tw, tb."""
    return DENSE, [], law_floats(layer)
