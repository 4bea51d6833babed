"""The fused MLP op with a compiled backward (issue 30): the path
:func:`torch_ntk.analytic_kernels` takes when inputs or variances require grad and every
layer has a closed-form derivative in C++ (:func:`op_backward_applies`).

``torch_ntk::analytic_kernels_differentiable`` (a ``torch.library.custom_op``) runs the
fused forward ``torch_ntk::analytic_kernels`` with its layer arguments given as a tensor
(:func:`op_coefficients`, so that σ_w², σ_b² that require grad reach them), and its
autograd formula (``torch.library.register_autograd``) calls the compiled backward
``torch_ntk::analytic_kernels_backward`` (csrc/math/recursion_backward.h: per pair the
recursion rerun with a tape, then the reverse sweep), which returns the gradients of the
Gram entries, of the squared norms and of the layer arguments; the Gram chain rule to x1,
x2 is done here in torch:

    x2 given:  dL/dx1 = G x2 + 2 g1 ⊙ x1,   dL/dx2 = Gᵀ x1 + 2 g2 ⊙ x2
    x2 None:   dL/dx1 = (G' + G'ᵀ) x1,  G' = G + diag(g1)   (G: the upper triangle)

No double backward: under ``create_graph=True`` the gradients carry a node that raises.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .. import ops
from ..layers.elementwise import NumericActivation
from ..lifting.lift import LayerSpec

__all__ = ["analytic_kernels_differentiable", "fused_mlp_kernels", "op_backward_applies",
           "op_coefficients"]


@torch.library.custom_op("torch_ntk::analytic_kernels_differentiable", mutates_args=())
def analytic_kernels_differentiable(x1: Tensor, x2: Optional[Tensor], coefs: Tensor,
                                    act_ids: list[int], act_params: list[float],
                                    want_nngp: bool, want_ntk: bool) -> tuple[Tensor, Tensor]:
    """(NNGP, NTK) [N1, N2] of a chain MLP of closed-form layers by the fused
    :func:`torch_ntk.ops.analytic_kernels`, differentiable w.r.t. x1, x2 and ``coefs`` by
    :func:`torch_ntk.ops.analytic_kernels_backward` (no double backward).

    x1 [N1, n0], x2 [N2, n0] or None (x2 = x1); ``coefs`` [hidden + 1, 4] float64 on x1's
    device: row 0 the input layer's (input_weight_var, input_bias_var, input_ntk_weight,
    input_ntk_bias), row l the hidden layer l's (weight_var, bias_var, ntk_weight, ntk_bias)
    of :func:`torch_ntk.analytic.compiled_op_args`; ``act_ids`` in
    :data:`torch_ntk.ops.BACKWARD_ACT_IDS`. An output not wanted is an empty tensor [0].
    """
    rows = coefs.detach().to("cpu", torch.float64).tolist()
    empty = torch.empty(0, dtype=torch.float64, device=x1.device)
    nngp, ntk = ops.analytic_kernels(
        x1, x2, *rows[0], act_ids, act_params,
        *([r[k] for r in rows[1:]] for k in range(4)), empty, empty, False, want_nngp,
        want_ntk, False)
    return nngp, ntk


@analytic_kernels_differentiable.register_fake
def _analytic_kernels_differentiable_fake(x1, x2, coefs, act_ids, act_params, want_nngp,
                                          want_ntk):
    torch._check(coefs.dim() == 2 and coefs.shape[0] == len(act_ids) + 1
                 and coefs.shape[1] == 4, lambda: "analytic_kernels_differentiable: coefs must "
                 f"have shape [{len(act_ids) + 1}, 4]; got {list(coefs.shape)}")
    shape = (x1.shape[0], x1.shape[0] if x2 is None else x2.shape[0])
    return (x1.new_empty(shape if want_nngp else (0,)),
            x1.new_empty(shape if want_ntk else (0,)))


def _differentiable_setup(ctx, inputs, output):
    x1, x2, coefs, act_ids, act_params, _, _ = inputs
    ctx.save_for_backward(x1, x2, coefs)
    ctx.layers = (list(act_ids), list(act_params))


class _NoDoubleBackward(torch.autograd.Function):
    """Passes the first-order gradients through; their own backward raises (only reached
    under ``create_graph=True``)."""

    @staticmethod
    def forward(ctx, anchor, *grads):
        return tuple(None if g is None else g.clone() for g in grads)

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            "torch_ntk::analytic_kernels_differentiable has no double backward: its "
            "gradient (torch_ntk::analytic_kernels_backward) cannot differentiate twice. "
            "Take first-order gradients only (no create_graph=True through the kernels).")


def _differentiable_backward(ctx, g_nngp, g_ntk):
    x1, x2, coefs = ctx.saved_tensors
    act_ids, act_params = ctx.layers
    with torch.no_grad():
        rows = coefs.detach().to("cpu", torch.float64).tolist()
        x1d = x1.detach()
        x2d = None if x2 is None else x2.detach()
        empty = x1d.new_empty((0,))
        grad_gram, grad_sq1, grad_sq2, grad_coefs = ops.analytic_kernels_backward(
            empty if g_nngp is None or g_nngp.numel() == 0 else g_nngp,
            empty if g_ntk is None or g_ntk.numel() == 0 else g_ntk, x1d, x2d, *rows[0],
            act_ids, act_params, *([r[k] for r in rows[1:]] for k in range(4)))
        if x2 is None:  # gram = x1 x1ᵀ and sq1 = diag(gram): dL/dx1 = (G + Gᵀ) x1
            grad_gram.diagonal().add_(grad_sq1)
            grad_x1 = (grad_gram + grad_gram.T) @ x1d
            grad_x2 = None
        else:  # gram = x1 x2ᵀ, sq = Σ x²
            grad_x1 = grad_gram @ x2d + 2 * grad_sq1[:, None] * x1d
            grad_x2 = grad_gram.T @ x1d + 2 * grad_sq2[:, None] * x2d
        grad_coefs = grad_coefs.to(coefs.device)
    if torch.is_grad_enabled():  # create_graph=True: a node that refuses to differentiate
        grad_x1, grad_x2, grad_coefs = _NoDoubleBackward.apply(
            x1, grad_x1, grad_x2, grad_coefs)
    return grad_x1, grad_x2, grad_coefs, None, None, None, None


torch.library.register_autograd("torch_ntk::analytic_kernels_differentiable",
                                _differentiable_backward, setup_context=_differentiable_setup)


def op_backward_applies(spec: LayerSpec, force_quadrature: bool = False) -> bool:
    """The rule: an MLP chain takes the fused op with its compiled backward
    (``torch_ntk::analytic_kernels_backward``) when every activation is a registered one
    whose expectations the op computes in closed form (:data:`torch_ntk.ops.BACKWARD_ACT_IDS`:
    the ReLU family and erf), with a plain-number parameter that no gradient is asked of
    (an ``activation_params`` tensor that requires grad, ``value``, takes the composite),
    and quadrature is not forced."""
    return not force_quadrature and all(
        not isinstance(act, NumericActivation) and act.has_closed_form
        and act.id in ops.BACKWARD_ACT_IDS and isinstance(act.param, (int, float))
        and not getattr(getattr(act, "value", None), "requires_grad", False)
        for act in spec.activations)


def op_coefficients(spec: LayerSpec, like: Tensor) -> Tensor:
    """[hidden + 1, 4] float64 on ``like``'s device: the fused op's layer arguments
    (:func:`torch_ntk.analytic.compiled_op_args`) as a tensor, row 0 (σ_w²/n₀, σ_b², c_w,
    c_b) of the first dense layer, row l (σ_w², σ_b², c_w·n_in, c_b) of hidden layer l;
    differentiable w.r.t. the spec's variances when they are tensors (``torch_ntk.analytic.autograd.with_variances``)."""
    first = spec.dense_layers[0]
    rows = [(first.weight_var / first.in_features, first.bias_var, first.ntk_weight_coef,
             first.ntk_bias_coef)]
    rows += [(d.weight_var, d.bias_var, d.ntk_weight_coef * d.in_features, d.ntk_bias_coef)
             for d in spec.dense_layers[1:]]
    return torch.stack([torch.stack([torch.as_tensor(v, dtype=torch.float64, device=like.device)
                                     for v in row]) for row in rows])


def fused_mlp_kernels(spec: LayerSpec, x1: Tensor, x2: Optional[Tensor], wanted: tuple):
    """(nngp, ntk) of an MLP chain for which :func:`op_backward_applies`, by the fused op
    :func:`analytic_kernels_differentiable`: its forward is the fused op, its
    backward the compiled ``analytic_kernels_backward`` (gradients w.r.t. x1, x2 and the
    variances; no double backward). x1/x2 already validated ([N, n0])."""
    if spec.flatten_input:
        x1 = x1.flatten(1)
        x2 = None if x2 is None else x2.flatten(1)
    nngp, ntk = analytic_kernels_differentiable(
        x1, x2, op_coefficients(spec, x1), [a.id for a in spec.activations],
        [float(a.param) for a in spec.activations], "nngp" in wanted, "ntk" in wanted)
    return (nngp if "nngp" in wanted else None, ntk if "ntk" in wanted else None)
