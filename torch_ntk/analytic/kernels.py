"""Infinite-width kernels of an MLP: the NNGP Σ and the NTK Θ∞ (Jacot et al. Thm 1); CNNs dispatch.

    Σ^(1)   = σ_w² xᵀx′/n_0 + σ_b²
    Σ^(l+1) = σ_w² E[φ(u)φ(v)] + σ_b²,   Σ̇^(l+1) = σ_w² E[φ′(u)φ′(v)]
    Θ^(1)   = Σ^(1),   Θ^(l+1) = Θ^(l) Σ̇^(l+1) + Σ^(l+1)     (NTK parametrization)

Computed by one fused op: a GEMM for ⟨x, x′⟩, the per-sample variances in O(N·L),
then one pass over pairs that runs every layer in registers and writes only the
requested outputs. Closed forms for the ReLU family and erf; Hermite series for the
smooth activations (per sample the Hermite coefficients of φ(√q·z) and φ′(√q·z), per pair
their power series in the correlation); 2-D Gauss–Hermite quadrature of degree
``quadrature_degree`` for every activation without a closed form when it is given. Any
other elementwise φ (torch modules without an op id, ``Elementwise``; ELU/SELU by default)
takes the same series with its kinks split (``torch_ntk.layers.numeric_series``): its
per-sample tables computed in torch, the pair pass in the op (``torch_ntk.analytic.tabled``;
graphs and CUDA tensors: the recursion in torch).
CNN specs (:mod:`torch_ntk.analytic.cnn`) take the
convolutional recursion of Arora et al. 2019.

Example::

    >>> model = ntk_mlp([3, 512, 512, 1], "relu")
    >>> k = analytic_kernels(model, torch.randn(5, 3))
    >>> k.ntk.shape, k.nngp.shape
    (torch.Size([5, 5]), torch.Size([5, 5]))
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .. import ops
from ..activations import hermite_rule, quadrature_degree_for
from ..lifting.lift import LayerSpec, lift
from .cnn import cnn_kernels, pair_floats
from .fused import cnn_op_args, compiled_op_args, default_quadrature_degree, mlp_graph_args
from .refusal import no_limit_error
from .autograd import differentiable_kernels, mlp_kernels, needs_grad, with_variances
from .tabled import table_plan, tabled_kernels
from .activation_params import activation_param_tensors, with_activation_params
from ..layers.elementwise import needs_numeric
from .._utils.validation import check_batch, check_choices

__all__ = ["Kernels", "analytic_kernels", "as_spec", "compiled_op_args",
           "default_quadrature_degree"]

KERNEL_NAMES = ("nngp", "ntk")


class Kernels(NamedTuple):
    """Infinite-width kernels; a field not requested with ``get`` is None.

    nngp: [N1, N2] Σ^(L), the covariance of each output of the network at initialization.
    ntk:  [N1, N2] Θ∞^(L); the full NTK over outputs is Θ∞ ⊗ Id_{n_L}.
    """

    nngp: Optional[Tensor]
    ntk: Optional[Tensor]


def as_spec(model_or_spec: Union[nn.Module, LayerSpec],
            function: str = "analytic_kernels") -> LayerSpec:
    """A LayerSpec as is, or the lifted spec of a model (:func:`torch_ntk.lift`);
    a model that does not lift gets a ValueError naming ``function``, the layer or node
    and what works instead (:func:`torch_ntk.monte_carlo_kernels`, ``empirical_ntk``)."""
    if isinstance(model_or_spec, LayerSpec):
        return model_or_spec
    if isinstance(model_or_spec, nn.Module):
        try:
            return lift(model_or_spec)
        except ValueError as error:
            raise no_limit_error(function, model_or_spec, error) from error
    raise TypeError(
        "model_or_spec must be an nn.Sequential MLP or a torch_ntk.LayerSpec; got "
        f"{type(model_or_spec).__name__}"
    )


def analytic_kernels(
    model_or_spec: Union[nn.Module, LayerSpec],
    x1: Tensor,
    x2: Optional[Tensor] = None,
    get: Union[str, Sequence[str]] = ("nngp", "ntk"),
    *,
    quadrature_degree: Optional[int] = None,
    force_quadrature: bool = False,
    progress: Optional[bool] = None,
    weight_var=None,
    bias_var=None,
    activation_params=None,
) -> Kernels:
    """The infinite-width NNGP and NTK of an MLP or CNN architecture, differentiable.

    Args:
        model_or_spec: a model that lifts (:func:`torch_ntk.lift`) or a
            :class:`~torch_ntk.LayerSpec`. Only the architecture and the
            initialization variances matter, not the parameter values. CNN specs run the
            fused CNN op (Arora et al. 2019).
        x1: [N1, n_0] float32/float64 (any [N1, ...] when the model starts with Flatten);
            for a CNN, images [N1, C, H, W] (or [N1, C, L] for 1-D convolutions).
        x2: [N2, n_0] like x1, or None for x2 = x1 (then the result is exactly symmetric
            and only the upper triangle is computed).
        get: "nngp", "ntk" or both.
        quadrature_degree: None (default): the smooth activations (tanh, sigmoid, SiLU,
            GELU, softplus) use their Hermite series (csrc/math/hermite.h;
            truncation bound 1e-11 relative in float64, 1e-7 in float32), and 2-D
            Gauss–Hermite quadrature of the spec's default degree serves the pairs where
            that bound is not met; ELU, SELU and every activation without an op id (any
            torch elementwise module, ``torch_ntk.activations.Elementwise``) take the
            numeric Hermite series split at their kinks, the per-sample tables in torch
            (``torch_ntk.layers.numeric_series``; 1e-11 relative per layer in float64) and,
            for chains on the CPU, the pairs in the fused op (``torch_ntk.analytic.tabled``).
            An int: 2-D quadrature of this degree per dimension for every registered
            activation without a closed form (cost ∝ degree²; the op's path before the
            series); activations without an op id still take the numeric series.
        force_quadrature: integrate closed-form activations by quadrature too (for tests).
        progress: a tqdm bar on stderr counting the pairs (x1_i, x2_j) done. None (default):
            a long run (a FLOP estimate, then the measured time of its first row block,
            predicts over two seconds) runs in row blocks and shows the bar once it has
            lasted two seconds; True: row blocks and the bar at once; False: no bar, one
            op call. Blocked runs equal one call up to rounding (the diagonal and the
            symmetry of x2=None stay exact; only the upper triangle is computed).
        weight_var, bias_var: override σ_w² / σ_b² of the linear layers (Dense and Conv, in
            order): None (the spec's), a float or 0-dim tensor for every linear layer, or one
            per linear layer (a sequence of floats / 0-dim tensors, or a 1-D tensor). Tensors
            have x1's dtype and device and may require grad (hyperparameter fitting). With
            NTK parametrization the NTK's coefficients follow (c_w = σ_w²/n_in, c_b = σ_b²).
        activation_params: override parameters of the activation layers: a mapping
            ``{name: value}`` for every activation layer, or one mapping (or None) per
            activation layer; values are numbers or 0-dim tensors of x1's dtype and device
            that may require grad. Names: leaky_relu ``negative_slope``, elu ``alpha``,
            softplus ``beta``; the closed-form families of ``torch_ntk.layers.dual``:
            ABReLU, Exp, Gaussian ``a``, ``b``; Sin, Cos ``a``, ``b``, ``c``; Rbf ``gamma``;
            Polynomial ``coef`` (one per coefficient). ``torch_ntk.analytic.activation_params``
            has the table and what is refused.

    Gradients: when nothing requires grad (or under ``torch.no_grad()``) the fused ops
    compute the kernels. When x1, x2, a variance override or an activation parameter
    requires grad under grad mode: an MLP chain of closed-form activations (identity, ReLU,
    LeakyReLU, Abs, erf) whose activation parameters do not require grad runs the fused op
    with its compiled backward (``torch_ntk.analytic.fused_backward``), and so does a CNN
    chain of convolutions, pools, readouts and those activations (the fused CNN op's
    compiled backward); every other spec
    runs the same recursion as a torch composite (``torch_ntk.analytic.autograd``) that
    autograd differentiates w.r.t. each of them, on any device: slower (several [N1, N2]
    temporaries per layer, kept for the backward; for a CNN with pooling [N1, N2, P, P]
    planes) and the values agree with the fused op's to rounding (closed forms; the Hermite
    series and quadrature to their truncation). At a point paired with itself (x in x1 and
    x2) the ReLU family's NTK of depth ≥ 2 has a kink (|t|-like in the distance); the
    gradient there is the symmetric subgradient, as central differences give. No double
    backward. Activations on the numeric Hermite series have no gradient path: those
    without a kernel map in torch (``Elementwise(fn, nngp_fn=..., ntk_fn=...)``, the
    closed-form families) are refused with a ValueError, and ELU/SELU take 2-D quadrature
    of the default degree there (about 1e-2 off, as with an explicit ``quadrature_degree``).

    Returns:
        :class:`Kernels` with ``nngp`` and ``ntk`` of shape [N1, N2] (None if not
        requested). For n_L > 1 outputs the full kernels are Σ ⊗ Id and Θ∞ ⊗ Id.
        With "standard" parametrization the NTK grows with the hidden widths; the
        value returned is its large-width approximation at the spec's widths.

    Precision: the angle between nearly coincident inputs from different batches (x in
    both x1 and x2) is resolved to about √eps (3e-4 in float32, 1e-8 in float64), so such
    entries carry that relative error for kinked activations; with x2=None the diagonal is
    exact. Prefer float64 when entries for (near-)duplicate points matter. The fused MLP
    op forms the Gram ⟨x, x′⟩ of float32 inputs in float64 and rounds it once, so torch's
    reduced-precision matmul settings (``torch.backends.cuda.matmul.allow_tf32``,
    ``torch.set_float32_matmul_precision("high")`` or ``"medium"``) do not reach it.

    Raises:
        TypeError: non-floating inputs. ValueError: wrong shapes, empty batches,
        NaN/Inf, an unknown ``get``, a model that does not lift, a variance override of
        the wrong shape, sign, dtype or device, or an activation parameter the activation
        does not have (or of the wrong shape, dtype or device).
    """
    spec = as_spec(model_or_spec)
    wanted = check_choices("analytic_kernels", "get", get, KERNEL_NAMES)
    if weight_var is not None or bias_var is not None:
        if not isinstance(x1, torch.Tensor):
            check_batch("analytic_kernels", "x1", x1)
        spec = with_variances(spec, x1, weight_var, bias_var)
    if activation_params is not None:
        if not isinstance(x1, torch.Tensor):
            check_batch("analytic_kernels", "x1", x1)
        spec = with_activation_params(spec, x1, activation_params)
    if needs_grad(x1, x2, *_tensors(weight_var), *_tensors(bias_var),
                  *activation_param_tensors(activation_params)):
        return _differentiable(spec, x1, x2, wanted, quadrature_degree, force_quadrature)
    if progress is not False:
        x1, x2 = _checked_inputs(spec, x1, x2)

        def compute(a: Tensor, b: Optional[Tensor]) -> Kernels:
            return _one_call(spec, a, b, wanted, quadrature_degree, force_quadrature)

        return in_row_blocks(compute, x1, x2, wanted, progress, _flops_per_pair(spec, x1),
                             "analytic_kernels")
    return _one_call(spec, x1, x2, wanted, quadrature_degree, force_quadrature)


def _differentiable(spec: LayerSpec, x1: Tensor, x2: Optional[Tensor], wanted: tuple,
                    quadrature_degree: Optional[int], force_quadrature: bool) -> Kernels:
    """Both kernels by the recursion as a torch composite that autograd differentiates
    (``torch_ntk.analytic.autograd``): inputs or variances require grad."""
    if spec.is_mlp:
        x1 = check_batch("analytic_kernels", "x1", x1, features=spec.input_features,
                         flatten=spec.flatten_input)
        if x2 is not None:
            x2 = check_batch("analytic_kernels", "x2", x2, like=x1,
                             features=spec.input_features, flatten=spec.flatten_input)
    nngp, ntk = differentiable_kernels(spec, x1, x2, wanted, quadrature_degree, force_quadrature)
    return Kernels(nngp, ntk)


def _one_call(spec: LayerSpec, x1: Tensor, x2: Optional[Tensor], wanted: tuple,
              quadrature_degree: Optional[int], force_quadrature: bool) -> Kernels:
    """Both kernels of (x1, x2) by one call of the fused MLP or CNN op (an MLP graph on the
    CPU: the MLP op's graph program when it has one; other graphs: the CNN op's program
    with skip registers; ``torch_ntk.analytic.fused``)."""
    graph = mlp_graph_args(spec) if spec.is_mlp and spec.is_graph else None
    if not spec.is_mlp or (spec.is_graph and (graph is None or x1.device.type != "cpu")):
        return _cnn_kernels(spec, x1, x2, wanted, quadrature_degree, force_quadrature)
    x1 = check_batch("analytic_kernels", "x1", x1, features=spec.input_features,
                     flatten=spec.flatten_input)
    if x2 is not None:
        x2 = check_batch("analytic_kernels", "x2", x2, like=x1, features=spec.input_features,
                         flatten=spec.flatten_input)
    series = quadrature_degree is None
    plan = table_plan(spec, x1.device, quadrature_degree, force_quadrature)
    if plan is not None:  # numeric activations: the op on series tables (analytic.tabled)
        nngp, ntk = tabled_kernels(spec, x1, x2, plan, quadrature_degree, force_quadrature)
        return Kernels(nngp if "nngp" in wanted else None, ntk if "ntk" in wanted else None)
    if any(needs_numeric(a, series and not force_quadrature) for a in spec.activations):
        # graphs, CUDA, closed forms in torch: the recursion in torch (numeric series)
        with torch.no_grad():
            nngp, ntk = mlp_kernels(spec, x1, x2, quadrature_degree, force_quadrature,
                                    numeric=True)
        return Kernels(nngp if "nngp" in wanted else None, ntk if "ntk" in wanted else None)
    if quadrature_degree is None:
        quadrature_degree = default_quadrature_degree(spec, force_quadrature)
    nodes, weights = hermite_rule(quadrature_degree, torch.float64)
    nngp, ntk = ops.analytic_kernels(
        x1, x2, **(graph or compiled_op_args(spec)), gh_nodes=nodes.to(x1.device),
        gh_weights=weights.to(x1.device),
        force_quadrature=force_quadrature, want_nngp="nngp" in wanted, want_ntk="ntk" in wanted,
        hermite_series=series,
    )
    return Kernels(nngp if "nngp" in wanted else None, ntk if "ntk" in wanted else None)


def _tensors(value) -> list:
    """The tensors in a variance override (None, a number, a tensor or a sequence)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


