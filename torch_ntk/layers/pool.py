"""Average pooling, global average pooling and the Flatten readout: descriptors, lifting,
infinite-width rules, op encodings.

Infinite width, with B a pooling window and P the positions:

    AvgPool:        K_{p,p′} ← (1/|B|²) Σ_{q∈B(p), q′∈B(p′)} K_{q,q′}, T likewise (needs planes)
                    padded (K = 0 in the zero padding): with count_include_pad the same;
                    without, 1/(n_p n_p′) for the 1/|B|², n_p = |B(p) ∩ image| the positions
                    of window p inside the image (torch's divisor)
    GlobalAvgPool:  K ← (1/P²) Σ_{p,p′} K_{p,p′}, T likewise (needs planes; a readout)
    Flatten:        K ← (1/P) Σ_p K_{p,p}, T likewise (a readout; diagonals suffice)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional, Union

import torch
from torch import Tensor, nn

from .base import LiftOptions, Position, describe, kernel_rule, lifts, op_encoding, refusal
from .conv import window_mean
from .state import KernelState

__all__ = ["AVGPOOL", "AVGPOOL_PAD", "AvgPool", "FLATTEN", "Flatten", "GLOBAL_AVGPOOL", "GlobalAvgPool",
           "pool_planes"]

AVGPOOL, GLOBAL_AVGPOOL, FLATTEN = 2, 3, 4  # the fused CNN op's layer codes
AVGPOOL_PAD = 10  # the padded average pool's code


@dataclass(frozen=True)
class WindowPool:
    """A pool over windows of ``kernel_size`` every ``stride`` (no padding, floor): the
    fields and geometry shared by :class:`AvgPool` and ``sum_pool.SumPool``. Not a layer kind
    itself (no rules are registered for it, so a subclass finds none through it)."""

    role: ClassVar[str] = "spatial"

    kernel_size: tuple
    stride: tuple
    position: Optional[Union[int, str]] = field(default=None, compare=False)
    source: Optional[nn.Module] = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel_size", tuple(self.kernel_size))
        object.__setattr__(self, "stride", tuple(self.stride))
        if len(self.kernel_size) not in (1, 2) or len(self.stride) != len(self.kernel_size):
            raise ValueError(f"{type(self).__name__}: kernel_size and stride need one entry per "
                             f"spatial dim (1 or 2); got {self.kernel_size}, {self.stride}")

    @property
    def dims(self) -> int:
        return len(self.kernel_size)

    def window(self) -> tuple[tuple, tuple, tuple, tuple]:
        """(kernel, stride, dilation 1, padding 0) as 2-D, a 1-D pool with height 1."""
        k, s = self.kernel_size, self.stride
        if self.dims == 1:
            k, s = (1,) + k, (1,) + s
        return k, s, (1, 1), ((0, 0), (0, 0))


@dataclass(frozen=True)
class AvgPool(WindowPool):
    """Average pooling over windows of ``kernel_size`` every ``stride`` (floor), with zero
    ``padding`` per spatial dim (() or zeros: none) and torch's ``count_include_pad`` (True:
    divide by |B|; False: by the window's positions inside the image)."""

    padding: tuple = field(default=(), kw_only=True)
    count_include_pad: bool = field(default=True, kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        padding = tuple(int(p) for p in self.padding) or (0,) * self.dims
        object.__setattr__(self, "padding", padding)
        if len(padding) != self.dims or min(padding) < 0:
            raise ValueError(f"AvgPool: padding needs one non-negative entry per spatial dim; "
                             f"got {self.padding}")
        if any(2 * p > k for p, k in zip(padding, self.kernel_size)):
            raise ValueError(f"AvgPool: padding {padding} must be at most half of kernel_size "
                             f"{self.kernel_size} (as torch requires)")

    @property
    def padded(self) -> bool:
        return any(self.padding)

    def window(self) -> tuple[tuple, tuple, tuple, tuple]:
        """(kernel, stride, dilation 1, padding ((p, p) per dim)) as 2-D."""
        k, s, d, _ = super().window()
        p = self.padding if self.dims == 2 else (0,) + self.padding
        return k, s, d, tuple((q, q) for q in p)


@dataclass(frozen=True)
class GlobalAvgPool:
    """The mean over all positions of each channel (nn.AdaptiveAvgPool1d(1)/2d(1))."""

    role: ClassVar[str] = "readout"
    keeps_positions: ClassVar[bool] = False  # the next Dense takes the channels

    position: Optional[Union[int, str]] = field(default=None, compare=False)
    source: Optional[nn.Module] = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Flatten:
    """nn.Flatten after convolutions: channels × positions become the next Dense's features."""

    role: ClassVar[str] = "readout"
    keeps_positions: ClassVar[bool] = True  # the next Dense takes channels × positions

    position: Optional[Union[int, str]] = field(default=None, compare=False)
    source: Optional[nn.Module] = field(default=None, compare=False, repr=False)


# --------------------------------------------------------------------------- lifting


@lifts(nn.AvgPool1d, nn.AvgPool2d)
def lift_avg_pool(position: Position, module: nn.Module, options: LiftOptions) -> AvgPool:
    dims = 1 if isinstance(module, nn.AvgPool1d) else 2
    as_tuple = (lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims)
    if module.ceil_mode or getattr(module, "divisor_override", None) is not None:
        raise refusal(position, module, "only ceil_mode=False and no divisor_override lift")
    stride = module.stride if module.stride not in (None, (), []) else module.kernel_size
    return AvgPool(as_tuple(module.kernel_size), as_tuple(stride), position, module,
                   padding=as_tuple(module.padding),
                   count_include_pad=bool(module.count_include_pad))


@lifts(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
def lift_global_pool(position: Position, module: nn.Module,
                     options: LiftOptions) -> GlobalAvgPool:
    size = module.output_size
    if any(s != 1 for s in (size if isinstance(size, (tuple, list)) else (size,))):
        raise refusal(position, module, f"output_size={size!r} (only global pooling, "
                      "output_size=1, lifts)")
    return GlobalAvgPool(position, module)


@lifts(nn.Flatten)
def lift_flatten(position: Position, module: nn.Flatten, options: LiftOptions) -> Flatten:
    """A Flatten: the readout after convolutions, a no-op of an MLP (lift decides)."""
    if module.end_dim != -1:
        raise ValueError(
            f"lift: {describe(position, module)} must flatten to the last dimension "
            "(end_dim=-1)"
        )
    return Flatten(position, module)


# --------------------------------------------------------------------------- kernel rules


def pool_planes(state: KernelState, window: tuple, scale: float = 1.0) -> KernelState:
    """Block means of K and T over both position indices (each index on its own:
    (1/|B|²) Σ_{q,q′}), times ``scale``; ``window`` as :meth:`AvgPool.window`."""
    k, s, d, p = window
    nngp, ntk = state.nngp, state.ntk
    for j in range(state.sets):
        axes = (nngp.dim() - 2 * j - 2, nngp.dim() - 2 * j - 1)
        nngp = window_mean(nngp, axes, k, s, d, p, False)
        ntk = window_mean(ntk, axes, k, s, d, p, False)
    if scale != 1.0:
        nngp, ntk = nngp * scale, ntk * scale
    return state.replace(nngp=nngp, ntk=ntk)


def window_counts(window: tuple, size: tuple, like: Tensor) -> Tensor:
    """n_p [H′, W′]: the positions of each window inside an image of ``size`` (H, W)."""
    k, s, d, p = window
    ones = torch.ones(size, dtype=like.dtype, device=like.device)
    return window_mean(ones, (0, 1), k, s, d, p, False) * (k[0] * k[1])


@kernel_rule(AvgPool, planes=True)
def avg_pool_kernel(layer: AvgPool, state: KernelState) -> KernelState:
    """K_{p,p′} ← (1/|B|²) Σ_{q∈B(p), q′∈B(p′)} K_{q,q′} (K = 0 in the padding); T
    likewise; without ``count_include_pad`` each index divides by n_p instead of |B|."""
    window = layer.window()
    out = pool_planes(state, window)
    if not layer.padded or layer.count_include_pad:
        return out
    size = tuple(state.nngp.shape[-2:])
    factor = (window[0][0] * window[0][1]) / window_counts(window, size, state.nngp)
    plane = factor[:, :, None, None] * factor[None, None, :, :]  # [H′, W′, H′, W′]
    return out.replace(nngp=out.nngp * plane, ntk=out.ntk * plane)


@kernel_rule(GlobalAvgPool, planes=True)
def global_avg_pool_kernel(layer: GlobalAvgPool, state: KernelState) -> KernelState:
    """K ← (1/P²) Σ_{p,p′} K_{p,p′}; T likewise. The readout: no positions after it."""
    dims = tuple(range(-2 * state.sets, 0))
    return state.replace(nngp=state.nngp.mean(dims), ntk=state.ntk.mean(dims), sets=0)


@kernel_rule(Flatten)
def flatten_kernel(layer: Flatten, state: KernelState) -> KernelState:
    """K ← (1/P) Σ_p K_{p,p} (the diagonal of planes); T likewise. The readout."""
    if state.sets == 2:
        lead = state.nngp.shape[:-4]
        p = state.nngp.shape[-1] * state.nngp.shape[-2]
        nngp, ntk = (torch.diagonal(m.reshape(*lead, p, p), dim1=-2, dim2=-1).mean(-1)
                     for m in (state.nngp, state.ntk))
    else:
        dims = tuple(range(-2 * state.sets, 0))
        nngp, ntk = state.nngp.mean(dims), state.ntk.mean(dims)
    return state.replace(nngp=nngp, ntk=ntk, sets=0)


# --------------------------------------------------------------------------- op encodings


@op_encoding(AvgPool)
def avg_pool_encoding(layer: AvgPool) -> tuple[int, list[int], list[float]]:
    """AVGPOOL | kh, kw, sh, sw |; padded: AVGPOOL_PAD | kh, kw, sh, sw, ph, pw,
    count_include_pad |."""
    k, s, _, p = layer.window()
    if layer.padded:
        return AVGPOOL_PAD, [*k, *s, p[0][0], p[1][0], int(layer.count_include_pad)], []
    return AVGPOOL, [*k, *s], []


@op_encoding(GlobalAvgPool)
def global_avg_pool_encoding(layer: GlobalAvgPool) -> tuple[int, list[int], list[float]]:
    return GLOBAL_AVGPOOL, [], []


@op_encoding(Flatten)
def flatten_encoding(layer: Flatten) -> tuple[int, list[int], list[float]]:
    return FLATTEN, [], []
