"""Finite-width (empirical) NTK of a model at its current parameters (NTK_MATH.md §2).

    Θ_kk′(x, x′) = Σ_p ∂f_k(x)/∂θ_p · ∂f_k′(x′)/∂θ_p    (p: parameters with requires_grad)

Three ways to compute it, chosen with ``method``:

``"structured"`` (``nn.Sequential`` MLPs that :func:`torch_ntk.arch.lift` accepts)
    One forward pass keeps each dense layer's input activations A_l [N, n_l]; one
    batched backward pass by hand gives the cotangents of all n_L outputs at once,
    D_l [N, n_L, n_{l+1}] (δ_L = I, δ_l = (δ_{l+1} W̃_{l+1}) ⊙ φ′(z_l) with the effective
    weights W̃); then one fused op (:func:`torch_ntk.ops.structured_ntk`) returns

        Θ = Σ_l (c_w,l · A1_l A2_lᵀ + c_b,l) ⊙ (D1_l D2_lᵀ)

    without materializing a Jacobian. Cost O(N1 N2 Σ_l (n_l + c m_l)) with c = n_L
    ("trace", "diagonal") or n_L² ("full"), and O(N n_L Σ_l n_l m_l) for the passes;
    memory O((N1 + N2) Σ_l (n_l + n_L m_l)) plus the output. With x2 = None only the
    tiles on and above the diagonal are computed.
``"jacobian"`` (any model)
    Jacobian contraction, the method of PyTorch's NTK tutorial: per-sample Jacobians
    by ``vmap(jacrev)`` for a chunk of samples, contracted parameter block by
    parameter block. Cost O(N n_L P) memory per chunk and O(N1 N2 n_L² P) time
    (P = number of trainable parameters).
``"ntk_vp"`` (any model)
    NTK-vector products: for each column (x′_j, k′) one ``vjp`` at x′_j gives
    J(x′_j)ᵀ e_k′, one ``jvp`` over the x1 chunk gives J(x1) J(x′_j)ᵀ e_k′. Cost
    O(N1 N2 n_L P) time; memory O(P) per column in flight, never a Jacobian.

``"auto"`` picks "structured" when the model lifts and the op is available on the
inputs' device, else "jacobian"; ``return_info=True`` reports the choice and why.

Modes: ``"full"`` [N1, N2, n_L, n_L] (entry [i, j, k, k′] = Θ_kk′(x1_i, x2_j)),
``"trace"`` [N1, N2] = Σ_k Θ_kk (a **sum** over outputs, not a mean, in every method),
``"diagonal"`` [N1, N2, n_L] = Θ_kk.

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
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Union, overload

import torch
from torch import Tensor, nn

from . import ops
from .activations import from_module
from .arch import Dense, _flat_modules, lift
from .nn import NTKLinear
from .validation import check_batch

__all__ = ["MODES", "METHODS", "NTKInfo", "empirical_ntk", "default_memory_budget"]

logger = logging.getLogger(__name__)

MODES = ("full", "trace", "diagonal")
METHODS = ("auto", "structured", "jacobian", "ntk_vp")

# Estimated work (floating-point operations) above which a single block is split so
# the progress bar has something to show (a few seconds on a CPU).
_PROGRESS_FLOPS = {"cpu": 2e11, "cuda": 2e13}
_PROGRESS_DELAY_S = 2.0


@dataclass(frozen=True)
class NTKInfo:
    """How :func:`empirical_ntk` computed its result.

    method: "structured", "jacobian" or "ntk_vp" — the path actually taken.
    reason: why (the request, or auto's reason for choosing it / falling back).
    mode: "full", "trace" or "diagonal".
    row_chunk, col_chunk: samples of x1 and x2 per block.
    blocks: number of blocks computed (each one op call or one contraction).
    memory_budget: bytes the working memory was sized for.
    seconds: wall-clock time of the call.
    """

    method: str
    reason: str
    mode: str
    row_chunk: int
    col_chunk: int
    blocks: int
    memory_budget: int
    seconds: float


# ---------------------------------------------------------------------------------
# public entry point


@overload
def empirical_ntk(
    model: nn.Module, x1: Tensor, x2: Optional[Tensor] = ..., mode: str = ...,
    method: str = ..., chunk_size: Optional[int] = ..., *, memory_budget: Optional[int] = ...,
    out: Optional[Tensor] = ..., progress: Optional[bool] = ...,
    return_info: Literal[False] = ...,
) -> Tensor: ...


@overload
def empirical_ntk(
    model: nn.Module, x1: Tensor, x2: Optional[Tensor] = ..., mode: str = ...,
    method: str = ..., chunk_size: Optional[int] = ..., *, memory_budget: Optional[int] = ...,
    out: Optional[Tensor] = ..., progress: Optional[bool] = ..., precision: str = ...,
    return_info: Literal[True],
) -> tuple[Tensor, NTKInfo]: ...


def empirical_ntk(
    model: nn.Module,
    x1: Tensor,
    x2: Optional[Tensor] = None,
    mode: str = "full",
    method: str = "auto",
    chunk_size: Optional[int] = None,
    *,
    memory_budget: Optional[int] = None,
    out: Optional[Tensor] = None,
    progress: Optional[bool] = None,
    precision: str = "highest",
    return_info: bool = False,
) -> Union[Tensor, tuple[Tensor, NTKInfo]]:
    """The empirical NTK Θ(x1, x2) of ``model`` at its current parameters.

    Θ_kk′(x, x′) = Σ_p ∂f_k(x)/∂θ_p ∂f_k′(x′)/∂θ_p over the parameters with
    ``requires_grad=True`` (a frozen layer contributes nothing, as in training).

    Args:
        model: any ``nn.Module`` mapping [N, ...] to [N, n_L] (or [N]: n_L = 1). Its
            parameters must have the inputs' dtype and device. Dropout must be off
            (``model.eval()`` or p = 0): the NTK of a random network is not defined.
        x1: [N1, ...] float32/float64 ([N1, n_0] for an MLP).
        x2: [N2, ...] like x1, or None (or x1 itself) for x2 = x1: the result is then
            exactly symmetric, Θ_kk′(x_i, x_j) = Θ_k′k(x_j, x_i) bit for bit.
        mode: "full" → [N1, N2, n_L, n_L]; "trace" → [N1, N2], Σ_k Θ_kk (sum, not mean);
            "diagonal" → [N1, N2, n_L], Θ_kk.
        method: "auto", "structured", "jacobian" or "ntk_vp" (see the module docstring).
        chunk_size: samples of x1 and of x2 per block; None sizes blocks from
            ``memory_budget``. Every chunking gives the same result up to rounding.
        memory_budget: bytes of working memory to stay within (inputs, parameters and
            ``out`` not counted). Default: half the available host memory for CPU
            inputs, 80% of the free device memory for CUDA inputs.
        out: optional [N1, N2, ...] tensor of the result's shape and dtype (any device,
            any strides, e.g. memory-mapped) to write into; it is returned.
        progress: None shows a tqdm bar once the run takes over two seconds; True
            always; False never.
        precision: the structured method's Gram products: "highest" (the inputs'
            dtype), "bf16" (bfloat16 operands, float32 accumulation: tensor cores on
            CUDA, relative error ~1e-3–1e-2) or "bf16x3" (three bfloat16 products of split
            operands, error near float32's). The last two need float32 inputs and the
            structured method; see :func:`torch_ntk.ops.structured_ntk`.
        return_info: also return an :class:`NTKInfo` saying which method ran and why.

    Returns:
        The kernel (the shape per ``mode`` above), or ``(kernel, NTKInfo)``.

    Raises:
        TypeError: non-tensor or non-floating inputs, a model that is not an nn.Module.
        ValueError: bad mode/method, wrong feature size, NaN/Inf in inputs or
            parameters, empty batches, dtype/device mismatches, no trainable
            parameter, Dropout in training mode, a model that does not lift with
            method="structured", or an ``out`` of the wrong shape/dtype.
    """
    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"empirical_ntk: model must be an nn.Module; got {type(model).__name__}")
    if mode not in MODES:
        raise ValueError(f"empirical_ntk: mode must be one of {MODES}; got {mode!r}")
    if method not in METHODS:
        raise ValueError(f"empirical_ntk: method must be one of {METHODS}; got {method!r}")
    if precision not in ops.PRECISIONS:
        raise ValueError(
            f"empirical_ntk: precision must be one of {ops.PRECISIONS}; got {precision!r}"
        )
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(
            f"empirical_ntk: chunk_size must be a positive integer; got {chunk_size!r}"
        )
    _check_no_active_dropout(model)
    if x2 is x1:
        x2 = None  # the same batch: take the symmetric path
    x1 = check_batch("empirical_ntk", "x1", x1)
    if x2 is not None:
        x2 = check_batch("empirical_ntk", "x2", x2, like=x1)
    trainable = _check_parameters(model, x1)

    method, reason, plan = _choose_method(model, method, x1)
    if precision != "highest":
        if method != "structured":
            raise ValueError(
                f"empirical_ntk: precision={precision!r} needs the structured method, but "
                f"method {method!r} runs ({reason}); use precision='highest'"
            )
        if x1.dtype != torch.float32:
            raise ValueError(
                f"empirical_ntk: precision={precision!r} needs float32 inputs and parameters; "
                f"got {x1.dtype}. Use precision='highest' for float64."
            )
    if plan is not None:
        x1 = plan.check_input("x1", x1)
        if x2 is not None:
            x2 = plan.check_input("x2", x2)
        n_out = plan.n_out
    else:
        n_out = _output_size(model, x1, x2)

    if memory_budget is None:
        memory_budget = default_memory_budget(x1.device)
    elif not isinstance(memory_budget, (int, float)) or not memory_budget > 0:
        raise ValueError(
            "empirical_ntk: memory_budget must be a positive number of bytes; got "
            f"{memory_budget!r}"
        )
    memory_budget = int(min(memory_budget, 2**62))

    n1 = x1.shape[0]
    n2 = n1 if x2 is None else x2.shape[0]
    shape = _output_shape(mode, n1, n2, n_out)
    out = _check_out(out, shape, x1.dtype)

    if method == "structured":
        engine = _StructuredBlocks(plan, x1, x2, mode, precision)
    elif method == "jacobian":
        engine = _JacobianBlocks(model, trainable, x1, x2, mode, n_out)
    else:
        engine = _VPBlocks(model, trainable, x1, x2, mode, n_out)
    chunk = engine.chunk(memory_budget, chunk_size, progress is not False)
    result, blocks = _fill(engine, x1, x2, mode, n_out, chunk, out, progress, method)
    if out is not None:
        result = out
    info = NTKInfo(method, reason, mode, min(chunk, n1), min(chunk, n2), blocks, memory_budget,
                   time.perf_counter() - start)
    logger.debug("empirical_ntk: %s", info)
    return (result, info) if return_info else result


def default_memory_budget(device: Union[str, torch.device] = "cpu") -> int:
    """The default working-memory budget in bytes for computations on ``device``.

    CUDA: 80% of the device's free memory (``torch.cuda.mem_get_info``). CPU: half of
    MemAvailable from /proc/meminfo (4 GiB where that file does not exist).
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.8 * free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return 4 * 2**30


# ---------------------------------------------------------------------------------
# validation


def _check_no_active_dropout(model: nn.Module) -> None:
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.training and module.p > 0:
            raise ValueError(
                f"empirical_ntk: {name or 'the model'} ({type(module).__name__}, p={module.p}) "
                "is in training mode, so the network is random and has no NTK; call model.eval() "
                "first"
            )


def _check_parameters(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    trainable = {}
    for name, p in model.named_parameters():
        if p.dtype != x.dtype and p.is_floating_point():
            raise ValueError(
                f"empirical_ntk: parameter {name} is {p.dtype} but x1 is {x.dtype}; convert the "
                f"model (model.to({x.dtype})) or the inputs"
            )
        if p.device != x.device:
            raise ValueError(
                f"empirical_ntk: parameter {name} is on {p.device} but x1 is on {x.device}; move "
                "them to the same device"
            )
        if p.requires_grad:
            trainable[name] = p
    # One reduction per parameter; the exact (slower) test only runs to name a culprit.
    with torch.no_grad():
        params = [p for p in trainable.values() if p.is_floating_point()]
        if params and not bool(torch.isfinite(torch.stack([p.sum() for p in params])).all()):
            for name, p in trainable.items():
                if p.is_floating_point() and not bool(torch.isfinite(p).all()):
                    raise ValueError(f"empirical_ntk: parameter {name} contains NaN or Inf")
    if not trainable:
        raise ValueError(
            "empirical_ntk: the model has no parameter with requires_grad=True, so its NTK is "
            "identically zero"
        )
    return trainable


def _output_shape(mode: str, n1: int, n2: int, n_out: int) -> tuple[int, ...]:
    if mode == "full":
        return (n1, n2, n_out, n_out)
    if mode == "trace":
        return (n1, n2)
    return (n1, n2, n_out)


def _check_out(
    out: Optional[Tensor], shape: tuple[int, ...], dtype: torch.dtype
) -> Optional[Tensor]:
    if out is None:
        return None
    if not isinstance(out, Tensor):
        raise TypeError(f"empirical_ntk: out must be a torch.Tensor; got {type(out).__name__}")
    if tuple(out.shape) != shape or out.dtype != dtype:
        raise ValueError(
            f"empirical_ntk: out must have shape {list(shape)} and dtype {dtype}; got "
            f"{list(out.shape)} and {out.dtype}"
        )
    return out


def _output_size(model: nn.Module, x1: Tensor, x2: Optional[Tensor]) -> int:
    """n_L, from one forward pass on one sample (also a clear error for bad inputs)."""
    try:
        with torch.no_grad():
            y = model(x1[:1])
    except Exception as error:  # the model's own error names what is wrong
        raise ValueError(
            f"empirical_ntk: the model cannot be applied to x1 of shape {list(x1.shape)} "
            f"({type(error).__name__}: {error})"
        ) from error
    if not isinstance(y, Tensor) or y.dim() < 1 or y.shape[0] != 1:
        raise ValueError(
            "empirical_ntk: the model must map a batch [N, ...] to a tensor [N, n_L] (or [N]); "
            f"got {type(y).__name__} {list(getattr(y, 'shape', []))} for one sample"
        )
    return max(1, y[0].numel())


# ---------------------------------------------------------------------------------
# method choice


def _choose_method(model: nn.Module, method: str, x: Tensor):
    """(method, reason, structured plan or None)."""
    if method in ("jacobian", "ntk_vp"):
        return method, "requested", None
    try:
        plan = _StructuredPlan.of(model)
    except ValueError as error:
        if method == "structured":
            raise ValueError(
                f"empirical_ntk: method='structured' is not available: {error}"
            ) from error
        return "jacobian", f"the model does not lift to an MLP ({error})", None
    if x.is_cuda and not ops.cuda_built():
        if method == "structured":
            ops._check_device("structured_ntk", x)
        return "jacobian", "torch_ntk was built without CUDA, so the fused op cannot run", None
    reason = "requested" if method == "structured" else "the model lifts to an MLP"
    return "structured", reason, plan


class _StructuredPlan:
    """The dense layers of a lifted MLP and how to run them forward and backward."""

    def __init__(self, steps, denses, n_out, input_features, flatten_input):
        # ("dense", module, index), ("act", module, Activation) or ("id", module, None)
        self.steps = steps
        self.denses = denses  # per dense layer: (module, weight_scale, c_w, c_b)
        self.n_out = n_out
        self.input_features = input_features
        self.flatten_input = flatten_input

    @classmethod
    def of(cls, model: nn.Module) -> "_StructuredPlan":
        spec = lift(model)
        dense_specs = iter(spec.dense_layers)
        steps, denses = [], []
        for _, module in _flat_modules(model):
            if isinstance(module, (NTKLinear, nn.Linear)):
                if type(module).forward not in (NTKLinear.forward, nn.Linear.forward):
                    raise ValueError(
                        f"{type(module).__name__} overrides forward, so its layer formula is "
                        "unknown"
                    )
                d: Dense = next(dense_specs)
                w_on = module.weight.requires_grad
                b_on = module.bias is not None and module.bias.requires_grad
                scale = module.weight_scale if isinstance(module, NTKLinear) else 1.0
                denses.append((module, scale, d.ntk_weight_coef if w_on else 0.0,
                               d.ntk_bias_coef if b_on else 0.0))
                steps.append(("dense", module, len(denses) - 1))
            elif isinstance(module, (nn.Identity, nn.Dropout, nn.Flatten)):
                steps.append(("id", module, None))
            else:
                act = from_module(module)
                assert act is not None  # lift accepted it
                steps.append(("act", module, act))
        return cls(steps, denses, spec.output_features, spec.input_features, spec.flatten_input)

    def check_input(self, name: str, x: Tensor) -> Tensor:
        """x as [N, n_0] (flattened when the model starts with nn.Flatten)."""
        if self.flatten_input and x.dim() >= 2:
            x = x.flatten(1)
        if x.dim() != 2 or x.shape[1] != self.input_features:
            raise ValueError(
                f"empirical_ntk: {name} must have {self.input_features} features (the model's "
                f"input width), i.e. shape [N, {self.input_features}]; got shape {list(x.shape)}"
            )
        return x

    @torch.no_grad()
    def features(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """A_l [N, n_l] and D_l [N, n_L, m_l] of the layers with a nonzero coefficient."""
        acts: list[Tensor] = []
        dphi: list[Optional[Tensor]] = []
        a = x
        for kind, module, extra in self.steps:
            if kind == "dense":
                acts.append(a)
                dphi.append(None)
                a = module(a)
            elif kind == "act":
                dphi[-1] = extra.derivative(a)
                a = module(a)
            else:
                a = module(a)
        n, nl = x.shape[0], self.n_out
        cot = torch.eye(nl, dtype=x.dtype, device=x.device).expand(n, nl, nl)
        cots: list[Tensor] = [cot]
        for l in range(len(self.denses) - 1, 0, -1):
            module, scale, _, _ = self.denses[l]
            m = module.weight.shape[0]
            g = torch.mm(cot.reshape(n * nl, m), module.weight).view(n, nl, -1)
            if dphi[l - 1] is not None:
                g.mul_(dphi[l - 1].unsqueeze(1))
            if scale != 1.0:
                g.mul_(scale)
            cot = g
            cots.append(cot)
        cots.reverse()
        keep = [l for l, (_, _, cw, cb) in enumerate(self.denses) if cw != 0 or cb != 0]
        return [acts[l] for l in keep], [cots[l] for l in keep]

    def coefficients(self) -> tuple[list[float], list[float]]:
        keep = [(cw, cb) for (_, _, cw, cb) in self.denses if cw != 0 or cb != 0]
        return [cw for cw, _ in keep], [cb for _, cb in keep]

    def bytes_per_sample(self, itemsize: int) -> int:
        total = 0
        for module, _, cw, cb in self.denses:
            if cw != 0 or cb != 0:
                total += module.weight.shape[1] + self.n_out * module.weight.shape[0]
        widest = max(module.weight.shape[0] for module, _, _, _ in self.denses)
        return (total + 3 * widest * self.n_out) * itemsize

    def flops_per_pair(self, mode: str) -> float:
        nl = self.n_out
        per = 0.0
        for module, _, cw, cb in self.denses:
            if cw != 0 or cb != 0:
                n_in, m = module.weight.shape[1], module.weight.shape[0]
                per += 2 * (n_in + (nl * nl if mode == "full" else nl) * m)
        return per


# ---------------------------------------------------------------------------------
# block engines: each computes Θ for (x1 rows i0:i1, x2 columns j0:j1)


class _LRU:
    """Per-chunk features kept while they fit in ``limit`` bytes, least recently used out.

    ``pin=True`` (the current row chunk, accounted for outside ``limit``) keeps one entry
    aside, so a row's features are never recomputed for each of its column blocks.
    """

    def __init__(self, limit: int):
        self.limit, self.used, self.items = limit, 0, OrderedDict()
        self.pinned = None

    def get(self, key, make: Callable[[], list], pin: bool = False):
        if self.pinned is not None and self.pinned[0] == key:
            return self.pinned[1]
        if key in self.items:
            self.items.move_to_end(key)
            value = self.items[key][0]
        else:
            value = make()
            size = sum(t.numel() * t.element_size() for part in value for t in _tensors(part))
            if size <= self.limit:
                while self.used + size > self.limit and self.items:
                    _, (_, old) = self.items.popitem(last=False)
                    self.used -= old
                self.items[key] = (value, size)
                self.used += size
        if pin:
            self.pinned = (key, value)
        return value


def _tensors(part):
    if isinstance(part, Tensor):
        return [part]
    if isinstance(part, dict):
        return list(part.values())
    return [t for p in part for t in _tensors(p)]


def _square_chunk(n: int, per_sample: float, per_pair: float, budget: float) -> int:
    """Largest c ≤ n with c·per_sample + c²·per_pair ≤ budget (at least 1)."""
    if n * per_sample + n * n * per_pair <= budget:
        return n
    if per_pair > 0:
        c = (-per_sample + math.sqrt(per_sample**2 + 4 * per_pair * budget)) / (2 * per_pair)
    else:
        c = budget / max(per_sample, 1)
    return max(1, min(n, int(c)))


def _split_for_progress(c: int, n: int, x1: Tensor, x2: Optional[Tensor], flops_per_pair: float,
                        enabled: bool, smallest: int = 16) -> int:
    """A chunk giving a few blocks (so a progress bar can move) for a long single-block run."""
    n2 = x1.shape[0] if x2 is None else x2.shape[0]
    work = x1.shape[0] * n2 * flops_per_pair
    if enabled and c >= n and work > _PROGRESS_FLOPS.get(x1.device.type, _PROGRESS_FLOPS["cuda"]):
        return min(c, max(smallest, math.ceil(n / 4)))
    return c


class _StructuredBlocks:
    def __init__(self, plan: _StructuredPlan, x1: Tensor, x2: Optional[Tensor], mode: str,
                 precision: str = "highest"):
        self.plan, self.x1, self.x2, self.mode = plan, x1, x2, mode
        self.precision = precision
        self.cw, self.cb = plan.coefficients()
        self.cache = _LRU(0)

    def chunk(self, budget: int, chunk_size: Optional[int], split_for_progress: bool) -> int:
        x1, x2 = self.x1, self.x2
        n = max(x1.shape[0], 0 if x2 is None else x2.shape[0])
        s = x1.element_size()
        channels = _channels(self.mode, self.plan.n_out)
        # Reduced precisions hold rounded copies of the operands (one or two per operand).
        copies = {"highest": 0, "bf16": 1, "bf16x3": 2}[self.precision]
        feat = self.plan.bytes_per_sample(s) * (1 + copies)
        pair = channels * s * 2  # op output + its copy
        if x1.is_cuda:  # the CUDA op's Gram buffers: activation + cotangent (+ scratch)
            pair += (1 + channels) * s * (2 if self.precision == "bf16x3" else 1)
        if chunk_size is not None:
            c = min(chunk_size, n)
        else:
            c = _square_chunk(n, 2 * feat, pair, budget / 2)
            c = _split_for_progress(c, n, x1, x2, self.plan.flops_per_pair(self.mode),
                                    split_for_progress, smallest=512)
        self.cache = _LRU(max(0, budget - 2 * c * feat - c * c * pair))
        return c

    def _features(self, side: int, start: int, stop: int):
        x = self.x1 if side == 1 or self.x2 is None else self.x2
        key = (1 if self.x2 is None else side, start, stop)
        return self.cache.get(key, lambda: list(self.plan.features(x[start:stop])), pin=side == 1)

    def block(self, i0: int, i1: int, j0: int, j1: int, diagonal: bool) -> Tensor:
        a1, d1 = self._features(1, i0, i1)
        if diagonal:
            return ops.structured_ntk(a1, d1, None, None, self.cw, self.cb, self.mode,
                                      self.precision)
        a2, d2 = self._features(2, j0, j1)
        return ops.structured_ntk(a1, d1, a2, d2, self.cw, self.cb, self.mode, self.precision)


def _channels(mode: str, n_out: int) -> int:
    return n_out * n_out if mode == "full" else (1 if mode == "trace" else n_out)


class _FuncModel:
    """The model as a function of its trainable parameters (torch.func)."""

    def __init__(self, model: nn.Module, trainable: dict[str, Tensor]):
        self.model = model
        self.params = {k: v.detach() for k, v in trainable.items()}
        self.fixed = {k: v.detach() for k, v in model.named_parameters() if k not in trainable}
        self.fixed.update(dict(model.named_buffers()))

    def batch(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """f(x) [n, n_L] for a batch x [n, ...]."""
        y = torch.func.functional_call(self.model, (params, self.fixed), (x,))
        return y.reshape(x.shape[0], -1)

    def single(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """f(x) [n_L] for one sample x [...]."""
        return self.batch(params, x.unsqueeze(0))[0]


class _JacobianBlocks:
    """Per-sample Jacobians by vmap(jacrev), contracted parameter block by block."""

    def __init__(self, model, trainable, x1, x2, mode, n_out):
        self.f = _FuncModel(model, trainable)
        self.x1, self.x2, self.mode, self.n_out = x1, x2, mode, n_out
        self.groups = [list(self.f.params)]
        self.cache = _LRU(0)
        self.act = _activation_numel(model, x1)

    def chunk(self, budget: int, chunk_size: Optional[int], split_for_progress: bool) -> int:
        x1, x2 = self.x1, self.x2
        n = max(x1.shape[0], 0 if x2 is None else x2.shape[0])
        s, nl = x1.element_size(), self.n_out
        sizes = {k: v.numel() for k, v in self.f.params.items()}
        # A sample's Jacobian, with vmap(jacrev)'s temporaries (about as much again).
        per_sample_group_limit = budget / 16
        groups, current, current_size = [], [], 0
        for name, size in sizes.items():
            cost = 2 * nl * size * s
            if current and current_size + cost > per_sample_group_limit:
                groups.append(current)
                current, current_size = [], 0
            current.append(name)
            current_size += cost
        groups.append(current)
        self.groups = groups
        largest = max(sum(sizes[k] for k in g) for g in groups)
        per_sample = 2 * (2 * nl * largest + nl * self.act) * s  # row and column chunks
        pair = _channels(self.mode, nl) * s * 2
        if chunk_size is not None:
            c = min(chunk_size, n)
        else:
            c = _square_chunk(n, per_sample, pair, budget / 2)
            per_pair = 2 * sum(sizes.values()) * (nl * nl if self.mode == "full" else nl)
            c = _split_for_progress(c, n, x1, x2, per_pair, split_for_progress)
        self.cache = _LRU(max(0, budget - c * per_sample - c * c * pair))
        return c

    def _jacobian(self, side: int, start: int, stop: int, g: int) -> dict[str, Tensor]:
        x = self.x1 if side == 1 or self.x2 is None else self.x2
        key = (1 if self.x2 is None else side, start, stop, g)
        names = self.groups[g]

        def make():
            sub = {k: self.f.params[k] for k in names}
            rest = {k: v for k, v in self.f.params.items() if k not in sub}

            def fn(p, xs):
                return self.f.single({**rest, **p}, xs)

            jac = torch.func.vmap(torch.func.jacrev(fn), in_dims=(None, 0))(sub, x[start:stop])
            return [{k: v.flatten(2) for k, v in jac.items()}]

        return self.cache.get(key, make, pin=side == 1)[0]

    def block(self, i0: int, i1: int, j0: int, j1: int, diagonal: bool) -> Tensor:
        total = None
        for g in range(len(self.groups)):
            j1s = self._jacobian(1, i0, i1, g)
            j2s = j1s if diagonal else self._jacobian(2, j0, j1, g)
            for name in j1s:
                part = _contract(j1s[name], j2s[name], self.mode)
                total = part if total is None else total.add_(part)
        return total.detach()


def _contract(j1: Tensor, j2: Tensor, mode: str) -> Tensor:
    """Σ_p J1[i, k, p] J2[j, k′, p] in ``mode``; J [n, n_L, p]."""
    n1, nl, p = j1.shape
    n2 = j2.shape[0]
    if mode == "trace":
        return torch.mm(j1.reshape(n1, nl * p), j2.reshape(n2, nl * p).t())
    if mode == "diagonal":
        return torch.bmm(j1.transpose(0, 1), j2.transpose(0, 1).transpose(1, 2)).permute(1, 2, 0)
    full = torch.mm(j1.reshape(n1 * nl, p), j2.reshape(n2 * nl, p).t())
    return full.view(n1, nl, n2, nl).permute(0, 2, 1, 3)


def _activation_numel(model: nn.Module, x: Tensor) -> int:
    """Numbers produced by the model's leaf modules for one sample (memory estimates)."""
    total = [0]

    def hook(_module, _inputs, output):
        if isinstance(output, Tensor):
            total[0] += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    return max(total[0], 1)


class _VPBlocks:
    """NTK-vector products: one vjp at (x2_j, k′) and one jvp over the x1 chunk per column."""

    def __init__(self, model, trainable, x1, x2, mode, n_out):
        self.f = _FuncModel(model, trainable)
        self.x1, self.x2, self.mode, self.n_out = x1, x2, mode, n_out
        self.act = _activation_numel(model, x1)
        self.params_numel = sum(v.numel() for v in self.f.params.values())
        self.columns = 1

    def chunk(self, budget: int, chunk_size: Optional[int], split_for_progress: bool) -> int:
        x1, x2 = self.x1, self.x2
        n = max(x1.shape[0], 0 if x2 is None else x2.shape[0])
        s, nl = x1.element_size(), self.n_out
        pair = _channels(self.mode, nl) * s * 2 + nl * nl * s
        if chunk_size is not None:
            c = min(chunk_size, n)
        else:
            c = _square_chunk(n, 0, pair, budget / 2)
            c = _split_for_progress(c, n, x1, x2, 6 * nl * self.params_numel, split_for_progress)
        # Each column in flight holds a parameter-sized vector and a jvp over c samples.
        per_column = (3 * self.params_numel + 4 * c * self.act + self.act) * s
        self.columns = max(1, min(c * nl, int(budget / 2 / per_column)))
        return c

    def block(self, i0: int, i1: int, j0: int, j1: int, diagonal: bool) -> Tensor:
        f, params, nl = self.f, self.f.params, self.n_out
        xa = self.x1[i0:i1]
        xb = (self.x1 if self.x2 is None else self.x2)[j0:j1]
        ncols = xb.shape[0] * nl
        col_x = xb.repeat_interleave(nl, 0)
        col_v = torch.eye(nl, dtype=xa.dtype, device=xa.device).repeat(xb.shape[0], 1)

        def column(xs: Tensor, v: Tensor) -> Tensor:
            _, vjp_fn = torch.func.vjp(lambda p: f.single(p, xs), params)
            (tangent,) = vjp_fn(v)
            _, jv = torch.func.jvp(lambda p: f.batch(p, xa), (params,), (tangent,))
            return jv  # [n1, n_L]: Θ_k,k′(x1_i, x_j) for all i, k

        parts = [
            torch.func.vmap(column)(col_x[c0:c0 + self.columns], col_v[c0:c0 + self.columns])
            for c0 in range(0, ncols, self.columns)
        ]
        cols = torch.cat(parts).view(xb.shape[0], nl, xa.shape[0], nl)  # [j, k′, i, k]
        full = cols.permute(2, 0, 3, 1)  # [i, j, k, k′]
        if self.mode == "full":
            return full
        diag = full.diagonal(dim1=2, dim2=3)  # [i, j, k]
        return diag.sum(-1) if self.mode == "trace" else diag


# ---------------------------------------------------------------------------------
# the block loop


def _fill(engine, x1: Tensor, x2: Optional[Tensor], mode: str, n_out: int, chunk: int,
          out: Optional[Tensor], progress: Optional[bool], method: str) -> tuple[Tensor, int]:
    symmetric = x2 is None
    n1 = x1.shape[0]
    n2 = n1 if symmetric else x2.shape[0]
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

    result = out if out is not None else x1.new_empty(_output_shape(mode, n1, n2, n_out))
    bar = _progress_bar(len(pairs), progress, method)
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


def _progress_bar(total: int, progress: Optional[bool], method: str):
    if progress is False or total <= 1:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=f"empirical_ntk ({method})", unit="block",
                delay=0.0 if progress else _PROGRESS_DELAY_S, leave=False)