def _cnn_kernels(spec: LayerSpec, x1: Tensor, x2: Optional[Tensor], wanted: tuple,
                 quadrature_degree: Optional[int], force_quadrature: bool) -> Kernels:
    """A CNN spec's kernels by the fused op ``torch_ntk::cnn_kernels`` (its program from
    :func:`torch_ntk.analytic.fused.cnn_op_args`), or, when a layer kind has no op encoding,
    by the same recursion in plain torch (:func:`torch_ntk.analytic.cnn.cnn_kernels`, also
    the tests' and benchmarks' reference)."""
    program = cnn_op_args(spec)
    series = quadrature_degree is None and not force_quadrature
    # a layer kind without an op encoding, or an activation on the numeric series: the
    # torch walker runs the spec
    if program is None or any(needs_numeric(a, series) for a in spec.activations):
        got = cnn_kernels(spec, x1, x2, wanted, quadrature_degree, force_quadrature)
        return Kernels(got.nngp, got.ntk)
    x1 = spec.check_input("analytic_kernels", "x1", x1)
    if x2 is not None:
        x2 = spec.check_input("analytic_kernels", "x2", x2, like=x1)
    if spec.is_mlp:  # an MLP graph runs as [N, n0, 1, 1] (fused.graph_program)
        x1 = x1[:, :, None, None]
        x2 = None if x2 is None else x2[:, :, None, None]
    elif spec.spatial_dims == 1:  # [N, C, L] runs as [N, C, 1, L]
        x1 = x1.unsqueeze(2)
        x2 = None if x2 is None else x2.unsqueeze(2)
    if quadrature_degree is None:
        quadrature_degree = quadrature_degree_for(spec.activations, force_quadrature)
    nodes, weights = hermite_rule(quadrature_degree, torch.float64)
    nngp, ntk = ops.cnn_kernels(
        x1, x2, *program, nodes.to(x1.device), weights.to(x1.device),
        force_quadrature=force_quadrature, want_nngp="nngp" in wanted, want_ntk="ntk" in wanted,
    )
    return Kernels(nngp if "nngp" in wanted else None, ntk if "ntk" in wanted else None)


