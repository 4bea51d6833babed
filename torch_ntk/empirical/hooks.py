"""The hook engine: the empirical NTK of any model, module by module (``method="hooks"``).

For a batch, forward hooks keep each ruled module's input a and output z; one backward over
the n_L output directions gives every module's output cotangents δ_k = ∂f_k/∂z
[N, n_L, *z] (one batched backward, ``vmap`` over the basis e_1 … e_{n_L} of output
cotangents; or, when that would not fit the memory budget, one per group of outputs, the
rules run group by group; a pass per output where an op has no batching rule); each
module's term

    Θ_module,kk′(x, x′) = Σ_{θ ∈ module} ⟨δ_k(x), ∂z(x)/∂θ⟩ ⟨δ_k′(x′), ∂z(x′)/∂θ⟩

is then assembled by its registered rule (:mod:`torch_ntk.empirical.rules`: input Gram ⊙
cotangent Gram summed over positions, or per-sample gradients then one Gram, chosen per
module by :meth:`~torch_ntk.empirical.rules.parts.ModuleFactors.choose`), and

    Θ = Σ_ruled modules Θ_module + J_rest(x) J_rest(x′)ᵀ,

J_rest the per-sample Jacobian (``torch.func.vmap(jacrev)``) of the trainable parameters
no rule covers, and of them only: modules without a rule, parameters outside any module's
own (a free ``nn.Parameter`` used in ``forward``), parameters shared by several modules
(weight tying), modules never called through their ``forward`` (``MultiheadAttention``'s
``out_proj`` when its parent has no rule), modules whose output is not one tensor or whose
samples are not one dim of their input and output, modules called a different number of
times for different batch sizes (a per-sample loop), a configuration a rule refuses
(ValueError from the rule on a probe), subclasses that override a ruled type's
``forward``, modules whose parameters a torch function also receives outside their
forward (``h @ embedding.weight.T``: a torch-function mode watches the probe). A module
called several times in one forward (weight sharing) has J = Σ_calls J_c: its calls'
per-sample gradients are added (every cross term), never dropped.

Inputs are leaf structures (``torch_ntk.empirical.inputs``): a tensor of any dtype (integer
token ids reach an ``nn.Embedding``'s rule as they are), a tuple (``model(*x)``) or a dict
(``model(**x)``) of tensors with the samples along dim 0; a chunk takes rows of every leaf,
and ``output_fn`` picks the output f [n, n_L] that the backward (and J_rest) differentiates.

The plan (which module takes which rule, found by two probe forwards on one and two samples)
is kept per model across calls while the model's modules, its trainable parameters, one
sample's input shapes and ``output_fn`` are the same objects; a forward that contradicts a
kept plan (a module called another number of times) is probed again.

Costs (c = n_L² in "full", n_L otherwise): one forward and one batched backward per chunk
of samples, each ruled module's contraction (:func:`~torch_ntk.empirical.rules.parts.part_flops`),
and for J_rest the Jacobian method's O(N n_L P_rest) memory and O(N1 N2 c P_rest) time.
``NTKInfo.contractions`` lists every module's order and the parameters left to torch.func.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass, field, fields, replace
from typing import Optional

import torch
from torch import Tensor, nn

from .._utils.modes import channels
from . import budget as budget_model
from .budget import square_chunk
from .inputs import (FuncModel, Inputs, OutputFn, batch_size, call_model, map_leaves,
                     reference, select_output, take)
from .rules import NTK_RULES
from .rules.attention import ModuleCall
from .rules.parts import Direct, ModuleFactors, grams_path

__all__ = ["HookBlocks", "ModulePlan", "plan_modules"]


# The engine touches inputs only through these two and ``take`` (leaf structures of
# ``torch_ntk.empirical.inputs``: a tensor of any dtype, a tuple or a dict of tensors).


def _forward(function: str, model: nn.Module, x: Inputs, output_fn: OutputFn) -> Tensor:
    """The one place the engine calls the model: f(x) [n, n_L] for a batch x (``model(x)``,
    ``model(*x)`` or ``model(**x)``, then ``output_fn``)."""
    return select_output(function, call_model(model, x), output_fn, batch_size(x))


def _repeat(x: Inputs, times: int) -> Inputs:
    """The first sample of every leaf of x, ``times`` times (a probe batch)."""
    return map_leaves(lambda t: torch.cat([t[:1]] * times), x)


@dataclass
class ModulePlan:
    """A module computed by its rule: its name, rule, calls per forward, the dim of its input
    and output that holds the samples, and the contraction order."""

    name: str
    module: nn.Module
    rule: object
    calls: int
    dims: list = field(default_factory=list)
    order: str = "grams"
    probe: Optional[ModuleFactors] = None
    out_numel: int = 0

    def describe(self, mode: str = "full") -> str:
        """"name (type): order", the grams order named "projected grams" where its
        largest part takes the projected path in ``mode``
        (:func:`~torch_ntk.empirical.rules.parts.grams_path`)."""
        kind = type(self.module).__name__
        if self.calls > 1:
            return f"{self.name} ({kind}, {self.calls} calls): gradients, summed over calls"
        order = self.order
        outer = [p for p in self.probe.parts if not isinstance(p, Direct)]
        if order == "grams" and outer and grams_path(
                max(outer, key=lambda p: p.d[0].numel()), mode) == "projected":
            order = "projected grams"
        return f"{self.name} ({kind}): {order}"


def _ruled_type(module: nn.Module):
    """The rule of ``module``'s type (or its nearest registered base) and why not, if none:
    a subclass that overrides the registered type's ``forward`` computes something else."""
    for t in type(module).__mro__:
        if t in NTK_RULES:
            if type(module).forward is not t.forward:
                return None, f"{type(module).__name__} overrides {t.__name__}.forward"
            return NTK_RULES[t], ""
    return None, f"no rule for {type(module).__name__}"


