"""Layer normalization (``nn.LayerNorm`` over the features of an MLP or over the channels of a
CNN at each position; ``nn.GroupNorm(1, C)``, the normalization over (C, H, W)).

At initialization y = γ⊙(h − μ(h))/√(σ²(h) + ε) + β with γ = 1, β = 0, the mean μ and the
variance σ² taken over the normalized axes. Infinite width, for a zero-mean Gaussian h
(the output of a weight layer, or a sum/concatenation/pool of such: the spec refuses a
LayerNorm after a nonlinearity, whose features have a mean m(x) = E φ ≠ 0): μ → 0 and
σ² → q(x), the variance of h averaged over the normalized axes, so

    K_{p,p′} ← K_{p,p′} / √((q(x)_p + ε)(q(x′)_{p′} + ε)),   T likewise

with q(x)_p = K(x, x)_{p,p} for ``over="features"`` (no positions) and ``"channels"`` (each
position p on its own), and q(x) = (1/P) Σ_p K(x, x)_{p,p} for ``"channels_positions"``
(GroupNorm with one group: one mean and variance per sample). The derivative of the
normalization is (1/σ)(I − 11ᵀ/n − ĥĥᵀ/n): its rank-2 correction is O(1/n) in the
average over features, so the NTK divides like the covariance. With ``affine`` the trained
gain γ and bias β add ∂y/∂γ_c = LN(h)_c and ∂y/∂β_c = 1 per channel, before the next
layer's weight law:

    T ← T / √(…) + K_LN + 1     (K_LN the normalized K above)

The gain's term is the product u·u′ of the normalized features themselves, so it is K_LN
only in the mean over features: for a weight layer (or a pool, a sum) after the LayerNorm.
An activation right after it sees E[φ′(u)φ′(v)·u·v], which equals E[φ(u)φ(v)] for the
positively homogeneous activations (:data:`HOMOGENEOUS`: φ′(u)·u = φ(u)), so the activation
rule computes T ← E[φ′φ′]·(T − K_LN) + E[φφ] (``KernelState.gain_term``); an affine
LayerNorm before any other activation is refused by the spec (use
``elementwise_affine=False``, or a ReLU-family activation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional, Union

from torch import Tensor, nn

from .base import LiftOptions, Position, kernel_rule, lifts, op_encoding, refusal
from .state import KernelState

__all__ = ["HOMOGENEOUS", "LAYERNORM", "LAYERNORM_AXES", "LayerNorm"]

LAYERNORM = 9  # the fused CNN op's layer code

LAYERNORM_AXES = ("features", "channels", "channels_positions")
# Activations with φ′(u)·u = φ(u) (positively homogeneous of degree 1): exact after an affine
# LayerNorm (module doc).
HOMOGENEOUS = ("identity", "relu", "leaky_relu", "abs")


@dataclass(frozen=True)
class LayerNorm:
    """Normalization to zero mean and unit variance over ``over`` (:data:`LAYERNORM_AXES`).

    Attributes:
        eps: ε added to the variance.
        affine: whether a trained gain and bias follow (γ = 1, β = 0 at initialization).
        over: "features" (an MLP's features), "channels" (a CNN's channels at each
            position) or "channels_positions" (a CNN's (C, H, W): GroupNorm(1, C)).
        width: the features/channels it normalizes (checked against the layer before;
            None: not checked).
        position, source: where it was lifted from (None by hand).
    """

    role: ClassVar[str] = "norm"

    eps: float = 1e-5
    affine: bool = False
    over: str = "features"
    width: Optional[int] = None
    position: Optional[Union[int, str]] = field(default=None, compare=False)
    source: Optional[nn.Module] = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.over not in LAYERNORM_AXES:
            raise ValueError(f"LayerNorm: over must be one of {LAYERNORM_AXES}; got "
                             f"{self.over!r}")
        if not float(self.eps) >= 0:
            raise ValueError(f"LayerNorm: eps must be non-negative; got {self.eps}")
        object.__setattr__(self, "eps", float(self.eps))
        if self.width is not None and not (isinstance(self.width, int) and self.width >= 1):
            raise ValueError(f"LayerNorm: width must be a positive int or None; got "
                             f"{self.width!r}")


# --------------------------------------------------------------------------- lifting


@lifts(nn.LayerNorm)
def lift_layer_norm(position: Position, module: nn.LayerNorm,
                    options: LiftOptions) -> LayerNorm:
    """nn.LayerNorm over one (the last) dim: "features"; the graph lifting makes it
    "channels" when it is applied between channels-last permutes of a CNN, and refuses it
    on any other axis of a CNN."""
    shape = tuple(module.normalized_shape)
    if len(shape) != 1:
        raise refusal(position, module, f"normalized_shape={shape} (only a LayerNorm over the "
                      "last dim, the features, lifts; GroupNorm(1, C) normalizes (C, H, W))")
    affine = bool(module.elementwise_affine)
    if affine and module.bias is None:
        raise refusal(position, module, "elementwise_affine=True with bias=False (a gain "
                      "without a bias) is not supported")
    return LayerNorm(module.eps, affine, "features", shape[0], position, module)


@lifts(nn.GroupNorm)
def lift_group_norm(position: Position, module: nn.GroupNorm,
                    options: LiftOptions) -> LayerNorm:
    """nn.GroupNorm(1, C): the normalization over (C, H, W)."""
    if module.num_groups != 1:
        raise refusal(position, module, f"num_groups={module.num_groups} (only GroupNorm(1, C), "
                      "a LayerNorm over channels and positions, lifts: the per-group means "
                      "of fewer channels do not vanish at infinite width)")
    return LayerNorm(module.eps, bool(module.affine), "channels_positions", module.num_channels,
                     position, module)


# --------------------------------------------------------------------------- kernel rule


def _position_mean(var: Tensor, side: int, sets: int) -> Tensor:
    """A per-side variance view averaged over that side's positions (kept as size-1 axes)."""
    if sets == 0:
        raise ValueError("LayerNorm: over='channels_positions' needs positions (before the "
                         "readout)")
    axes = (-2, -1) if sets == 1 or side == 2 else (-4, -3)
    return var.mean(axes, keepdim=True)


@kernel_rule(LayerNorm, variances=True)
def layer_norm_kernel(layer: LayerNorm, state: KernelState) -> KernelState:
    """K ← K/√((q + ε)(q′ + ε)), T likewise (+ K_LN + 1 with ``affine``) (module doc)."""
    v1, v2 = state.var1, state.var2
    if layer.over == "channels_positions":
        v1, v2 = _position_mean(v1, 1, state.sets), _position_mean(v2, 2, state.sets)
    scale = ((v1 + layer.eps) * (v2 + layer.eps)).rsqrt()
    nngp, ntk = state.nngp * scale, state.ntk * scale
    if layer.affine:
        ntk = ntk + nngp + 1.0
    return state.replace(nngp=nngp, ntk=ntk, gain_term=layer.affine)


@op_encoding(LayerNorm)
def layer_norm_encoding(layer: LayerNorm) -> tuple[int, list[int], list[float]]:
    """LAYERNORM | over (0: per position, "features" and "channels"; 1: the mean over the
    positions, "channels_positions"), affine | eps."""
    return LAYERNORM, [int(layer.over == "channels_positions"), int(layer.affine)], [layer.eps]
