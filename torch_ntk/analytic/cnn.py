"""Infinite-width CNN kernels (NNGP, NTK; Arora et al. 2019) in plain torch: the reference walker.

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
standard). A layer right after another linear one sees the identity activation. Each
layer's map is its kind's ``@kernel_rule`` (:mod:`torch_ntk.layers`), run by
:mod:`torch_ntk.analytic.graph`; when no rule needs position planes (nothing pools, a
Flatten readout) only same-position entries are kept, [.., H, W] instead of the
[.., H, W, H′, W′] planes. 1-D inputs [N, C, L] run as [N, C, 1, L]. The fused op's
program is :mod:`torch_ntk.analytic.fused`.

Example::

    >>> model = nn.Sequential(NTKConv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), NTKLinear(8 * 36, 1))
    >>> cnn_kernels(lift(model), torch.randn(4, 1, 8, 8)).ntk.shape
    torch.Size([4, 4])
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from ..activations import quadrature_degree_for
from ..layers.activation import QUADRATURE_ELEMENTS
from ..layers.state import KernelState
from ..lifting.spec import LayerSpec, role
from .._utils.validation import check_choices
from .fused import ACTIVATION, AVGPOOL, CONV, DENSE, FLATTEN, GLOBAL_AVGPOOL, cnn_op_args
from .graph import requirements, walk

__all__ = ["CNNKernels", "CONV", "ACTIVATION", "AVGPOOL", "GLOBAL_AVGPOOL", "FLATTEN", "DENSE",
           "QUADRATURE_ELEMENTS", "cnn_kernels", "cnn_op_args", "check_images", "output_size",
           "pair_floats"]


class CNNKernels(NamedTuple):
    """nngp, ntk: [N1, N2] or None when not requested (as :class:`torch_ntk.analytic.Kernels`)."""

    nngp: Optional[Tensor]
    ntk: Optional[Tensor]


def output_size(spec: LayerSpec, size: tuple) -> Optional[tuple]:
    """:meth:`LayerSpec.output_size <torch_ntk.lifting.spec.LayerSpec.output_size>`."""
    return spec.output_size(size)


def check_images(function: str, name: str, x: Tensor, spec: LayerSpec,
                 like: Optional[Tensor] = None) -> Tensor:
    """:meth:`LayerSpec.check_input <torch_ntk.lifting.spec.LayerSpec.check_input>` (kept
    for callers of the old name)."""
    return spec.check_input(function, name, x, like=like)


def pair_floats(spec: LayerSpec, x: Tensor) -> int:
    """About how many numbers one pair of images holds at once in :func:`cnn_kernels`: a few
    copies of the largest plane (P²) or diagonal (P), P the positions of x [N, C, H, W] /
    [N, C, L] or of a padded conv input."""
    planes = requirements(spec).planes
    positions = max(1, x[0, 0].numel())
    for layer in spec.layers:
        if role(layer) == "spatial":
            _, _, _, p = layer.window()
            positions = max(positions, (x.shape[-2] + sum(p[0])) * (x.shape[-1] + sum(p[1]))
                            if x.dim() == 4 else x.shape[-1] + sum(p[1]))
    return 8 * (positions * positions if planes else positions)


def full_precision_product(fn, a: Tensor, b: Tensor, *args) -> Tensor:
    """``fn(a, b, *args)``, a product of the inputs (the input Gram ⟨x, x′⟩ and its
    planes), formed in float64 and rounded once when a and b are float32, so that torch's
    reduced float32 matmul settings (``torch.set_float32_matmul_precision("high" |
    "medium")``, ``torch.backends.cuda.matmul.allow_tf32``: TF32 or bfloat16 products) do
    not move the angles between inputs; the fused ops form their Gram the same way
    (``csrc/analytic_spec.h`` full_precision_gram). Differentiable; other dtypes as they are.
    """
    if a.dtype != torch.float32:
        return fn(a, b, *args)
    return fn(a.double(), b.double(), *args).to(torch.float32)


def cnn_kernels(
    spec: LayerSpec,
    x1: Tensor,
    x2: Optional[Tensor] = None,
    get: Union[str, Sequence[str]] = ("nngp", "ntk"),
    quadrature_degree: Optional[int] = None,
    force_quadrature: bool = False,
) -> CNNKernels:
    """The infinite-width NNGP and NTK [N1, N2] of a spec, by the recursion above (each
    layer's registered rule): the plain-torch reference of the fused ops, and the path of
    specs with a layer kind the fused op has no code for.

    Args:
        spec: a :class:`~torch_ntk.lifting.LayerSpec`; a CNN's (starts with a Conv), or an
            MLP's (then the state has no positions: K = ⟨x, x′⟩/n_0 at the input).
        x1: [N1, C, H, W] (2-D spec) or [N1, C, L] (1-D spec), [N1, n_0] (MLP),
            float32/float64.
        x2: like x1, or None for x2 = x1 (the result is then exactly symmetric).
        get, quadrature_degree, force_quadrature: as :func:`torch_ntk.analytic_kernels`.

    Cost: planes [N1, N2, P, P] per layer (when a rule needs them: pooling or a global
    readout), else same-position diagonals [N1, N2, P]; quadrature in chunks.
    """
    function = "analytic_kernels"
    wanted = check_choices(function, "get", get, ("nngp", "ntk"))
    x1 = spec.check_input(function, "x1", x1)
    symmetric = x2 is None
    x2 = x1 if symmetric else spec.check_input(function, "x2", x2, like=x1)
    if spec.spatial_dims == 1:
        x1, x2 = x1.unsqueeze(2), x2.unsqueeze(2)
    series = quadrature_degree is None and not force_quadrature
    if quadrature_degree is None:
        quadrature_degree = quadrature_degree_for(spec.activations, force_quadrature)
    planes = requirements(spec).planes
    sets = 0 if spec.is_mlp else 2 if planes else 1
    c0 = x1.shape[1]

    def products(a: Tensor, b: Tensor, pairs: bool) -> Tensor:
        if sets == 0:  # an MLP: K = ⟨x, x′⟩/n_0 of the flat inputs
            return (a @ b.T if pairs else (a * b).sum(1)) / c0
        if planes:
            return torch.einsum("achw,bcij->abhwij" if pairs else "nchw,ncij->nhwij", a, b) / c0
        return torch.einsum("achw,bchw->abhw" if pairs else "nchw,nchw->nhw", a, b) / c0

    def gram(a: Tensor, b: Tensor, pairs: bool) -> KernelState:
        k = full_precision_product(products, a, b, pairs)
        return KernelState.of_inputs(k, sets, quadrature_degree, force_quadrature, series)

    def self_view(var: Tensor, side: int, sets_now: int) -> Tensor:
        if sets_now == 2:
            return var[:, :, :, None, None] if side == 1 else var[:, None, None, :, :]
        return var

    def cross_view(var: Tensor, side: int, sets_now: int) -> Tensor:
        var = var[:, None] if side == 1 else var[None, :]
        if sets_now == 2:
            return var[..., :, :, None, None] if side == 1 else var[..., None, None, :, :]
        return var

    _, var1 = walk(spec, gram(x1, x1, False), None, self_view)
    var2 = var1 if symmetric else walk(spec, gram(x2, x2, False), None, self_view)[1]
    state, _ = walk(spec, gram(x1, x2, True), (var1, var2), cross_view)
    nngp, ntk = state.nngp, state.ntk
    if symmetric:
        nngp = torch.triu(nngp) + torch.triu(nngp, 1).T
        ntk = torch.triu(ntk) + torch.triu(ntk, 1).T
    return CNNKernels(nngp if "nngp" in wanted else None, ntk if "ntk" in wanted else None)
