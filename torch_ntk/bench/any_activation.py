"""Any activation in the limit (issue 31): a numeric-series activation against the fused
op's GELU series, in one process.

    torch-ntk bench analytic [--quick]      (the rows land in the payload's "any_activation")

Per case (activation, depth L = number of dense layers, N, float32, x2 = None, both
outputs) on the same inputs: the median time of :func:`torch_ntk.analytic_kernels` for a
model with ``nn.Mish`` (the numeric Hermite series of ``torch_ntk.layers.numeric_series``:
its per-sample tables in torch, recomputed every call (their cache cleared; the per-level
projections, constants of the quadrature rule, stay cached like Gauss nodes), the pairs in
the fused op, ``torch_ntk.analytic.tabled``; the row's "path" says which path ran) and for
the same model with ``nn.GELU`` (the fused op's series in C++, called as before), timed
round after round (:func:`~torch_ntk.bench.common.interleaved`); their ratio (target of
issue 31: Mish within 2× of GELU). neural-tangents' ``ElementwiseNumerical`` is timed too
when jax and neural-tangents are importable (its version recorded), else "not installed".
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

import torch_ntk as tn
from torch_ntk.analytic.kernels import as_spec
from torch_ntk.analytic.tabled import table_plan
from torch_ntk.layers.numeric_series import clear_cache

from .common import interleaved, markdown_table

CASES = [("mish", 3, 1000)]
QUICK_CASES = [("mish", 3, 100)]
REPEATS = 3
MODULES = {"mish": nn.Mish, "gelu": nn.GELU}


def _model(act: str, depth: int) -> nn.Module:
    layers: list[nn.Module] = [tn.nn.NTKLinear(16, 512, bias_std=0.1)]
    for k in range(depth - 1):
        layers += [MODULES[act](), tn.nn.NTKLinear(512, 1 if k == depth - 2 else 512,
                                                    bias_std=0.1)]
    return nn.Sequential(*layers)


def _neural_tangents(depth: int, x: torch.Tensor, repeats: int) -> tuple:
    """(median seconds, version) of neural-tangents' ElementwiseNumerical(Mish) at its
    default degree, or (None, why)."""
    try:
        import jax
        import jax.numpy as jnp
        import neural_tangents as nt
        from neural_tangents import stax
    except ImportError:
        return None, "not installed"
    mish = lambda t: t * jnp.tanh(jnp.logaddexp(0, t))  # noqa: E731
    layers = [stax.Dense(512, b_std=0.1)]
    for _ in range(depth - 1):
        layers += [stax.ElementwiseNumerical(mish, deg=25), stax.Dense(512, b_std=0.1)]
    _, _, kernel_fn = stax.serial(*layers)
    xs = jnp.asarray(x.numpy())
    fn = lambda: jax.block_until_ready(kernel_fn(xs, None, ("nngp", "ntk")))  # noqa: E731
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), f"neural-tangents {nt.__version__}"


def _fresh(model: nn.Module, x: torch.Tensor):
    """analytic_kernels without the tables an earlier call on the same inputs left."""
    clear_cache()
    return tn.analytic_kernels(model, x, progress=False)


def _path(model: nn.Module, x: torch.Tensor) -> str:
    """Which path ``analytic_kernels`` takes for the model (the row records it)."""
    plan = table_plan(as_spec(model), x.device, None, False)
    return "fused op on series tables" if plan is not None else "torch recursion"


def run_any_activation(quick: bool = False, repeats: int = REPEATS) -> list[dict]:
    """One row per case (module doc)."""
    rows = []
    for act, depth, n in QUICK_CASES if quick else CASES:
        x = torch.randn(n, 16, generator=torch.Generator().manual_seed(0))
        model, gelu = _model(act, depth), _model("gelu", depth)
        calls = {act: lambda: _fresh(model, x),
                 "gelu": lambda: tn.analytic_kernels(gelu, x, progress=False)}
        for fn in calls.values():
            fn()  # warm-up
        times = interleaved(calls, repeats, "cpu")
        t_act, t_gelu = (statistics.median(times[k]) for k in (act, "gelu"))
        t_nt, nt_version = _neural_tangents(depth, x, repeats)
        rows.append({"activation": act, "depth": depth, "N": n, "dtype": "float32",
                     "s": round(t_act, 4), "gelu_series_s": round(t_gelu, 4),
                     "ratio_to_gelu": round(t_act / t_gelu, 2),
                     "neural_tangents_s": None if t_nt is None else round(t_nt, 4),
                     "speedup_vs_neural_tangents": None if t_nt is None else round(t_nt / t_act, 1),
                     "neural_tangents": nt_version, "threads": torch.get_num_threads(),
                     "path": _path(model, x)})
        print(rows[-1], flush=True)
    return rows


COLUMNS = [("activation", "activation"), ("depth", "L"), ("N", "N"), ("dtype", "dtype"),
           ("s", "time s"), ("gelu_series_s", "GELU series s"), ("ratio_to_gelu", "÷ GELU"),
           ("neural_tangents_s", "neural-tangents s"),
           ("speedup_vs_neural_tangents", "× faster than NT"), ("neural_tangents", "NT")]


def render_any_activation(payload: dict) -> str:
    """The table of an analytic payload's "any_activation" rows (a line saying so when the
    payload predates them)."""
    rows = payload.get("any_activation")
    if not rows:
        return "_not measured yet: run `torch-ntk bench analytic` on a quiet machine_"
    return markdown_table(rows, COLUMNS)
