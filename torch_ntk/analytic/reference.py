"""Plain-torch reference implementations (the oracles of the tests, the eager
baselines of the benchmarks).

They compute the same mathematics as the fused ops with ordinary torch
operations on whole [N1, N2] matrices: simple, independent of the C++ code, and
slow (every layer allocates several N1×N2 temporaries).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..activations import gaussian_expectations
from .kernels import compiled_op_args, default_quadrature_degree
from ..lifting.lift import LayerSpec

__all__ = ["analytic_kernels_reference"]


def analytic_kernels_reference(
    spec: LayerSpec,
    x1: Tensor,
    x2: Optional[Tensor] = None,
    *,
    quadrature_degree: Optional[int] = None,
    force_quadrature: bool = False,
) -> tuple[Tensor, Tensor]:
    """(NNGP [N1, N2], NTK [N1, N2]) by the layer recursion of Jacot et al. Thm 1 in eager torch.

    Closed forms come from the activation registry (θ by atan2); other activations
    use :func:`torch_ntk.activations.gaussian_expectations` (memory N1·N2·degree²).
    When x2 is None the per-sample variances are taken from the Gram diagonal, the
    diagonal pairs use them exactly, and the upper triangle is mirrored.
    """
    if quadrature_degree is None:
        quadrature_degree = default_quadrature_degree(spec, force_quadrature)
    symmetric = x2 is None
    x2 = x1 if symmetric else x2
    if spec.flatten_input:
        x1, x2 = x1.flatten(1), x2.flatten(1)
    gram = x1 @ x2.T
    if symmetric:
        sq1 = sq2 = torch.diagonal(gram)
    else:
        sq1, sq2 = (x1 * x1).sum(1), (x2 * x2).sum(1)
    args = compiled_op_args(spec)
    sigma = args["input_weight_var"] * gram + args["input_bias_var"]
    theta = args["input_ntk_weight"] * gram + args["input_ntk_bias"]
    var1 = args["input_weight_var"] * sq1 + args["input_bias_var"]
    var2 = args["input_weight_var"] * sq2 + args["input_bias_var"]

    def expectations(act, q11, q22, q12):
        if act.has_closed_form and not force_quadrature:
            return act.closed_form(q11, q22, q12)
        return gaussian_expectations(act, q11, q22, q12, quadrature_degree)

    for act, dense in zip(spec.activations, spec.dense_layers[1:]):
        if symmetric:
            sigma.diagonal().copy_(var1)  # exact: Σ^(l)(x, x) is the variance
        q11, q22 = var1[:, None], var2[None, :]
        e_phi, e_dphi = expectations(act, q11, q22, sigma)
        tw = dense.ntk_weight_coef * dense.in_features
        theta = theta * (dense.weight_var * e_dphi) + tw * e_phi + dense.ntk_bias_coef
        sigma = dense.weight_var * e_phi + dense.bias_var
        var1 = dense.weight_var * expectations(act, var1, var1, var1)[0] + dense.bias_var
        var2 = dense.weight_var * expectations(act, var2, var2, var2)[0] + dense.bias_var
    if symmetric:  # the upper triangle, mirrored, as the fused op computes it
        sigma = torch.triu(sigma) + torch.triu(sigma, 1).T
        theta = torch.triu(theta) + torch.triu(theta, 1).T
    return sigma, theta
