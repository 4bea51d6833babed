"""The compiled backward of the fused MLP op (issue 30) against its forward and against the
torch composite's backward, in one process.

    torch-ntk bench analytic [--quick]      (the rows land in the payload's "backward")

Per case (activation, depth L = number of dense layers, N, dtype, x2 = None or another batch
of N), on the same inputs, the loss ⟨c1, NNGP⟩ + ⟨c2, NTK⟩ with x1, σ_w² and σ_b² requiring
grad; median times, round after round (:func:`~torch_ntk.bench.common.interleaved`), of

- "forward": :func:`torch_ntk.analytic_kernels` under ``torch.no_grad()`` (the fused op);
- "backward": ``torch.autograd.grad`` of the loss through the op path
  (``torch_ntk::analytic_kernels_backward`` and the Gram chain rule in torch), its forward
  done once before the timing (``retain_graph``);
- "composite backward": the same for the torch composite
  (``torch_ntk.analytic.autograd.mlp_kernels``), the path such calls took before.

Target (issue 30): backward / forward ≤ 3 (CPU, float32, ReLU depth 5, N = 2000, x2 = None).
"""

from __future__ import annotations

import statistics

import torch

import torch_ntk as tn
from torch_ntk.analytic import autograd as ag

from .common import interleaved, markdown_table

# (activation, depth, N, dtype, x2 given)
CASES = [("relu", 5, 2000, torch.float32, False), ("relu", 5, 2000, torch.float32, True),
         ("erf", 5, 2000, torch.float32, False)]
QUICK_CASES = [("relu", 5, 200, torch.float32, False), ("relu", 3, 100, torch.float64, True)]
REPEATS = 3


def _case(act: str, depth: int, n: int, dtype, distinct: bool, device: str) -> dict:
    spec = tn.mlp_spec([16] + [512] * (depth - 1) + [1], act, bias_std=0.1)
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(n, 16, generator=g, dtype=dtype).to(device).requires_grad_()
    x2 = torch.randn(n, 16, generator=g, dtype=dtype).to(device) if distinct else None
    wv = torch.tensor(2.0, dtype=dtype, device=device, requires_grad=True)
    bv = torch.tensor(0.01, dtype=dtype, device=device, requires_grad=True)
    c = torch.randn(2, n, n, generator=g, dtype=dtype).to(device)
    leaves = (x1, wv, bv)

    def loss(nngp, ntk):
        return (c[0] * nngp + c[1] * ntk).sum()

    def forward():
        with torch.no_grad():
            return tn.analytic_kernels(spec, x1, x2, weight_var=2.0, bias_var=0.01)

    op_loss = loss(*tn.analytic_kernels(spec, x1, x2, weight_var=wv, bias_var=bv))
    comp_loss = loss(*ag.mlp_kernels(ag.with_variances(spec, x1, wv, bv), x1, x2))
    calls = {
        "forward": forward,
        "backward": lambda: torch.autograd.grad(op_loss, leaves, retain_graph=True),
        "composite_backward": lambda: torch.autograd.grad(comp_loss, leaves, retain_graph=True),
    }
    for fn in calls.values():  # warm-up
        fn()
    got = calls["backward"]()
    want = calls["composite_backward"]()
    diff = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
               for a, b in zip(got, want))
    times = interleaved(calls, REPEATS, device)
    row = {"activation": act, "depth": depth, "N": n, "dtype": str(dtype).replace("torch.", ""),
           "x2": "x2≠x1" if distinct else "None"}
    for key, values in times.items():
        row[f"{key}_s"] = round(statistics.median(values), 5)
    row["backward_over_forward"] = round(row["backward_s"] / row["forward_s"], 2)
    row["speedup_vs_composite"] = round(row["composite_backward_s"] / row["backward_s"], 1)
    row["max_rel_diff_grad"] = float(f"{diff:.2e}")
    return row


def run_backward(quick: bool = False, device: str = "cpu") -> list[dict]:
    """The rows of :data:`CASES` (:data:`QUICK_CASES` when ``quick``)."""
    rows = []
    for case in QUICK_CASES if quick else CASES:
        row = _case(*case, device)
        print(row, flush=True)
        rows.append(row)
    return rows


COLUMNS = [
    ("activation", "activation"), ("depth", "L"), ("N", "N"), ("dtype", "dtype"), ("x2", "x2"),
    ("forward_s", "forward s"), ("backward_s", "backward s"),
    ("backward_over_forward", "backward / forward"),
    ("composite_backward_s", "composite backward s"),
    ("speedup_vs_composite", "× composite backward"),
    ("max_rel_diff_grad", "max rel diff of the gradients"),
]


def render_backward(payload: dict) -> str:
    """The backward table (markdown) of an analytic payload's "backward" rows."""
    return markdown_table(payload.get("backward", []), COLUMNS)
