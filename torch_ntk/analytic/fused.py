"""A spec compiled to the fused ops' arguments (or None: the torch walker runs it).

- MLP specs: :func:`compiled_op_args`, the layer arguments of
  :func:`torch_ntk.ops.analytic_kernels`;
- CNN specs: :func:`cnn_op_args`, the program of :func:`torch_ntk.ops.cnn_kernels`: one
  layer code per layer with its ints and floats, each asked of the layer's kind (its
  ``@op_encoding`` in :mod:`torch_ntk.layers`). A kind without an encoding makes
  it None, and :func:`torch_ntk.analytic.cnn.cnn_kernels` runs the spec.
"""

from __future__ import annotations

from typing import Optional

from ..activations import quadrature_degree_for
from ..layers.activation import ACTIVATION
from ..layers.base import OP_ENCODINGS, rule_of
from ..layers.conv import CONV
from ..layers.dense import DENSE
from ..layers.pool import AVGPOOL, FLATTEN, GLOBAL_AVGPOOL
from ..lifting.spec import LayerSpec

__all__ = ["ACTIVATION", "AVGPOOL", "CONV", "DENSE", "FLATTEN", "GLOBAL_AVGPOOL",
           "cnn_op_args", "compiled_op_args", "default_quadrature_degree"]


def default_quadrature_degree(spec: LayerSpec, force_quadrature: bool = False) -> int:
    """The largest default Gauss–Hermite degree among the spec's activations (≥ 1)."""
    return quadrature_degree_for(spec.activations, force_quadrature)


def compiled_op_args(spec: LayerSpec) -> dict:
    """The layer arguments of :func:`torch_ntk.ops.analytic_kernels`, in the op's order.

    input_weight_var, input_bias_var — Σ^(1) = input_weight_var·⟨x, x′⟩ + input_bias_var
    (σ_w²/n_0 and σ_b² of the first dense layer); input_ntk_weight, input_ntk_bias —
    Θ^(1) = input_ntk_weight·⟨x, x′⟩ + input_ntk_bias (the first layer's c_w, c_b); per
    hidden layer (activation, then dense): act_ids, act_params, σ_w², σ_b², and the NTK's
    additive term ntk_weight·E[φφ] + ntk_bias with ntk_weight = c_w·n_in (σ_w² for ntk,
    n_in for standard) and ntk_bias = c_b.
    MLP specs only (ValueError for a CNN spec: see :func:`cnn_op_args`).
    """
    spec.require_mlp("compiled_op_args")
    first, rest = spec.dense_layers[0], spec.dense_layers[1:]
    return dict(
        input_weight_var=first.weight_var / first.in_features,
        input_bias_var=first.bias_var,
        input_ntk_weight=first.ntk_weight_coef,
        input_ntk_bias=first.ntk_bias_coef,
        act_ids=[a.id for a in spec.activations],
        act_params=[float(a.param) for a in spec.activations],
        weight_var=[float(d.weight_var) for d in rest],
        bias_var=[float(d.bias_var) for d in rest],
        ntk_weight=[float(d.ntk_weight_coef * d.in_features) for d in rest],
        ntk_bias=[float(d.ntk_bias_coef) for d in rest],
    )


def cnn_op_args(spec: LayerSpec) -> Optional[tuple[list[int], list[int], list[float]]]:
    """(layer_codes, layer_ints, layer_floats): the program of a CNN spec for the compiled
    op, or None when a layer's kind has no op encoding.

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
        encode = rule_of(OP_ENCODINGS, layer)
        if encode is None:
            return None
        encoded = encode(layer)
        if encoded is None:  # e.g. an activation no fused op computes
            return None
        code, layer_ints, layer_floats = encoded
        codes.append(code)
        ints += layer_ints
        floats += layer_floats
    return codes, ints, floats
