"""Infinite-width CNN kernels (NNGP, NTK; Arora et al. 2019) in plain torch; the CNN op's program.

The recursion runs over position–position covariances of a pair of images. Its state after
each layer is (K, T): K the covariance of the current features (per channel, averaged over
channels) and T their NTK, both over positions p of x and p′ of x′:

    input:       K_{p,p′} = (1/C₀) Σ_c x_{c,p} x′_{c,p′},   T = 0
    Conv:        K ← σ_w²·A(K) + σ_b²,   T ← tw·A(K) + tb + σ_w²·A(T)
                 A(M)_{p,p′} = (1/|Q|) Σ_q M_{s·p+d·q−pad, s·p′+d·q−pad}
                 (M is 0 in the zero padding, wrapped with circular padding)
    Activation:  K ← E[φ(u)φ(v)],  T ← E[φ′(u)φ′(v)] ⊙ T   with Var u = K(x, x)_{p,p},
                 Var v = K(x′, x′)_{p′,p′}, Cov(u, v) = K_{p,p′}
    AvgPool:     block means of K and T over both position indices
    GlobalAvgPool: K ← mean_{p,p′} K, T likewise;   Flatten: K ← mean_p K_{p,p}, T likewise
    Dense:       K ← σ_w²·K + σ_b²,   T ← tw·K + tb + σ_w²·T

with tw = c_w·fan_in and tb = c_b (σ_w² and σ_b² for NTK parametrization, fan_in and 1 for
standard). A layer right after another linear one sees the identity activation. When
nothing pools before a Flatten readout only same-position entries are needed, so the
"diagonal" path keeps [.., H, W] instead of the [.., H, W, H′, W′] planes. 1-D inputs
[N, C, L] run as [N, C, 1, L].

Example::

    >>> model = nn.Sequential(NTKConv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), NTKLinear(8 * 36, 1))
    >>> cnn_kernels(lift(model), torch.randn(4, 1, 8, 8)).ntk.shape
    torch.Size([4, 4])
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from ..activations import Activation, gaussian_expectations, quadrature_degree_for
from ..lifting.lift import AvgPool, Conv, Dense, Flatten, GlobalAvgPool, LayerSpec
from .._utils.validation import check_batch, check_choices

__all__ = ["CNNKernels", "CONV", "ACTIVATION", "AVGPOOL", "GLOBAL_AVGPOOL", "FLATTEN", "DENSE",
           "cnn_kernels", "cnn_op_args", "check_images", "output_size", "pair_floats"]

CONV, ACTIVATION, AVGPOOL, GLOBAL_AVGPOOL, FLATTEN, DENSE = range(6)
QUADRATURE_ELEMENTS = 1 << 22  # elements × degree² per quadrature chunk


class CNNKernels(NamedTuple):
    """nngp, ntk: [N1, N2] or None when not requested (as :class:`torch_ntk.analytic.Kernels`)."""

    nngp: Optional[Tensor]
    ntk: Optional[Tensor]


def _as_2d(layer: Union[Conv, AvgPool]) -> tuple[tuple, tuple, tuple, tuple]:
    """(kernel, stride, dilation, padding) of a Conv/AvgPool as 2-D, a 1-D one with height 1."""
    if isinstance(layer, AvgPool):
        k, s, d, p = layer.kernel_size, layer.stride, (1,) * layer.dims, ((0, 0),) * layer.dims
    else:
        k, s, d, p = layer.kernel_size, layer.stride, layer.dilation, layer.padding
    if layer.dims == 1:
        return (1,) + k, (1,) + s, (1,) + d, ((0, 0),) + p
    return k, s, d, p


def cnn_op_args(spec: LayerSpec) -> tuple[list[int], list[int], list[float]]:
    """(layer_codes, layer_ints, layer_floats): the program of a CNN spec for the compiled op.

    One code per layer (CONV 0, ACTIVATION 1, AVGPOOL 2, GLOBAL_AVGPOOL 3, FLATTEN 4,
    DENSE 5), its ints and floats appended in order: CONV — kh, kw, sh, sw, dh, dw,
    ph_before, ph_after, pw_before, pw_after, circular | σ_w², σ_b², tw, tb (1-D as kh = 1);
    ACTIVATION — act_id | param; AVGPOOL — kh, kw, sh, sw; DENSE — | σ_w², σ_b², tw, tb.
    """
    if spec.is_mlp:
        raise ValueError("cnn_op_args: an MLP spec; its op arguments are "
                         "torch_ntk.analytic.compiled_op_args")
    codes: list[int] = []
    ints: list[int] = []
    floats: list[float] = []
    for layer in spec.layers:
        if isinstance(layer, (Conv, Dense)):
            codes.append(CONV if isinstance(layer, Conv) else DENSE)
            if isinstance(layer, Conv):
                k, s, d, p = _as_2d(layer)
                ints += [*k, *s, *d, *p[0], *p[1], int(layer.padding_mode == "circular")]
            floats += [float(layer.weight_var), float(layer.bias_var),
                       float(layer.ntk_weight_coef * layer.in_features),
                       float(layer.ntk_bias_coef)]
        elif isinstance(layer, Activation):
            codes.append(ACTIVATION)
            ints.append(layer.id)
            floats.append(float(layer.param))
        elif isinstance(layer, AvgPool):
            codes.append(AVGPOOL)
            k, s, _, _ = _as_2d(layer)
            ints += [*k, *s]
        else:
            codes.append(GLOBAL_AVGPOOL if isinstance(layer, GlobalAvgPool) else FLATTEN)
    return codes, ints, floats


def output_size(spec: LayerSpec, size: tuple) -> Optional[tuple]:
    """The spatial size (H, W) at the readout for inputs of spatial size ``size`` (2-D; 1-D as
    (1, L)), or None when a layer's output would be empty."""
    h, w = size
    for layer in spec.layers:
        if isinstance(layer, (Conv, AvgPool)):
            k, s, d, p = _as_2d(layer)
            h = (h + sum(p[0]) - d[0] * (k[0] - 1) - 1) // s[0] + 1
            w = (w + sum(p[1]) - d[1] * (k[1] - 1) - 1) // s[1] + 1
            if h < 1 or w < 1:
                return None
    return h, w


