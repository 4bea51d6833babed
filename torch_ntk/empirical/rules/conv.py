"""The empirical NTK rule of convolutions: ``nn.Conv1d/2d`` and ``NTKConv1d/2d`` (groups 1).

See Arora et al. 2019 (the structured conv NTK, Novak et al. 2022). With δ_p = ∂f_k/∂z_p the
cotangents of a conv layer's output at position p and π_p the input patch it reads,

    Θ^W(x, x′) = c_w · Σ_{p,p′} ⟨δ_p(x), δ_p′(x′)⟩ · ⟨π_p(x), π_p′(x′)⟩
    Θ^b(x, x′) = c_b · ⟨Σ_p δ_p(x), Σ_p′ δ_p′(x′)⟩

computed in one of two orders per layer, chosen by :func:`choose_order` from a FLOP model:
``"gradients"`` (a) per-sample weight gradients J(x) = Σ_p δ_p(x) ⊗ π_p(x), then one Gram
GEMM; ``"grams"`` (b) the patch Gram times the cotangent Gram, summed over (p, p′). The
rule returns the factors in the "grams" layout (patches, cotangents, their sums over
positions); :meth:`ConvFactors.in_order` turns them into the per-sample gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn import NTKConv1d, NTKConv2d, conv_padding
from . import ntk_rule, parameter_coefficients
from .parts import ORDERS, Direct, ModuleFactors, Outer, contract, symmetric_gram

__all__ = ["ORDERS", "ConvFactors", "ConvGeometry", "channels_of", "choose_order", "contract",
           "conv", "conv3d", "conv_coefficients", "conv_input_vjp", "conv_layer_ntk",
           "conv_parts", "order_bytes", "order_flops", "patch_columns", "patches",
           "symmetric_gram", "window_patches"]

class ConvFactors:
    """One conv layer's factors for a chunk of samples, in the layer's contraction order.

    ``order == "gradients"``: ``jac``, a list of the per-sample gradients
    √c_w·Σ_p δ_p ⊗ π_p [N, n_L, C_out·C_in|Q|] (when c_w ≠ 0) and √c_b·Σ_p δ_p
    [N, n_L, C_out] (when c_b ≠ 0), whose contractions add.
    ``order == "grams"``: ``patches`` [N, P, C_in|Q|], ``cot`` [N, n_L, C_out, P] and
    ``bias`` [N, n_L, C_out] (Σ_p δ_p), with the coefficients ``cw``, ``cb``.
    """

    def __init__(self, order: str, cw: float, cb: float, jac: Optional[Tensor] = None,
                 patches: Optional[Tensor] = None, cot: Optional[Tensor] = None,
                 bias: Optional[Tensor] = None):
        self.order, self.cw, self.cb = order, cw, cb
        self.jac, self.patches, self.cot, self.bias = jac, patches, cot, bias

    def __iter__(self):
        """Its tensors (for memory accounting)."""
        return iter([t for t in (*(self.jac or ()), self.patches, self.cot, self.bias)
                     if t is not None])

    def in_order(self, order: str) -> "ConvFactors":
        """These factors in ``order`` (from the "grams" layout the rule returns): for
        "gradients", √c_w·Σ_p δ_p ⊗ π_p by one bmm (the scale on δ, the smaller factor)
        and √c_b·Σ_p δ_p, whose Grams add."""
        if order not in ORDERS:
            raise ValueError(f"ConvFactors: order must be one of {ORDERS}; got {order!r}")
        if order == self.order:
            return self
        if self.order != "grams":
            raise ValueError("ConvFactors: per-sample gradients cannot go back to the grams "
                             "layout")
        n, nl = self.cot.shape[:2]
        parts = []
        if self.cw:
            d = self.cot.reshape(n, nl * self.cot.shape[2], -1).mul(self.cw ** 0.5)
            parts.append(torch.bmm(d, self.patches).view(n, nl, -1))
        if self.cb:
            parts.append(self.bias.mul(self.cb ** 0.5).view(n, nl, -1))
        return ConvFactors(order, self.cw, self.cb, jac=parts)

    def ntk(self, other: Optional["ConvFactors"], mode: str,
            workspace_bytes: int = 1 << 28) -> Tensor:
        """This layer's Θ(x, x′) in ``mode`` (other None: x′ = x); see :func:`conv_layer_ntk`."""
        return conv_layer_ntk(self, other, mode, workspace_bytes)


