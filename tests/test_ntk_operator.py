"""NTKOperator (Θ·v by a vjp/jvp pair) and mode="sample_diagonal" (issue 27b).

Reference: the explicit Θ from the vmap(jacrev) contraction written in
tests/test_empirical_inputs.py (``reference_full``), reshaped to [N·n_L, N·n_L]
(row i·n_L + k), in float64; products, diagonals and CG solutions within 1e-10 relative
(conftest's EXACT_F64); eigenvalues by scipy's LOBPCG on the operator against
torch.linalg.eigvalsh of the explicit matrix within 1e-8 relative (LOBPCG's own tolerance).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import torch_ntk as tn
from torch_ntk.distributed import conjugate_gradient
from torch_ntk.empirical import operator as operator_module

from conftest import EXACT_F64, rel_err
from test_empirical_inputs import F64, Wide, cases, reference_full


def explicit(model, x, output_fn=None):
    full = reference_full(model, x, None, output_fn)  # [N, N, n_L, n_L]
    n, _, nl, _ = full.shape
    return full.permute(0, 2, 1, 3).reshape(n * nl, n * nl)


def mlp():
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(4, 16, dtype=F64), nn.Tanh(), nn.Linear(16, 3, dtype=F64))


@pytest.mark.parametrize("case", ["mlp", "tuple", "tokens"])
@pytest.mark.parametrize("chunk", [None, 2])
def test_matvec_matches_the_explicit_kernel(case, chunk):
    if case == "mlp":
        model, x, output_fn = mlp(), torch.randn(6, 4, dtype=F64), None
    else:
        model, x, _, output_fn = cases()[case]
    k = explicit(model, x, output_fn)
    op = tn.NTKOperator(model, x, output_fn, chunk_size=chunk)
    n, nl = op.n_samples, op.n_out
    assert op.shape == k.shape and op.dtype == F64 and op.device == torch.device("cpu")
    v = torch.randn(n * nl, dtype=F64)
    assert rel_err(op.matvec(v), k @ v) <= EXACT_F64
    got = op @ v.reshape(n, nl)
    assert got.shape == (n, nl) and rel_err(got.reshape(-1), k @ v) <= EXACT_F64
    block = torch.randn(n * nl, 4, dtype=F64)
    assert rel_err(op.matvec(block), k @ block) <= EXACT_F64
    assert rel_err(op.matvec(torch.eye(n * nl, dtype=F64)), k) <= EXACT_F64
    assert rel_err(op.diagonal(), k.diagonal()) <= EXACT_F64


def test_a_small_budget_groups_the_vectors_and_chunks_the_samples():
    model, x = mlp(), torch.randn(6, 4, dtype=F64)
    k = explicit(model, x)
    op = tn.NTKOperator(model, x, memory_budget=30_000)
    chunk, columns = op._sizes(18)
    assert chunk < 6 and columns < 18
    block = torch.randn(18, 18, dtype=F64)
    assert rel_err(op.matvec(block), k @ block) <= EXACT_F64
    with pytest.raises(ValueError, match=r"NTKOperator: memory_budget=100 bytes is below what "
                                         r"one product needs .* pass memory_budget >= \d+"):
        tn.NTKOperator(model, x, memory_budget=100).matvec(block[:, 0])


def test_a_vjp_that_forgets_earlier_chunks_is_caught(monkeypatch):
    """Deliberately wrong: Jᵀv keeps only the last chunk's term (no accumulation)."""
    model, x = mlp(), torch.randn(6, 4, dtype=F64)
    k = explicit(model, x)
    real_vjp = torch.func.vjp
    seen = []

    def forgetful_vjp(fn, params):
        out, vjp_fn = real_vjp(fn, params)
        seen.append(1)
        zero = len(seen) < 3  # the first two chunks' terms dropped
        return out, (lambda v: tuple({name: t * 0 for name, t in part.items()}
                                     for part in vjp_fn(v)) if zero else vjp_fn(v))

    monkeypatch.setattr(operator_module.torch.func, "vjp", forgetful_vjp)
    op = tn.NTKOperator(model, x, chunk_size=2)
    v = torch.randn(18, dtype=F64)
    assert rel_err(op.matvec(v), k @ v) > 1e-3