def _sample_dim(small, large, n_small: int, n_large: int) -> Optional[int]:
    """The one dim whose size is the batch size in both probes (others equal), else None."""
    if not (isinstance(small, Tensor) and isinstance(large, Tensor)) or small.dim() != large.dim():
        return None
    dims = [i for i, (a, b) in enumerate(zip(small.shape, large.shape)) if a != b]
    if len(dims) == 1 and small.shape[dims[0]] == n_small and large.shape[dims[0]] == n_large:
        return dims[0]
    return None


def plan_modules(model: nn.Module, trainable: dict, x: Inputs, n_out: int,
                 output_fn: OutputFn = None, function: str = "empirical_ntk"):
    """(the ruled modules as :class:`ModulePlan`, the trainable parameter names left to
    torch.func, why each module or parameter is left: {name: reason}).

    Two probe forwards on copies of x's first sample (batches of 1 and 2) count each
    module's calls and find the dim holding the samples; the rule then runs once on the
    probe so that a configuration it does not handle (ValueError) is left to torch.func.
    """
    name_of = {id(p): n for n, p in trainable.items()}
    owners: dict[int, int] = {}
    for _, m in model.named_modules():
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    left: dict[str, str] = {}
    candidates = {}
    for mname, m in model.named_modules():
        own = [p for p in m.parameters(recurse=False) if id(p) in name_of]
        if not own:
            continue
        rule, why = _ruled_type(m)
        if rule is None:
            left[mname or type(m).__name__] = why
        elif any(owners[id(p)] > 1 for p in m.parameters(recurse=rule.whole_call)):
            left[mname] = "a parameter shared with another module"
        else:
            candidates[mname] = (m, rule)

    records = {name: [] for name in candidates}
    active: list = []  # the candidates whose forward is running

    def keep(name, rule):
        def hook(_module, args, kwargs, output):
            records[name].append((args, kwargs, _output(rule, output)))
            active.remove(name)
        return hook

    def enter(name):
        def hook(_module, args):
            active.append(name)
        return hook

    owner_of: dict = {}  # parameter → the candidates it belongs to (MHA and its out_proj)
    for name, (m, rule) in candidates.items():
        for p in m.parameters(recurse=rule.whole_call):
            owner_of.setdefault(id(p), []).append(name)
    handles = [m.register_forward_hook(keep(name, rule), with_kwargs=True)
               for name, (m, rule) in candidates.items()]
    handles += [m.register_forward_pre_hook(enter(name)) for name, (m, _) in candidates.items()]
    outside = _OutsideUse(owner_of, active)
    try:
        with torch.enable_grad(), outside:
            _forward(function, model, _repeat(x, 1), output_fn)
            first = {name: list(r) for name, r in records.items()}
            for r in records.values():
                r.clear()
            _forward(function, model, _repeat(x, 2), output_fn)
    finally:
        for h in handles:
            h.remove()

    plans = []
    for name, (m, rule) in candidates.items():
        calls, calls2 = first[name], records[name]
        if name in outside.names:
            left[name] = ("a parameter also used outside its forward (e.g. a weight tied "
                          "through a functional call)")
            continue
        if not calls or len(calls) != len(calls2):
            left[name] = (f"{type(m).__name__} never called through its forward" if not calls
                          else "a different number of calls per batch size")
            continue
        dims = [(_sample_dim(_first(c[0], c[1]), _first(d[0], d[1]), 1, 2),
                 _sample_dim(c[2], d[2], 1, 2)) for c, d in zip(calls, calls2)]
        if any(d[0] is None or d[1] is None for d in dims):
            left[name] = "its input or output is not one tensor with one dim of samples"
            continue
        if any(d != (0, 0) for d in dims) and not rule.positionwise and not (
                rule.whole_call and all(d[0] == d[1] for d in dims)):
            left[name] = "its samples are not dim 0 of its input and output"
            continue
        try:
            args, kwargs, z = calls[0]
            zero = z.detach().movedim(dims[0][1], 0).unsqueeze(1).expand(
                z.shape[dims[0][1]], n_out, *[s for i, s in enumerate(z.shape) if i != dims[0][1]])
            probe = rule.module_factors(m, _rule_input(rule, args, kwargs, z, dims[0][0]),
                                        torch.zeros_like(zero))
        except (ValueError, RuntimeError, TypeError, KeyError) as error:
            left[name] = str(error)
            continue
        out_numel = sum(c[2].numel() for c in calls)  # one sample's outputs, every call
        plans.append(ModulePlan(name, m, rule, len(calls), dims, probe=probe,
                                out_numel=out_numel))
    covered = set()
    for plan in plans:
        covered.update(id(p) for p in plan.module.parameters(recurse=plan.rule.whole_call))
        if plan.rule.whole_call:  # its submodules are its rule's: not left
            left = {k: v for k, v in left.items() if not k.startswith(plan.name + ".")}
    rest = [n for n, p in trainable.items() if id(p) not in covered]
    return plans, rest, left