def channels_of(mode: str, n_out: int) -> int:
    """Output channels per pair of samples: n_L² ("full") or n_L."""
    return n_out * n_out if mode == "full" else n_out


def order_flops(order: str, n1: int, n2: int, n_out: int, mode: str, c_out: int, patch: int,
                positions: int) -> float:
    """Floating-point operations of one conv layer's contraction for an n1 × n2 block.

    (a) "gradients": 2(n1 + n2)·n_L·P·C_out·C_in|Q| for the gradients, 2·n1·n2·c·C_out·C_in|Q|
    for the Gram; (b) "grams": 2·n1·n2·P²·(C_in|Q| + c·C_out) plus the products (c: n_L² in
    "full", else n_L).
    """
    ch = channels_of(mode, n_out)
    if order == "gradients":
        return 2.0 * ((n1 + n2) * n_out * positions * c_out * patch
                      + n1 * n2 * ch * c_out * (patch + 1))
    return 2.0 * n1 * n2 * positions**2 * (patch + ch * c_out + ch)


def order_bytes(order: str, n_out: int, c_out: int, patch: int, positions: int,
                itemsize: int) -> int:
    """Bytes of one sample's factors of a conv layer in ``order``."""
    if order == "gradients":
        return n_out * c_out * (patch + 1) * itemsize
    return (positions * patch + n_out * c_out * (positions + 1)) * itemsize


def choose_order(n1: int, n2: int, n_out: int, mode: str, c_out: int, patch: int,
                 positions: int) -> str:
    """The cheaper contraction order (by :func:`order_flops`) of one conv layer."""
    fa, fb = (order_flops(o, n1, n2, n_out, mode, c_out, patch, positions) for o in ORDERS)
    return "gradients" if fa <= fb else "grams"


def conv_layer_ntk(f1: ConvFactors, f2: Optional[ConvFactors], mode: str,
                   workspace_bytes: int = 1 << 28) -> Tensor:
    """One conv layer's Θ(x1, x2) from its factors (both in the same order), in ``mode``;
    f2 None for x2 = x1 (the "gradients" order then computes half the Gram).

    The "grams" order holds an [r, N2, P, P] patch Gram and a cotangent Gram c times as
    large for r rows of x1 at a time, r chosen so that both fit ``workspace_bytes``.
    """
    if f1.order == "gradients":
        return contract(f1.jac, None if f2 is None else f2.jac, mode)
    f2 = f1 if f2 is None else f2
    n1, nl, c_out, p = f1.cot.shape
    n2, q = f2.cot.shape[0], f2.cot.shape[3]
    ch = channels_of(mode, nl)
    total = contract(f1.bias, f2.bias, mode).mul_(f1.cb) if f1.cb else None
    if not f1.cw:
        return total
    rows = max(1, min(n1, workspace_bytes // max(1, (1 + 2 * ch) * n2 * p * q
                                                   * f1.cot.element_size())))
    pat2 = f2.patches.reshape(n2 * q, -1).t()  # [C_in|Q|, N2·P′]
    if mode == "trace":  # the right factor of the cotangent Gram, once
        b = f2.cot.permute(0, 3, 1, 2).reshape(n2 * q, nl * c_out).t()
    elif mode == "diagonal":
        b = f2.cot.permute(1, 2, 0, 3).reshape(nl, c_out, n2 * q)
    else:
        b = f2.cot.permute(2, 0, 1, 3).reshape(c_out, n2 * nl * q)
    parts = []
    for r0 in range(0, n1, rows):
        r1 = min(n1, r0 + rows)
        r = r1 - r0
        gp = torch.mm(f1.patches[r0:r1].reshape(r * p, -1), pat2).view(r, p, n2, q)
        d1 = f1.cot[r0:r1]
        if mode == "trace":
            gd = torch.mm(d1.permute(0, 3, 1, 2).reshape(r * p, nl * c_out), b)
            part = torch.einsum("ipjq,ipjq->ij", gd.view(r, p, n2, q), gp).div_(nl)
        elif mode == "diagonal":
            gd = torch.bmm(d1.permute(1, 0, 3, 2).reshape(nl, r * p, c_out), b)
            part = torch.einsum("kipjq,ipjq->ijk", gd.view(nl, r, p, n2, q), gp)
        else:
            gd = torch.mm(d1.permute(0, 1, 3, 2).reshape(r * nl * p, c_out), b)
            part = torch.einsum("ikpjlq,ipjq->ijkl", gd.view(r, nl, p, n2, nl, q), gp)
        parts.append(part)
    weight = torch.cat(parts).mul_(f1.cw)
    return weight if total is None else total.add_(weight)


