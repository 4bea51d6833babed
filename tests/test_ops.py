"""The compiled ops as ops: opcheck, argument checking, the CPU-only CUDA message."""

import types

import pytest
import torch
from torch import nn

import torch_ntk as tn
from torch_ntk import ops
from torch_ntk.analytic import compiled_op_args

from conftest import devices, dtypes


def _op_args(spec, x1, x2, degree=8):
    nodes, weights = tn.activations.hermite_rule(degree)
    return (x1, x2, *compiled_op_args(spec).values(), nodes.to(x1.device), weights.to(x1.device),
            False, True, True)


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("name", ["relu", "erf", "tanh"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_opcheck_analytic_kernels(device, dtype, name, symmetric):
    spec = tn.mlp_spec([3, 16, 16, 1], name)
    x1 = torch.randn(5, 3, dtype=dtype, device=device)
    x2 = None if symmetric else torch.randn(4, 3, dtype=dtype, device=device)
    torch.library.opcheck(torch.ops.torch_ntk.analytic_kernels.default, _op_args(spec, x1, x2))


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", dtypes)
def test_opcheck_activation(device, dtype):
    x = torch.randn(7, 3, dtype=dtype, device=device)
    for act_id in (1, 6, 9):
        for derivative in (False, True):
            torch.library.opcheck(torch.ops.torch_ntk.activation.default, (x, act_id, 1.0, derivative))


def test_analytic_kernels_under_torch_compile():
    spec = tn.mlp_spec([3, 16, 1], "relu")
    x = torch.randn(6, 3)

    @torch.compile(backend="eager", fullgraph=True)
    def f(x):
        nodes, weights = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
        return ops.analytic_kernels(x, None, **compiled_op_args(spec), gh_nodes=nodes,
                                    gh_weights=weights)

    nngp, ntk = f(x)
    assert torch.equal(ntk, tn.analytic_kernels(spec, x).ntk)


SPEC = tn.mlp_spec([3, 8, 1], "relu")


@pytest.mark.parametrize(
    "x1, x2, error, match",
    [
        (torch.randn(4, 3).int(), None, TypeError, "x1 must be float32 or float64"),
        (torch.randn(4, 3), torch.randn(2, 3).double(), ValueError, "x2 must have the dtype of x1"),
        (torch.randn(4, 5), None, ValueError, "x1 must have 3 features"),
        (torch.randn(4, 3), torch.randn(2, 4), ValueError, "x2 must have 3 features"),
        (torch.randn(0, 3), None, ValueError, "x1 must hold at least one sample"),
        (torch.randn(4, 3), torch.randn(0, 3), ValueError, "x2 must hold at least one sample"),
        (torch.tensor([[0.0, float("nan"), 1.0]]), None, ValueError, "x1 contains NaN or Inf"),
        (torch.randn(4, 3), torch.tensor([[float("inf"), 0.0, 1.0]]), ValueError, "x2 contains NaN"),
        (torch.randn(3), None, ValueError, r"x1 must have shape \[N, 3\]"),
        ([[1.0, 2.0, 3.0]], None, TypeError, "x1 must be a torch.Tensor"),
    ],
)
def test_analytic_kernels_bad_inputs(x1, x2, error, match):
    with pytest.raises(error, match=match):
        tn.analytic_kernels(SPEC, x1, x2)


@pytest.mark.parametrize(
    "x1, x2, error, match",
    [
        (torch.randn(4, 3).int(), None, TypeError, "x1 must be float32 or float64"),
        (torch.randn(4, 3), torch.randn(2, 4), ValueError, "x2 must have n0=3 columns like x1"),
        (torch.randn(0, 3), None, ValueError, "x1 must hold at least one sample"),
        (torch.tensor([[0.0, float("nan"), 1.0]]), None, ValueError, "x1 contains NaN or Inf"),
        (torch.randn(4, 3, 1), None, ValueError, "x1 must have 2 dimensions"),
    ],
)
def test_op_level_checks(x1, x2, error, match):
    """The compiled op checks its arguments itself (for callers of torch.ops directly)."""
    with pytest.raises(error, match=match):
        torch.ops.torch_ntk.analytic_kernels.default(*_op_args(SPEC, x1, x2))


def test_op_level_layer_checks():
    x = torch.randn(3, 3)
    nodes, weights = tn.activations.hermite_rule(4)
    base = dict(compiled_op_args(SPEC))
    with pytest.raises(ValueError, match=r"act_ids\[0\] = 99 is not a registered activation id"):
        ops.analytic_kernels(x, None, **{**base, "act_ids": [99]}, gh_nodes=nodes, gh_weights=weights)
    with pytest.raises(ValueError, match="one entry per hidden layer"):
        ops.analytic_kernels(x, None, **{**base, "bias_var": []}, gh_nodes=nodes, gh_weights=weights)
    with pytest.raises(ValueError, match="must be non-negative"):
        ops.analytic_kernels(x, None, **{**base, "weight_var": [-1.0]}, gh_nodes=nodes,
                             gh_weights=weights)
    tanh = compiled_op_args(tn.mlp_spec([3, 8, 1], "tanh"))
    with pytest.raises(ValueError, match="gh_nodes and gh_weights must be non-empty"):
        ops.analytic_kernels(x, None, **tanh, gh_nodes=torch.zeros(0, dtype=torch.float64),
                             gh_weights=torch.zeros(0, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least one of want_nngp and want_ntk"):
        ops.analytic_kernels(x, None, **base, gh_nodes=nodes, gh_weights=weights,
                             want_nngp=False, want_ntk=False)


def test_bad_spec_and_get():
    x = torch.randn(3, 3)
    with pytest.raises(ValueError, match="get must name some of"):
        tn.analytic_kernels(SPEC, x, get="ntkk")
    with pytest.raises(ValueError, match="unknown activation 'swishy'"):
        tn.mlp_spec([3, 8, 1], "swishy")
    with pytest.raises(TypeError, match="model_or_spec must be"):
        tn.analytic_kernels("relu", x)
    with pytest.raises(ValueError, match=r"module 1 \(BatchNorm1d\) does not lift"):
        tn.analytic_kernels(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)),
                            x)
    with pytest.raises(ValueError, match="quadrature degree must be a positive integer"):
        tn.analytic_kernels(tn.mlp_spec([3, 8, 1], "tanh"), x, quadrature_degree=0)


def test_cuda_tensor_on_cpu_only_build_gets_a_clear_error(monkeypatch):
    monkeypatch.setattr(tn._C, "with_cuda", False)
    fake_cuda_tensor = types.SimpleNamespace(is_cuda=True)
    with pytest.raises(ValueError, match="built without CUDA; reinstall it with FORCE_CUDA=1"):
        ops.activation(fake_cuda_tensor, 0)


# ---- the structured op's workspace: a limit it takes, a size it reports ----------------


def _structured_inputs(n1, n2, n_out=3, widths=(5, 7, 4), dtype=torch.float64):
    def side(n):
        return ([torch.randn(n, w, dtype=dtype) for w in widths],
                [torch.randn(n, n_out, w, dtype=dtype) for w in widths[1:] + (n_out,)])

    return (*side(n1), *side(n2)), [0.3, 1.0, 0.5], [0.1, 0.0, 0.2]


@pytest.mark.parametrize("mode", ["full", "trace", "diagonal"])
def test_structured_workspace_limit_changes_only_the_blocking(mode):
    (a1, d1, a2, d2), cw, cb = _structured_inputs(37, 23)
    for b1, c1, b2, c2 in ((a1, d1, a2, d2), (a1, d1, None, None)):
        default = ops.structured_ntk(b1, c1, b2, c2, cw, cb, mode)
        for limit in (1, 5000):  # one pair per tile; a few tiles
            small = ops.structured_ntk(b1, c1, b2, c2, cw, cb, mode, workspace_bytes=limit)
            assert torch.allclose(small, default, rtol=1e-13, atol=1e-13)
    torch.library.opcheck(torch.ops.torch_ntk.structured_ntk.default,
                          (a1, d1, a2, d2, cw, cb, mode, "highest", 4096))


def test_structured_workspace_bytes_is_the_ops_formula():
    size = ops.structured_workspace_bytes
    assert ops.DEFAULT_WORKSPACE_BYTES == 2**30
    # CUDA: [rows, N2] pairs of an activation Gram (1 entry), a cotangent Gram (C entries)
    # and for bf16x3 a scratch (C entries); rows as many as the limit allows.
    assert size(1000, 1000, 1, "trace", device="cuda") == 1000 * 1000 * 2 * 4
    assert size(1000, 1000, 2, "full", "bf16x3", device="cuda") == 1000 * 1000 * 9 * 4
    assert size(1000, 500, 3, "diagonal", dtype=torch.float64, device="cuda",
                workspace_bytes=10**6) == 62 * 500 * 4 * 8
    assert size(10, 10, 1, "trace", device="cuda", workspace_bytes=1) == 10 * 2 * 4  # one row
    assert size(0, 10, 1, "trace", device="cuda") == 0
    # With x2 = x1 never more than with x2 given; within the limit when it allows a row.
    for device in ("cpu", "cuda"):
        for limit in (None, 10**6, 10**7):
            sym = size(3000, 3000, 3, "full", device=device, symmetric=True, workspace_bytes=limit)
            rect = size(3000, 3000, 3, "full", device=device, workspace_bytes=limit)
            assert 0 < sym <= rect <= (limit or ops.DEFAULT_WORKSPACE_BYTES)
    with pytest.raises(ValueError, match="mode must be one of"):
        size(10, 10, 1, "sum")
    with pytest.raises(ValueError, match="workspace_bytes must be at least 1"):
        size(10, 10, 1, "trace", workspace_bytes=0)
    with pytest.raises(TypeError, match="dtype must be torch.float32 or torch.float64"):
        size(10, 10, 1, "trace", dtype=torch.int32)


def test_structured_workspace_bytes_bad_arguments():
    (a1, d1, a2, d2), cw, cb = _structured_inputs(6, 4)
    with pytest.raises(ValueError, match="workspace_bytes must be at least 1"):
        ops.structured_ntk(a1, d1, a2, d2, cw, cb, "full", workspace_bytes=0)
    with pytest.raises(ValueError, match="workspace_bytes must be >= 0"):
        torch.ops.torch_ntk.structured_ntk.default(a1, d1, a2, d2, cw, cb, "full", "highest", -1)
