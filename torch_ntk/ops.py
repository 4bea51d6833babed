"""Typed wrappers over the compiled ops ``torch.ops.torch_ntk.*``.

Each wrapper is followed by its ``register_fake`` implementation (shapes only, for
``torch.compile`` and meta tensors), which repeats the shape checks of the C++ op
with ``torch._check``. A CUDA tensor reaching a build without CUDA gets one clear
sentence (ValueError) instead of a dispatcher error.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from . import _C  # registers the ops
from ._utils.modes import MODES, check_mode, kernel_shape
from ._utils.runtime import check_built_for
from ._utils.validation import check_int

__all__ = [
    "DEFAULT_WORKSPACE_BYTES",
    "PRECISIONS",
    "activation",
    "BACKWARD_ACT_IDS",
    "analytic_kernels",
    "analytic_kernels_backward",
    "analytic_kernels_tabled",
    "cnn_kernels",
    "cnn_kernels_backward",
    "cuda_built",
    "structured_ntk",
    "structured_workspace_bytes",
]


def cuda_built() -> bool:
    """Whether this build of torch_ntk contains the CUDA ops."""
    return bool(_C.with_cuda)


def analytic_kernels(
    x1: Tensor,
    x2: Optional[Tensor],
    input_weight_var: float,
    input_bias_var: float,
    input_ntk_weight: float,
    input_ntk_bias: float,
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
    hermite_series: bool = True,
    graph_codes: Sequence[int] = (),
    graph_ints: Sequence[int] = (),
    graph_floats: Sequence[float] = (),
) -> tuple[Tensor, Tensor]:
    """Infinite-width (NNGP [N1, N2], NTK [N1, N2]) of an MLP; see csrc/math/recursion.h.

    x1 [N1, n0], x2 [N2, n0] or None (x2 = x1: exactly symmetric results). The first
    dense layer gives Σ^(1) = input_weight_var·⟨x, x′⟩ + input_bias_var (σ_w²/n_0 and
    σ_b²) and Θ^(1) = input_ntk_weight·⟨x, x′⟩ + input_ntk_bias (its c_w and c_b); the
    lists hold one entry per hidden layer (activation, then dense layer). All of them
    come from :func:`torch_ntk.analytic.compiled_op_args`. ``gh_nodes``/``gh_weights``
    [degree] float64 are the Gauss–Hermite rule for activations without a closed form
    (with ``hermite_series``, the smooth ones use their Hermite series, csrc/math/hermite.h,
    and the rule only where the series' bound is not met). ``graph_codes`` (CPU only)
    with ``graph_ints``/``graph_floats``: a graph program between the hidden layers
    (0 HIDDEN, 1 PUSH, 2 LOAD, 3 JOIN, 4 LAYERNORM, 5 LINEAR; csrc/math/mlp_graph.h, the
    table in csrc/torch_ntk.cpp; from ``torch_ntk.analytic.fused.mlp_graph_args``);
    empty: the hidden layers in order. An output not wanted is an empty tensor [0].
    """
    nngp, ntk, _ = analytic_kernels_tabled(
        x1, x2, input_weight_var, input_bias_var, input_ntk_weight, input_ntk_bias, act_ids,
        act_params, weight_var, bias_var, ntk_weight, ntk_bias, gh_nodes, gh_weights,
        force_quadrature, want_nngp, want_ntk, hermite_series, graph_codes, graph_ints,
        graph_floats)
    return nngp, ntk


def analytic_kernels_tabled(
    x1: Tensor,
    x2: Optional[Tensor],
    input_weight_var: float,
    input_bias_var: float,
    input_ntk_weight: float,
    input_ntk_bias: float,
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
    hermite_series: bool = True,
    graph_codes: Sequence[int] = (),
    graph_ints: Sequence[int] = (),
    graph_floats: Sequence[float] = (),
    series_x1: Optional[Tensor] = None,
    series_x2: Optional[Tensor] = None,
    series_terms: Sequence[int] = (),
    series_tolerance: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`analytic_kernels` with precomputed Hermite series tables (CPU, no graph):
    (NNGP [N1, N2], NTK [N1, N2], fallback [N1, N2] bool).

    The hidden layers of act id −1 (any elementwise φ) take the series
    Σ_{k<K} a_k(q11) a_k(q22) ρ^k (and b for φ′) from ``series_x1`` (and ``series_x2``,
    given exactly when x2 is) [L−1, 2 K_max + 3, N] in x1's dtype, per layer the rows:
    var (Σ^(l)(x, x) entering the layer, used instead of the op's own variances), a_0 …
    a_{K_max−1}, b_0 … b_{K_max−1} (the coefficients of φ(√q z) and φ′(√q z) at q = var),
    ra, rb (their relative tails r_K); ``series_terms`` [L−1]: K per such layer (a
    multiple of 8; 0 for layers with an op id). A pair whose bound r_K(q11) r_K(q22) |ρ|^K
    (for a or for b) exceeds ``series_tolerance`` at some layer is True in ``fallback``:
    its outputs hold the truncated series and are to be recomputed (the caller's 2-D rule,
    ``torch_ntk.analytic.tabled``). With tables the op's own series of the registered
    smooth activations is off (give them tables too). Without tables: ``fallback`` is [0].
    """
    check_built_for("torch_ntk.analytic_kernels", x1, x2)
    for name, t in (("series_x1", series_x1), ("series_x2", series_x2)):
        if t is not None and not isinstance(t, Tensor):
            raise TypeError(f"analytic_kernels: {name} must be a tensor [L-1, 2 K_max + 3, N] "
                            f"or None; got {type(t).__name__}")
    return torch.ops.torch_ntk.analytic_kernels.default(
        x1, x2, float(input_weight_var), float(input_bias_var), float(input_ntk_weight),
        float(input_ntk_bias), [int(i) for i in act_ids],
        [float(p) for p in act_params], [float(v) for v in weight_var],
        [float(v) for v in bias_var], [float(v) for v in ntk_weight],
        [float(v) for v in ntk_bias], gh_nodes, gh_weights, bool(force_quadrature),
        bool(want_nngp), bool(want_ntk), bool(hermite_series), [int(c) for c in graph_codes],
        [int(i) for i in graph_ints], [float(f) for f in graph_floats], series_x1, series_x2,
        [int(k) for k in series_terms], float(series_tolerance),
    )


@torch.library.register_fake("torch_ntk::analytic_kernels")
def _analytic_kernels_fake(
    x1, x2, input_weight_var, input_bias_var, input_ntk_weight, input_ntk_bias, act_ids,
    act_params, weight_var, bias_var, ntk_weight, ntk_bias,
    gh_nodes, gh_weights, force_quadrature, want_nngp, want_ntk, hermite_series=True,
    graph_codes=(), graph_ints=(), graph_floats=(), series_x1=None, series_x2=None,
    series_terms=(), series_tolerance=0.0,
):
    torch._check(x1.dim() == 2, lambda: f"analytic_kernels: x1 must be 2-D; got {x1.shape}")
    if x2 is not None:
        torch._check(x2.dim() == 2, lambda: f"analytic_kernels: x2 must be 2-D; got {x2.shape}")
        torch._check(
            x2.shape[1] == x1.shape[1],
            lambda: f"analytic_kernels: x2 must have n0={x1.shape[1]} columns; got {x2.shape}",
        )
    nngp, ntk = _fake_kernel_pair("analytic_kernels", x1, x2, want_nngp, want_ntk)
    torch._check(
        series_x1 is not None or series_x2 is None,
        lambda: "analytic_kernels: series_x2 needs series_x1",
    )
    n2 = x1.shape[0] if x2 is None else x2.shape[0]
    shape = (x1.shape[0], n2) if series_x1 is not None else (0,)
    return nngp, ntk, x1.new_empty(shape, dtype=torch.bool)


def _fake_kernel_pair(op: str, x1, x2, want_nngp: bool, want_ntk: bool):
    """The (NNGP, NTK) outputs [N1, N2] of an infinite-width op's fake (empty [0] when not
    wanted), after the checks the two kernel ops share."""
    torch._check(
        x1.dtype in (torch.float32, torch.float64),
        lambda: f"{op}: x1 must be float32 or float64; got {x1.dtype}",
    )
    n2 = x1.shape[0]
    if x2 is not None:
        torch._check(x2.dtype == x1.dtype, lambda: f"{op}: x2 must match x1's dtype")
        n2 = x2.shape[0]
    torch._check(
        want_nngp or want_ntk,
        lambda: f"{op}: at least one of want_nngp and want_ntk must be true",
    )
    shape = (x1.shape[0], n2)
    nngp = x1.new_empty(shape) if want_nngp else x1.new_empty((0,))
    ntk = x1.new_empty(shape) if want_ntk else x1.new_empty((0,))
    return nngp, ntk


def _not_differentiable(op: str):
    def backward(ctx, *grads):
        raise RuntimeError(
            f"torch_ntk::{op} has no backward (no double backward either): the fused op is not "
            "differentiable. For gradients call torch_ntk.analytic_kernels (or NTK.limit): with "
            "inputs or variance overrides that require grad it runs a differentiable path "
            "(torch_ntk.analytic.autograd: this op with a compiled backward for closed-form "
            "layers, else a torch composite) instead of this op. Otherwise detach the "
            "inputs or call under torch.no_grad().")
    return backward


# The fused kernel ops have no derivative: their outputs carry a node whose backward raises
# (without it autograd's fallback gave a grad_fn that computed a wrong or no gradient).
# torch_ntk.analytic_kernels never sends inputs that require grad here (issue 30).
torch.library.register_autograd("torch_ntk::analytic_kernels",
                                _not_differentiable("analytic_kernels"))


# ---- the MLP op's backward (issue 30) -----------------------------------------------

#: Activation ids whose layers ``analytic_kernels_backward`` differentiates in closed form
#: (identity, relu, leaky_relu, abs, erf: csrc/math/recursion_backward.h).
BACKWARD_ACT_IDS = (0, 1, 2, 3, 4)
_COEFS = ("weight_var", "bias_var", "ntk_weight", "ntk_bias")


def analytic_kernels_backward(
    grad_nngp: Tensor, grad_ntk: Tensor, x1: Tensor, x2: Optional[Tensor],
    input_weight_var: float, input_bias_var: float, input_ntk_weight: float,
    input_ntk_bias: float, act_ids: Sequence[int], act_params: Sequence[float],
    weight_var: Sequence[float], bias_var: Sequence[float], ntk_weight: Sequence[float],
    ntk_bias: Sequence[float],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The backward of :func:`analytic_kernels` for chains of closed-form layers.

    For L = ⟨grad_nngp, NNGP⟩ + ⟨grad_ntk, NTK⟩ (each [N1, N2], or empty [0] for zero) of
    the forward with the same arguments (no quadrature, no graph): (grad_gram [N1, N2] —
    dL/d⟨x1_i, x2_j⟩ through each pair's own chain, for x2 = None only the upper triangle
    j ≥ i that the forward computes; grad_sq1 [N1], grad_sq2 [N2] ([0] for x2 = None) —
    dL/d⟨x, x⟩ through the per-sample variances; grad_coefs [hidden + 1, 4] float64 —
    dL/d(σ_w², σ_b², ntk_weight, ntk_bias) per layer, row 0 the input layer's ``input_*``).
    ``act_ids`` in :data:`BACKWARD_ACT_IDS`; csrc/math/recursion_backward.h has the formulas.
    """
    check_built_for("torch_ntk.analytic_kernels_backward", x1, x2)
    return torch.ops.torch_ntk.analytic_kernels_backward.default(
        grad_nngp, grad_ntk, x1, x2, float(input_weight_var), float(input_bias_var),
        float(input_ntk_weight), float(input_ntk_bias), [int(i) for i in act_ids],
        [float(p) for p in act_params], [float(v) for v in weight_var],
        [float(v) for v in bias_var], [float(v) for v in ntk_weight],
        [float(v) for v in ntk_bias])


@torch.library.register_fake("torch_ntk::analytic_kernels_backward")
def _analytic_kernels_backward_fake(grad_nngp, grad_ntk, x1, x2, input_weight_var,
                                    input_bias_var, input_ntk_weight, input_ntk_bias, act_ids,
                                    act_params, weight_var, bias_var, ntk_weight, ntk_bias):
    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    return (x1.new_empty((n1, n2)), x1.new_empty((n1,)),
            x1.new_empty((0,) if x2 is None else (n2,)),
            x1.new_empty((len(act_ids) + 1, 4), dtype=torch.float64))


def activation(x: Tensor, act_id: int, param: float = 0.0, derivative: bool = False) -> Tensor:
    """φ(x) or φ′(x) of registered activation ``act_id``, by the compiled kernel code."""
    check_built_for("torch_ntk.activation", x)
    return torch.ops.torch_ntk.activation.default(x, int(act_id), float(param), bool(derivative))


@torch.library.register_fake("torch_ntk::activation")
def _activation_fake(x, act_id, param, derivative):
    torch._check(
        x.dtype in (torch.float32, torch.float64),
        lambda: f"activation: x must be float32 or float64; got {x.dtype}",
    )
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# ---- structured empirical NTK -------------------------------------------------------

#: Gram-product precisions of :func:`structured_ntk` (and ``empirical_ntk``).
PRECISIONS = ("highest", "bf16", "bf16x3")
#: The limit on :func:`structured_ntk`'s Gram buffers when ``workspace_bytes`` is None.
DEFAULT_WORKSPACE_BYTES: int = _C.default_workspace_bytes


def _workspace_arg(function: str, workspace_bytes: Optional[int]) -> int:
    """The op's ``workspace_bytes`` argument: 0 (its default) for None."""
    if workspace_bytes is None:
        return 0
    return check_int(function, "workspace_bytes", workspace_bytes, minimum=1)


def structured_ntk(
    a1: Sequence[Tensor],
    d1: Sequence[Tensor],
    a2: Optional[Sequence[Tensor]],
    d2: Optional[Sequence[Tensor]],
    weight_coef: Sequence[float],
    bias_coef: Sequence[float],
    mode: str = "full",
    precision: str = "highest",
    workspace_bytes: Optional[int] = None,
) -> Tensor:
    """Θ = Σ_l (c_w,l ⟨A1_l, A2_l⟩ + c_b,l) ⊙ ⟨D1_l, D2_l⟩, fused over layers.

    Per dense layer l: ``a1[l]`` [N1, n_l] its input activations, ``d1[l]`` [N1, n_L, m_l]
    the cotangents ∂f_k/∂z_l of its outputs; ``a2``/``d2`` likewise for x2, or None
    for x2 = x1 (then the result is exactly symmetric and only half the tiles are
    computed). ``weight_coef``/``bias_coef`` [L] are c_w and c_b (0 for frozen terms).

    Returns: mode "full" [N1, N2, n_L, n_L] (Θ_kk′), "trace" [N1, N2] ((1/n_L) Σ_k Θ_kk,
    the mean over outputs), "diagonal" [N1, N2, n_L] (Θ_kk). Same dtype
    (float32/float64) and device as a1. (The compiled op's "trace" is the sum Σ_k Θ_kk;
    this wrapper asks it for the mean by passing c_w/n_L and c_b/n_L, which is exact up
    to rounding because the kernel is linear in the coefficients.)

    ``precision`` (float32 inputs only for the last two; see :data:`PRECISIONS`):
    "highest" computes the Gram products in the inputs' dtype (on CUDA, float32 products
    follow torch's own matmul precision setting); "bf16" rounds the activations and
    cotangents to bfloat16 and accumulates in float32 (tensor cores on CUDA; relative
    error about 1e-3 to 1e-2); "bf16x3" splits each operand into bfloat16 high and low
    parts and sums three such products (error near float32's, about 1e-5). On CPU the
    same roundings are emulated, so the results match across devices; only CUDA is
    faster for them.

    ``workspace_bytes`` limits the op's Gram buffers (None: :data:`DEFAULT_WORKSPACE_BYTES`);
    :func:`structured_workspace_bytes` gives what they take. The result does not depend
    on it, only the blocking does.
    """
    if (a2 is None) != (d2 is None):
        raise ValueError("structured_ntk: a2 and d2 must both be given or both be None")
    check_built_for("torch_ntk.structured_ntk", *a1, *d1, *(a2 or ()), *(d2 or ()))
    if mode == "trace" and len(d1) and d1[0].dim() == 3 and d1[0].shape[1] > 1:
        n_out = d1[0].shape[1]
        weight_coef = [c / n_out for c in weight_coef]
        bias_coef = [c / n_out for c in bias_coef]
    return torch.ops.torch_ntk.structured_ntk.default(
        list(a1), list(d1), list(a2 or ()), list(d2 or ()), [float(c) for c in weight_coef],
        [float(c) for c in bias_coef], str(mode), str(precision),
        _workspace_arg("structured_ntk", workspace_bytes),
    )


def structured_workspace_bytes(
    n1: int,
    n2: int,
    n_out: int,
    mode: str = "full",
    precision: str = "highest",
    dtype: torch.dtype = torch.float32,
    device: Union[str, torch.device] = "cpu",
    *,
    symmetric: bool = False,
    workspace_bytes: Optional[int] = None,
) -> int:
    """Bytes of Gram buffers :func:`structured_ntk` allocates for these sizes.

    The op's own formula (``structured_workspace_bytes`` in csrc/structured_spec.h), for
    inputs a1 [n1, ...], a2 [n2, ...] (``symmetric``: a2 = None and n2 = n1; never more
    than the same sizes with a2 given), cotangents with ``n_out`` outputs, of ``dtype``
    on ``device``, and the same ``workspace_bytes``. On CUDA, blocks of rows of x1 with
    activation and cotangent Gram buffers (and a scratch for "bf16x3"), at most the limit
    unless one row of pairs exceeds it; on CPU, one tile's buffers for each of up to
    ``torch.get_num_threads()`` threads. The rounded operand copies of the
    reduced precisions and the output are not part of it.
    """
    function = "structured_workspace_bytes"
    n1 = check_int(function, "n1", n1, minimum=0)
    n2 = n1 if symmetric else check_int(function, "n2", n2, minimum=0)
    n_out = check_int(function, "n_out", n_out, minimum=1)
    check_mode(function, mode)
    if precision not in PRECISIONS:
        raise ValueError(f"{function}: precision must be one of {PRECISIONS}; got {precision!r}")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{function}: dtype must be torch.float32 or torch.float64; got {dtype}")
    return int(_C.structured_workspace_bytes(
        n1, n2, n_out, mode, precision, dtype.itemsize,
        torch.device(device).type == "cuda", bool(symmetric),
        _workspace_arg(function, workspace_bytes),
    ))


@torch.library.register_fake("torch_ntk::structured_ntk")
def _structured_ntk_fake(a1, d1, a2, d2, weight_coef, bias_coef, mode, precision="highest",
                         workspace_bytes=0):
    op = "structured_ntk"
    n_layers = len(a1)
    torch._check(n_layers >= 1, lambda: f"{op}: a1 must hold one activation matrix per dense "
                 "layer; got none")
    torch._check(
        len(d1) == n_layers and len(weight_coef) == n_layers and len(bias_coef) == n_layers,
        lambda: f"{op}: a1, d1, weight_coef and bias_coef must have one entry per dense layer; "
        f"got lengths {n_layers}, {len(d1)}, {len(weight_coef)}, {len(bias_coef)}",
    )
    torch._check(
        (len(a2) == 0 and len(d2) == 0) or (len(a2) == n_layers and len(d2) == n_layers),
        lambda: f"{op}: a2 and d2 must both be empty (x2 = x1) or both have {n_layers} entries "
        f"like a1; got lengths {len(a2)} and {len(d2)}",
    )
    torch._check(mode in MODES,
                 lambda: f"{op}: mode must be 'full', 'trace' or 'diagonal'; got {mode!r}")
    torch._check(
        precision in PRECISIONS,
        lambda: f"{op}: precision must be 'highest', 'bf16' or 'bf16x3'; got {precision!r}",
    )
    torch._check(workspace_bytes >= 0,
                 lambda: f"{op}: workspace_bytes must be >= 0; got {workspace_bytes}")
    ref = a1[0]
    torch._check(
        ref.dtype in (torch.float32, torch.float64),
        lambda: f"{op}: a1[0] must be float32 or float64; got {ref.dtype}",
    )
    torch._check(
        precision == "highest" or ref.dtype == torch.float32,
        lambda: f"{op}: precision {precision!r} needs float32 inputs; got {ref.dtype}",
    )
    for name, ts, dim in (("a1", a1, 2), ("d1", d1, 3), ("a2", a2, 2), ("d2", d2, 3)):
        for l, t in enumerate(ts):
            torch._check(t.dim() == dim,
                         lambda: f"{op}: {name}[{l}] must have {dim} dimensions; got {t.shape}")
            torch._check(t.dtype == ref.dtype, lambda: f"{op}: {name}[{l}] must have the dtype "
                         f"of a1[0] ({ref.dtype}); got {t.dtype}")
    n1 = ref.shape[0]
    n2 = a2[0].shape[0] if len(a2) else n1
    n_out = d1[0].shape[1]
    for l in range(n_layers):
        torch._check(
            a1[l].shape[0] == n1 and d1[l].shape[0] == n1,
            lambda: f"{op}: a1[{l}] and d1[{l}] must have one row per sample of x1 ({n1}); got "
            f"shapes {a1[l].shape} and {d1[l].shape}",
        )
        torch._check(d1[l].shape[1] == n_out, lambda: f"{op}: d1[{l}] must have shape [{n1}, "
                     f"{n_out}, m_l] (samples, outputs, layer width); got {d1[l].shape}")
        if len(a2):
            torch._check(
                a2[l].shape[0] == n2 and d2[l].shape[0] == n2,
                lambda: f"{op}: a2[{l}] and d2[{l}] must have one row per sample of x2 ({n2}); "
                f"got shapes {a2[l].shape} and {d2[l].shape}",
            )
            torch._check(a2[l].shape[1] == a1[l].shape[1], lambda: f"{op}: a2[{l}] must have "
                         f"{a1[l].shape[1]} columns like a1[{l}]; got shape {a2[l].shape}")
            torch._check(d2[l].shape[1:] == d1[l].shape[1:], lambda: f"{op}: d2[{l}] must have "
                         f"the outputs and width of d1[{l}] {d1[l].shape[1:]}; got {d2[l].shape}")
    return ref.new_empty(kernel_shape(mode, n1, n2, n_out))


def cnn_kernels(
    x1: Tensor,
    x2: Optional[Tensor],
    layer_codes: Sequence[int],
    layer_ints: Sequence[int],
    layer_floats: Sequence[float],
    gh_nodes: Tensor,
    gh_weights: Tensor,
    force_quadrature: bool = False,
    want_nngp: bool = True,
    want_ntk: bool = True,
) -> tuple[Tensor, Tensor]:
    """Infinite-width (NNGP [N1, N2], NTK [N1, N2]) of a CNN; see csrc/math/cnn_recursion.h.

    x1 [N1, C0, H, W] (a 1-D input as [N, C, 1, L]), x2 [N2, C0, H, W] or None (x2 = x1:
    exactly symmetric results, half the pairs). The network is a program: ``layer_codes``
    (0 CONV, 1 ACTIVATION, 2 AVGPOOL, 3 GLOBAL_AVGPOOL, 4 FLATTEN, 5 DENSE; the graph steps
    6 PUSH, 7 LOAD, 8 JOIN of skip registers, 9 LAYERNORM, 10 AVGPOOL_PAD, 11
    GLOBAL_SUMPOOL), each layer taking its arguments in order from ``layer_ints`` and
    ``layer_floats`` (the table in csrc/torch_ntk.cpp). ``gh_nodes``/``gh_weights`` [degree] are the Gauss–Hermite rule
    for activations without a closed form. An output not wanted is an empty tensor [0].
    """
    check_built_for("torch_ntk.cnn_kernels", x1, x2)
    return torch.ops.torch_ntk.cnn_kernels.default(
        x1, x2, [int(c) for c in layer_codes], [int(i) for i in layer_ints],
        [float(f) for f in layer_floats], gh_nodes, gh_weights, bool(force_quadrature),
        bool(want_nngp), bool(want_ntk),
    )


@torch.library.register_fake("torch_ntk::cnn_kernels")
def _cnn_kernels_fake(x1, x2, layer_codes, layer_ints, layer_floats, gh_nodes, gh_weights,
                      force_quadrature, want_nngp, want_ntk):
    torch._check(x1.dim() == 4, lambda: f"cnn_kernels: x1 must have 4 dimensions; got {x1.shape}")
    if x2 is not None:
        torch._check(x2.dim() == 4,
                     lambda: f"cnn_kernels: x2 must have 4 dimensions; got {x2.shape}")
        torch._check(
            x2.shape[1:] == x1.shape[1:],
            lambda: f"cnn_kernels: x2 must have the [C, H, W] of x1 {list(x1.shape[1:])}; "
            f"got shape {x2.shape}",
        )
    return _fake_kernel_pair("cnn_kernels", x1, x2, want_nngp, want_ntk)


# ---- the CNN op's backward (issue 30) -----------------------------------------------

#: Layer codes and activation ids the compiled backward of ``cnn_kernels`` handles (the
#: checks of csrc/cnn_backward_spec.h): CONV, ACTIVATION, AVGPOOL, GLOBAL_AVGPOOL, FLATTEN,
#: DENSE, GLOBAL_SUMPOOL; identity, relu, leaky_relu, abs, erf (closed forms).
CNN_BACKWARD_CODES = frozenset({0, 1, 2, 3, 4, 5, 11})
CNN_BACKWARD_ACTIVATIONS = frozenset({0, 1, 2, 3, 4})


def cnn_backward_supported(layer_codes: Sequence[int], layer_ints: Sequence[int],
                           force_quadrature: bool = False) -> bool:
    """Whether :func:`cnn_kernels_backward` differentiates this program: its codes in
    :data:`CNN_BACKWARD_CODES`, its activations in closed form (not ``force_quadrature``)."""
    if force_quadrature or any(int(c) not in CNN_BACKWARD_CODES for c in layer_codes):
        return False
    ints_per_code = {0: 11, 1: 1, 2: 4, 3: 0, 4: 0, 5: 0, 11: 0}
    k = 0
    for code in layer_codes:
        if int(code) == 1 and int(layer_ints[k]) not in CNN_BACKWARD_ACTIVATIONS:
            return False
        k += ints_per_code[int(code)]
    return True


def cnn_kernels_backward(
    grad_nngp: Tensor,
    grad_ntk: Tensor,
    x1: Tensor,
    x2: Optional[Tensor],
    layer_codes: Sequence[int],
    layer_ints: Sequence[int],
    layer_floats: Sequence[float],
    gh_nodes: Tensor,
    gh_weights: Tensor,
    force_quadrature: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """The backward of :func:`cnn_kernels` (csrc/math/cnn_backward.h).

    ``grad_nngp``, ``grad_ntk`` [N1, N2]: the adjoints of its outputs (zeros for one not
    used); the other arguments as :func:`cnn_kernels`'. Per pair the forward is rerun with a
    tape of its planes and swept back (conv taps by their transposed sums, the closed-form
    dual activations by Price's theorem, pools and readouts linear); x2 = None: the pair
    (i, j) of the upper triangle takes grad[i, j] + grad[j, i]. Returns (grad_x1
    [N1, C0, H, W], grad_x2 [N2, C0, H, W] or an empty [0] when x2 is None, grad_floats
    [len(layer_floats)]: d/d(weight_var, bias_var, ntk_weight, ntk_bias) at each CONV's and
    DENSE's place, 0 for the other floats, which are not differentiated). Programs outside
    ``cnn_backward_supported`` raise a NotImplementedError.
    """
    check_built_for("torch_ntk.cnn_kernels_backward", grad_nngp, grad_ntk, x1, x2)
    return torch.ops.torch_ntk.cnn_kernels_backward.default(
        grad_nngp, grad_ntk, x1, x2, [int(c) for c in layer_codes], [int(i) for i in layer_ints],
        [float(f) for f in layer_floats], gh_nodes, gh_weights, bool(force_quadrature),
    )


@torch.library.register_fake("torch_ntk::cnn_kernels_backward")
def _cnn_kernels_backward_fake(grad_nngp, grad_ntk, x1, x2, layer_codes, layer_ints,
                               layer_floats, gh_nodes, gh_weights, force_quadrature):
    torch._check(x1.dim() == 4,
                 lambda: f"cnn_kernels_backward: x1 must have 4 dimensions; got {x1.shape}")
    n2 = x1.shape[0] if x2 is None else x2.shape[0]
    for name, g in (("grad_nngp", grad_nngp), ("grad_ntk", grad_ntk)):
        torch._check(g.dim() == 2 and g.shape[0] == x1.shape[0] and g.shape[1] == n2,
                     lambda: f"cnn_kernels_backward: {name} must have shape "
                     f"[{x1.shape[0]}, {n2}]; got {g.shape}")
    grad_x2 = x1.new_empty((0,)) if x2 is None else torch.empty_like(x2)
    return (torch.empty_like(x1, memory_format=torch.contiguous_format), grad_x2,
            x1.new_empty((len(layer_floats),)))


def _cnn_setup_context(ctx, inputs, output):
    (x1, x2, layer_codes, layer_ints, layer_floats, gh_nodes, gh_weights, force_quadrature,
     want_nngp, want_ntk) = inputs
    ctx.save_for_backward(x1, x2, gh_nodes, gh_weights)
    ctx.program = (list(layer_codes), list(layer_ints), list(layer_floats), force_quadrature)


def _output_grad(grad: Optional[Tensor], like: Tensor, n2: int) -> Tensor:
    """The adjoint of one output [N1, N2] (zeros for an unused or unwanted output)."""
    if grad is None or grad.numel() == 0:
        return like.new_zeros((like.shape[0], n2))
    return grad


def _cnn_backward(ctx, grad_nngp, grad_ntk):
    x1, x2, gh_nodes, gh_weights = ctx.saved_tensors
    codes, ints, floats, force_quadrature = ctx.program
    n2 = x1.shape[0] if x2 is None else x2.shape[0]
    grad_x1, grad_x2, _ = cnn_kernels_backward(
        _output_grad(grad_nngp, x1, n2), _output_grad(grad_ntk, x1, n2), x1, x2, codes, ints,
        floats, gh_nodes, gh_weights, force_quadrature)
    return (grad_x1, None if x2 is None else grad_x2, None, None, None, None, None, None, None,
            None)


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "torch_ntk::cnn_kernels_backward has no backward: the fused CNN op has no double "
        "backward (second derivatives of the kernels are not offered); differentiate once, or "
        "run the torch walker torch_ntk.analytic.cnn.cnn_kernels for higher derivatives.")


# cnn_kernels' backward is the compiled cnn_kernels_backward (gradients w.r.t. x1 and x2;
# torch_ntk.analytic.autograd.fused_cnn_kernels adds the layers' variances); its own output
# carries a node that raises on a double backward.
torch.library.register_autograd("torch_ntk::cnn_kernels", _cnn_backward,
                                setup_context=_cnn_setup_context)
torch.library.register_autograd("torch_ntk::cnn_kernels_backward", _no_double_backward)