@dataclass(frozen=True)
class ConvGeometry:
    """What a convolution module does to positions: one entry per spatial dim (1 or 2).

    padding: (before, after) per dim; padding_mode: "zeros" or "circular"."""

    kernel_size: tuple
    stride: tuple
    dilation: tuple
    padding: tuple
    padding_mode: str

    @property
    def dims(self) -> int:
        return len(self.kernel_size)

    @classmethod
    def of(cls, module: nn.Module) -> "ConvGeometry":
        """The geometry of an nn.Conv1d/2d or NTKConv1d/2d (ValueError for groups ≠ 1 or a
        padding mode other than zeros/circular)."""
        name = type(module).__name__
        if getattr(module, "groups", 1) != 1:
            raise ValueError(f"conv rule: {name} with groups={module.groups} (only groups=1)")
        if module.padding_mode not in ("zeros", "circular"):
            raise ValueError(f"conv rule: {name} with padding_mode={module.padding_mode!r} "
                             "(only 'zeros' and 'circular')")
        kernel, stride = tuple(module.kernel_size), tuple(module.stride)
        dilation = tuple(module.dilation)
        pairs = getattr(module, "padding_pairs", None)
        if pairs is None:
            pairs = conv_padding("conv rule", module.padding, kernel, stride, dilation)
        return cls(kernel, stride, dilation, tuple(pairs), module.padding_mode)

    def pad(self, a: Tensor) -> Tensor:
        """a [N, C, ...] padded as the module pads it (zeros or circular)."""
        pad = [v for pair in reversed(self.padding) for v in pair]  # last dim first
        if not any(pad):
            return a
        mode = "circular" if self.padding_mode == "circular" else "constant"
        return F.pad(a, pad, mode=mode)


def patches(module: nn.Module, a: Tensor) -> Tensor:
    """π [N, P, C_in·|Q|] (C_in major, as the weight): the padded input's patch at each output
    position (1-D as height 1), gathered from a strided view of a [N, C_in, ...] (one copy;
    ``F.unfold``'s CPU im2col took 5 s per layer here on the width-128 case of
    ``torch-ntk bench cnn_structured``, 15× this)."""
    geometry = ConvGeometry.of(module)
    a = geometry.pad(a)
    k, s, d = geometry.kernel_size, geometry.stride, geometry.dilation
    if geometry.dims == 1:
        a, k, s, d = a.unsqueeze(2), (1, *k), (1, *s), (1, *d)
    span = [di * (ki - 1) + 1 for ki, di in zip(k, d)]
    view = a.unfold(2, span[0], s[0]).unfold(3, span[1], s[1])[..., ::d[0], ::d[1]]
    n, c, h, w = view.shape[:4]
    return view.permute(0, 2, 3, 1, 4, 5).reshape(n, h * w, c * k[0] * k[1])


