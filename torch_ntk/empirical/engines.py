"""The block engines of ``empirical_ntk`` and the one choice between them (:func:`make_engine`).

Each engine computes Θ for (x1 rows i0:i1, x2 columns j0:j1) and sizes its blocks from a
memory budget: the structured op on an MLP plan's factors (:class:`StructuredBlocks`), a
CNN plan's conv contractions plus the fused op (:class:`ConvStructuredBlocks`), per-sample
Jacobians by ``vmap(jacrev)`` (:class:`JacobianBlocks`), NTK-vector products
(:class:`NTKVPBlocks`), any model module by module (:class:`HookBlocks`, from
``torch_ntk.empirical.hooks``: each module's registered rule, the rest by torch.func).

An engine is built on (x1, x2 or None, mode); ``size_blocks(budget, chunk_size,
split_for_progress)`` chooses the samples per block (and sizes its caches) and returns it;
``block(i0, i1, j0, j1, diagonal)`` returns Θ(x1[i0:i1], x2[j0:j1]) in the mode's shape.
:func:`make_engine` also sets ``method``, ``reason``, ``plan`` and ``n_out`` on it; every
caller (``empirical_ntk``, the tiles of ``torch_ntk.distributed``, through them the
tracker and the wrapper) builds its engine there.
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from .. import ops
from ..lifting.lift import lift
from .._utils.modes import channels
from .._utils.runtime import check_built_for
from .cnn_plan import ConvStructuredPlan
from .hooks import HookBlocks
from .mlp_plan import StructuredPlan
from . import budget as budget_model
from .budget import square_chunk
from .budget import activation_numel
from .inputs import FuncModel, OutputFn, batch_size, is_plain, map_leaves, output_size, take
from .rules.conv import choose_order, contract, conv_layer_ntk

__all__ = [
    "ConvStructuredBlocks",
    "FuncModel",
    "GRAPH_REASON",
    "HookBlocks",
    "JacobianBlocks",
    "METHODS",
    "MethodFallbackWarning",
    "NTKVPBlocks",
    "StructuredBlocks",
    "activation_numel",
    "contract",
    "make_engine",
    "output_size",
    "square_chunk",
    "structured_plan",
]

METHODS = ("auto", "structured", "hooks", "jacobian", "ntk_vp")


class MethodFallbackWarning(UserWarning):
    """``method="auto"`` on an ``nn.Sequential`` that does not lift: the hook engine runs
    instead of the fused path, and the warning says which module stopped the fused path."""

# Estimated work (floating-point operations) above which a single block is split so
# the progress bar has something to show (a few seconds on a CPU).
_PROGRESS_FLOPS = {"cpu": 2e11, "cuda": 2e13}


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


def _split_for_progress(c: int, n: int, x1, x2, flops_per_pair: float, enabled: bool,
                        smallest: int = 16, device_type: Optional[str] = None) -> int:
    """A chunk giving a few blocks (so a progress bar can move) for a long single-block run
    (x1, x2: leaf structures, :mod:`.inputs`)."""
    n1 = batch_size(x1)
    n2 = n1 if x2 is None else batch_size(x2)
    work = n1 * n2 * flops_per_pair
    kind = device_type or x1.device.type
    if enabled and c >= n and work > _PROGRESS_FLOPS.get(kind, _PROGRESS_FLOPS["cuda"]):
        return min(c, max(smallest, math.ceil(n / 4)))
    return c


class _PlanFeatures:
    """Blocks over a structured plan's features, cached per chunk of samples (``self.plan``,
    ``self.x1``, ``self.x2`` and ``self.cache`` are set by the subclass)."""

    def _features(self, side: int, start: int, stop: int):
        x = self.x1 if side == 1 or self.x2 is None else self.x2
        key = (1 if self.x2 is None else side, start, stop)
        return self.cache.get(key, lambda: list(self.plan.features(x[start:stop])), pin=side == 1)


class StructuredBlocks(_PlanFeatures):
    """The fused op on each block's structured features (cached per chunk of samples)."""

    def __init__(self, plan: StructuredPlan, x1: Tensor, x2: Optional[Tensor], mode: str,
                 precision: str = "highest"):
        self.plan, self.x1, self.x2, self.mode = plan, x1, x2, mode
        self.precision = precision
        self.cw, self.cb = plan.coefficients()
        self.cache = _LRU(0)
        self.workspace: Optional[int] = None  # the op's Gram-buffer limit (bytes)

    def size_blocks(self, budget: int, chunk_size: Optional[int],
                    split_for_progress: bool) -> int:
        x1, x2 = self.x1, self.x2
        n = max(x1.shape[0], 0 if x2 is None else x2.shape[0])
        s = x1.element_size()
        per_pair = channels(self.mode, self.plan.n_out)
        # Reduced precisions hold rounded copies of the operands (one or two per operand).
        copies = {"highest": 0, "bf16": 1, "bf16x3": 2}[self.precision]
        feat = self.plan.bytes_per_sample(s) * (1 + copies)
        pair = per_pair * s * 2  # op output + its copy
        # The op's Gram buffers get a share of the budget (at most the op's default) and
        # the op is told that limit, so what is planned here is what it allocates.
        self.workspace = max(1, min(ops.DEFAULT_WORKSPACE_BYTES, int(budget) // 8))
        if chunk_size is not None:
            c = min(chunk_size, n)
        else:
            c = square_chunk(n, 2 * feat, pair, (budget - self.workspace) / 2)
            c = _split_for_progress(c, n, x1, x2, self.plan.flops_per_pair(self.mode),
                                    split_for_progress, smallest=512)
        gram = ops.structured_workspace_bytes(c, c, self.plan.n_out, self.mode, self.precision,
                                              x1.dtype, x1.device,
                                              workspace_bytes=self.workspace)
        self.cache = _LRU(max(0, budget - 2 * c * feat - c * c * pair - gram))
        return c

    def block(self, i0: int, i1: int, j0: int, j1: int, diagonal: bool) -> Tensor:
        a1, d1 = self._features(1, i0, i1)
        if diagonal:
            a2 = d2 = None
        else:
            a2, d2 = self._features(2, j0, j1)
        return ops.structured_ntk(a1, d1, a2, d2, self.cw, self.cb, self.mode, self.precision,
                                  workspace_bytes=self.workspace)


class ConvStructuredBlocks(_PlanFeatures):
    """A CNN's structured NTK per block: the dense tail by the fused op, each conv layer by
    :func:`~torch_ntk.empirical.rules.conv.conv_layer_ntk` in the order its FLOP model picks."""

    def __init__(self, plan: ConvStructuredPlan, x1: Tensor, x2: Optional[Tensor], mode: str,
                 precision: str = "highest"):
        self.plan, self.x1, self.x2, self.mode = plan, x1, x2, mode
        self.precision = precision
        self.cw, self.cb = plan.dense_coefficients()
        self.cache = _LRU(0)
        self.workspace = ops.DEFAULT_WORKSPACE_BYTES

    def _orders(self, n1: int, n2: int) -> list[str]:
        if self.plan.forced_order is not None:
            return [self.plan.forced_order] * len(self.plan.convs)
        return [choose_order(n1, n2, self.plan.n_out, self.mode, *shape)
                for shape in self.plan.conv_shapes()]

    def size_blocks(self, budget: int, chunk_size: Optional[int],
                    split_for_progress: bool) -> int:
        x1, x2, plan = self.x1, self.x2, self.plan
        n = max(x1.shape[0], 0 if x2 is None else x2.shape[0])
        s = x1.element_size()
        pair = channels(self.mode, plan.n_out) * s * 3  # output, conv terms, a copy
        self.workspace = max(1, min(ops.DEFAULT_WORKSPACE_BYTES, int(budget) // 8))
        c = n if chunk_size is None else min(chunk_size, n)
        for _ in range(2):  # the orders depend on the chunk, the chunk on their memory
            plan.orders = self._orders(c, c)
            if chunk_size is None:
                feat = plan.bytes_per_sample(s, plan.orders)
                room = budget - self.workspace
                # x2 = None in one block holds one side's features; else a row and a column chunk
                one_block = x2 is None and n * feat + n * n * pair <= room
                c = n if one_block else square_chunk(n, 2 * feat, pair, room / 2)
        feat = plan.bytes_per_sample(s, plan.orders)
        self.cache = _LRU(max(0, budget - 2 * c * feat - c * c * pair - self.workspace))
        return c

    def block(self, i0: int, i1: int, j0: int, j1: int, diagonal: bool) -> Tensor:
        a1, d1, c1 = self._features(1, i0, i1)
        a2, d2, c2 = (None, None, [None] * len(c1)) if diagonal else self._features(2, j0, j1)
        conv = None
        for f1, f2 in zip(c1, c2):
            part = conv_layer_ntk(f1, f2, self.mode, self.workspace)
            conv = part if conv is None else conv.add_(part)
        if conv is not None and diagonal:
            t = conv.transpose(0, 1)
            conv = (conv + (t.transpose(2, 3) if self.mode == "full" else t)) / 2
        if not a1:
            return conv
        dense = ops.structured_ntk(a1, d1, a2, d2, self.cw, self.cb, self.mode, self.precision,
                                   workspace_bytes=self.workspace)
        return dense if conv is None else dense.add_(conv)


class JacobianBlocks:
    """Per-sample Jacobians by vmap(jacrev), contracted parameter block by block (a
    parameter whose one-sample Jacobian exceeds the budget's share is split into row blocks;
    a budget below one sample's working set is refused with the bytes it needs)."""

    # Set by the caller: estimate the budget's cost (budget_note) and the largest budget
    # worth suggesting; the entry point named in errors.
    check_budget = False
    budget_ceiling = 0
    function = "empirical_ntk"

    def __init__(self, model, trainable, x1, x2, mode, n_out, output_fn: OutputFn = None,
                 dtype: Optional[torch.dtype] = None):
        self.f = FuncModel(model, trainable, output_fn)
        self.model = model
        self.x1, self.x2, self.mode, self.n_out = x1, x2, mode, n_out
        first = next(iter(self.f.params.values()))
        self.dtype = dtype or (x1.dtype if is_plain(x1) else first.dtype)
        self.device = first.device
        self.groups = [list(self.f.params)]
        self.cache = _LRU(0)
        self.act = activation_numel(model, x1)
        self.budget_note: Optional[str] = None

    def size_blocks(self, budget: int, chunk_size: Optional[int],
                    split_for_progress: bool) -> int:
        """Groups, chunk and cache from the memory model of :mod:`.budget`; sets
        ``budget_note`` (a MemoryBudgetWarning's text, or None) when the budget forces
        blocks far below the efficient size or cannot be met."""
        x1, x2 = self.x1, self.x2
        n = max(batch_size(x1), 0 if x2 is None else batch_size(x2))
        s, nl = self.dtype.itemsize, self.n_out
        sizes = {k: v.numel() for k, v in self.f.params.items()}
        rows = {k: v.shape[0] for k, v in self.f.params.items() if v.dim() > 0}
        pair = channels(self.mode, nl)

        def plan_for(b: int, forced: Optional[int] = chunk_size):
            return budget_model.jacobian_plan(b, sizes, n, nl, s, self.act, pair, forced, rows)

        plan = plan_for(budget)
        if plan.sample_bytes > budget:
            raise ValueError(
                f"{self.function}: memory_budget={budget} bytes is below what one sample "
                f"needs in the Jacobian method ({plan.sample_bytes} bytes even with the "
                f"parameters in {len(plan.groups)} block(s): the largest block's one-sample "
                f"Jacobian for {nl} outputs with its temporaries, and one forward's "
                f"{self.act} activations with their {nl} cotangents); pass memory_budget >= "
                f"{plan.sample_bytes}, or method='ntk_vp' (no Jacobian in memory), or fewer "
                "outputs through output_fn")
        self.groups = plan.groups
        c = plan.chunk
        if chunk_size is None:
            per_pair = 2 * sum(sizes.values()) * (nl * nl if self.mode == "full" else nl)
            c = _split_for_progress(c, n, x1, x2, per_pair, split_for_progress,
                                    device_type=self.device.type)
        self.cache = _LRU(plan.cache)
        self.budget_note = None
        n1, n2 = batch_size(x1), None if x2 is None else batch_size(x2)

        def work_for(p, cost):
            return budget_model.jacobian_work(p, sizes, n1, n2, nl, s, pair, cost)

        if self.check_budget and budget_model.may_be_slow(plan, plan_for(2**50, None), work_for):
            cost = budget_model.measure_cost(
                lambda k: self._vmap_jacobian(plan.groups[0], take(x1, 0, k)), n1,
                self.dtype, self.device)

            self.budget_note = budget_model.budget_note(
                budget, plan, lambda b: plan_for(b, None), lambda p: work_for(p, cost),
                self.budget_ceiling)
        return c

    def _jacobian(self, side: int, start: int, stop: int, g: int) -> dict[str, Tensor]:
        x = self.x1 if side == 1 or self.x2 is None else self.x2
        key = (1 if self.x2 is None else side, start, stop, g)
        names = self.groups[g]

        def make():
            return [self._vmap_jacobian(names, take(x, start, stop))]

        return self.cache.get(key, make, pin=side == 1)[0]

    def _vmap_jacobian(self, names: list, xs) -> dict[str, Tensor]:
        """{block: [n, n_L, numel]} per-sample Jacobians of xs for the parameter blocks
        ``names``: a name (the whole parameter) or (name, r0, r1) (its rows r0:r1, the
        other rows held fixed; the blocks of one parameter sum to its whole term)."""
        params = self.f.params
        sub, pieces = {}, {}
        for block in names:
            if isinstance(block, str):
                sub[block] = params[block]
            else:
                name, r0, r1 = block
                key = f"{name}[{r0}:{r1}]"
                sub[key], pieces[key] = params[name][r0:r1], block
        split = {block[0] for block in pieces.values()}
        rest = {k: v for k, v in params.items() if k not in sub and k not in split}

        def fn(p, x):
            full = {**rest, **{k: v for k, v in p.items() if k not in pieces}}
            for key, (name, r0, r1) in pieces.items():
                whole = params[name]
                full[name] = torch.cat([whole[:r0], p[key], whole[r1:]])
            return self.f.single(full, x)

        jac = torch.func.vmap(torch.func.jacrev(fn), in_dims=(None, 0))(sub, xs)
        return {k: v.flatten(2) for k, v in jac.items()}

    def sample_diagonal(self, i0: int, i1: int) -> Tensor:
        """Θ_kk(x_i, x_i) [i1 − i0, n_L] of x1's samples i0:i1: per-sample squared gradient
        norms Σ_p (∂f_k(x_i)/∂θ_p)², one vmap(jacrev) (n_L backward passes, vmapped over
        the samples) per parameter group."""
        total = None
        for names in self.groups:
            jac = self._vmap_jacobian(names, take(self.x1, i0, i1))
            for j in jac.values():
                part = j.square().sum(-1)
                total = part if total is None else total.add_(part)
        return total.detach()

    def block(self, i0: int, i1: int, j0: int, j1: int, diagonal: bool) -> Tensor:
        total = None
        for g in range(len(self.groups)):
            j1s = self._jacobian(1, i0, i1, g)
            j2s = j1s if diagonal else self._jacobian(2, j0, j1, g)
            for name in j1s:
                part = contract(j1s[name], j2s[name], self.mode)
                total = part if total is None else total.add_(part)
        return total.detach()


class NTKVPBlocks:
    """NTK-vector products: one vjp at (x2_j, k′) and one jvp over the x1 chunk per column
    (chunks sized so one column's jvp fits half the budget; a budget below one column over
    one sample is refused with the bytes it needs)."""

    function = "empirical_ntk"

    def __init__(self, model, trainable, x1, x2, mode, n_out, output_fn: OutputFn = None,
                 dtype: Optional[torch.dtype] = None):
        self.f = FuncModel(model, trainable, output_fn)
        self.x1, self.x2, self.mode, self.n_out = x1, x2, mode, n_out
        first = next(iter(self.f.params.values()))
        self.dtype = dtype or (x1.dtype if is_plain(x1) else first.dtype)
        self.device = first.device
        self.act = activation_numel(model, x1)
        self.params_numel = sum(v.numel() for v in self.f.params.values())
        self.columns = 1

    def size_blocks(self, budget: int, chunk_size: Optional[int],
                    split_for_progress: bool) -> int:
        x1, x2 = self.x1, self.x2
        n = max(batch_size(x1), 0 if x2 is None else batch_size(x2))
        s, nl = self.dtype.itemsize, self.n_out
        pair = channels(self.mode, nl) * s * 2 + nl * nl * s
        if chunk_size is not None:
            c = min(chunk_size, n)
        else:
            c = square_chunk(n, 0, pair, budget / 2)
            c = _split_for_progress(c, n, x1, x2, 6 * nl * self.params_numel, split_for_progress,
                                    device_type=self.device.type)
        # Each column in flight holds a parameter-sized vector and a jvp over c samples;
        # one column over one sample must fit in half the budget, else the run is refused.
        need = 2 * (3 * self.params_numel + 5 * self.act) * s
        if need > budget:
            raise ValueError(
                f"{self.function}: memory_budget={budget} bytes is below what one NTK-vector "
                f"product needs ({need} bytes: 3 parameter-sized vectors of "
                f"{self.params_numel} numbers and one sample's {self.act} activations with "
                f"their tangents, twice for the block's other half); pass memory_budget >= "
                f"{need}")
        if chunk_size is None:
            fit = (budget / 2 / s - 3 * self.params_numel - self.act) / (4 * self.act)
            c = max(1, min(c, int(fit)))
        per_column = (3 * self.params_numel + 4 * c * self.act + self.act) * s
        self.columns = max(1, min(c * nl, int(budget / 2 / per_column)))
        return c

    def block(self, i0: int, i1: int, j0: int, j1: int, diagonal: bool) -> Tensor:
        f, params, nl = self.f, self.f.params, self.n_out
        xa = take(self.x1, i0, i1)
        xb = take(self.x1 if self.x2 is None else self.x2, j0, j1)
        na, nb = i1 - i0, j1 - j0
        ncols = nb * nl
        col_x = map_leaves(lambda t: t.repeat_interleave(nl, 0), xb)
        col_v = torch.eye(nl, dtype=self.dtype, device=self.device).repeat(nb, 1)

        def column(xs, v: Tensor) -> Tensor:
            _, vjp_fn = torch.func.vjp(lambda p: f.single(p, xs), params)
            (tangent,) = vjp_fn(v)
            _, jv = torch.func.jvp(lambda p: f.batch(p, xa), (params,), (tangent,))
            return jv  # [n1, n_L]: Θ_k,k′(x1_i, x_j) for all i, k

        parts = [
            torch.func.vmap(column)(take(col_x, c0, c0 + self.columns),
                                    col_v[c0:c0 + self.columns])
            for c0 in range(0, ncols, self.columns)
        ]
        cols = torch.cat(parts).view(nb, nl, na, nl)  # [j, k′, i, k]
        full = cols.permute(2, 0, 3, 1)  # [i, j, k, k′]
        if self.mode == "full":
            return full
        diag = full.diagonal(dim1=2, dim2=3)  # [i, j, k]
        return diag.mean(-1) if self.mode == "trace" else diag



# ---------------------------------------------------------------------------------
# the one method choice

Plan = Union[StructuredPlan, ConvStructuredPlan]
Engine = Union["StructuredBlocks", "ConvStructuredBlocks", "HookBlocks", "JacobianBlocks",
               "NTKVPBlocks"]

# The engine that contracts a plan's factors, and what the plan's model is.
_STRUCTURED = {StructuredPlan: StructuredBlocks, ConvStructuredPlan: ConvStructuredBlocks}
_PLAN_KIND = {StructuredPlan: "an MLP", ConvStructuredPlan: "a CNN"}


GRAPH_REASON = ("the model lifts to a graph (residual sums, concatenations or LayerNorm), and "
                "the structured engine runs chains only")


def structured_plan(model: nn.Module) -> Plan:
    """The structured plan of ``model``: :class:`StructuredPlan` for an MLP spec,
    :class:`ConvStructuredPlan` for a CNN spec. ValueError (from :func:`torch_ntk.lift`, or
    a layer without an empirical rule) when it has none."""
    spec = lift(model)
    if spec.is_graph:
        raise ValueError(f"{GRAPH_REASON} (lift: a graph of {len(spec.layers)} nodes)")
    return StructuredPlan(spec) if spec.is_mlp else ConvStructuredPlan(spec)


def _choose(function: str, model: nn.Module, method: str, x, plan: Optional[Plan],
            stacklevel: int, output_fn: OutputFn = None) -> tuple[str, str, Optional[Plan]]:
    """(method, reason, structured plan or None); see :func:`make_engine`."""
    if method not in METHODS:
        raise ValueError(f"{function}: method must be one of {METHODS}; got {method!r}")
    if method in ("jacobian", "ntk_vp", "hooks"):
        return method, "requested", None
    if not is_plain(x) or output_fn is not None:
        what = "output_fn is given" if is_plain(x) else "x1 is not one floating-point tensor"
        if method == "structured":
            raise ValueError(
                f"{function}: method='structured' is not available: {what} (the structured "
                "plans take one float tensor and the model's own output); method='hooks', "
                "'jacobian' or 'ntk_vp' computes the kernel of any model and inputs")
        return "hooks", f"{what}, which the structured plans do not take", None
    if plan is None:
        try:
            plan = structured_plan(model)
        except ValueError as error:
            if method == "structured":
                raise ValueError(
                    f"{function}: method='structured' is not available: {error}; "
                    "method='hooks', 'jacobian' or 'ntk_vp' computes the kernel of any model"
                ) from error
            if str(error).startswith(GRAPH_REASON):
                return "hooks", (f"{error}; the hook engine runs each module's rule "
                                 "(exact for any model)"), None
            reason = (f"the model does not lift to an MLP or CNN ({error}); the hook engine "
                      "runs each module's rule")
            if isinstance(model, nn.Sequential):  # one that looks meant to lift: say why not
                warnings.warn(MethodFallbackWarning(
                    f"{function}: method='auto' runs the hook engine (slower than the fused "
                    f"path) because {reason}; pass method='hooks' to silence this warning"),
                    stacklevel=stacklevel + 1)
            return "hooks", reason, None
    if x.is_cuda and not ops.cuda_built():
        if method == "structured":
            check_built_for(function, x)
        return "hooks", "torch_ntk was built without CUDA, so the fused op cannot run", None
    kind = _PLAN_KIND[type(plan)]
    reason = "requested" if method == "structured" else f"the model lifts to {kind}"
    return "structured", reason, plan


def make_engine(function: str, model: nn.Module, x1: Tensor, x2: Optional[Tensor], mode: str,
                method: str = "auto", *, trainable: dict[str, Tensor],
                precision: str = "highest", plan: Optional[Plan] = None,
                stacklevel: int = 1, output_fn: OutputFn = None,
                dtype: Optional[torch.dtype] = None) -> Engine:
    """The one method choice of the empirical NTK, and the engine that computes it.

    ``method``: "structured" runs the model's structured plan (:func:`structured_plan`:
    the MLP plan, or the CNN plan) and raises ValueError, naming the module, when the
    model does not lift; "hooks" (:class:`~torch_ntk.empirical.hooks.HookBlocks`: each
    module by its registered rule, the rest by torch.func), "jacobian" and "ntk_vp" run as
    asked; "auto" runs the structured plan when the model lifts, x1 is one float tensor,
    ``output_fn`` is None and the fused op runs on the inputs' device, else "hooks" — with
    a :class:`MethodFallbackWarning` naming the module that stopped the fused path when the
    model is an ``nn.Sequential`` (one that looks meant to lift).

    Args:
        function: the entry point the user called (errors and warnings name it).
        model: the nn.Module; ``trainable`` its parameters with requires_grad (name →
            tensor), the ones the hook and Jacobian engines differentiate.
        x1, x2: checked batches [N1, ...], [N2, ...] or None (x2 = x1): tensors, or leaf
            structures (tuples, dicts: ``torch_ntk.empirical.inputs``) which the
            hook and Jacobian engines take ("auto" runs "hooks" on them); a plan checks (and may flatten) them for the
            network's input shape.
        mode: "full", "trace" or "diagonal".
        precision: "highest", or "bf16"/"bf16x3" (structured method, float32 only).
        plan: the structured plan if the caller already built it (None: built here).
        stacklevel: the warning's stack level, counted from the caller of make_engine.
        output_fn: picks the output to differentiate from the model's output (None: the
            output itself); given, "auto" runs the hook engine.
        dtype: the kernel's dtype (default: x1's for a float tensor, else the parameters').

    Returns:
        The engine, with ``method``, ``reason`` (the request, or auto's reason),
        ``plan`` (None unless structured), ``n_out`` and the checked ``x1``/``x2`` set.
    """
    method, reason, plan = _choose(function, model, method, x1, plan, stacklevel + 1, output_fn)
    if precision != "highest":
        if method != "structured":
            raise ValueError(
                f"{function}: precision={precision!r} needs the structured method, but "
                f"method {method!r} runs ({reason}); use precision='highest'"
            )
        if x1.dtype != torch.float32:
            raise ValueError(
                f"{function}: precision={precision!r} needs float32 inputs and parameters; "
                f"got {x1.dtype}. Use precision='highest' for float64."
            )
    if plan is not None:
        x1 = plan.check_input(function, "x1", x1)
        if x2 is not None:
            x2 = plan.check_input(function, "x2", x2)
        engine = _STRUCTURED[type(plan)](plan, x1, x2, mode, precision)
        n_out = plan.n_out
    else:
        n_out = output_size(function, model, x1, output_fn)
        blocks = {"jacobian": JacobianBlocks, "ntk_vp": NTKVPBlocks, "hooks": HookBlocks}[method]
        engine = blocks(model, trainable, x1, x2, mode, n_out, output_fn, dtype)
        engine.function = function
    engine.method, engine.reason, engine.plan, engine.n_out = method, reason, plan, n_out
    return engine
