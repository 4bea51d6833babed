"""The layer descriptors of a spec: Dense, Conv, AvgPool, GlobalAvgPool, Flatten.

Frozen dataclasses of a layer's law at initialization (σ_w², σ_b², parametrization) and
its shape arguments; each may carry the module it was lifted from (``source``) and its
position in the model, both outside comparisons. :mod:`torch_ntk.arch` lifts models into
sequences of them (and re-exports them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

from torch import nn

from ..nn import PARAMETRIZATIONS

__all__ = ["AvgPool", "Conv", "Dense", "Flatten", "GlobalAvgPool"]


def _check_law(kind: str, layer) -> None:
    if layer.parametrization not in PARAMETRIZATIONS:
        raise ValueError(
            f"{kind}: parametrization must be one of {PARAMETRIZATIONS}; "
            f"got {layer.parametrization!r}"
        )
    if not layer.weight_var >= 0 or not layer.bias_var >= 0:
        raise ValueError(
            f"{kind}: weight_var and bias_var must be non-negative; got {layer.weight_var}, "
            f"{layer.bias_var}"
        )


@dataclass(frozen=True)
class Dense:
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

    in_features: int
    out_features: int
    weight_var: float = 1.0
    bias_var: float = 0.01
    parametrization: str = "ntk"
    has_bias: bool = True
    position: Optional[Union[int, str]] = field(default=None, compare=False)
    source: Optional[nn.Module] = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_law("Dense", self)

    @property
    def ntk_weight_coef(self) -> float:
        """c_w: the NTK term of W is c_w·⟨a, a′⟩ (σ_w²/n_in for ntk, 1 for standard)."""
        return self.weight_var / self.in_features if self.parametrization == "ntk" else 1.0

    @property
    def ntk_bias_coef(self) -> float:
        """c_b: the NTK term of b (σ_b² for ntk, 1 for standard, 0 without bias)."""
        if not self.has_bias:
            return 0.0
        return self.bias_var if self.parametrization == "ntk" else 1.0


@dataclass(frozen=True)
class Conv:
    """A 1-D or 2-D convolution (groups 1): its law at initialization and parametrization.

    z_{c,p} = Σ_{c′,q} W̃_{c,c′,q} a_{c′, s·p + d·q − pad} + b̃_c with Var(W̃) = σ_w²/fan_in,
    fan_in = in_channels·prod(kernel_size), Var(b̃) = σ_b²; the NTK coefficients are those of
    :class:`Dense` with n_in = fan_in.

    Attributes:
        kernel_size, stride, dilation: one int per spatial dim (1 or 2 dims; 2-D as (h, w)).
        padding: (before, after) per spatial dim; padding_mode "zeros" or "circular".
        weight_var, bias_var, parametrization, has_bias, position, source: as :class:`Dense`.
    """

    in_channels: int
    out_channels: int
    kernel_size: tuple
    stride: tuple = None
    dilation: tuple = None
    padding: tuple = None
    padding_mode: str = "zeros"
    weight_var: float = 1.0
    bias_var: float = 0.01
    parametrization: str = "ntk"
    has_bias: bool = True
    position: Optional[Union[int, str]] = field(default=None, compare=False)
    source: Optional[nn.Module] = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        dims = len(self.kernel_size)
        defaults = dict(stride=(1,) * dims, dilation=(1,) * dims, padding=((0, 0),) * dims)
        for name, default in defaults.items():
            value = getattr(self, name)
            object.__setattr__(self, name, default if value is None else tuple(
                tuple(v) if isinstance(v, (tuple, list)) else v for v in value))
        object.__setattr__(self, "kernel_size", tuple(self.kernel_size))
        if dims not in (1, 2) or any(len(getattr(self, n)) != dims for n in defaults):
            raise ValueError(
                f"Conv: kernel_size, stride, dilation and padding need one entry per spatial "
                f"dim (1 or 2); got {self.kernel_size}, {self.stride}, {self.dilation}, "
                f"{self.padding}")
        if self.padding_mode not in ("zeros", "circular"):
            raise ValueError(f"Conv: padding_mode must be 'zeros' or 'circular'; got "
                             f"{self.padding_mode!r}")
        _check_law("Conv", self)

    @property
    def dims(self) -> int:
        """The number of spatial dims (1 or 2)."""
        return len(self.kernel_size)

    @property
    def fan_in(self) -> int:
        return self.in_channels * math.prod(self.kernel_size)

    @property
    def in_features(self) -> int:
        """fan_in (so that the coefficients read as :class:`Dense`'s)."""
        return self.fan_in

    ntk_weight_coef = Dense.ntk_weight_coef
    ntk_bias_coef = Dense.ntk_bias_coef


@dataclass(frozen=True)
class AvgPool:
    """Average pooling over windows of ``kernel_size`` every ``stride`` (no padding, floor)."""

    kernel_size: tuple
    stride: tuple
    position: Optional[Union[int, str]] = field(default=None, compare=False)
    source: Optional[nn.Module] = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel_size", tuple(self.kernel_size))
        object.__setattr__(self, "stride", tuple(self.stride))
        if len(self.kernel_size) not in (1, 2) or len(self.stride) != len(self.kernel_size):
            raise ValueError(f"AvgPool: kernel_size and stride need one entry per spatial dim "
                             f"(1 or 2); got {self.kernel_size}, {self.stride}")

    @property
    def dims(self) -> int:
        return len(self.kernel_size)


@dataclass(frozen=True)
class GlobalAvgPool:
    """The mean over all positions of each channel (nn.AdaptiveAvgPool1d(1)/2d(1))."""

    position: Optional[Union[int, str]] = field(default=None, compare=False)
    source: Optional[nn.Module] = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Flatten:
    """nn.Flatten after convolutions: channels × positions become the next Dense's features."""

    position: Optional[Union[int, str]] = field(default=None, compare=False)
    source: Optional[nn.Module] = field(default=None, compare=False, repr=False)
