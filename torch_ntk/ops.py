"""Typed wrappers over the compiled ops ``torch.ops.torch_ntk.*``.

Each wrapper is followed by its ``register_fake`` implementation (shapes only, for
``torch.compile`` and meta tensors), which repeats the shape checks of the C++ op
with ``torch._check``. A CUDA tensor reaching a build without CUDA gets one clear
sentence instead of a dispatcher error.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from . import _C  # noqa: F401  (registers the ops)

__all__ = ["analytic_kernels", "activation", "cuda_built"]


def cuda_built() -> bool:
    """Whether this build of torch_ntk contains the CUDA ops."""
    return bool(_C.with_cuda)


def _check_device(op: str, *tensors: Optional[Tensor]) -> None:
    for t in tensors:
        if t is not None and t.is_cuda and not cuda_built():
            raise RuntimeError(
                f"torch_ntk.{op}: got a CUDA tensor, but this torch_ntk was built without CUDA; "
                "reinstall it with FORCE_CUDA=1 (and CUDA_HOME set) on a machine with the CUDA "
                "toolkit: FORCE_CUDA=1 pip install --no-build-isolation ."
            )


def analytic_kernels(
    x1: Tensor,
    x2: Optional[Tensor],
    w0: float,
    b0: float,
    tw0: float,
    tb0: float,
    act_ids: Sequence[int],
    act_params: Sequence[float],
    weight_var: Sequence[float],
    bias_var: Sequence[float],
    ntk_weight: Sequence[float],
    ntk_bias: Sequence[float],
    gh_nodes: Tensor,
    gh_weights: Tensor,
    force_quadrature: bool = False,
    want_nngp: bool = True,
    want_ntk: bool = True,
) -> tuple[Tensor, Tensor]:
    """Infinite-width (NNGP [N1, N2], NTK [N1, N2]) of an MLP; see csrc/math/recursion.h.

    x1 [N1, n0], x2 [N2, n0] or None (x2 = x1: exactly symmetric results). The
    per-hidden-layer lists come from :meth:`torch_ntk.arch.LayerSpec.op_args`;
    ``gh_nodes``/``gh_weights`` [degree] float64 are the Gauss–Hermite rule for
    activations without a closed form. An output not wanted is an empty tensor [0].
    """
    _check_device("analytic_kernels", x1, x2)
    return torch.ops.torch_ntk.analytic_kernels.default(
        x1, x2, float(w0), float(b0), float(tw0), float(tb0), [int(i) for i in act_ids],
        [float(p) for p in act_params], [float(v) for v in weight_var],
        [float(v) for v in bias_var], [float(v) for v in ntk_weight],
        [float(v) for v in ntk_bias], gh_nodes, gh_weights, bool(force_quadrature),
        bool(want_nngp), bool(want_ntk),
    )


@torch.library.register_fake("torch_ntk::analytic_kernels")
def _analytic_kernels_fake(
    x1, x2, w0, b0, tw0, tb0, act_ids, act_params, weight_var, bias_var, ntk_weight, ntk_bias,
    gh_nodes, gh_weights, force_quadrature, want_nngp, want_ntk,
):
    torch._check(x1.dim() == 2, lambda: f"analytic_kernels: x1 must be 2-D; got {x1.shape}")
    torch._check(
        x1.dtype in (torch.float32, torch.float64),
        lambda: f"analytic_kernels: x1 must be float32 or float64; got {x1.dtype}",
    )
    n2 = x1.shape[0]
    if x2 is not None:
        torch._check(x2.dim() == 2, lambda: f"analytic_kernels: x2 must be 2-D; got {x2.shape}")
        torch._check(
            x2.shape[1] == x1.shape[1],
            lambda: f"analytic_kernels: x2 must have n0={x1.shape[1]} columns; got {x2.shape}",
        )
        torch._check(x2.dtype == x1.dtype, lambda: "analytic_kernels: x2 must match x1's dtype")
        n2 = x2.shape[0]
    torch._check(want_nngp or want_ntk, lambda: "analytic_kernels: nothing requested")
    shape = (x1.shape[0], n2)
    nngp = x1.new_empty(shape) if want_nngp else x1.new_empty((0,))
    ntk = x1.new_empty(shape) if want_ntk else x1.new_empty((0,))
    return nngp, ntk


def activation(x: Tensor, act_id: int, param: float = 0.0, derivative: bool = False) -> Tensor:
    """φ(x) or φ′(x) of registered activation ``act_id``, by the compiled kernel code."""
    _check_device("activation", x)
    return torch.ops.torch_ntk.activation.default(x, int(act_id), float(param), bool(derivative))


@torch.library.register_fake("torch_ntk::activation")
def _activation_fake(x, act_id, param, derivative):
    torch._check(
        x.dtype in (torch.float32, torch.float64),
        lambda: f"activation: x must be float32 or float64; got {x.dtype}",
    )
    return torch.empty_like(x, memory_format=torch.contiguous_format)
