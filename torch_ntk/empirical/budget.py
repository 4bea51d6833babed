"""What a ``memory_budget`` costs the Jacobian method: its memory model and its work model.

Memory (bytes, s = the dtype's size, n_L outputs, P_g the largest parameter group's size,
A the numbers one sample's forward produces, every op counted — :func:`forward_numel`):

    fixed                 4·P·s + 2 MiB   (the functional copies of the parameters, vmap's
                                           and the allocator's overhead)
    per sample of a chunk n_L·P_g·s       (the row chunk's Jacobians, kept while its
                                           column blocks are contracted)
                        + (2·n_L·P_g + (n_L + 1)·A)·s
                                          (computing a chunk by vmap(jacrev): the Jacobian,
                                           its flattened copy, the saved activations and
                                           their n_L cotangents)
    per pair              2·c_mode·s      (the block and its copy; c_mode = n_L², n_L or 1)
    cache                 what is left: column Jacobians kept for the next row blocks

Work (seconds, from a short measured probe, :func:`measure_cost`): each vmap(jacrev)
call costs a fixed overhead plus a time per sample (one forward and n_L backward passes),
and every pair 2·P·c_mode contraction FLOPs at the rate of a small GEMM. A small budget
splits the parameters into G groups (each one runs every forward and backward
again) and the samples into chunks whose column Jacobians are recomputed for every row
block when the cache cannot hold them all; :func:`jacobian_work` counts the Jacobians the
block loop computes by replaying its cache, and :func:`budget_note` compares the work with
that of the efficient plan (one group, every Jacobian computed once).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .inputs import call_model, take

__all__ = ["JacobianCost", "JacobianPlan", "MemoryBudgetWarning", "activation_numel",
           "block_numel", "budget_note",
           "fixed_bytes",
           "forward_numel", "jacobian_plan", "jacobian_work", "may_be_slow",
           "measure_cost"]

# Slowdown (estimated work against the efficient plan's) from which a budget is said to
# force blocks far below the efficient size.
SLOW_FACTOR = 3.0
# Replaying the block loop's cache is exact up to this many cache look-ups, extrapolated above.
_REPLAY_STEPS = 200_000


def square_chunk(n: int, per_sample: float, per_pair: float, budget: float) -> int:
    """Largest c ≤ n with c·per_sample + c²·per_pair ≤ budget (at least 1)."""
    if n * per_sample + n * n * per_pair <= budget:
        return n
    if per_pair > 0:
        c = (-per_sample + math.sqrt(per_sample**2 + 4 * per_pair * budget)) / (2 * per_pair)
    else:
        c = budget / max(per_sample, 1)
    return max(1, min(n, int(c)))


class MemoryBudgetWarning(UserWarning):
    """``memory_budget`` forces the kernel into blocks far smaller than efficient: the
    warning says about how much slower the run is (by a FLOP model) and which budget
    would avoid it."""


def fixed_bytes(params: int, itemsize: int) -> int:
    """The budget's part every plan holds whatever its blocks (see the module docstring)."""
    return 4 * params * itemsize + 2 * 2**20


@dataclass(frozen=True)
class JacobianPlan:
    """groups: parameter blocks per group, each a name (the whole parameter) or
    ``(name, r0, r1)`` (rows r0:r1 along its dimension 0: a parameter whose one-sample
    Jacobian exceeds a group's share is split into such row blocks, each its own group);
    chunk: samples per block; cache: bytes for cached column Jacobians; model_bytes: the
    memory model's peak for this plan (≤ the budget unless even one sample per block does
    not fit); fits: whether it does; sample_bytes: one sample's working set (its largest
    group's Jacobian with temporaries, its activations and their cotangents), which no
    plan goes below; group_numel: numbers per group."""

    groups: list
    chunk: int
    cache: int
    model_bytes: int
    fits: bool
    sample_bytes: int = 0
    group_numel: tuple = ()


def block_numel(block, sizes: dict, rows: dict) -> int:
    """Numbers in a parameter block: a name, or (name, r0, r1) rows of it."""
    if isinstance(block, str):
        return sizes[block]
    name, r0, r1 = block
    return sizes[name] // max(1, rows.get(name, 1)) * (r1 - r0)


