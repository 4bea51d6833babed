"""The fused MLP op on numeric Hermite series tables: any elementwise φ at the series' speed.

An activation without an op id (``torch_ntk.layers.elementwise``: Mish, Hardswish, any
``Elementwise``; ELU/SELU on the series) has its dual maps from the numeric Hermite
series of ``torch_ntk.layers.numeric_series``. Here torch computes only what is per
sample, and the op ``torch_ntk::analytic_kernels`` (its ``series_x1``, ``series_x2``) runs the
O(N1 N2 L K) pair pass:

1. the variances q_l(x) = Σ^(l)(x, x) of every hidden layer by the diagonal recursion on
   the N self pairs (the expectations of the torch path, ``mlp_kernels``);
2. per series layer the tables a_k(q), b_k(q) [K, N] and the relative tails r_K at those
   variances (:func:`~torch_ntk.layers.numeric_series.paired_tables`, one K per layer);
3. the op: per pair Σ_{k<K} a_k(q11) a_k(q22) ρ^k (and b), flagging the pairs whose bound
   r_K(q11) r_K(q22) |ρ|^K exceeds the tolerance (``fallback`` [N1, N2]);
4. the flagged pairs (|ρ| near 1 for kinked φ) again in torch, every layer, with the
   2-D rule where their bound fails (:func:`~torch_ntk.layers.numeric_series.table_expectations`).

The result equals the torch recursion (``torch_ntk.analytic.autograd.mlp_kernels`` with
``numeric=True``) to rounding. The registered smooth activations (GELU, tanh, …) of a spec
that has a numeric layer take tables too (the op's own series would not chain with the
given variances); the closed forms and the 2-D Gauss–Hermite rule stay the op's. Chains on
the CPU only: graphs, CUDA tensors and numeric activations with a kernel map in torch
(closed forms) keep the torch recursion (``torch_ntk.analytic.kernels``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import ops
from ..activations import Activation, gaussian_expectations, hermite_rule, quadrature_degree_for
from ..layers.elementwise import dual_functions, needs_numeric
from ..layers.numeric_series import TOLERANCE, numeric_expectations, paired_tables
from ..layers.numeric_series import table_expectations
from ..lifting.lift import LayerSpec
from .autograd import HERMITE_SERIES
from .fused import compiled_op_args

__all__ = ["table_plan", "tabled_kernels"]

_CHUNK = 4096  # pairs per product in the recomputation of flagged pairs' Gram entries


def table_plan(spec: LayerSpec, device: torch.device, quadrature_degree: Optional[int],
               force_quadrature: bool) -> Optional[list[bool]]:
    """Per hidden layer whether it runs on series tables, or None when the spec does not
    take this path (no numeric layer, a graph, not on the CPU, or a numeric activation
    with a closed form in torch)."""
    if not spec.is_mlp or spec.is_graph or torch.device(device).type != "cpu":
        return None
    series = quadrature_degree is None and not force_quadrature
    plan = []
    for act in spec.activations:
        if needs_numeric(act, series):
            if act.has_closed_form and not force_quadrature:
                return None
            plan.append(True)
        else:
            plan.append(series and not act.has_closed_form and act.name in HERMITE_SERIES)
    return plan if any(needs_numeric(a, series) for a in spec.activations) else None


def _expectations(act: Activation, table: bool, q11: Tensor, q22: Tensor, q12: Tensor,
                  degree: int, force_quadrature: bool) -> tuple[Tensor, Tensor]:
    """A layer's expectations in torch as ``mlp_kernels(numeric=True)`` takes them: the
    numeric series for table layers, else the closed form or the 2-D Gauss–Hermite rule."""
    if table:
        phi, dphi, kinks = dual_functions(act)
        return numeric_expectations(phi, dphi, kinks, q11, q22, q12, name=act.name)
    if act.has_closed_form and not force_quadrature:
        return act.closed_form(q11, q22, q12)
    return gaussian_expectations(act, q11, q22, q12, degree)


def _variances(spec: LayerSpec, plan: list[bool], sq: Tensor, degree: int,
               force_quadrature: bool) -> list[Tensor]:
    """[N] Σ^(l)(x, x) entering each hidden layer, from the squared norms sq [N]."""
    first = spec.dense_layers[0]
    q = first.weight_var / first.in_features * sq + first.bias_var
    out = []
    for act, dense, table in zip(spec.activations, spec.dense_layers[1:], plan):
        out.append(q)
        e = _expectations(act, table, q, q, q, degree, force_quadrature)[0]
        q = dense.weight_var * e + dense.bias_var
    return out


def tabled_kernels(spec: LayerSpec, x1: Tensor, x2: Optional[Tensor], plan: list[bool],
                   quadrature_degree: Optional[int], force_quadrature: bool
                   ) -> tuple[Tensor, Tensor]:
    """(NNGP, NTK) [N1, N2] of an MLP chain spec with numeric layers (``plan`` from
    :func:`table_plan`) by the fused op on series tables (module doc); x1 [N1, n0], x2
    [N2, n0] or None (x2 = x1: exactly symmetric), validated. Not differentiable."""
    dtype = x1.dtype
    degree = quadrature_degree or quadrature_degree_for(spec.activations, force_quadrature)
    tolerance = TOLERANCE.get(dtype, 1e-8)
    symmetric = x2 is None
    with torch.no_grad():
        # squared norms as the op forms them (float64, rounded once)
        sq1 = x1.double().square().sum(1).to(dtype)
        var1 = _variances(spec, plan, sq1, degree, force_quadrature)
        var2 = var1 if symmetric else _variances(
            spec, plan, x2.double().square().sum(1).to(dtype), degree, force_quadrature)
        tables: list = []
        for l, (act, table) in enumerate(zip(spec.activations, plan)):
            if not table:
                tables.append(None)
                continue
            phi, dphi, kinks = dual_functions(act)
            t1, t2 = paired_tables(phi, dphi, kinks, var1[l].double(), var2[l].double(),
                                   act.name, tolerance)
            tables.append([(t[0], t[1], t[4][:, -1], t[5][:, -1]) for t in (t1, t2)])
        terms = [t[0][0].shape[1] if t is not None else 0 for t in tables]
        kmax = max(max(terms), 8)
        sets = [(var1, 0, x1.shape[0])] + ([] if symmetric else [(var2, 1, x2.shape[0])])
        packed = []
        for var, side, n in sets:  # [L-1, 2 K_max + 3, N]: var, a, b, ra, rb
            pack = torch.zeros(len(plan), 2 * kmax + 3, n, dtype=dtype)
            pack[:, 0] = torch.stack(var)
            for l, t in enumerate(tables):
                if t is not None:
                    pack[l, 1:1 + terms[l]] = t[side][0].T
                    pack[l, 1 + kmax:1 + kmax + terms[l]] = t[side][1].T
                    pack[l, 2 * kmax + 1], pack[l, 2 * kmax + 2] = t[side][2], t[side][3]
            packed.append(pack)
        args = compiled_op_args(spec)
        args["act_ids"] = [-1 if t else i for t, i in zip(plan, args["act_ids"])]
        nodes, weights = hermite_rule(degree, torch.float64)
        nngp, ntk, fallback = ops.analytic_kernels_tabled(
            x1, x2, **args, gh_nodes=nodes, gh_weights=weights,
            force_quadrature=force_quadrature, want_nngp=True, want_ntk=True,
            hermite_series=quadrature_degree is None, series_x1=packed[0],
            series_x2=None if symmetric else packed[1], series_terms=terms,
            series_tolerance=tolerance)
        if bool(fallback.any()):
            _recompute(spec, plan, x1, x2, var1, var2, tables, fallback, nngp, ntk, degree,
                       force_quadrature, tolerance)
    return nngp, ntk


def _recompute(spec: LayerSpec, plan: list[bool], x1: Tensor, x2: Optional[Tensor], var1: list,
               var2: list, tables: list, fallback: Tensor, nngp: Tensor, ntk: Tensor,
               degree: int, force_quadrature: bool, tolerance: float) -> None:
    """The flagged pairs' recursion in torch, every layer (the series from the same tables,
    the 2-D rule where the bound fails), written into nngp and ntk (and their mirror)."""
    symmetric = x2 is None
    i, j = torch.nonzero(torch.triu(fallback) if symmetric else fallback, as_tuple=True)
    other = x1 if symmetric else x2
    gram = torch.cat([(x1[i[c:c + _CHUNK]].double() * other[j[c:c + _CHUNK]].double()).sum(1)
                      for c in range(0, i.numel(), _CHUNK)]).to(x1.dtype)
    first = spec.dense_layers[0]
    sigma = first.weight_var / first.in_features * gram + first.bias_var
    theta = first.ntk_weight_coef * gram + first.ntk_bias_coef
    same = i == j
    for l, (act, dense, table) in enumerate(zip(spec.activations, spec.dense_layers[1:], plan)):
        q11, q22 = var1[l][i], var2[l][j]
        if symmetric:  # exact: Σ^(l)(x, x) is the variance
            sigma = torch.where(same, q11, sigma)
        if table:
            phi, dphi, kinks = dual_functions(act)
            side1 = tuple(t[i] for t in tables[l][0])
            side2 = tuple(t[j] for t in tables[l][1])
            e, ed = table_expectations(phi, dphi, kinks, side1, side2, q11.double(),
                                       q22.double(), sigma.double(), act.name, tolerance)
            e, ed = e.to(x1.dtype), ed.to(x1.dtype)
        else:
            e, ed = _expectations(act, False, q11, q22, sigma, degree, force_quadrature)
        tw = dense.ntk_weight_coef * dense.in_features
        theta = theta * (dense.weight_var * ed) + tw * e + dense.ntk_bias_coef
        sigma = dense.weight_var * e + dense.bias_var
    for out, value in ((nngp, sigma), (ntk, theta)):
        out[i, j] = value
        if symmetric:
            out[j, i] = value