def conv_input_vjp(module: nn.Module, shape: tuple, g: Tensor) -> Tensor:
    """gᵀ ∂conv(a)/∂a, g [B, C_out, ...] → [B, *shape]: the transposed convolution on the
    padded input, then the padding's adjoint (a crop, or the wrap-around sums of circular).
    shape: one sample's input shape [C_in, ...]."""
    geometry = ConvGeometry.of(module)
    weight = module.weight * getattr(module, "weight_scale", 1.0)
    pad = [v for pair in reversed(geometry.padding) for v in pair]
    padded = list(g.shape[:2]) + [size + sum(p) for size, p in zip(shape[1:], geometry.padding)]
    padded[1] = shape[0]
    grad_input = torch.nn.grad.conv1d_input if geometry.dims == 1 else torch.nn.grad.conv2d_input
    gp = grad_input(padded, weight, g, geometry.stride, 0, geometry.dilation)
    if not any(pad):
        return gp
    if geometry.padding_mode == "zeros":
        crop = [slice(None), slice(None)] + [slice(p[0], p[0] + size)
                                            for size, p in zip(shape[1:], geometry.padding)]
        return gp[tuple(crop)]
    with torch.enable_grad():
        a = torch.zeros((g.shape[0], *shape), dtype=g.dtype, device=g.device,
                        requires_grad=True)
        (grad,) = torch.autograd.grad(geometry.pad(a), a, gp)
    return grad


def conv_coefficients(module: nn.Module) -> tuple[float, float]:
    """(c_w, c_b) of an nn.Conv (1, 1) or NTKConv (σ_w²/fan_in, σ_b² in NTK parametrization;
    fan_in = C_in·prod(kernel_size)), 0 for a frozen or absent parameter."""
    fan_in = module.in_channels * math.prod(module.kernel_size)
    return parameter_coefficients(module, fan_in)


_PAD_MODES = {"zeros": "constant", "circular": "circular", "reflect": "reflect",
              "replicate": "replicate"}


def window_patches(a: Tensor, kernel: tuple, stride: tuple, dilation: tuple,
                   padding: tuple, padding_mode: str = "zeros") -> Tensor:
    """Patches [N, P, C, |Q|] of a [N, C, *spatial] (any number of spatial dims) for a
    window (kernel, stride, dilation), after padding ((before, after) per dim, in
    ``padding_mode``): the entries a convolution's output at each of its P positions reads."""
    a = _windows(a, kernel, stride, dilation, padding, padding_mode)
    dims = len(kernel)
    n, c = a.shape[:2]
    order = (0, *range(2, 2 + dims), 1, *range(2 + dims, 2 + 2 * dims))
    return a.permute(order).reshape(n, -1, c, math.prod(kernel))


def _windows(a: Tensor, kernel: tuple, stride: tuple, dilation: tuple, padding: tuple,
             padding_mode: str) -> Tensor:
    """A strided view [N, C, *out, *kernel] of a [N, C, *spatial] padded (a copy only
    when there is padding): entry (p, q) is what output position p reads at offset q."""
    pad = [v for pair in reversed(padding) for v in pair]
    if any(pad):
        a = F.pad(a, pad, mode=_PAD_MODES[padding_mode])
    for i, (k, s, d) in enumerate(zip(kernel, stride, dilation)):
        a = a.unfold(2 + i, d * (k - 1) + 1, s)
    return a[(Ellipsis, *(slice(None, None, d) for d in dilation))]


def patch_columns(a: Tensor, kernel: tuple, stride: tuple, dilation: tuple, padding: tuple,
                  padding_mode: str = "zeros") -> Tensor:
    """The patches of :func:`window_patches` as columns: [N, C·|Q|, P] contiguous (C major).
    Copied in this order the innermost runs are output positions, contiguous in the input
    (4 ms against 15 ms for [N, P, C·|Q|] on 8×64×32×32, 3×3, single-threaded); a GEMM
    reads either layout alike."""
    a = _windows(a, kernel, stride, dilation, padding, padding_mode)
    dims = len(kernel)
    order = (0, 1, *range(2 + dims, 2 + 2 * dims), *range(2, 2 + dims))
    return a.permute(order).reshape(a.shape[0], a.shape[1] * math.prod(kernel), -1)