def _readout_positions(spec: LayerSpec) -> Optional[int]:
    """P at a Flatten readout (the next Dense's in_features / channels), None for GAP."""
    k = next(k for k, layer in enumerate(spec.layers) if isinstance(layer, (Flatten,
                                                                            GlobalAvgPool)))
    if isinstance(spec.layers[k], GlobalAvgPool):
        return None
    channels = [layer.out_channels for layer in spec.layers[:k] if isinstance(layer, Conv)][-1]
    return spec.layers[k + 1].in_features // channels


def check_images(function: str, name: str, x: Tensor, spec: LayerSpec,
                 like: Optional[Tensor] = None) -> Tensor:
    """x [N, C, H, W] (2-D spec) or [N, C, L] (1-D spec), validated; ValueError naming the
    expected per-sample shape otherwise (NaN, empty batch and dtype as check_batch)."""
    x = check_batch(function, name, x, like=like)
    dims, channels = spec.spatial_dims, spec.in_channels
    wanted = f"{channels}, H, W" if dims == 2 else f"{channels}, L"
    positions = _readout_positions(spec)
    if x.dim() != dims + 2 or x.shape[1] != channels:
        raise ValueError(f"{function}: {name} must have shape [N, {wanted}] for this CNN; got "
                         f"{list(x.shape)}")
    size = tuple(x.shape[2:]) if dims == 2 else (1, x.shape[2])
    out = output_size(spec, size)
    if out is not None and (positions is None or out[0] * out[1] == positions):
        return x
    if positions is not None:
        sizes = {(h, w): output_size(spec, (h, w))
                 for h in (range(1, 129) if dims == 2 else (1,)) for w in range(1, 129)}
        fits = sorted((hw for hw, o in sizes.items() if o and o[0] * o[1] == positions),
                      key=lambda hw: (hw[0] != hw[1], hw))
        if fits:
            wanted = ", ".join(map(str, (channels, *fits[0]) if dims == 2 else (channels,
                                                                                 fits[0][1])))
        why = (f"the dense layer after the Flatten takes {positions} positions per channel; "
               f"these inputs give {'none' if out is None else out[0] * out[1]}")
    else:
        why = "the image is smaller than the network's receptive field"
    raise ValueError(f"{function}: {name} must have per-sample shape [{wanted}] ({why}); got "
                     f"{list(x.shape[1:])}")


