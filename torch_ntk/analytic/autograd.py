"""Gradients of the infinite-width kernels (issue 30): the guard of the fused ops.

The fused ops ``torch_ntk::analytic_kernels`` and ``torch_ntk::cnn_kernels`` have no
backward. Their outputs carry an autograd node whose backward raises (registered in
:mod:`torch_ntk.ops`), so a gradient through them is an error, never a wrong or missing
one. :func:`torch_ntk.analytic_kernels` checks first: when an input requires grad under
grad mode and no differentiable path serves the call, it raises :func:`no_backward_error`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["needs_grad", "no_backward_error"]


def needs_grad(*tensors: Optional[Tensor]) -> bool:
    """Whether autograd would record an op on any of ``tensors`` (grad mode on and one of
    them requires grad)."""
    return torch.is_grad_enabled() and any(
        t is not None and isinstance(t, Tensor) and t.requires_grad for t in tensors)


def no_backward_error(function: str, what: str) -> RuntimeError:
    """The error for a call whose inputs require grad where no correct backward exists."""
    return RuntimeError(
        f"{function}: {what} requires grad, but the infinite-width kernels of this call have "
        "no backward (the fused ops torch_ntk::analytic_kernels / cnn_kernels are not "
        "differentiable, and a gradient through them would be wrong). Detach the inputs "
        "(x.detach()) or call under torch.no_grad() to compute the kernels without gradients.")
