"""Gradients of the infinite-width kernels (issue 30).

The old silent failure: ``analytic_kernels(model, x1, x2)`` with ``x1.requires_grad`` gave a
kernel whose grad_fn differentiated only the input Gram (x1.grad off by a relative 2.8 from
finite differences), and the CNN op's output left x.grad None. A call that cannot be
differentiated correctly must raise; the fused ops' outputs must not backpropagate.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torch_ntk
from torch_ntk import analytic_kernels, mlp_spec, ops
from torch_ntk.nn import NTKConv2d, NTKLinear

DTYPE = torch.float64


def _cnn():
    return nn.Sequential(NTKConv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), NTKLinear(4 * 16, 1))


def test_fused_op_outputs_do_not_backpropagate():
    spec = mlp_spec([3, 8, 8, 1], "relu")
    x1 = torch.randn(4, 3, dtype=DTYPE, requires_grad=True)
    args = torch_ntk.analytic.compiled_op_args(spec)
    nodes, weights = torch_ntk.activations.hermite_rule(1)
    nngp, ntk = ops.analytic_kernels(x1, None, **args, gh_nodes=nodes, gh_weights=weights)
    with pytest.raises(RuntimeError, match="has no backward"):
        ntk.sum().backward()
    from torch_ntk.analytic.cnn import cnn_op_args
    from torch_ntk.lifting.lift import lift
    x = torch.randn(3, 1, 6, 6, dtype=DTYPE, requires_grad=True)
    nngp, ntk = ops.cnn_kernels(x, None, *cnn_op_args(lift(_cnn())), nodes, weights)
    with pytest.raises(RuntimeError, match="has no backward"):
        ntk.sum().backward()


def test_inputs_that_require_grad_never_get_a_wrong_gradient():
    """The old case (x1.grad off by 2.8 relative): an error now."""
    spec = mlp_spec([3, 8, 8, 1], "relu")
    x1 = torch.randn(4, 3, dtype=DTYPE, requires_grad=True)
    x2 = torch.randn(5, 3, dtype=DTYPE)
    with pytest.raises(RuntimeError, match="requires grad"):
        analytic_kernels(spec, x1, x2)
    with pytest.raises(RuntimeError, match="requires grad"):
        torch_ntk.NTK(torch_ntk.ntk_mlp([3, 8, 1], dtype=DTYPE)).limit(x1)
    x = torch.randn(3, 1, 6, 6, dtype=DTYPE, requires_grad=True)
    with pytest.raises(RuntimeError, match="requires grad"):
        analytic_kernels(_cnn(), x)
    with torch.no_grad():
        assert analytic_kernels(spec, x1, x2).ntk.grad_fn is None
    assert analytic_kernels(spec, x1.detach(), x2).ntk.grad_fn is None
