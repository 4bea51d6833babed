"""The convolution (1-D or 2-D, groups 1): descriptor, lifting, infinite-width rule, op encoding.

Infinite width (Arora et al. 2019), on planes or diagonals alike:

    K ← σ_w²·A(K) + σ_b²,   T ← tw·A(K) + tb + σ_w²·A(T)
    A(M)_{p,p′} = (1/|Q|) Σ_q M_{s·p+d·q−pad, s·p′+d·q−pad}

(M is 0 in the zero padding, wrapped with circular padding; tw, tb as for
:mod:`~torch_ntk.layers.dense`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..nn import NTKConv1d, NTKConv2d, conv_padding
from .base import (LiftOptions, Position, WeightLaw, check_law, kernel_rule, lifts, op_encoding,
                   refusal)
from .dense import law_floats, linear_map
from .state import KernelState

__all__ = ["CONV", "Conv", "window_mean"]

CONV = 0  # the fused CNN op's layer code


@dataclass(frozen=True)
class Conv(WeightLaw):
    """A 1-D or 2-D convolution (groups 1): its law at initialization and parametrization.

    z_{c,p} = Σ_{c′,q} W̃_{c,c′,q} a_{c′, s·p + d·q − pad} + b̃_c with Var(W̃) = σ_w²/fan_in,
    fan_in = in_channels·prod(kernel_size), Var(b̃) = σ_b²; the NTK coefficients are those of
    :class:`~torch_ntk.layers.Dense` with n_in = fan_in.

    Attributes:
        kernel_size, stride, dilation: one int per spatial dim (1 or 2 dims; 2-D as (h, w)).
        padding: (before, after) per spatial dim; padding_mode "zeros" or "circular".
        weight_var, bias_var, parametrization, has_bias, position, source: as Dense.
    """

    role: ClassVar[str] = "spatial"

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
        check_law("Conv", self)

    @property
    def dims(self) -> int:
        """The number of spatial dims (1 or 2)."""
        return len(self.kernel_size)

    @property
    def fan_in(self) -> int:
        return self.in_channels * math.prod(self.kernel_size)

    @property
    def in_features(self) -> int:
        """fan_in (so that the coefficients read as Dense's)."""
        return self.fan_in

    def window(self) -> tuple[tuple, tuple, tuple, tuple]:
        """(kernel, stride, dilation, padding) as 2-D, a 1-D conv with height 1."""
        k, s, d, p = self.kernel_size, self.stride, self.dilation, self.padding
        if self.dims == 1:
            return (1,) + k, (1,) + s, (1,) + d, ((0, 0),) + p
        return k, s, d, p


@lifts(NTKConv1d, NTKConv2d, nn.Conv1d, nn.Conv2d)
def lift_conv(position: Position, module: nn.Module, options: LiftOptions) -> Conv:
    """NTKConv1d/2d with its own law; nn.Conv1d/2d with PyTorch's initialization
    (U(±1/√fan_in): σ_w² = 1/3, σ_b² = 1/(3·fan_in), standard parametrization)."""
    has_bias = module.bias is not None
    if isinstance(module, (NTKConv1d, NTKConv2d)):
        return Conv(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                    module.dilation, module.padding_pairs, module.padding_mode,
                    module.weight_std**2, module.bias_std**2 if has_bias else 0.0,
                    module.parametrization, has_bias, position, module)
    if module.groups != 1:
        raise refusal(position, module, f"groups={module.groups} (only groups=1 lifts)")
    if module.padding_mode not in ("zeros", "circular"):
        raise refusal(position, module, f"padding_mode={module.padding_mode!r} (only 'zeros' "
                      "and 'circular' lift)")
    kernel = tuple(module.kernel_size)
    fan_in = module.in_channels * math.prod(kernel)
    padding = conv_padding("lift", module.padding, kernel, tuple(module.stride),
                           tuple(module.dilation))
    return Conv(module.in_channels, module.out_channels, kernel, tuple(module.stride),
                tuple(module.dilation), padding, module.padding_mode, 1.0 / 3.0,
                1.0 / (3.0 * fan_in) if has_bias else 0.0, "standard", has_bias, position, module)


def _pad_axis(t: Tensor, axis: int, before: int, after: int, circular: bool) -> Tensor:
    if not before and not after:
        return t
    n = t.shape[axis]
    if circular:
        index = torch.arange(-before, n + after, device=t.device) % n
        return t.index_select(axis, index)
    shape = list(t.shape)
    parts = []
    for size in (before, after):
        shape[axis] = size
        parts.append(t.new_zeros(shape))
    return torch.cat([parts[0], t, parts[1]], axis)


def window_mean(t: Tensor, axes: Sequence[int], kernel, stride, dilation, padding,
                circular: bool) -> Tensor:
    """(1/|Q|) Σ_q t[s·p + d·q − pad] with the same tap q on each (H, W) axis pair listed in
    ``axes`` (h, w, h′, w′, …): A(M) of a convolution on both pairs of a plane; the block
    means of a pooling one pair at a time. 2-D window arguments (:meth:`Conv.window`)."""
    axes = list(axes)
    pairs = [0, 1] * (len(axes) // 2)  # which of (h, w) each axis is
    for axis, i in zip(axes, pairs):
        t = _pad_axis(t, axis, *padding[i], circular)
    sizes = [(t.shape[axis] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
             for axis, i in zip(axes, pairs)]
    total = None
    for qh in range(kernel[0]):
        for qw in range(kernel[1]):
            index = [slice(None)] * t.dim()
            for axis, size, i in zip(axes, sizes, pairs):
                start = dilation[i] * (qh, qw)[i]
                index[axis] = slice(start, start + stride[i] * (size - 1) + 1, stride[i])
            term = t[tuple(index)]
            total = term if total is None else total + term
    return total / (kernel[0] * kernel[1])


@kernel_rule(Conv)
def conv_kernel(layer: Conv, state: KernelState) -> KernelState:
    """K ← σ_w²·A(K) + σ_b², T ← tw·A(K) + tb + σ_w²·A(T) (module doc)."""
    k, s, d, p = layer.window()
    circular = layer.padding_mode == "circular"
    axes = state.position_axes()
    return linear_map(layer, state, window_mean(state.nngp, axes, k, s, d, p, circular),
                      window_mean(state.ntk, axes, k, s, d, p, circular))


@op_encoding(Conv)
def conv_encoding(layer: Conv) -> tuple[int, list[int], list[float]]:
    """CONV | kh, kw, sh, sw, dh, dw, ph_before, ph_after, pw_before, pw_after, circular |
    σ_w², σ_b², tw, tb (1-D as kh = 1)."""
    k, s, d, p = layer.window()
    return (CONV, [*k, *s, *d, *p[0], *p[1], int(layer.padding_mode == "circular")],
            law_floats(layer))
