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

__all__ = ["PRECISIONS", "analytic_kernels", "activation", "cuda_built", "structured_ntk"]


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


# ---- structured empirical NTK -------------------------------------------------------

_STRUCTURED_MODES = ("full", "trace", "diagonal")
#: Gram-product precisions of :func:`structured_ntk` (and ``empirical_ntk``).
PRECISIONS = ("highest", "bf16", "bf16x3")


def structured_ntk(
    a1: Sequence[Tensor],
    d1: Sequence[Tensor],
    a2: Optional[Sequence[Tensor]],
    d2: Optional[Sequence[Tensor]],
    weight_coef: Sequence[float],
    bias_coef: Sequence[float],
    mode: str = "full",
    precision: str = "highest",
) -> Tensor:
    """Θ = Σ_l (c_w,l ⟨A1_l, A2_l⟩ + c_b,l) ⊙ ⟨D1_l, D2_l⟩, fused over layers.

    Per dense layer l: ``a1[l]`` [N1, n_l] its input activations, ``d1[l]`` [N1, n_L, m_l]
    the cotangents ∂f_k/∂z_l of its outputs; ``a2``/``d2`` likewise for x2, or None
    for x2 = x1 (then the result is exactly symmetric and only half the tiles are
    computed). ``weight_coef``/``bias_coef`` [L] are c_w and c_b (0 for frozen terms).

    Returns: mode "full" [N1, N2, n_L, n_L] (Θ_kk′), "trace" [N1, N2] (Σ_k Θ_kk, a sum),
    "diagonal" [N1, N2, n_L] (Θ_kk). Same dtype (float32/float64) and device as a1.

    ``precision`` (float32 inputs only for the last two; see :data:`PRECISIONS`):
    "highest" computes the Gram products in the inputs' dtype (on CUDA, float32 products
    follow torch's own matmul precision setting); "bf16" rounds the activations and
    cotangents to bfloat16 and accumulates in float32 (tensor cores on CUDA; relative
    error about 1e-3 to 1e-2); "bf16x3" splits each operand into bfloat16 high and low
    parts and sums three such products (error near float32's, about 1e-5). On CPU the
    same roundings are emulated, so the results match across devices; only CUDA is
    faster for them.
    """
    if (a2 is None) != (d2 is None):
        raise ValueError("structured_ntk: a2 and d2 must both be given or both be None")
    _check_device("structured_ntk", *a1, *d1, *(a2 or ()), *(d2 or ()))
    return torch.ops.torch_ntk.structured_ntk.default(
        list(a1), list(d1), list(a2 or ()), list(d2 or ()), [float(c) for c in weight_coef],
        [float(c) for c in bias_coef], str(mode), str(precision),
    )


@torch.library.register_fake("torch_ntk::structured_ntk")
def _structured_ntk_fake(a1, d1, a2, d2, weight_coef, bias_coef, mode, precision="highest"):
    n_layers = len(a1)
    torch._check(n_layers >= 1, lambda: "structured_ntk: a1 must hold at least one layer")
    torch._check(
        len(d1) == n_layers and len(weight_coef) == n_layers and len(bias_coef) == n_layers,
        lambda: "structured_ntk: a1, d1, weight_coef and bias_coef must have one entry per layer",
    )
    torch._check(
        (len(a2) == 0 and len(d2) == 0) or (len(a2) == n_layers and len(d2) == n_layers),
        lambda: "structured_ntk: a2 and d2 must both be empty or have one entry per layer",
    )
    torch._check(
        mode in _STRUCTURED_MODES,
        lambda: f"structured_ntk: mode must be one of {_STRUCTURED_MODES}; got {mode!r}",
    )
    torch._check(
        precision in PRECISIONS,
        lambda: f"structured_ntk: precision must be one of {PRECISIONS}; got {precision!r}",
    )
    ref = a1[0]
    torch._check(
        ref.dtype in (torch.float32, torch.float64),
        lambda: f"structured_ntk: a1[0] must be float32 or float64; got {ref.dtype}",
    )
    torch._check(
        precision == "highest" or ref.dtype == torch.float32,
        lambda: f"structured_ntk: precision {precision!r} needs float32 inputs; got {ref.dtype}",
    )
    for name, ts, dim in (("a1", a1, 2), ("d1", d1, 3), ("a2", a2, 2), ("d2", d2, 3)):
        for l, t in enumerate(ts):
            torch._check(t.dim() == dim, lambda: f"structured_ntk: {name}[{l}] must be {dim}-D")
            torch._check(t.dtype == ref.dtype, lambda: f"structured_ntk: {name}[{l}] dtype")
    n1 = ref.shape[0]
    n2 = a2[0].shape[0] if len(a2) else n1
    n_out = d1[0].shape[1]
    for l in range(n_layers):
        torch._check(a1[l].shape[0] == n1 and d1[l].shape[0] == n1, lambda: "structured_ntk: N1")
        torch._check(d1[l].shape[1] == n_out, lambda: "structured_ntk: n_L must agree")
        if len(a2):
            torch._check(a2[l].shape[0] == n2 and d2[l].shape[0] == n2, lambda: "N2")
            torch._check(a2[l].shape[1] == a1[l].shape[1], lambda: "structured_ntk: a2 width")
            torch._check(d2[l].shape[1:] == d1[l].shape[1:], lambda: "structured_ntk: d2 shape")
    if mode == "full":
        shape = (n1, n2, n_out, n_out)
    elif mode == "trace":
        shape = (n1, n2)
    else:
        shape = (n1, n2, n_out)
    return ref.new_empty(shape)