def analytic_kernels_into(
    model_or_spec: Union[nn.Module, LayerSpec],
    x1: Tensor,
    x2: Optional[Tensor],
    out: Tensor,
    get: str = "ntk",
    memory_budget: Optional[int] = None,
    chunk_size: Optional[int] = None,
    progress: Optional[bool] = None,
) -> int:
    """Write one infinite-width kernel (``get``: "ntk" Θ∞ or "nngp" Σ) of x1 [N1, n0] and
    x2 [N2, n0] (None: x1) into ``out`` [N1, N2], a block of rows at a time.

    A block of r rows computes its [r, N2] output and temporaries (about 4·r·N2 numbers
    of x1's dtype for an MLP, r·N2 times :func:`torch_ntk.analytic.cnn.pair_floats` for a
    CNN) within ``memory_budget`` bytes (default:
    :func:`torch_ntk._utils.runtime.default_memory_budget` of x1's device), and at most
    ``chunk_size`` rows. One block takes the symmetric fast path when x2 is None.
    ``out`` may live elsewhere than x1 (e.g. a memory-mapped .npy on the CPU); each
    block is copied into it. ``progress`` as for :func:`torch_ntk._utils.runtime.progress_bar`
    (shown only for more than one block). Returns the number of blocks.
    """
    from .._utils.runtime import default_memory_budget, progress_bar

    spec = as_spec(model_or_spec)
    n1 = x1.shape[0]
    n2 = (x2 if x2 is not None else x1).shape[0]
    budget = memory_budget or default_memory_budget(x1.device)
    itemsize = torch.finfo(x1.dtype).bits // 8
    per_pair = 4 if spec.is_mlp else pair_floats(spec, x1)
    rows = max(1, min(n1, budget // max(1, per_pair * n2 * itemsize)))
    if chunk_size is not None:
        rows = min(rows, chunk_size)
    starts = range(0, n1, rows)
    bar = progress_bar(len(starts), progress=progress, desc=f"analytic {get}", unit="block",
                       enabled=len(starts) > 1)
    try:
        for i0 in starts:
            i1 = min(i0 + rows, n1)
            block_x2 = x2 if x2 is not None else (None if len(starts) == 1 else x1)
            out[i0:i1].copy_(getattr(analytic_kernels(spec, x1[i0:i1], block_x2, get=get,
                                                      progress=False), get))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return len(starts)


__all__.append("analytic_kernels_into")


# ---------------------------------------------------------------------------------
# row blocks with a progress bar (issue 32, item 11)

# Estimated work (floating-point operations) below which a run is one op call without
# a progress bar (progress=None): well under the bar's two seconds on any CPU.
_PROBE_FLOPS = 2e9
# Row blocks a blocked run is split into (at most), and the fewest rows per block: each
# block's call recomputes the per-sample terms of its columns (about one pair's work per
# column for a CNN), an overhead of about 1/rows of the pairs' work.
_ROW_BLOCKS = 32
_MIN_ROWS = 16


def _checked_inputs(spec: LayerSpec, x1: Tensor, x2: Optional[Tensor]):
    """x1, x2 validated (and flattened) as the op call would, so that they can be sliced."""
    if spec.is_mlp:
        x1 = check_batch("analytic_kernels", "x1", x1, features=spec.input_features,
                         flatten=spec.flatten_input)
        if x2 is not None:
            x2 = check_batch("analytic_kernels", "x2", x2, like=x1,
                             features=spec.input_features, flatten=spec.flatten_input)
        return x1, x2
    x1 = spec.check_input("analytic_kernels", "x1", x1)
    if x2 is not None:
        x2 = spec.check_input("analytic_kernels", "x2", x2, like=x1)
    return x1, x2


def _flops_per_pair(spec: LayerSpec, x1: Tensor) -> float:
    """A rough count of the operations per pair of inputs (only to decide whether a run
    is long enough to be worth a bar): a few per layer for an MLP; for a CNN each layer
    sweeps the pair's plane of positions (:func:`torch_ntk.analytic.cnn.pair_floats`)."""
    per_layer = 50.0 if spec.is_mlp else 4.0 * pair_floats(spec, x1)
    return per_layer * max(1, len(spec.layers))


def in_row_blocks(compute, x1: Tensor, x2: Optional[Tensor], wanted: tuple,
                  progress: Optional[bool], flops_per_pair: float, desc: str) -> Kernels:
    """``compute(a, b) -> Kernels`` over row blocks of x1 with a progress bar over pairs.

    x2 = None: block rows i0:i1 take their diagonal block by ``compute(x1[i0:i1], None)``
    (exact diagonal and symmetry) and the rest of their upper triangle by
    ``compute(x1[i0:i1], x1[i1:])``, mirrored below. progress=None: one call when the run
    is predicted short (``flops_per_pair``), else the first row block is timed and the
    rest runs in one call if it is predicted to take under two seconds.
    """
    import math
    import time

    from .._utils.runtime import PROGRESS_DELAY_S, progress_bar

    n1 = x1.shape[0]
    symmetric = x2 is None
    n2 = n1 if symmetric else x2.shape[0]
    total = n1 * (n1 + 1) // 2 if symmetric else n1 * n2
    if progress is None and total * flops_per_pair < _PROBE_FLOPS:
        return compute(x1, x2)
    rows = max(_MIN_ROWS, math.ceil(n1 / _ROW_BLOCKS))
    out: dict[str, Tensor] = {}

    def put(name: str, value: Tensor, i0: int, i1: int, j0: int, j1: int) -> None:
        if name not in out:
            out[name] = value.new_empty(n1, n2)
        out[name][i0:i1, j0:j1] = value
        if symmetric and i0 != j0:
            out[name][j0:j1, i0:i1] = value.T

    def run(i0: int, i1: int, last: bool) -> int:
        """Rows i0:i1 (``last``: through the end, one call); returns the pairs done."""
        if not symmetric:
            k = compute(x1[i0:i1], x2)
            for name in wanted:
                put(name, getattr(k, name), i0, i1, 0, n2)
            return (i1 - i0) * n2
        k = compute(x1[i0:i1], None)
        for name in wanted:
            put(name, getattr(k, name), i0, i1, i0, i1)
        if i1 < n1 and not last:
            k = compute(x1[i0:i1], x1[i1:])
            for name in wanted:
                put(name, getattr(k, name), i0, i1, i1, n1)
        r = i1 - i0
        return r * (r + 1) // 2 + r * (n1 - i1)

    start = time.perf_counter()
    done = run(0, min(rows, n1), rows >= n1)
    if progress is None and done < total:
        elapsed = time.perf_counter() - start
        if elapsed * (total - done) / done < PROGRESS_DELAY_S:
            run(rows, n1, True)
            return Kernels(out.get("nngp"), out.get("ntk"))
    bar = progress_bar(total, progress=progress, desc=desc, unit="pair")
    try:
        bar.update(done)
        for i0 in range(rows, n1, rows):
            bar.update(run(i0, min(i0 + rows, n1), False))
    finally:
        bar.close()
    return Kernels(out.get("nngp"), out.get("ntk"))
