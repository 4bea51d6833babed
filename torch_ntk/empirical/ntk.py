"""Finite-width (empirical) NTK of a model at its current parameters (Jacot et al. §4).

    Θ_kk′(x, x′) = Σ_p ∂f_k(x)/∂θ_p · ∂f_k′(x′)/∂θ_p    (p: parameters with requires_grad)

Three ways to compute it, chosen with ``method``:

``"structured"`` (MLPs and CNNs that :func:`torch_ntk.lift` accepts: an ``nn.Sequential``
or a module whose forward torch.fx reads as a chain of such layers)
    One forward pass keeps each dense layer's input activations A_l [N, n_l]; one
    batched backward pass by hand gives the cotangents of all n_L outputs at once,
    D_l [N, n_L, n_{l+1}] (δ_L = I, δ_l = (δ_{l+1} W̃_{l+1}) ⊙ φ′(z_l) with the effective
    weights W̃); then one fused op (:func:`torch_ntk.ops.structured_ntk`) returns

        Θ = Σ_l (c_w,l · A1_l A2_lᵀ + c_b,l) ⊙ (D1_l D2_lᵀ)

    without materializing a Jacobian. Cost O(N1 N2 Σ_l (n_l + c m_l)) with c = n_L
    ("trace", "diagonal") or n_L² ("full"), and O(N n_L Σ_l n_l m_l) for the passes;
    memory O((N1 + N2) Σ_l (n_l + n_L m_l)) plus the output. With x2 = None only the
    tiles on and above the diagonal are computed.
    CNNs that lift (Conv, activations, AvgPool, then a GlobalAvgPool or Flatten readout and
    dense layers) take the same passes (cotangents δ_l [N, n_L, C_out, P] of every conv
    layer by transposed convolutions); each conv layer then contributes
    c_w Σ_{p,p′} ⟨δ_p, δ′_p′⟩⟨π_p, π′_p′⟩ + c_b ⟨Σ_p δ_p, Σ_p′ δ′_p′⟩ (π_p its input patches),
    computed per layer in the order a FLOP model picks: per-sample weight gradients
    Σ_p δ_p ⊗ π_p then one Gram GEMM, or the patch Gram times the cotangent Gram
    (:mod:`torch_ntk.empirical.rules.conv`; ``NTKInfo.contractions`` names the choice). The
    dense layers after the readout go through the fused op.
``"hooks"`` (any model)
    The hook engine (:mod:`torch_ntk.empirical.hooks`): forward hooks keep each
    parameterized module's input, one batched backward gives every module's output
    cotangents for the n_L outputs, and each module's term comes from its registered rule
    (:mod:`torch_ntk.empirical.rules`: Linear on any leading dims, Conv1d/2d/3d with groups,
    ConvTranspose, Embedding, LayerNorm/GroupNorm/BatchNorm in eval mode) in the order a FLOP
    model picks — input Gram ⊙ cotangent Gram summed over positions, or per-sample
    gradients then one Gram. Parameters no rule covers (other module types, free
    parameters, tied weights) get their term from ``vmap(jacrev)`` on those parameters
    only. ``NTKInfo.contractions`` names each module's order and what torch.func computed.
``"jacobian"`` (any model)
    Jacobian contraction, the method of PyTorch's NTK tutorial: per-sample Jacobians
    by ``vmap(jacrev)`` for a chunk of samples, contracted parameter block by
    parameter block. Cost O(N n_L P) memory per chunk and O(N1 N2 n_L² P) time
    (P = number of trainable parameters).
``"ntk_vp"`` (any model)
    NTK-vector products: for each column (x′_j, k′) one ``vjp`` at x′_j gives
    J(x′_j)ᵀ e_k′, one ``jvp`` over the x1 chunk gives J(x1) J(x′_j)ᵀ e_k′. Cost
    O(N1 N2 n_L P) time; memory O(P) per column in flight, never a Jacobian.

``"auto"`` picks "structured" when the model lifts, x1 is one float tensor, ``output_fn``
is None and the op is available on the inputs' device, else "hooks"; ``return_info=True`` reports the choice and why.

Inputs: x1/x2 may be a float tensor (every method), or — for the hooks, Jacobian and
ntk_vp methods ("auto" runs "hooks") — a tensor of any dtype (token ids), a tuple
(``model(*x)``) or a dict (``model(**x)``) of tensors sharing batch dimension 0;
``output_fn`` picks the output to differentiate (``torch_ntk.empirical.inputs``).

Modes: ``"full"`` [N1, N2, n_L, n_L] (entry [i, j, k, k′] = Θ_kk′(x1_i, x2_j)),
``"trace"`` [N1, N2] = (1/n_L) Σ_k Θ_kk (the **mean** over outputs, in every method: the
scale of one output's kernel, of ``analytic_kernels(...).ntk`` and of the dynamics that
:mod:`torch_ntk.predict` solves; neural-tangents' convention; before 0.2 it was the sum),
``"diagonal"`` [N1, N2, n_L] = Θ_kk; ``"sample_diagonal"`` [N1, n_L] = Θ_kk(x_i, x_i) (per-sample
squared gradient norms, x2 = None: n_L backward passes vmapped over the samples).

Large N: rows and columns are processed in blocks whose working memory stays within
``memory_budget`` (default: half the available host memory, or 80% of the free memory
of the CUDA device); a tqdm progress bar over blocks appears once a run takes more than
two seconds (long runs are split into a few blocks for it); ``out=`` writes into a caller-provided tensor (e.g. a ``torch.from_file``
memory-mapped one, on any device).

Example::

    >>> model = ntk_mlp([3, 512, 512, 1], "relu")
    >>> x = torch.randn(16, 3)
    >>> empirical_ntk(model, x, mode="trace").shape
    torch.Size([16, 16])
    >>> theta, info = empirical_ntk(model, x, return_info=True)
    >>> info.method, theta.shape
    ('structured', torch.Size([16, 16, 1, 1]))
"""