def jacobian_plan(budget: int, sizes: dict, n: int, n_out: int, itemsize: int,
                  activations: int, pair_channels: int,
                  chunk_size: Optional[int] = None,
                  rows: Optional[dict] = None) -> JacobianPlan:
    """The Jacobian method's groups, chunk and cache within ``budget`` bytes (module
    docstring); sizes: parameter name → numel; rows: name → size of its dimension 0 (a
    parameter given here is split into row blocks of at most a group's share, room/16,
    when its one-sample Jacobian exceeds a quarter of the room, budget − fixed); n: the
    larger batch; activations: A."""
    rows = rows or {}

    s, nl = itemsize, n_out
    fixed = fixed_bytes(sum(sizes.values()), s)
    room = max(1, budget - fixed)
    # A sample's Jacobian with vmap(jacrev)'s temporaries per group within room/16.
    group_limit = room / 16
    groups, current, current_size = [], [], 0
    for name, size in sizes.items():
        cost = 2 * nl * size * s
        r = rows.get(name, 1)
        # A parameter whose one-sample Jacobian takes over a quarter of the room is split
        # into row blocks of at most a group's share, one group each.
        if cost > 4 * group_limit and r > 1:
            step = max(1, min(r, int(group_limit // (cost / r))))
            if current:
                groups.append(current)
                current, current_size = [], 0
            groups.extend([(name, a, min(a + step, r))] for a in range(0, r, step))
            continue
        if current and current_size + cost > group_limit:
            groups.append(current)
            current, current_size = [], 0
        current.append(name)
        current_size += cost
    if current or not groups:
        groups.append(current)
    group_numel = tuple(sum(block_numel(k, sizes, rows) for k in g) for g in groups)
    largest = max(group_numel)
    per_sample = (3 * nl * largest + (nl + 1) * activations) * s
    pair = 2 * pair_channels * s
    if chunk_size is not None:
        c = min(chunk_size, n)
    else:
        c = square_chunk(n, per_sample, pair, room / 2)
    used = fixed + c * per_sample + c * c * pair
    cache = max(0, budget - used)
    return JacobianPlan(groups, c, cache, used, used <= budget, per_sample + pair,
                        group_numel)


@dataclass(frozen=True)
class JacobianCost:
    """Seconds per vmap(jacrev) call and per sample in it (measured on 1 and 2 samples of
    one group), and per contraction FLOP (measured on a small GEMM)."""

    per_call: float
    per_sample: float
    per_flop: float


def jacobian_work(plan: JacobianPlan, sizes: dict, n1: int, n2: Optional[int], n_out: int,
                  itemsize: int, mode_channels: int, cost: JacobianCost) -> float:
    """Estimated seconds of the block loop under ``plan`` (n2 None: x2 = x1, upper blocks):
    the Jacobian calls and sample-Jacobians it computes (replaying its cache) and the
    contraction FLOPs."""
    symmetric = n2 is None
    n2v = n1 if symmetric else n2
    c = plan.chunk
    rows = [(i, min(i + c, n1)) for i in range(0, n1, c)]
    cols = rows if symmetric else [(j, min(j + c, n2v)) for j in range(0, n2v, c)]
    pairs = [(r, q) for a, r in enumerate(rows) for b, q in enumerate(cols)
             if not symmetric or b >= a]
    group_bytes = [n_out * numel * itemsize for numel in plan.group_numel]
    g = len(plan.groups)
    if len(pairs) == 1:
        calls, evals = (g, n1 * g) if symmetric else (2 * g, (n1 + n2v) * g)
    else:
        calls, evals = _replay(pairs, symmetric, group_bytes, plan.cache)
    contraction = 2.0 * n1 * n2v * sum(sizes.values()) * mode_channels
    return calls * cost.per_call + evals * cost.per_sample + contraction * cost.per_flop


def _replay(pairs, symmetric: bool, group_bytes: Sequence[int], limit: int):
    """(calls, sample-Jacobians) the block loop computes: its cache (engines._LRU) replayed."""
    items: OrderedDict = OrderedDict()
    used, pinned, evals, calls, steps = 0, None, 0, 0, 0
    for (i0, i1), (j0, j1) in pairs:
        diagonal = symmetric and i0 == j0
        for g, gb in enumerate(group_bytes):
            wanted = [((1, i0, i1, g), i1 - i0, True)]
            if not diagonal:
                wanted.append(((1 if symmetric else 2, j0, j1, g), j1 - j0, False))
            for key, count, pin in wanted:
                steps += 1
                if pinned == key:
                    continue
                if key in items:
                    items.move_to_end(key)
                else:
                    evals += count
                    calls += 1
                    size = count * gb
                    if size <= limit:
                        while used + size > limit and items:
                            used -= items.popitem(last=False)[1]
                        items[key] = size
                        used += size
                if pin:
                    pinned = key
        if steps > _REPLAY_STEPS:  # extrapolate the rest at the rate so far
            scale = len(pairs) / (pairs.index(((i0, i1), (j0, j1))) + 1)
            return calls * scale, evals * scale
    return calls, evals


def forward_numel(model: nn.Module, x) -> int:
    """Numbers the ops of one sample's forward produce (views excluded): the activations
    that vmap(jacrev) saves and whose cotangents it computes."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, Tensor) and not t._is_view():
                    Count.total += t.numel()
            return out

    with torch.no_grad(), Count():
        call_model(model, take(x, 0, 1))
    return max(Count.total, 1)


def measure_cost(jacobian, n: int, dtype: torch.dtype, device) -> JacobianCost:
    """A short measured probe: ``jacobian(k)`` (one group's vmap(jacrev) of the first k of
    n samples) timed on one and on two samples after a warm-up call, and a small GEMM in
    ``dtype`` on ``device`` for the contraction's rate (the best of three runs each)."""
    def timed(k: int) -> float:
        return timed_call(lambda: jacobian(k))

    jacobian(1)
    t1 = timed(1)
    t2 = timed(2) if n > 1 else 2 * t1
    per_sample = max(t2 - t1, 0.1 * t1, 1e-7)
    per_call = max(t1 - per_sample, 0.0)
    # the contraction's rate: a GEMM of 2·128·2048·128 FLOPs in the inputs' dtype
    a = torch.ones(128, 2048, dtype=dtype, device=device)
    gemm = max(timed_call(lambda: torch.mm(a, a.t())), 1e-7)
    return JacobianCost(per_call, per_sample, gemm / (2.0 * 128 * 2048 * 128))


def timed_call(fn) -> float:
    """The best of three wall-clock timings of fn() (synchronized on CUDA)."""
    import time

    best = math.inf
    for _ in range(3):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - start)
    return best


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def may_be_slow(plan: JacobianPlan, best: JacobianPlan, work_for) -> bool:
    """Whether ``plan`` may run SLOW_FACTOR times slower than ``best`` or does not fit,
    before measuring anything: its Jacobian calls or sample-Jacobians (the terms of the
    work, the contraction being the same) exceed best's that many times.
    work_for(plan, cost) → seconds."""
    if not plan.fits:
        return True
    for unit in (JacobianCost(1.0, 0.0, 0.0), JacobianCost(0.0, 1.0, 0.0)):
        if work_for(plan, unit) >= SLOW_FACTOR * max(work_for(best, unit), 1e-9):
            return True
    return False


def budget_note(budget: int, plan: JacobianPlan, plan_for, work_for, ceiling: int) -> Optional[str]:
    """A MemoryBudgetWarning's text when ``plan`` (made for ``budget``) is predicted to run
    at least SLOW_FACTOR times slower than the efficient plan, or when it does not fit;
    None otherwise. plan_for(budget) → plan; work_for(plan) → seconds; ceiling: the largest
    budget worth suggesting (the default budget; a suggestion above it is not made)."""
    work = work_for(plan)
    best = work_for(plan_for(2**50))  # one group, one block: every Jacobian once
    slow = work / max(best, 1e-9)
    parts = []
    if not plan.fits:
        parts.append(f"memory_budget={_bytes(budget)} is below what one sample per block "
                     f"needs ({_bytes(plan.model_bytes)}, by the memory model); the run "
                     "exceeds it")
    if slow >= SLOW_FACTOR:
        parts.append(
            ("it" if parts else f"memory_budget={_bytes(budget)}") +
            f" splits the work into {len(plan.groups)} "
            f"parameter group(s) and blocks of {plan.chunk} samples: at least about "
            f"{slow:.0f}x slower than without a limit (about {work:.3g} s against "
            f"{best:.3g} s, by a model of its Jacobian calls timed on two samples: every "
            "group repeats the forward and backward passes, and column Jacobians that the "
            "cache cannot hold are recomputed for each row block)")
    if not parts:
        return None
    # the smallest budget (doubling) within 1.25x of the efficient plan's work
    suggestion, b = None, budget
    while b < ceiling:
        b = min(ceiling, 2 * b)
        candidate = plan_for(b)
        if candidate.fits and work_for(candidate) <= 1.25 * best:
            suggestion = b
            break
    if suggestion is not None:
        parts.append(f"memory_budget={_bytes(suggestion)} or more would avoid it")
    else:
        parts.append(f"even the default budget ({_bytes(ceiling)}) does not; "
                     "method='ntk_vp' needs no Jacobian in memory")
    return "; ".join(parts)


def activation_numel(model: nn.Module, x) -> int:
    """Numbers produced by one sample's forward, every op counted (functional ones and the
    residual additions too; views excluded), for memory estimates; where a model cannot
    run under a dispatch mode, those of its leaf modules."""
    try:
        return forward_numel(model, x)
    except Exception:  # noqa: BLE001 — the leaf modules' count below is the fallback
        pass
    total = [0]

    def hook(_module, _inputs, output):
        if isinstance(output, Tensor):
            total[0] += output.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            call_model(model, take(x, 0, 1))
    finally:
        for h in handles:
            h.remove()
    return max(total[0], 1)