class _OutsideUse(torch.overrides.TorchFunctionMode):
    """Records the candidates whose parameters a torch function receives while their own
    forward is not running (``h @ embedding.weight.T``: a use no hook sees)."""

    def __init__(self, owner_of: dict, active: list):
        super().__init__()
        self.owner_of, self.active, self.names = owner_of, active, set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for v in (*args, *kwargs.values()):
            for t in (v if isinstance(v, (list, tuple)) else (v,)):
                names = self.owner_of.get(id(t), ()) if isinstance(t, Tensor) else ()
                self.names.update(n for n in names if n not in self.active)
        return func(*args, **kwargs)


def _first(args: tuple, kwargs: dict):
    """The call's first tensor argument (where its samples' dim is read)."""
    for v in (*args, *kwargs.values()):
        if isinstance(v, Tensor):
            return v
    return None


def _output(rule, output):
    """The output the rule differentiates: the first tensor of a whole-call rule's tuple."""
    if rule.whole_call and isinstance(output, (tuple, list)):
        return output[0]
    return output


def _rule_input(rule, args: tuple, kwargs: dict, z: Tensor, dim: int):
    """What a rule receives as ``inputs``: the input with its samples' dim first, or for a
    whole-call rule the :class:`~torch_ntk.empirical.rules.attention.ModuleCall` (tensors
    detached, one tensor passed as several arguments kept one object)."""
    if not rule.whole_call:
        return args[0].detach().movedim(dim, 0)
    memo: dict = {}

    def detach(v):
        return memo.setdefault(id(v), v.detach()) if isinstance(v, Tensor) else v

    return ModuleCall(tuple(detach(a) for a in args), {k: detach(v) for k, v in kwargs.items()},
                      z.detach())