from __future__ import annotations

import logging
import warnings
import time
from dataclasses import dataclass
from typing import Literal, Optional, Union, overload

import torch
from torch import Tensor, nn

from .. import ops
from .budget import MemoryBudgetWarning
from .._utils.model_context import kernel_context
from .._utils.modes import MODES, kernel_shape
from .._utils.runtime import default_memory_budget, progress_bar
from .._utils.validation import check_batch, check_parameters_match
from .engines import METHODS, JacobianBlocks, MethodFallbackWarning, make_engine, structured_plan
from .hooks import HookBlocks
from .inputs import (Inputs, OutputFn, batch_size, check_inputs, output_size, reference,
                     trainable_device)

SAMPLE_DIAGONAL = "sample_diagonal"

__all__ = ["MODES", "METHODS", "MemoryBudgetWarning", "MethodFallbackWarning", "NTKInfo",
           "compute_empirical_ntk", "default_memory_budget", "empirical_ntk"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NTKInfo:
    """How :func:`empirical_ntk` computed its result.

    method: "structured", "hooks", "jacobian" or "ntk_vp" — the path actually taken.
    reason: why (the request, or auto's reason for choosing it / falling back).
    mode: "full", "trace" or "diagonal".
    row_chunk, col_chunk: samples of x1 and x2 per block.
    blocks: number of blocks computed (each one op call or one contraction).
    memory_budget: bytes the working memory was sized for.
    seconds: wall-clock time of the call.
    contractions: for a CNN's structured kernel, per conv layer "position: order", the
        order being "gradients" (per-sample weight gradients, then a Gram GEMM) or "grams"
        (patch Gram times cotangent Gram); for the hook engine, per ruled module
        "name (type): order" and a last entry naming the parameters differentiated by
        torch.func and why no rule covers them; empty otherwise.
    """

    method: str
    reason: str
    mode: str
    row_chunk: int
    col_chunk: int
    blocks: int
    memory_budget: int
    seconds: float
    contractions: tuple = ()


# ---------------------------------------------------------------------------------
# public entry point


@overload
def empirical_ntk(
    model: nn.Module, x1: Inputs, x2: Optional[Inputs] = ..., mode: str = ...,
    method: str = ..., chunk_size: Optional[int] = ..., *, memory_budget: Optional[int] = ...,
    out: Optional[Tensor] = ..., progress: Optional[bool] = ...,
    precision: str = ..., output_fn: OutputFn = ..., return_info: Literal[False] = ...,
) -> Tensor: ...


@overload
def empirical_ntk(
    model: nn.Module, x1: Inputs, x2: Optional[Inputs] = ..., mode: str = ...,
    method: str = ..., chunk_size: Optional[int] = ..., *, memory_budget: Optional[int] = ...,
    out: Optional[Tensor] = ..., progress: Optional[bool] = ..., precision: str = ...,
    output_fn: OutputFn = ..., return_info: Literal[True],
) -> tuple[Tensor, NTKInfo]: ...


def empirical_ntk(
    model: nn.Module,
    x1: Inputs,
    x2: Optional[Inputs] = None,
    mode: str = "full",
    method: str = "auto",
    chunk_size: Optional[int] = None,
    *,
    memory_budget: Optional[int] = None,
    out: Optional[Tensor] = None,
    progress: Optional[bool] = None,
    precision: str = "highest",
    output_fn: OutputFn = None,
    return_info: bool = False,
) -> Union[Tensor, tuple[Tensor, NTKInfo]]:
    """The empirical NTK Θ(x1, x2) of ``model`` at its current parameters.

    Θ_kk′(x, x′) = Σ_p ∂f_k(x)/∂θ_p ∂f_k′(x′)/∂θ_p over the parameters with
    ``requires_grad=True`` (a frozen layer contributes nothing, as in training).

    Args:
        model: any ``nn.Module`` mapping [N, ...] to [N, n_L] (or [N]: n_L = 1). Its
            parameters must have the inputs' dtype and device. The kernel is that of
            the model in **eval mode** (dropout off, batch norm with its running
            statistics), whatever mode it is in: the call switches every module to
            eval and restores each one's flag, and the random generators, afterwards.
        x1: [N1, ...] float32/float64 ([N1, n_0] for an MLP); or a tensor of any dtype
            (integer token ids: the NTK is taken w.r.t. the parameters, never the
            inputs), a tuple (called as ``model(*x1)``) or a dict (``model(**x1)``) of
            tensors, each with the N1 samples along dimension 0 (chunking splits every
            leaf). Such inputs, and ``output_fn``, run the hooks ("auto"), Jacobian or
            ntk_vp method (``torch_ntk.empirical.inputs``); the kernel then has the dtype of the
            trainable parameters.
        x2: [N2, ...] like x1 (the same structure and leaf dtypes), or None (or x1
            itself) for x2 = x1: the result is then exactly symmetric,
            Θ_kk′(x_i, x_j) = Θ_k′k(x_j, x_i) bit for bit.
        mode: "full" → [N1, N2, n_L, n_L]; "trace" → [N1, N2], (1/n_L) Σ_k Θ_kk (the mean);
            "diagonal" → [N1, N2, n_L], Θ_kk; "sample_diagonal" → [N1, n_L],
            Θ_kk(x_i, x_i) = Σ_p (∂f_k(x_i)/∂θ_p)², the per-sample squared gradient norm
            per output (x2 must be None; method "auto" or "hooks": the hook engine, one
            forward and one backward over the n_L outputs per chunk, each module's
            per-sample gradient norms from its factors; "jacobian": per-sample Jacobians,
            n_L backward passes vmapped over the samples, by parameter groups; both
            within ``memory_budget``).
        method: "auto", "structured", "hooks", "jacobian" or "ntk_vp" (see the module
            docstring).
        chunk_size: samples of x1 and of x2 per block; None sizes blocks from
            ``memory_budget``. Every chunking gives the same result up to rounding.
        memory_budget: bytes of working memory to stay within (inputs, parameters and
            ``out`` or the result not counted). Default: half the available host memory
            for CPU inputs, 80% of the free device memory for CUDA inputs. A budget far
            below what the Jacobian method needs to compute each Jacobian once (it then
            splits the parameters into groups and recomputes Jacobians per block) gets a
            ``torch_ntk.MemoryBudgetWarning`` with the predicted slowdown and the budget that
            avoids it (``torch_ntk.empirical.budget`` has the memory and work models).
        out: optional [N1, N2, ...] tensor of the result's shape and dtype (any device,
            any strides, e.g. memory-mapped) to write into; it is returned.
        progress: None shows a tqdm bar once the run takes over two seconds; True
            always; False never.
        precision: the structured method's Gram products: "highest" (the inputs'
            dtype), "bf16" (bfloat16 operands, float32 accumulation: tensor cores on
            CUDA, relative error ~1e-3–1e-2) or "bf16x3" (three bfloat16 products of split
            operands, error near float32's). The last two need float32 inputs and the
            structured method; see :func:`torch_ntk.ops.structured_ntk`. For a CNN it
            applies to the dense layers after the readout; conv layers always run in the
            inputs' dtype.
        output_fn: picks the output to differentiate from the model's output: a callable
            returning [N, n_L] or [N], e.g. ``lambda out: out["logits"]``,
            ``lambda out: out.logits[:, -1]`` (a language model's last position) or
            ``lambda out: out.logits`` (a HuggingFace-style output object). None: the
            model's output, which must then be such a tensor.
        return_info: also return an :class:`NTKInfo` saying which method ran and why.

    Returns:
        The kernel (the shape per ``mode`` above), or ``(kernel, NTKInfo)``.

    Raises:
        TypeError: non-tensor or non-floating inputs, a model that is not an nn.Module.
        ValueError: bad mode/method, wrong feature size, NaN/Inf in inputs or
            parameters, empty batches, dtype/device mismatches, no trainable
            parameter, a model that does not lift with
            method="structured", or an ``out`` of the wrong shape/dtype.
    """
    return compute_empirical_ntk(
        "empirical_ntk", model, x1, x2, mode, method, chunk_size, memory_budget=memory_budget,
        out=out, progress=progress, precision=precision, output_fn=output_fn,
        return_info=return_info)


def compute_empirical_ntk(
    function: str,
    model: nn.Module,
    x1: Inputs,
    x2: Optional[Inputs] = None,
    mode: str = "full",
    method: str = "auto",
    chunk_size: Optional[int] = None,
    *,
    memory_budget: Optional[int] = None,
    out: Optional[Tensor] = None,
    progress: Optional[bool] = None,
    precision: str = "highest",
    output_fn: OutputFn = None,
    return_info: bool = False,
) -> Union[Tensor, tuple[Tensor, NTKInfo]]:
    """:func:`empirical_ntk`, with errors and warnings naming ``function``: the entry point
    the user called (``"NTK.empirical"``, ``"KernelDriftTracker"``, ...)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{function}: model must be an nn.Module; got {type(model).__name__}")
    with kernel_context(model, x1 if isinstance(x1, Tensor) else None,
                        x2 if isinstance(x2, Tensor) else None):
        return _compute(function, model, x1, x2, mode, method, chunk_size, memory_budget, out,
                        progress, precision, return_info, output_fn)


def _compute(function, model, x1, x2, mode, method, chunk_size, memory_budget, out, progress,
             precision, return_info, output_fn=None):
    start = time.perf_counter()
    if mode != SAMPLE_DIAGONAL and mode not in MODES:
        raise ValueError(
            f"{function}: mode must be one of {MODES + (SAMPLE_DIAGONAL,)}; got {mode!r}")
    if output_fn is not None and not callable(output_fn):
        raise TypeError(f"{function}: output_fn must be a callable applied to the model's "
                        f"output (e.g. lambda out: out.logits); got {type(output_fn).__name__}")
    if method not in METHODS:
        raise ValueError(f"{function}: method must be one of {METHODS}; got {method!r}")
    if precision not in ops.PRECISIONS:
        raise ValueError(
            f"{function}: precision must be one of {ops.PRECISIONS}; got {precision!r}"
        )
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(
            f"{function}: chunk_size must be a positive integer; got {chunk_size!r}"
        )
    if x2 is x1:
        x2 = None  # the same batch: take the symmetric path
    x1, x2, trainable = check_model_inputs(function, model, x1, x2)
    dtype, device = reference(x1, trainable)
    if mode == SAMPLE_DIAGONAL and x2 is not None:
        raise ValueError(f"{function}: mode='sample_diagonal' is Θ(x_i, x_i) of x1's samples; "
                         "x2 must be None")
    if mode == SAMPLE_DIAGONAL and method not in ("auto", "hooks", "jacobian"):
        raise ValueError(f"{function}: mode='sample_diagonal' runs per-sample gradient norms "
                         "(the hook engine, or the Jacobian method); method must be 'auto', "
                         f"'hooks' or 'jacobian', got {method!r}")

    budget_given = memory_budget is not None
    if memory_budget is None:
        memory_budget = default_memory_budget(device)
    elif not isinstance(memory_budget, (int, float)) or not memory_budget > 0:
        raise ValueError(
            f"{function}: memory_budget must be a positive number of bytes; got "
            f"{memory_budget!r}"
        )
    memory_budget = int(min(memory_budget, 2**62))
    if mode == SAMPLE_DIAGONAL:
        return _sample_diagonal(function, model, trainable, x1, chunk_size, memory_budget, out,
                                output_fn, dtype, start, return_info, method)

    # The one method choice (also the tiles' of torch_ntk.distributed): the engine, on the
    # inputs as its plan checked them (a CNN's shape, an MLP's flattened input).
    engine = make_engine(function, model, x1, x2, mode, method, trainable=trainable,
                         precision=precision, stacklevel=4, output_fn=output_fn, dtype=dtype)
    method, reason, plan, n_out = engine.method, engine.reason, engine.plan, engine.n_out
    x1, x2 = engine.x1, engine.x2
    _check_budget_cost(engine, budget_given and chunk_size is None, device)

    n1 = batch_size(x1)
    n2 = n1 if x2 is None else batch_size(x2)
    shape = kernel_shape(mode, n1, n2, n_out)
    out = _check_out(function, out, shape, dtype)

    chunk = engine.size_blocks(memory_budget, chunk_size, progress is not False)
    _warn_budget_cost(function, engine)
    result, blocks = _fill(engine, n1, None if x2 is None else n2, mode, n_out, chunk, out,
                          progress, method, f"{function} ({method})", dtype, device)
    if out is not None:
        result = out
    contractions = tuple(plan.layer_names() if plan is not None
                         else getattr(engine, "contractions", ()))
    info = NTKInfo(method, reason, mode, min(chunk, n1), min(chunk, n2), blocks, memory_budget,
                   time.perf_counter() - start, contractions)
    logger.debug("%s: %s", function, info)
    return (result, info) if return_info else result


def _check_budget_cost(engine, wanted: bool, device: torch.device) -> None:
    """Ask an engine that can (the Jacobian method's) to estimate what a user-given
    memory_budget costs against the default budget."""
    if wanted and hasattr(engine, "check_budget"):
        engine.check_budget = True
        engine.budget_ceiling = default_memory_budget(device)


def _sample_diagonal(function, model, trainable, x1, chunk_size, budget, out, output_fn,
                     dtype, start, return_info, method="auto"):
    """mode="sample_diagonal": Θ_kk(x_i, x_i) [N, n_L], chunk by chunk within the budget:
    by the hook engine (method "auto" or "hooks": per module its per-sample squared
    gradient norms from one backward over the n_L outputs) or by per-sample Jacobians
    ("jacobian", parameter group by group)."""
    n_out = output_size(function, model, x1, output_fn)
    n = batch_size(x1)
    out = _check_out(function, out, (n, n_out), dtype)
    blocks = JacobianBlocks if method == "jacobian" else HookBlocks
    engine = blocks(model, trainable, x1, None, "diagonal", n_out, output_fn, dtype)
    engine.function = function
    chunk = engine.size_blocks(budget, chunk_size, False)
    result = out if out is not None else torch.empty(n, n_out, dtype=dtype,
                                                     device=engine.device)
    for i0 in range(0, n, chunk):
        result[i0:i0 + chunk].copy_(engine.sample_diagonal(i0, min(i0 + chunk, n)))
    name = "jacobian" if method == "jacobian" else "hooks"
    info = NTKInfo(name, f"mode='sample_diagonal' takes per-sample gradient norms ({name})",
                   SAMPLE_DIAGONAL, min(chunk, n), 1, -(-n // chunk), budget,
                   time.perf_counter() - start, tuple(getattr(engine, "contractions", ())))
    return (result, info) if return_info else result


def _warn_budget_cost(function: str, engine) -> None:
    note = getattr(engine, "budget_note", None)
    if note:
        warnings.warn(MemoryBudgetWarning(f"{function}: {note}"), stacklevel=5)


# ---------------------------------------------------------------------------------
# validation


def check_model_inputs(function: str, model: nn.Module, x1, x2, names=("x1", "x2")):
    """(x1, x2, trainable parameters), checked: a floating tensor x1 as before (its dtype
    and device are the parameters'); any other x1 (token ids, tuples, dicts) by
    ``inputs.check_inputs``, its leaves on the trainable parameters' one device. ``names``:
    the arguments' names in errors."""
    if isinstance(x1, Tensor) and x1.is_floating_point():
        x1 = check_batch(function, names[0], x1)
        if x2 is not None:
            x2 = check_batch(function, names[1], x2, like=x1)
        return x1, x2, _check_parameters(function, model, x1)
    if isinstance(x1, Tensor) and _lifts(model):
        check_batch(function, names[0], x1)  # a chain of Linear/Conv layers takes floats
    device = trainable_device(function, model)
    x1 = check_inputs(function, names[0], x1, device=device)
    if x2 is not None:
        x2 = check_inputs(function, names[1], x2, like=x1, device=device)
    return x1, x2, _check_parameters(function, model, None)


def _lifts(model: nn.Module) -> bool:
    """Whether ``model`` has a structured plan (an MLP or CNN: its input is a float tensor)."""
    try:
        structured_plan(model)
    except ValueError:
        return False
    return True


def _check_parameters(function: str, model: nn.Module, x: Optional[Tensor]) -> dict[str, Tensor]:
    if x is not None:
        check_parameters_match(function, model, x)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    # One reduction per parameter; the exact (slower) test only runs to name a culprit.
    with torch.no_grad():
        params = [p for p in trainable.values() if p.is_floating_point()]
        if params and not bool(torch.isfinite(torch.stack([p.sum() for p in params])).all()):
            for name, p in trainable.items():
                if p.is_floating_point() and not bool(torch.isfinite(p).all()):
                    raise ValueError(f"{function}: parameter {name} contains NaN or Inf")
    if not trainable:
        raise ValueError(
            f"{function}: the model has no parameter with requires_grad=True, so its NTK is "
            "identically zero"
        )
    dtypes = {p.dtype for p in trainable.values() if p.is_floating_point()}
    if x is None and len(dtypes) > 1:
        raise ValueError(f"{function}: the trainable parameters mix dtypes "
                         f"{sorted(map(str, dtypes))}; convert the model to one "
                         "(model.double() or model.float())")
    return trainable


def _check_out(
    function: str, out: Optional[Tensor], shape: tuple[int, ...], dtype: torch.dtype
) -> Optional[Tensor]:
    if out is None:
        return None
    if not isinstance(out, Tensor):
        raise TypeError(f"{function}: out must be a torch.Tensor; got {type(out).__name__}")
    if tuple(out.shape) != shape or out.dtype != dtype:
        raise ValueError(
            f"{function}: out must have shape {list(shape)} and dtype {dtype}; got "
            f"{list(out.shape)} and {out.dtype}"
        )
    return out


# ---------------------------------------------------------------------------------
# the block loop


def _fill(engine, n1: int, n2: Optional[int], mode: str, n_out: int, chunk: int,
          out: Optional[Tensor], progress: Optional[bool], method: str,
          desc: str, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, int]:
    """The block loop over N1 × N2 (n2 None: x2 = x1, upper blocks and their mirror)."""
    symmetric = n2 is None
    n2 = n1 if symmetric else n2
    rows = [(i, min(i + chunk, n1)) for i in range(0, n1, chunk)]
    cols = rows if symmetric else [(j, min(j + chunk, n2)) for j in range(0, n2, chunk)]
    pairs = [
        (r, c) for a, r in enumerate(rows) for b, c in enumerate(cols) if not symmetric or b >= a
    ]

    if len(pairs) == 1 and out is None:
        (i0, i1), (j0, j1) = pairs[0]
        block = engine.block(i0, i1, j0, j1, symmetric)
        if symmetric and method != "structured":
            block = _symmetrize(block, mode)
        return block, 1

    result = out if out is not None else torch.empty(kernel_shape(mode, n1, n2, n_out),
                                                     dtype=dtype, device=device)
    bar = progress_bar(len(pairs), progress=progress, desc=desc,
                       unit="block", enabled=len(pairs) > 1)
    try:
        for (i0, i1), (j0, j1) in pairs:
            diagonal = symmetric and i0 == j0
            block = engine.block(i0, i1, j0, j1, diagonal)
            if diagonal and method != "structured":
                block = _symmetrize(block, mode)
            result[i0:i1, j0:j1].copy_(block)
            if symmetric and not diagonal:
                result[j0:j1, i0:i1].copy_(_transpose(block, mode))
            del block
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return result, len(pairs)


def _transpose(block: Tensor, mode: str) -> Tensor:
    """Θ(x′, x) from Θ(x, x′): swap the sample axes (and k, k′ in full mode)."""
    t = block.transpose(0, 1)
    return t.transpose(2, 3) if mode == "full" else t


def _symmetrize(block: Tensor, mode: str) -> Tensor:
    """(B + Bᵀ)/2 for a diagonal block: exactly symmetric (addition commutes)."""
    return (block + _transpose(block, mode)) / 2