def conv_parts(module: nn.Module, inputs: Tensor, cotangents: Tensor):
    """The hook engine's factors of nn.Conv1d/2d/3d (any groups, any padding mode) or
    NTKConv1d/2d: inputs [N, C_in, *in], cotangents [N, n_L, C_out, *out] → per group g the
    weight's Outer part (patches [N, G, P, C_in/G·|Q|], √c_w·δ [N, n_L, G, P, C_out/G]) and
    the bias' Direct part √c_b·Σ_p δ_p [N, n_L, C_out]."""
    dims = len(module.kernel_size)
    n, nl = cotangents.shape[:2]
    if inputs.dim() != dims + 2 or cotangents.dim() != dims + 3 or inputs.shape[0] != n:
        raise ValueError(f"conv rule: inputs must be [N, C_in, *{dims} dims] and cotangents "
                         f"[N, n_L, C_out, *{dims} dims]; got {list(inputs.shape)} and "
                         f"{list(cotangents.shape)}")
    if module.padding_mode not in _PAD_MODES:
        raise ValueError(f"conv rule: padding_mode={module.padding_mode!r}")
    kernel, stride, dilation = (tuple(module.kernel_size), tuple(module.stride),
                                tuple(module.dilation))
    pairs = getattr(module, "padding_pairs", None)
    if pairs is None:
        pairs = conv_padding("conv rule", module.padding, kernel, stride, dilation)
    cw, cb = conv_coefficients(module)
    g = getattr(module, "groups", 1)
    c_out = cotangents.shape[2]
    delta = cotangents.reshape(n, nl, g, c_out // g, -1).transpose(3, 4)  # [N, n_L, G, P, D]
    parts = []
    if cw:
        cols = patch_columns(inputs, kernel, stride, dilation, pairs, module.padding_mode)
        p = cols.shape[2]
        if p != delta.shape[3]:
            raise ValueError(f"conv rule: {p} patches but cotangents at {delta.shape[3]} "
                             "positions")
        a = cols.view(n, g, -1, p).transpose(2, 3)  # [N, G, P, C_in/G·|Q|], a strided view
        parts.append(Outer(a, delta if cw == 1 else delta * cw ** 0.5))
    if cb:
        bias = delta.sum(3).reshape(n, nl, c_out)
        parts.append(Direct(bias if cb == 1 else bias * cb ** 0.5))
    return ModuleFactors(parts)


@ntk_rule(nn.Conv3d, coefficients=conv_coefficients)
def conv3d(module: nn.Module, inputs: Tensor, cotangents: Tensor):
    """nn.Conv3d (no structured plan lifts it): :func:`conv_parts`."""
    return conv_parts(module, inputs, cotangents)


@ntk_rule(nn.Conv1d, nn.Conv2d, NTKConv1d, NTKConv2d, coefficients=conv_coefficients,
          input_vjp=conv_input_vjp, hook=conv_parts)
def conv(module: nn.Module, inputs: Tensor, cotangents: Tensor) -> ConvFactors:
    """Factors of a convolution in the "grams" layout: inputs [N, C_in, ...] (unpadded),
    cotangents [N, n_L, C_out, ...] (its output's positions) → patches [N, P, C_in|Q|]
    (when c_w ≠ 0), δ [N, n_L, C_out, P] and Σ_p δ_p [N, n_L, C_out]."""
    if inputs.dim() != cotangents.dim() - 1 or cotangents.shape[0] != inputs.shape[0]:
        raise ValueError(f"conv rule: inputs must be [N, C_in, ...] and cotangents "
                         f"[N, n_L, C_out, ...] with as many spatial dims; got "
                         f"{list(inputs.shape)} and {list(cotangents.shape)}")
    cw, cb = conv_coefficients(module)
    delta = cotangents.flatten(3)  # [N, n_L, C_out, P]
    pat = patches(module, inputs) if cw else None
    return ConvFactors("grams", cw, cb, patches=pat, cot=delta, bias=delta.sum(-1))