_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
"""model → its last plan (:func:`_cached_plan`), held weakly: it dies with the model."""


def _signature(model: nn.Module, trainable: dict, x: Inputs, n_out: int) -> tuple:
    """What a plan depends on besides ``output_fn``: every module (name, id, type, training
    flag, hooks), the trainable parameters (name, id, shape, dtype), one sample's leaves
    (structure, shapes, dtypes, devices) and n_L."""
    modules = tuple((n, id(m), type(m), m.training, len(m._forward_hooks),
                     len(m._forward_pre_hooks)) for n, m in model.named_modules())
    params = tuple((n, id(p), tuple(p.shape), p.dtype) for n, p in trainable.items())
    sample = repr(map_leaves(lambda t: (tuple(t.shape[1:]), t.dtype, t.device), x))
    return modules, params, sample, n_out


def _cached_plan(model: nn.Module, trainable: dict, x: Inputs, n_out: int,
                 output_fn: OutputFn, function: str, fresh: bool = False):
    """(plans, rest, left, forward numbers A, whether from the cache): :func:`plan_modules`
    and ``budget.forward_numel``, reused while the model, its trainable parameters, the
    inputs' per-sample shapes and ``output_fn`` are the same objects as last time (ids
    checked with weak references, so a freed and reallocated object never matches). The
    plans are copied (orders are per engine); ``HookBlocks.features`` re-plans when a
    cached plan does not match a batch's forward (calls, samples' dims)."""
    sig = _signature(model, trainable, x, n_out)
    entry = None if fresh else _PLANS.get(model)
    if entry is not None and entry[0] == sig and entry[1]() is output_fn and all(
            r() is not None for r in entry[2]):
        _, _, _, plans, rest, left, act = entry
        modules = dict(model.named_modules())
        return ([replace(p, module=modules[p.name]) for p in plans], list(rest), dict(left),
                act, True)
    plans, rest, left = plan_modules(model, trainable, x, n_out, output_fn, function)
    try:
        act = budget_model.forward_numel(model, x)
    except Exception:  # noqa: BLE001 — an estimate: the ruled modules' outputs instead
        act = 4 * sum(sum(t.numel() for t in p.probe) for p in plans)
    refs = [weakref.ref(m) for _, m in model.named_modules()]
    refs += [weakref.ref(p) for p in trainable.values()]
    try:
        fn_ref = (lambda: None) if output_fn is None else weakref.ref(output_fn)
    except TypeError:  # a callable without weak references: not cached
        _PLANS.pop(model, None)
    else:
        _PLANS[model] = (sig, fn_ref, refs, [replace(p, module=None, probe=_shapes(p.probe))
                                             for p in plans], list(rest), dict(left), act)
    return [replace(p) for p in plans], rest, left, act, False


def _shapes(factors: ModuleFactors) -> ModuleFactors:
    """The probe's factors with every tensor on the meta device: what the orders, the FLOP
    and memory models and ``describe`` read (shapes), kept without the numbers."""
    parts = [replace(p, **{f.name: getattr(p, f.name).to("meta") for f in fields(p)
                           if isinstance(getattr(p, f.name), Tensor)}) for p in factors.parts]
    return ModuleFactors(parts, factors.order)


class _Cache:
    """Per-chunk factors kept while they fit ``limit`` bytes (the current row pinned)."""

    def __init__(self, limit: int = 0):
        self.limit, self.used, self.items, self.pinned = limit, 0, {}, None

    def get(self, key, make, pin: bool = False):
        if self.pinned is not None and self.pinned[0] == key:
            return self.pinned[1]
        value = self.items.get(key)
        if value is None:
            value = make()
            size = sum(t.numel() * t.element_size() for f in value for t in f)
            if self.used + size <= self.limit:
                self.items[key] = value
                self.used += size
        if pin:
            self.pinned = (key, value)
        return value