def pair_floats(spec: LayerSpec, x: Tensor) -> int:
    """About how many numbers one pair of images holds at once in :func:`cnn_kernels`: a few
    copies of the largest plane (P²) or diagonal (P), P the positions of x [N, C, H, W] /
    [N, C, L] or of a padded conv input."""
    planes = any(isinstance(layer, (AvgPool, GlobalAvgPool)) for layer in spec.layers)
    positions = max(1, x[0, 0].numel())
    for layer in spec.layers:
        if isinstance(layer, Conv):
            k, s, d, p = _as_2d(layer)
            positions = max(positions, (x.shape[-2] + sum(p[0])) * (x.shape[-1] + sum(p[1]))
                            if x.dim() == 4 else x.shape[-1] + sum(p[1]))
    return 8 * (positions * positions if planes else positions)


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


def _window_mean(t: Tensor, axes: Sequence[int], kernel, stride, dilation, padding,
                 circular) -> Tensor:
    """(1/|Q|) Σ_q t[s·p + d·q − pad] with the same tap q on each (H, W) axis pair listed in
    ``axes`` (h, w, h′, w′, …): A(M) of a convolution on both pairs of a plane; the block
    means of a pooling one pair at a time."""
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


def _expectations(act: Activation, q11: Tensor, q22: Tensor, q12: Tensor, degree: int,
                  force_quadrature: bool) -> tuple[Tensor, Tensor]:
    if act.has_closed_form and not force_quadrature:
        return act.closed_form(q11, q22, q12)
    shape = torch.broadcast_shapes(q11.shape, q22.shape, q12.shape)
    q11, q22, q12 = (t.expand(shape).reshape(-1) for t in (q11, q22, q12))
    step = max(1, QUADRATURE_ELEMENTS // (degree * degree))
    parts = [gaussian_expectations(act, q11[i:i + step], q22[i:i + step], q12[i:i + step], degree)
             for i in range(0, q12.numel(), step)]
    return (torch.cat([p[0] for p in parts]).reshape(shape),
            torch.cat([p[1] for p in parts]).reshape(shape))


class _Pairs:
    """The recursion on a batch of pairs: K and T of shape [B..., (H, W) × sets]; ``sets``
    is 2 for position planes, 1 for same-position diagonals, 0 after the readout."""

    def __init__(self, k: Tensor, sets: int):
        self.k, self.t, self.sets = k, torch.zeros_like(k), sets

    def variance(self) -> Tensor:
        """Var at each position of a self-pair state (pairs (x, x)): [B, (H, W)] or [B]."""
        if self.sets < 2:
            return self.k
        b, h, w = self.k.shape[0], self.k.shape[-2], self.k.shape[-1]
        return torch.diagonal(self.k.reshape(b, h * w, h * w), dim1=1, dim2=2).reshape(b, h, w)

    def linear_layer(self, layer: Union[Conv, Dense]) -> None:
        tw = layer.ntk_weight_coef * layer.in_features
        k, t = self.k, self.t
        if isinstance(layer, Conv):
            k2, s, d, p = _as_2d(layer)
            circular = layer.padding_mode == "circular"
            axes = range(k.dim() - 2 * self.sets, k.dim())
            k = _window_mean(k, axes, k2, s, d, p, circular)
            t = _window_mean(t, axes, k2, s, d, p, circular)
        self.k = layer.weight_var * k + layer.bias_var
        self.t = tw * k + layer.ntk_bias_coef + layer.weight_var * t

    def activation(self, act: Activation, var1: Tensor, var2: Tensor, degree: int,
                   force_quadrature: bool) -> None:
        e_phi, e_dphi = _expectations(act, var1, var2, self.k, degree, force_quadrature)
        self.k, self.t = e_phi, e_dphi * self.t

    def pool(self, layer: Union[AvgPool, GlobalAvgPool, Flatten]) -> None:
        if isinstance(layer, AvgPool):
            k, s, d, p = _as_2d(layer)
            for j in range(self.sets):  # (1/|B|²) Σ_{q,q′}: each position index on its own
                axes = (self.k.dim() - 2 * j - 2, self.k.dim() - 2 * j - 1)
                self.k = _window_mean(self.k, axes, k, s, d, p, False)
                self.t = _window_mean(self.t, axes, k, s, d, p, False)
            return
        dims = tuple(range(-2 * self.sets, 0))
        if isinstance(layer, Flatten) and self.sets == 2:
            lead = self.k.shape[:-4]
            p = self.k.shape[-1] * self.k.shape[-2]
            self.k, self.t = (torch.diagonal(m.reshape(*lead, p, p), dim1=-2, dim2=-1).mean(-1)
                              for m in (self.k, self.t))
        else:
            self.k, self.t = self.k.mean(dims), self.t.mean(dims)
        self.sets = 0


def _run(spec: LayerSpec, k0: Tensor, sets: int, variances: Optional[list],
         shape_of: Callable, degree: int, force_quadrature: bool) -> tuple[_Pairs, list]:
    """Run the spec from the input Gram ``k0``. ``variances``: per activation, the (var1, var2)
    to use (None: this is a self-pair run, take them from its own state and record them);
    ``shape_of(var, side, sets)`` views a self variance for broadcasting on ``side``."""
    state, recorded, a = _Pairs(k0, sets), [], 0
    for layer in spec.layers:
        if isinstance(layer, (Conv, Dense)):
            state.linear_layer(layer)
        elif isinstance(layer, Activation):
            if variances is None:
                var = state.variance()
                recorded.append(var)
                v1, v2 = shape_of(var, 1, state.sets), shape_of(var, 2, state.sets)
            else:
                v1 = shape_of(variances[0][a], 1, state.sets)
                v2 = shape_of(variances[1][a], 2, state.sets)
            state.activation(layer, v1, v2, degree, force_quadrature)
            a += 1
        else:
            state.pool(layer)
    return state, recorded


def cnn_kernels(
    spec: LayerSpec,
    x1: Tensor,
    x2: Optional[Tensor] = None,
    get: Union[str, Sequence[str]] = ("nngp", "ntk"),
    quadrature_degree: Optional[int] = None,
    force_quadrature: bool = False,
) -> CNNKernels:
    """The infinite-width NNGP and NTK [N1, N2] of a CNN spec, by the recursion above.

    Args:
        spec: a CNN :class:`~torch_ntk.arch.LayerSpec` (starts with a Conv).
        x1: [N1, C, H, W] (2-D spec) or [N1, C, L] (1-D spec), float32/float64.
        x2: like x1, or None for x2 = x1 (the result is then exactly symmetric).
        get, quadrature_degree, force_quadrature: as :func:`torch_ntk.analytic_kernels`.

    Cost: planes [N1, N2, P, P] per layer (pooling or a global-average readout), else
    same-position diagonals [N1, N2, P]; quadrature in chunks.
    """
    function = "analytic_kernels"
    wanted = check_choices(function, "get", get, ("nngp", "ntk"))
    if spec.is_mlp:
        raise ValueError("cnn_kernels: an MLP spec; use torch_ntk.analytic_kernels")
    x1 = check_images(function, "x1", x1, spec)
    symmetric = x2 is None
    x2 = x1 if symmetric else check_images(function, "x2", x2, spec, like=x1)
    if spec.spatial_dims == 1:
        x1, x2 = x1.unsqueeze(2), x2.unsqueeze(2)
    if quadrature_degree is None:
        quadrature_degree = quadrature_degree_for(spec.activations, force_quadrature)
    planes = any(isinstance(layer, (AvgPool, GlobalAvgPool)) for layer in spec.layers)
    sets = 2 if planes else 1
    c0 = x1.shape[1]

    def gram(a: Tensor, b: Tensor, pairs: bool) -> Tensor:
        if planes:
            return torch.einsum("achw,bcij->abhwij" if pairs else "nchw,ncij->nhwij", a, b) / c0
        return torch.einsum("achw,bchw->abhw" if pairs else "nchw,nchw->nhw", a, b) / c0

    def self_view(var: Tensor, side: int, sets_now: int) -> Tensor:
        if sets_now == 2:
            return var[:, :, :, None, None] if side == 1 else var[:, None, None, :, :]
        return var

    def cross_view(var: Tensor, side: int, sets_now: int) -> Tensor:
        var = var[:, None] if side == 1 else var[None, :]
        if sets_now == 2:
            return var[..., :, :, None, None] if side == 1 else var[..., None, None, :, :]
        return var

    args = (quadrature_degree, force_quadrature)
    _, var1 = _run(spec, gram(x1, x1, False), sets, None, self_view, *args)
    var2 = var1 if symmetric else _run(spec, gram(x2, x2, False), sets, None, self_view, *args)[1]
    state, _ = _run(spec, gram(x1, x2, True), sets, (var1, var2), cross_view, *args)
    nngp, ntk = state.k, state.t
    if symmetric:
        nngp = torch.triu(nngp) + torch.triu(nngp, 1).T
        ntk = torch.triu(ntk) + torch.triu(ntk, 1).T
    return CNNKernels(nngp if "nngp" in wanted else None, ntk if "ntk" in wanted else None)
