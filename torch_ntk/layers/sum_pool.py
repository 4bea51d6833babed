"""Sum pooling and global sum pooling (neural-tangents' ``SumPool`` / ``GlobalSumPool``).

Lifted from ``nn.LPPool1d/2d(1, k, s)`` and ``F.lp_pool1d/2d(x, 1, k, s)`` (for p = 1 torch
computes avg_pool(x)·|B|, the signed window sum; the layer is bound to :class:`WindowSum`,
which computes the same sums with a gradient everywhere), and — as the readout after
convolutions — ``x.sum((2, 3))`` / ``torch.sum(x, (2, 3))`` after a 2-D conv or ``x.sum(2)``
after a 1-D one (:class:`SpatialSum`).

Infinite width. A sum pool is the average pool times the window size |B| = kh·kw, and the
kernels are bilinear in the features, so each position index contributes a factor |B|:

    SumPool:        K_{p,p′} ← Σ_{q∈B(p), q′∈B(p′)} K_{q,q′} = |B|²·(AvgPool's K), T likewise
    GlobalSumPool:  K ← Σ_{p,p′} K_{p,p′} = P²·(GlobalAvgPool's K), T likewise (a readout)

Both need full position planes. The fused CNN op has a GLOBAL_SUMPOOL code; a spec with a
windowed SumPool runs on the torch walker (:mod:`torch_ntk.analytic.graph`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (LiftOptions, Position, kernel_rule, lifts, lifts_functional, op_encoding,
                   refusal)
from .pool import WindowPool, pool_planes
from .state import KernelState

__all__ = ["GLOBAL_SUMPOOL", "GlobalSumPool", "SpatialSum", "SumPool", "WindowSum"]

GLOBAL_SUMPOOL = 11  # the fused CNN op's layer code


@dataclass(frozen=True)
class SumPool(WindowPool):
    """Sum pooling over windows of ``kernel_size`` every ``stride`` (no padding, floor)."""


@dataclass(frozen=True)
class GlobalSumPool:
    """The sum over all positions of each channel (``x.sum((2, 3))`` after a conv)."""

    role: ClassVar[str] = "readout"
    keeps_positions: ClassVar[bool] = False  # the next Dense takes the channels

    position: Optional[Union[int, str]] = field(default=None, compare=False)
    source: Optional[nn.Module] = field(default=None, compare=False, repr=False)


class WindowSum(nn.Module):
    """x [N, C, *spatial] → the sums over windows of ``kernel_size`` every ``stride``, as
    avg_pool·|B|: the module a lifted LPPool(1, k) is bound to. (LPPool computes
    sign(s)·relu(|s|) of the sum s, whose autograd gradient is 0 where s = 0 — at the zero
    input that the structured empirical NTK differentiates its linear layers at.)"""

    def __init__(self, kernel_size: tuple, stride: tuple):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: Tensor) -> Tensor:
        pool = F.avg_pool1d if len(self.kernel_size) == 1 else F.avg_pool2d
        return pool(x, self.kernel_size, self.stride) * math.prod(self.kernel_size)


class SpatialSum(nn.Module):
    """x [N, C, *spatial] → [N, C], the sum over the last ``dims`` (1 or 2) dims: the module
    a lifted ``x.sum((2, 3))`` is bound to (``readout``: no positions after it)."""

    readout = True

    def __init__(self, dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: Tensor) -> Tensor:
        return x.sum(tuple(range(-self.dims, 0)))


# --------------------------------------------------------------------------- lifting


@lifts(nn.LPPool1d, nn.LPPool2d)
def lift_sum_pool(position: Position, module: nn.Module, options: LiftOptions) -> SumPool:
    """nn.LPPool1d/2d with norm_type 1 (a signed window sum); other norms do not lift."""
    if module.norm_type != 1:
        raise refusal(position, module, f"norm_type={module.norm_type} (only norm_type=1, "
                      "sum pooling, lifts)")
    if module.ceil_mode:
        raise refusal(position, module, "ceil_mode=True (only ceil_mode=False lifts)")
    dims = 1 if isinstance(module, nn.LPPool1d) else 2
    as_tuple = (lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims)
    stride = module.stride if module.stride not in (None, (), []) else module.kernel_size
    kernel, stride = as_tuple(module.kernel_size), as_tuple(stride)
    bound = WindowSum(kernel, stride)
    bound.lifted_from = module
    return SumPool(kernel, stride, position, bound)


@lifts(SpatialSum)
def lift_global_sum_pool(position: Position, module: SpatialSum,
                         options: LiftOptions) -> GlobalSumPool:
    return GlobalSumPool(position, module)


def _lp_pool(module_type: type):
    def build(call, norm_type, kernel_size, stride=None, ceil_mode=False):
        return [module_type(norm_type, kernel_size, stride, ceil_mode)]
    return build


lifts_functional(("call_function", F.lp_pool1d))(_lp_pool(nn.LPPool1d))
lifts_functional(("call_function", F.lp_pool2d))(_lp_pool(nn.LPPool2d))


@lifts_functional(("call_method", "sum"), ("call_function", torch.sum))
def spatial_sum(call, dim=None, keepdim=False, dtype=None):
    """``x.sum((2, 3))`` or ``torch.sum(x, (2, 3))`` after a 2-D conv, ``x.sum(2)`` after a
    1-D one (keepdim either way:
    the readout's features are [N, C] for the dense layer after it)."""
    dims = set(dim) if isinstance(dim, (tuple, list)) else {dim}
    spatial = {1: ({2}, {-1}), 2: ({2, 3}, {-2, -1}, {2, -1}, {-2, 3})}.get(call.dims, ())
    if dims not in spatial or dtype is not None:
        where = (f"after a {call.dims}-D convolution" if call.dims else
                 "outside the convolutions (no Conv before it)")
        raise ValueError(f"a sum over dims {dim} {where} is not a global sum pool; "
                         "x.sum((2, 3)) after 2-D and x.sum(2) after 1-D convolutions lift")
    return [SpatialSum(call.dims)]


# --------------------------------------------------------------------------- kernel rules


@kernel_rule(SumPool, planes=True)
def sum_pool_kernel(layer: SumPool, state: KernelState) -> KernelState:
    """K_{p,p′} ← Σ_{q∈B(p), q′∈B(p′)} K_{q,q′} = |B|²·(block mean); T likewise."""
    return pool_planes(state, layer.window(), float(math.prod(layer.kernel_size)) ** 2)


@kernel_rule(GlobalSumPool, planes=True)
def global_sum_pool_kernel(layer: GlobalSumPool, state: KernelState) -> KernelState:
    """K ← Σ_{p,p′} K_{p,p′}; T likewise. The readout: no positions after it."""
    dims = tuple(range(-2 * state.sets, 0))
    return state.replace(nngp=state.nngp.sum(dims), ntk=state.ntk.sum(dims), sets=0)


@op_encoding(GlobalSumPool)
def global_sum_pool_encoding(layer: GlobalSumPool) -> tuple[int, list[int], list[float]]:
    """GLOBAL_SUMPOOL | no ints | no floats."""
    return GLOBAL_SUMPOOL, [], []