class HookBlocks:
    """The hook engine's blocks (see the module docstring); the engine interface of
    :mod:`torch_ntk.empirical.engines`: ``size_blocks`` then ``block``."""

    function = "empirical_ntk"  # the entry point named in errors (set by make_engine)

    def __init__(self, model: nn.Module, trainable: dict, x1: Inputs, x2: Optional[Inputs],
                 mode: str, n_out: int, output_fn: OutputFn = None,
                 dtype: Optional[torch.dtype] = None):
        self.model, self.trainable, self.output_fn = model, trainable, output_fn
        self.x1, self.x2, self.mode, self.n_out = x1, x2, mode, n_out
        ref_dtype, self.device = reference(x1, trainable)
        self.dtype = dtype or ref_dtype
        self._plan()
        self.out_group = n_out
        self.workspace = 1 << 28
        self.cache = _Cache()

    def _plan(self, fresh: bool = False) -> None:
        """The ruled modules' plans, the parameters left to torch.func and the forward's
        numbers A (:func:`_cached_plan`; ``fresh``: probed again)."""
        model, trainable = self.model, self.trainable
        self.plans, self.rest, self.left, self.act, self.cached = _cached_plan(
            model, trainable, self.x1, self.n_out, self.output_fn, self.function, fresh)
        self.rest_numel = sum(trainable[n].numel() for n in self.rest)
        self.rest_f = FuncModel(model, {n: trainable[n] for n in self.rest}, self.output_fn)

    @property
    def contractions(self) -> list[str]:
        """Per ruled module its order; then the parameters left to torch.func, and why."""
        out = [p.describe(self.mode) for p in self.plans]
        if self.rest:
            why = "; ".join(f"{k}: {v}" for k, v in self.left.items())
            out.append(f"torch.func on {len(self.rest)} parameter tensors "
                       f"({', '.join(self.rest)})" + (f" [{why}]" if why else ""))
        return out

    def contraction_flops(self, n1: int, n2: Optional[int] = None) -> float:
        """Floating-point operations of the contractions of an n1 × n2 kernel by the FLOP
        model (after :meth:`size_blocks` chose the orders): each ruled module's in its
        order (:meth:`~torch_ntk.empirical.rules.parts.ModuleFactors.flops`, one call's for a
        shared module) plus J_rest's 2·n1·n2·c·P_rest (c = n_L² in "full", else n_L). n2 None
        (x2 = x1): the triangle of sample pairs, (n1 + 1)/(2·n1) of the square, which the
        symmetric contractions compute. Forming the factors (the forward and the batched
        backward) is not counted."""
        m = n1 if n2 is None else n2
        total = sum(p.probe.flops(p.order, n1, m, self.mode) for p in self.plans)
        total += 2.0 * n1 * m * channels(self.mode, self.n_out) * self.rest_numel
        return total * (n1 + 1) / (2 * n1) if n2 is None else total

    def size_blocks(self, budget: int, chunk_size: Optional[int],
                    split_for_progress: bool) -> int:
        """Samples per block c, each module's order for that block, and the outputs per
        backward b (``out_group``).

        Memory model (s the dtype's size): per sample, the factors as stored for their
        orders (a row and a column chunk: 2×), J_rest (n_L·P_rest, formed by vmap(jacrev):
        3×) and the forward's activations A; per pair the block, its parts and a copy
        (3·c_mode); while a chunk's factors are built, b·(A + Z) per sample for the
        backward of b outputs at once (every op's cotangent, and the Z numbers of the ruled
        modules' outputs, dropped group by group); the contraction workspace. b is the
        largest that fits what the chunk leaves: one batched backward when all n_L fit."""
        x1, x2, nl = self.x1, self.x2, self.n_out
        n = max(batch_size(x1), 0 if x2 is None else batch_size(x2))
        s = self.dtype.itemsize
        pair = channels(self.mode, nl) * s * 3
        self.workspace = max(1, min(1 << 28, int(budget) // 8))
        room = budget - self.workspace
        group = (self.act + sum(p.out_numel for p in self.plans)) * s
        c = n if chunk_size is None else min(chunk_size, n)
        for _ in range(2):  # the orders depend on the chunk, the chunk on their memory
            for p in self.plans:
                p.order = "gradients" if p.calls > 1 else p.probe.choose(c, c, self.mode)
            feat = sum(p.probe.bytes_per_sample(p.order, s) * p.calls for p in self.plans)
            feat += 3 * nl * self.rest_numel * s + self.act * s
            if chunk_size is None:
                c = square_chunk(n, 2 * feat + group, pair, room)
        left = room - 2 * c * feat - c * c * pair
        self.out_group = max(1, min(nl, int(left // max(1, c * group))))
        self.cache = _Cache(max(0, left - c * group * self.out_group))
        self.sizing = (budget, c, split_for_progress)
        return c

    def _factors(self, side: int, start: int, stop: int) -> list:
        x = self.x1 if side == 1 or self.x2 is None else self.x2
        key = (1 if self.x2 is None else side, start, stop)
        return self.cache.get(key, lambda: self.features(take(x, start, stop)), pin=side == 1)

    def features(self, x) -> list[ModuleFactors]:
        """Every ruled module's factors, then J_rest's, for a batch x.

        A module's input changed in place after the module read it would make its stored
        input wrong; autograd refuses such a graph (the module saved that input for its
        weight's gradient: "modified by an inplace operation"), so the backward raises."""
        records = {p.name: [] for p in self.plans}

        def keep(name, rule):
            def hook(_module, args, kwargs, output):
                z = _output(rule, output)
                records[name].append((args, kwargs, z))
                copy = z.clone()  # later in-place ops act on the copy, not on z
                return copy if z is output else (copy, *output[1:])
            return hook

        handles = [p.module.register_forward_hook(keep(p.name, p.rule), with_kwargs=True)
                   for p in self.plans]
        try:
            with torch.enable_grad():
                y = _forward(self.function, self.model, x, self.output_fn)
        finally:
            for h in handles:
                h.remove()
        n = batch_size(x)
        stale = [p.name for p in self.plans if len(records[p.name]) != p.calls or any(
            _first(a, k).shape[din] != n or z.shape[dout] != n
            for (a, k, z), (din, dout) in zip(records[p.name], p.dims))]
        if stale and self.cached and not self.cache.items and self.cache.pinned is None:
            # a plan from an earlier call that this forward contradicts: probe again
            self._plan(fresh=True)
            if hasattr(self, "sizing"):
                budget, chunk, split = self.sizing
                self.size_blocks(budget, chunk, split)
            return self.features(x)
        zs = [z for p in self.plans for (_, _, z) in records[p.name]]
        for p in self.plans:
            if p.name in stale:
                raise RuntimeError(
                    f"hook engine: {p.name} ({type(p.module).__name__}) was called "
                    f"{len(records[p.name])} times in this batch's forward but {p.calls} times "
                    "in the probe's (or its samples moved to another dim); "
                    "method='jacobian' computes the kernel of such a model")
        # per module and call, its factors for all outputs, filled group by group of
        # outputs (each group's cotangents dropped once its rules have run; the buffers
        # allocated once, so that the groups' transients do not fragment the heap)
        nl = y.shape[1]
        pieces: list = [[None] * p.calls for p in self.plans]
        for k0, k1, grads in self._cotangents(y, zs):
            grads = iter(grads)
            for p, calls in zip(self.plans, pieces):
                for c, ((args, kwargs, z), (din, dout)) in enumerate(zip(records[p.name],
                                                                         p.dims)):
                    g = next(grads)
                    if g is None:  # z does not reach f: no term
                        continue
                    cot = g.movedim(1 + dout, 0)  # [N, outputs of the group, *rest]
                    factors = p.rule.module_factors(
                        p.module, _rule_input(p.rule, args, kwargs, z, din), cot)
                    # per-sample gradients formed now where they are kept (smaller than
                    # the factors, or a shared module's)
                    factors = (factors.stored(p.order, y.element_size(), nl) if p.calls == 1
                               else factors.in_order("gradients"))
                    if calls[c] is None:
                        calls[c] = factors if k1 - k0 == nl else factors.allocated(nl)
                    if k1 - k0 < nl:
                        calls[c].write(factors, k0, k1)
                    del factors, cot, g
            del grads
        out = []
        for p, calls in zip(self.plans, pieces):
            calls = [c for c in calls if c is not None]
            if not calls:
                out.append(ModuleFactors([]))
            elif len(calls) > 1:
                out.append(ModuleFactors.summed(calls))
            else:
                out.append(calls[0])
        if self.rest:
            out.append(ModuleFactors([Direct(j) for j in self._rest_jacobian(x)], "gradients"))
        return out

    def _cotangents(self, y: Tensor, zs: list):
        """Yields, per group of ``out_group`` outputs k0:k1, (k0, k1, ∂f_k/∂z for every z and
        output k of the group: [k1 − k0, *z.shape] each (None where z does not reach f), by one batched
        backward (vmap over those rows of the basis), or a pass per output (groups of 1, or
        an op without a batching rule))."""
        if not zs:
            return
        # one pass per output or a forward of x repeated n_L times, measured on ResNet-18
        # (N = 8, n_L = 10): the same backward, or n_L forwards more; vmap is kept
        nl = y.shape[1]
        basis = torch.eye(nl, dtype=y.dtype, device=y.device).unsqueeze(1).expand(nl, *y.shape)
        for k0 in range(0, nl, self.out_group):
            k1 = min(nl, k0 + self.out_group)
            if k1 - k0 > 1:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # vmap's per-op fallback notes
                        grads = torch.autograd.grad(y, zs, basis[k0:k1], retain_graph=True,
                                                    is_grads_batched=True, allow_unused=True)
                except RuntimeError:  # an op without a batching rule: a pass per output
                    self.out_group = 1
                else:
                    yield k0, k1, grads
                    continue
            for k in range(k0, k1):
                parts = torch.autograd.grad(y, zs, basis[k], retain_graph=True,
                                            allow_unused=True)
                yield k, k + 1, [None if g is None else g.unsqueeze(0) for g in parts]

    def _rest_jacobian(self, x: Inputs) -> list[Tensor]:
        """Per-sample Jacobians [n, n_L, numel] of the parameters no rule covers (every
        leaf of x vmapped along its dim 0; ``output_fn`` applied)."""
        f = self.rest_f
        with torch.enable_grad():
            jac = torch.func.vmap(torch.func.jacrev(f.single), in_dims=(None, 0))(f.params, x)
        return [j.flatten(2) for j in jac.values()]

    def sample_diagonal(self, i0: int, i1: int) -> Tensor:
        """Θ_kk(x_i, x_i) [i1 − i0, n_L] of x1's samples i0:i1 (``mode="sample_diagonal"``):
        Σ_modules the per-sample squared gradient norms of each module's parts
        (:meth:`~torch_ntk.empirical.rules.parts.ModuleFactors.sample_norms`), from one
        forward and one backward over the n_L output directions (by groups within the
        budget); J_rest's by its per-sample Jacobian."""
        total = None
        for f in self.features(take(self.x1, i0, i1)):
            if f.parts:
                part = f.sample_norms()
                total = part if total is None else total.add_(part)
        if total is None:
            return torch.zeros(i1 - i0, self.n_out, dtype=self.dtype, device=self.device)
        return total.detach()

    def block(self, i0: int, i1: int, j0: int, j1: int, diagonal: bool) -> Tensor:
        f1 = self._factors(1, i0, i1)
        f2 = None if diagonal else self._factors(2, j0, j1)
        total = None
        for a, b in zip(f1, f2 if f2 is not None else [None] * len(f1)):
            if not a.parts:
                continue
            part = a.ntk(b, self.mode, self.workspace)
            total = part if total is None else total.add_(part)
        if total is None:
            n2 = i1 - i0 if diagonal else j1 - j0
            shape = {"full": (i1 - i0, n2, self.n_out, self.n_out), "trace": (i1 - i0, n2),
                     "diagonal": (i1 - i0, n2, self.n_out)}[self.mode]
            total = torch.zeros(shape, dtype=self.dtype, device=self.device)
        return total.detach()