def test_top_eigenvalues_by_lobpcg_on_the_operator():
    sla = pytest.importorskip("scipy.sparse.linalg")
    model, x = mlp(), torch.randn(10, 4, dtype=F64)
    op = tn.NTKOperator(model, x)
    size = op.shape[0]

    def apply(v):
        return op.matvec(torch.from_numpy(np.ascontiguousarray(v))).numpy()

    linear = sla.LinearOperator((size, size), matvec=apply, matmat=apply, dtype=np.float64)
    rng = np.random.default_rng(0)
    values, _ = sla.lobpcg(linear, rng.standard_normal((size, 3)), largest=True, tol=1e-10,
                           maxiter=500)
    want = torch.linalg.eigvalsh(explicit(model, x))[-3:]
    got = torch.from_numpy(np.sort(values))
    assert rel_err(got, want) <= 1e-8


def test_conjugate_gradient_solves_with_the_operator():
    model, x = mlp(), torch.randn(8, 4, dtype=F64)
    k = explicit(model, x)
    op = tn.NTKOperator(model, x)
    y = torch.randn(24, 2, dtype=F64)
    want = torch.linalg.solve(k + 0.1 * torch.eye(24, dtype=F64), y)
    for preconditioner in ("jacobi", "none"):
        fit = conjugate_gradient(op, y, ridge=0.1, tol=1e-13, preconditioner=preconditioner)
        assert fit.converged and rel_err(fit.solution, want) <= EXACT_F64
    with pytest.raises(ValueError, match="preconditioner='block' needs the kernel's diagonal "
                                         "blocks"):
        conjugate_gradient(op, y, ridge=0.1, preconditioner="block")


def test_sample_diagonal_matches_the_explicit_kernel():
    for name in ("tuple", "dict", "tokens"):
        model, x, _, output_fn = cases()[name]
        full = reference_full(model, x, None, output_fn)
        want = torch.stack([full[i, i].diagonal() for i in range(full.shape[0])])
        for chunk in (None, 2):
            got, info = tn.empirical_ntk(model, x, mode="sample_diagonal", chunk_size=chunk,
                                         output_fn=output_fn, return_info=True)
            assert got.shape == want.shape and info.mode == "sample_diagonal"
            assert rel_err(got, want) <= EXACT_F64, (name, chunk)
    model, x = mlp(), torch.randn(6, 4, dtype=F64)  # a plain MLP (auto would lift it)
    full = reference_full(model, x)
    got = tn.empirical_ntk(model, x, mode="sample_diagonal")
    assert rel_err(got, torch.stack([full[i, i].diagonal() for i in range(6)])) <= EXACT_F64
    out = torch.empty(6, 3, dtype=F64)
    assert tn.empirical_ntk(model, x, mode="sample_diagonal", out=out) is out


def test_sample_diagonal_and_operator_refuse_bad_arguments():
    model, x = mlp(), torch.randn(6, 4, dtype=F64)
    with pytest.raises(ValueError, match="x2 must be None"):
        tn.empirical_ntk(model, x, x + 1, mode="sample_diagonal")
    with pytest.raises(ValueError, match="method must be 'auto', 'hooks' or 'jacobian'"):
        tn.empirical_ntk(model, x, mode="sample_diagonal", method="ntk_vp")
    with pytest.raises(ValueError, match="mode must be one of .*'sample_diagonal'"):
        tn.empirical_ntk(model, x, mode="diag")
    op = tn.NTKOperator(model, x)
    with pytest.raises(ValueError, match=r"matvec: v must be \[N·n_L\] = \[18\]"):
        op.matvec(torch.randn(17, dtype=F64))
    with pytest.raises(ValueError, match="matvec: v must be torch.float64"):
        op.matvec(torch.randn(18))
    with pytest.raises(TypeError, match="NTKOperator: model must be an nn.Module"):
        tn.NTKOperator(lambda t: t, x)
    with pytest.raises(ValueError, match=r"NTKOperator: x\[1\] has no batch dimension"):
        tn.NTKOperator(Wide(), (x, torch.tensor(2.0, dtype=F64)))
