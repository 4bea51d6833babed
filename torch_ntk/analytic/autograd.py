"""Gradients of the infinite-width kernels (issue 30): which path differentiates what.

The fused ops ``torch_ntk::analytic_kernels`` and ``torch_ntk::cnn_kernels`` called
directly have no backward beyond what their compiled backward ops cover (the CNN op's
registered autograd, ``torch_ntk::cnn_kernels_backward``, for chain programs of
convolutions, pools, readouts and the closed-form activations); otherwise their outputs
carry an autograd node whose backward raises (registered in :mod:`torch_ntk.ops`), so a
gradient through them is an error, never a wrong or missing one.
:func:`torch_ntk.analytic_kernels` uses them whenever nothing requires grad. When an input
(x1, x2), a variance override (``weight_var``, ``bias_var``) or an activation parameter
(``activation_params``: ``torch_ntk.analytic.activation_params``) requires grad under grad
mode, :func:`differentiable_kernels` picks, by one rule per path:

- an MLP chain whose every activation has a closed-form derivative in C++ (identity,
  ReLU, LeakyReLU, Abs, erf; not forced to quadrature; no activation parameter that
  requires grad: :func:`torch_ntk.analytic.fused_backward.op_backward_applies`): the
  fused op with its compiled backward ``torch_ntk::analytic_kernels_backward``
  (:func:`torch_ntk.analytic.fused_backward.fused_mlp_kernels`; CPU and CUDA; memory: the
  inputs only, per pair the recursion is rerun with a per-chunk tape of its layers);
- a CNN chain spec whose program the compiled CNN backward covers (same conditions): the
  fused op with it (:func:`fused_cnn_kernels`; the variances through the program's floats;
  memory: per thread one pair's planes of every layer);
- other MLP specs (Hermite series: tanh, sigmoid, SiLU, GELU, softplus; quadrature;
  a closed form in torch only): :func:`mlp_kernels` below, the same recursion as a torch
  composite that autograd differentiates (the layer recursion of Jacot et al. on
  [N1, N2] matrices, as :func:`torch_ntk.analytic.reference.analytic_kernels_reference`);
- other CNN and graph specs: the plain-torch walker :func:`torch_ntk.analytic.cnn.cnn_kernels`,
  which autograd differentiates.

The dual activations are made safe for autograd where their formulas are singular: the
ReLU family by its closed-form derivatives (:class:`torch_ntk.activations._ABReLUDual`;
at ρ = ±1, a point paired with itself, Σ̇ has a kink and its derivative is the symmetric
subgradient 0), erf by its closed form (smooth), the smooth activations (tanh, sigmoid,
SiLU, GELU, softplus) by their Hermite series in torch (:func:`hermite_expectations`, as
the fused MLP op), and the others by the 2-D Gauss–Hermite quadrature in torch.

Limits of the composites: no double backward (the ReLU family's derivative and the
compiled backward raise on it; the others are not tested for it); memory O(N1·N2) per
layer kept for the backward (O(N1·N2·P²) per layer for a CNN with pooling), time a few
times the fused op's forward. Activation parameters are differentiated through their dual
maps' torch formulas (closed forms, the Hermite series, the quadrature:
``torch_ntk.analytic.activation_params``), always on the composites; those of activations
on the numeric Hermite series are refused.
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..activations import Activation, gaussian_expectations, quadrature_degree_for
from .. import ops
from ..layers import Conv, Dense
from ..layers.base import OP_ENCODINGS, rule_of
from ..layers.elementwise import NumericActivation, needs_numeric
from ..layers.elementwise import expectations as numeric_expectations
from ..lifting.lift import LayerSpec
from .cnn import full_precision_product
from .fused_backward import fused_mlp_kernels, op_backward_applies
from .fused import cnn_op_args

__all__ = ["differentiable_kernels", "fused_cnn_kernels", "hermite_expectations", "mlp_kernels",
           "needs_grad", "with_variances"]

#: Activations whose expectations the fused MLP op takes from their Hermite series.
HERMITE_SERIES = ("tanh", "sigmoid", "silu", "gelu", "softplus")
_SERIES_STEP, _SERIES_MAX_TERMS = 8, 128
_SERIES_VECTOR_ELEMENTS = 1 << 22  # pairs × terms below which ρ^k are formed at once


def needs_grad(*tensors) -> bool:
    """Whether autograd would record an op on any of ``tensors`` (grad mode on and one of
    them requires grad); non-tensors and None are skipped."""
    return torch.is_grad_enabled() and any(
        isinstance(t, Tensor) and t.requires_grad for t in tensors)


# ---- variance overrides --------------------------------------------------------------

def _linear_layers(spec: LayerSpec) -> list[int]:
    return [k for k, layer in enumerate(spec.layers) if isinstance(layer, (Conv, Dense))]


def _override_values(function: str, name: str, value, count: int, like: Tensor) -> list:
    """One σ² per linear layer from ``value``: a float or 0-dim tensor for every layer, or a
    sequence / 1-D tensor of ``count`` entries."""
    if isinstance(value, Tensor):
        if value.dtype != like.dtype:
            raise ValueError(f"{function}: {name} must have the dtype of x1 ({like.dtype}); got "
                             f"{value.dtype}")
        if value.device != like.device:
            raise ValueError(f"{function}: {name} must be on x1's device ({like.device}); got "
                             f"{value.device}")
        if value.dim() == 0:
            return [value] * count
        if value.dim() != 1 or value.shape[0] != count:
            raise ValueError(f"{function}: {name} must be a 0-dim tensor or have one entry per "
                             f"linear (Dense/Conv) layer ({count}); got shape {list(value.shape)}")
        values = list(value.unbind(0))
    elif isinstance(value, (int, float)):
        return [float(value)] * count
    else:
        values = list(value)
        if len(values) != count:
            raise ValueError(f"{function}: {name} must have one entry per linear (Dense/Conv) "
                             f"layer ({count}); got {len(values)}")
        values = [_override_values(function, f"{name}[{i}]", v, 1, like)[0]
                  for i, v in enumerate(values)]
    for i, v in enumerate(values):
        if isinstance(v, Tensor) and v.dim() != 0:
            raise ValueError(f"{function}: {name}[{i}] must be a number or a 0-dim tensor; got "
                             f"shape {list(v.shape)}")
        if not bool(v >= 0):
            raise ValueError(f"{function}: {name} must be non-negative; got {float(v)}")
    return values


def with_variances(spec: LayerSpec, x1: Tensor, weight_var=None, bias_var=None,
                   function: str = "analytic_kernels") -> LayerSpec:
    """``spec`` with the σ_w² / σ_b² of its linear layers (Dense and Conv, in order) replaced.

    Each of ``weight_var``, ``bias_var``: None (keep the spec's), a float or 0-dim tensor
    (every linear layer), or one float / 0-dim tensor per linear layer (a sequence or a 1-D
    tensor). Tensors must have x1's dtype and device; they may require grad. The NTK's
    coefficients follow the parametrization (ntk: c_w = σ_w²/n_in, c_b = σ_b²). A bias
    variance for a layer without bias is an error.
    """
    if weight_var is None and bias_var is None:
        return spec
    if x1.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{function}: x1 must be float32 or float64; got {x1.dtype}. Convert "
                        "it with .float() or .double()")
    index = _linear_layers(spec)
    layers = list(spec.layers)
    for name, value in (("weight_var", weight_var), ("bias_var", bias_var)):
        if value is None:
            continue
        for k, v in zip(index, _override_values(function, name, value, len(index), x1)):
            layer = layers[k]
            if name == "bias_var" and not layer.has_bias and bool(v != 0):
                raise ValueError(f"{function}: bias_var for layer {k} ({type(layer).__name__} "
                                 "without bias) must be 0")
            layers[k] = dataclasses.replace(layer, **{name: v})
    return dataclasses.replace(spec, layers=tuple(layers))


# ---- Hermite series in torch ------------------------------------------------------------

@lru_cache(maxsize=16)
def _series_rule(width: float, terms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes z, weights (with the N(0, 1) density) and h_k(z) = He_k(z)/√k! [terms, nodes] of
    a composite 16-point Gauss–Legendre rule on [−13, 13] with panels of ``width``."""
    panels = max(1, int(math.ceil(26 / width)))
    t, w = np.polynomial.legendre.leggauss(16)
    edges = np.linspace(-13, 13, panels + 1)
    half = (edges[1:] - edges[:-1])[:, None] / 2
    z = ((edges[:-1] + edges[1:])[:, None] / 2 + half * t[None, :]).ravel()
    weights = (half * w[None, :]).ravel() * np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    h = np.empty((terms, z.size))
    h[0] = 1
    if terms > 1:
        h[1] = z
    for k in range(1, terms - 1):
        h[k + 1] = (z * h[k] - math.sqrt(k) * h[k - 1]) / math.sqrt(k + 1)
    return z, weights, h


def _scale(act: Activation) -> float:
    """The inverse length scale of φ (as csrc/math/hermite.h)."""
    return {"softplus": act.param, "sigmoid": 0.5, "silu": 0.5}.get(act.name, 1.0)


def _coefficients(fn, q: Tensor, z: Tensor, w: Tensor, h: Tensor) -> Tensor:
    """[..., K]: E[fn(√q z) h_k(z)] for each q."""
    values = fn(torch.sqrt(q)[..., None] * z) * w
    return values @ h.T


def _terms_needed(a: Tensor, tolerance: float) -> int:
    """The shortest K (a multiple of 8) whose relative tail Σ_{k≥K} a_k² / Σ_k a_k² is at most
    ``tolerance`` for every row of ``a`` [..., K_max] (a pair's relative error is at most
    the product of its two samples' relative tails' square roots, so at most this)."""
    with torch.no_grad():
        power = a.detach() * a.detach()
        total = power.sum(-1, keepdim=True)
        tail = torch.clamp(total - torch.cumsum(power, -1), min=0) / torch.clamp(
            total, min=torch.finfo(a.dtype).tiny)
        ok = (tail <= tolerance).reshape(-1, a.shape[-1]).all(0)
        k = int(ok.to(torch.int8).argmax()) + 1 if bool(ok.any()) else a.shape[-1]
    return min(a.shape[-1], int(math.ceil(k / _SERIES_STEP) * _SERIES_STEP))


def hermite_expectations(act: Activation, q11: Tensor, q22: Tensor, q12: Tensor,
                         tolerance: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """(E[φ(u)φ(v)], E[φ′(u)φ′(v)]) by the Hermite series of φ and φ′ (Mehler's formula,
    csrc/math/hermite.h): Σ_k a_k(q11) a_k(q22) ρ^k with ρ = q12/√(q11 q22), the
    coefficients a_k(q) = E[φ(√q z) h_k(z)] by a composite Gauss–Legendre rule in torch
    (differentiable in q), and as many terms K (≤ 128) as the Cauchy–Schwarz bound of the
    tail needs for ``tolerance`` (1e-11 in float64, 1e-7 in float32) relative, at |ρ| = 1,
    for every q given. Broadcasts like :func:`~torch_ntk.activations.gaussian_expectations`.
    q must be positive.
    """
    like = next(q for q in (q12, q11, q22) if isinstance(q, Tensor))
    dtype, device = like.dtype, like.device
    # the coefficients per sample (q11 [N1, 1], q22 [1, N2]), broadcast only in the sum
    q11, q22, q12 = (torch.as_tensor(q, dtype=dtype, device=device) for q in (q11, q22, q12))
    if tolerance is None:
        tolerance = 1e-11 if dtype == torch.float64 else 1e-7
    q_max = float(torch.maximum(q11.detach().max(), q22.detach().max()))
    width = min(0.5, 1 / (_scale(act) * math.sqrt(max(q_max, 1e-12))))
    z, w, h = (torch.as_tensor(a, dtype=dtype, device=device)
               for a in _series_rule(width, _SERIES_MAX_TERMS))
    out = []
    for fn in (act, act.derivative):
        a1, a2 = (_coefficients(fn, q, z, w, h) for q in (q11, q22))
        terms = max(_terms_needed(a1, tolerance), _terms_needed(a2, tolerance))
        norm = torch.sqrt(q11 * q22)
        rho = q12 / norm
        rho = rho + (rho.clamp(-1, 1) - rho).detach()
        shape = torch.broadcast_shapes(q11.shape, q22.shape, q12.shape)
        if math.prod(shape) * terms <= _SERIES_VECTOR_ELEMENTS:  # powers ρ^k at once
            powers = torch.cumprod(rho[..., None].expand(*rho.shape, terms - 1), -1)
            powers = torch.cat([torch.ones_like(powers[..., :1]), powers], -1)
            acc = (a1[..., :terms] * a2[..., :terms] * powers).sum(-1)
        else:  # Horner, [..] temporaries only
            acc = a1[..., terms - 1] * a2[..., terms - 1]
            for k in range(terms - 2, -1, -1):
                acc = acc * rho + a1[..., k] * a2[..., k]
        out.append(acc.expand(shape))
    return out[0], out[1]


# ---- the recursions ---------------------------------------------------------------------

def _expectations(act: Activation, q11, q22, q12, degree: int, force_quadrature: bool,
                  series: bool, numeric: bool = False):
    if numeric and needs_numeric(act, series):  # no grad: the numeric Hermite series
        return numeric_expectations(act, q11, q22, q12, force_quadrature)
    if isinstance(act, NumericActivation):
        if act.has_closed_form and not force_quadrature:
            return act.closed_form(q11, q22, q12)
        raise ValueError(f"analytic_kernels: gradients through the activation {act.name} "
                         "(numeric Hermite series) are not offered; compute the kernels "
                         "under torch.no_grad() or give Elementwise(fn, nngp_fn=..., "
                         "ntk_fn=...) in differentiable torch")
    if act.has_closed_form and not force_quadrature:
        return act.closed_form(q11, q22, q12)
    if series and act.name in HERMITE_SERIES:
        return hermite_expectations(act, q11, q22, q12)
    return gaussian_expectations(act, q11, q22, q12, degree)


def mlp_kernels(spec: LayerSpec, x1: Tensor, x2: Optional[Tensor], quadrature_degree:
                Optional[int] = None, force_quadrature: bool = False,
                numeric: bool = False) -> tuple[Tensor, Tensor]:
    """(NNGP, NTK) [N1, N2] of an MLP spec by the layer recursion in torch, differentiable
    w.r.t. x1, x2 and the spec's variances when they are tensors (:func:`with_variances`).

    The expectations as the fused op: closed forms (ReLU family, erf), the Hermite series
    for the smooth activations when ``quadrature_degree`` is None, else (and for ELU/SELU)
    2-D Gauss–Hermite quadrature of the spec's default degree or ``quadrature_degree``.
    x2 = None: the per-sample variances come from the Gram diagonal, the diagonal pairs
    use them exactly, the upper triangle is mirrored. ``numeric``: the activations no fused
    op computes (``torch_ntk.layers.elementwise``: any torch φ; ELU/SELU when
    ``quadrature_degree`` is None) take the numeric Hermite series (not differentiable;
    :func:`torch_ntk.analytic_kernels` asks for it under no grad); without it, ELU/SELU
    take 2-D quadrature and a numeric activation without a closed form is refused.
    """
    series = quadrature_degree is None and not force_quadrature
    if quadrature_degree is None:
        quadrature_degree = quadrature_degree_for(spec.activations, force_quadrature)
    args = (quadrature_degree, force_quadrature, series, numeric)
    symmetric = x2 is None
    x2 = x1 if symmetric else x2
    if spec.flatten_input:
        x1, x2 = x1.flatten(1), x2.flatten(1)
    # In float64, rounded once for float32 inputs, as the fused op: torch's TF32/bf16
    # matmul settings would move the angle of a point present in x1 and x2 by ~1e-2.
    gram = full_precision_product(torch.matmul, x1, x2.T)
    if symmetric:
        sq1 = sq2 = torch.diagonal(gram)
    else:
        sq1, sq2 = (full_precision_product(lambda a, b: (a * b).sum(1), x, x) for x in (x1, x2))
    first = spec.dense_layers[0]
    wv, bv = first.weight_var / first.in_features, first.bias_var
    sigma = wv * gram + bv
    theta = first.ntk_weight_coef * gram + first.ntk_bias_coef
    var1, var2 = wv * sq1 + bv, wv * sq2 + bv
    for act, dense in zip(spec.activations, spec.dense_layers[1:]):
        if symmetric:  # exact: Σ^(l)(x, x) is the variance
            eye = torch.eye(sigma.shape[0], dtype=torch.bool, device=sigma.device)
            sigma = torch.where(eye, var1[:, None], sigma)
        e_phi, e_dphi = _expectations(act, var1[:, None], var2[None, :], sigma, *args)
        tw = dense.ntk_weight_coef * dense.in_features
        theta = theta * (dense.weight_var * e_dphi) + tw * e_phi + dense.ntk_bias_coef
        sigma = dense.weight_var * e_phi + dense.bias_var
        var1 = dense.weight_var * _expectations(act, var1, var1, var1, *args)[0] + dense.bias_var
        var2 = (var1 if symmetric else
                dense.weight_var * _expectations(act, var2, var2, var2, *args)[0]
                + dense.bias_var)
    if symmetric:  # the upper triangle, mirrored, as the fused op computes it
        sigma = torch.triu(sigma) + torch.triu(sigma, 1).T
        theta = torch.triu(theta) + torch.triu(theta, 1).T
    return sigma, theta


def differentiable_kernels(spec: LayerSpec, x1: Tensor, x2: Optional[Tensor], wanted: tuple,
                           quadrature_degree: Optional[int], force_quadrature: bool):
    """(nngp, ntk) by the torch composite (MLP: :func:`mlp_kernels`; CNN: the walker
    :func:`torch_ntk.analytic.cnn.cnn_kernels`), for :func:`torch_ntk.analytic_kernels`
    when something requires grad; x1/x2 already validated (MLP: [N, n0])."""
    for act in spec.activations:
        if isinstance(act, NumericActivation) and not act.has_closed_form:
            raise ValueError(f"analytic_kernels: gradients through the activation {act.name} "
                             "(numeric Hermite series) are not offered; compute the kernels "
                             "under torch.no_grad() or give Elementwise(fn, nngp_fn=..., "
                             "ntk_fn=...) in differentiable torch")
    if spec.is_mlp and not spec.is_graph and op_backward_applies(spec, force_quadrature):
        return fused_mlp_kernels(spec, x1, x2, wanted)
    fused = None if spec.is_mlp else fused_cnn_kernels(spec, x1, x2, wanted, force_quadrature)
    if fused is not None:
        nngp, ntk = fused
    elif spec.is_mlp and not spec.is_graph:
        nngp, ntk = mlp_kernels(spec, x1, x2, quadrature_degree, force_quadrature)
    else:
        from .cnn import cnn_kernels
        if quadrature_degree is None and any(needs_numeric(a, True) for a in spec.activations):
            # ELU/SELU: the differentiable 2-D quadrature, not the (detached) numeric series
            quadrature_degree = quadrature_degree_for(spec.activations, force_quadrature)
        nngp, ntk = cnn_kernels(spec, x1, x2, wanted, quadrature_degree, force_quadrature)
    return (nngp if "nngp" in wanted else None, ntk if "ntk" in wanted else None)


# ---- the fused CNN op's backward (issue 30) ------------------------------------------------

def _detached(spec: LayerSpec) -> LayerSpec:
    """``spec`` with tensor variances replaced by their float values (for the op's floats)."""
    layers = tuple(dataclasses.replace(layer, **{name: float(getattr(layer, name).detach())
                                                for name in ("weight_var", "bias_var")
                                                if isinstance(getattr(layer, name), Tensor)})
                   if isinstance(layer, (Conv, Dense)) else layer for layer in spec.layers)
    return dataclasses.replace(spec, layers=layers)


def _program_floats(spec: LayerSpec, program: tuple, like: Tensor) -> Optional[Tensor]:
    """The program's layer_floats [F] as a tensor of x1's dtype whose CONV/DENSE entries
    (σ_w², σ_b², tw = c_w·n_in, tb = c_b) are computed from the spec's variances, so that
    autograd carries their gradients to variance overrides that require grad; None when no
    override requires grad (or the floats cannot be matched to the layers)."""
    values: list = []
    for layer in spec.layers:
        if isinstance(layer, (Conv, Dense)):
            values += [layer.weight_var, layer.bias_var,
                       layer.ntk_weight_coef * layer.in_features, layer.ntk_bias_coef]
        else:
            values += list(rule_of(OP_ENCODINGS, layer)(layer)[2])
    if len(values) != len(program[2]) or not needs_grad(*values):
        return None
    return torch.stack([v.to(like.dtype) if isinstance(v, Tensor) else
                        torch.tensor(float(v), dtype=like.dtype, device=like.device)
                        for v in values])


class _FusedCNNKernels(torch.autograd.Function):
    """(nngp, ntk) of ``torch_ntk::cnn_kernels`` with the gradients of the compiled
    ``cnn_kernels_backward`` w.r.t. x1, x2 and the program's floats (a tensor [F])."""

    @staticmethod
    def forward(ctx, x1, x2, floats, program, nodes, weights, wanted):
        codes, ints, values = program
        ctx.save_for_backward(x1, x2, nodes, weights)
        ctx.program = program
        return ops.cnn_kernels(x1, x2, codes, ints, values, nodes, weights,
                               want_nngp="nngp" in wanted, want_ntk="ntk" in wanted)

    @staticmethod
    def backward(ctx, g_nngp, g_ntk):
        if torch.is_grad_enabled():  # create_graph=True
            raise RuntimeError(
                "analytic_kernels: the fused CNN op has no double backward (second derivatives "
                "of the kernels are not offered); differentiate once (create_graph=False)")
        x1, x2, nodes, weights = ctx.saved_tensors
        n2 = x1.shape[0] if x2 is None else x2.shape[0]
        grads = [g if g is not None and g.numel() else x1.new_zeros(x1.shape[0], n2)
                 for g in (g_nngp, g_ntk)]
        gx1, gx2, gf = ops.cnn_kernels_backward(*grads, x1, x2, *ctx.program, nodes, weights)
        return (gx1 if ctx.needs_input_grad[0] else None,
                gx2 if x2 is not None and ctx.needs_input_grad[1] else None,
                gf if ctx.needs_input_grad[2] else None, None, None, None, None)


def _has_compiled_backward(device: torch.device) -> bool:
    key = "CPU" if device.type == "cpu" else "CUDA" if device.type == "cuda" else None
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(
        "torch_ntk::cnn_kernels_backward", key)


def fused_cnn_kernels(spec: LayerSpec, x1: Tensor, x2: Optional[Tensor], wanted: tuple,
                      force_quadrature: bool = False) -> Optional[tuple]:
    """(nngp, ntk) [N1, N2] of a CNN chain spec by the fused op with its compiled backward
    (``torch_ntk::cnn_kernels_backward``, csrc/math/cnn_backward.h): gradients w.r.t. x1,
    x2 and the variance overrides of :func:`with_variances`; an output not in ``wanted`` is
    an empty tensor. None (the torch walker runs) for graph specs, a program the backward
    does not cover (:func:`torch_ntk.ops.cnn_backward_supported`: pooling, readouts, CONV,
    DENSE and the closed-form activations identity, relu, leaky_relu, abs, erf), forced
    quadrature, an activation parameter that requires grad (``activation_params``), or a
    device without a compiled backward."""
    if spec.is_mlp or spec.is_graph or force_quadrature or any(
            getattr(getattr(act, "value", None), "requires_grad", False)
            for act in spec.activations):  # an activation parameter's gradient: the walker
        return None
    program = cnn_op_args(_detached(spec))
    if program is None or not ops.cnn_backward_supported(program[0], program[1]):
        return None
    x1 = spec.check_input("analytic_kernels", "x1", x1)
    if x2 is not None:
        x2 = spec.check_input("analytic_kernels", "x2", x2, like=x1)
    if not _has_compiled_backward(x1.device):
        return None
    if spec.spatial_dims == 1:  # [N, C, L] runs as [N, C, 1, L]
        x1 = x1.unsqueeze(2)
        x2 = None if x2 is None else x2.unsqueeze(2)
    nodes = weights = x1.new_zeros(0)  # closed forms: no quadrature rule
    floats = _program_floats(spec, program, x1)
    if floats is None:  # gradients w.r.t. x1, x2: the op's registered autograd
        return ops.cnn_kernels(x1, x2, *program, nodes, weights, want_nngp="nngp" in wanted,
                               want_ntk="ntk" in wanted)
    return _FusedCNNKernels.apply(x1, x2, floats, program, nodes, weights, wanted)
