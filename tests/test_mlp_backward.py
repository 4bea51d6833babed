"""The compiled backward of the fused MLP op (issue 30): ``torch_ntk::analytic_kernels_backward``
behind ``torch_ntk::analytic_kernels_differentiable``, the path ``analytic_kernels`` takes for
chains of closed-form layers (ReLU family, erf) whose inputs or variances require grad.

References, each independent of the compiled backward:

- ``torch.autograd.gradcheck`` in float64 (central differences of the fused forward itself;
  its default tolerances: eps 1e-6, atol 1e-5, rtol 1e-3), w.r.t. x1, x2, σ_w² and σ_b²;
- autograd of the torch composite ``torch_ntk.analytic.autograd.mlp_kernels`` (the recursion
  as torch ops, its ReLU derivative the separate ``_ABReLUDual``): 1e-10 relative to the
  largest gradient entry, float64 (x2 None includes the diagonal pairs, where the ReLU
  family's Σ̇ has its kink and both take the subgradient 0);
- float32 (more pairs than one tile of the CPU loop, two threads: the chunked reductions)
  against the float64 composite: 1e-4 relative to the largest entry.
Gradients at a point present in both x1 and x2 (a kink resolved only to √eps) are checked by
test_analytic_grad.py's central differences of the fused op, which now also run this path.
"""

from __future__ import annotations

import pytest
import torch

import torch_ntk
from torch_ntk import analytic_kernels, mlp_spec, ops
from torch_ntk.analytic import autograd as ag
from torch_ntk.analytic import fused_backward as fb

from conftest import CUDA, rel_err

DTYPE = torch.float64
FAMILIES = [("relu", None), ("leaky_relu", 0.2), ("abs", None), ("identity", None),
            ("erf", None)]


def _spec(name, param, depth=3, n0=3):
    act = torch_ntk.activations.from_name(name, param)
    return mlp_spec([n0] + [8] * depth + [1], act, weight_std=1.1, bias_std=0.4)


def _inputs(n1=5, n2=4, n0=3, seed=0, dtype=DTYPE):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n1, n0, dtype=dtype, generator=g),
            torch.randn(n2, n0, dtype=dtype, generator=g))


def _variances(depth, dtype=DTYPE):
    wv = torch.tensor(1.3, dtype=dtype, requires_grad=True)
    bv = torch.linspace(0.05, 0.3, depth + 1, dtype=dtype).requires_grad_()
    return wv, bv


@pytest.mark.parametrize("name, param", FAMILIES)
@pytest.mark.parametrize("symmetric", [False, True])
def test_gradcheck_of_the_op_path(name, param, symmetric):
    spec = _spec(name, param)
    x1, x2 = _inputs()
    x1.requires_grad_()
    x2 = None if symmetric else x2.requires_grad_()
    wv, bv = _variances(3)
    k = analytic_kernels(spec, x1, x2, weight_var=wv, bias_var=bv)
    assert "analytic_kernels_differentiable" in k.ntk.grad_fn.name()
    inputs = (x1, wv, bv) if symmetric else (x1, x2, wv, bv)

    def both(*args):
        a, rest = args[0], args[1:]
        b, (w, v) = (None, rest) if symmetric else (rest[0], rest[1:])
        out = analytic_kernels(spec, a, b, weight_var=w, bias_var=v)
        return out.nngp, out.ntk

    assert torch.autograd.gradcheck(both, inputs)


def _loss_grads(kernels, weights, inputs):
    nngp, ntk = kernels
    return torch.autograd.grad((weights[0] * nngp + weights[1] * ntk).sum(), inputs)


@pytest.mark.parametrize("name, param", FAMILIES)
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("get", [("nngp", "ntk"), ("ntk",)])
def test_equals_the_composite_gradient(name, param, symmetric, get):
    spec = _spec(name, param, depth=4)
    x1, x2 = _inputs(7, 6)
    x1.requires_grad_()
    x2 = None if symmetric else x2.requires_grad_()
    wv, bv = _variances(4)
    inputs = [t for t in (x1, x2, wv, bv) if t is not None]
    c = torch.randn(2, 7, 7 if symmetric else 6, dtype=DTYPE,
                    generator=torch.Generator().manual_seed(5))
    if get == ("ntk",):
        c[0] = 0
    k = analytic_kernels(spec, x1, x2, get=get, weight_var=wv, bias_var=bv)
    zero = torch.zeros(())
    ours = _loss_grads((zero if k.nngp is None else k.nngp, k.ntk), c, inputs)
    reference = _loss_grads(ag.mlp_kernels(ag.with_variances(spec, x1, wv, bv), x1, x2), c,
                            inputs)
    for got, want in zip(ours, reference):
        assert rel_err(got, want) <= 1e-10, (got, want)


def test_a_point_in_both_batches():
    """ReLU, x2[0] = x1[1]: the pair's Σ̇ sits on its kink; the compiled backward takes the
    subgradient the composite takes (exact there: q12 = q11 = q22), 1e-10."""
    spec = _spec("relu", None, depth=3)
    x1, x2 = _inputs()
    x2[0] = x1[1]
    x1.requires_grad_()
    x2.requires_grad_()
    wv, bv = _variances(3)
    inputs = [x1, x2, wv, bv]
    c = torch.randn(2, 5, 4, dtype=DTYPE, generator=torch.Generator().manual_seed(6))
    ours = _loss_grads(analytic_kernels(spec, x1, x2, weight_var=wv, bias_var=bv), c, inputs)
    reference = _loss_grads(ag.mlp_kernels(ag.with_variances(spec, x1, wv, bv), x1, x2), c,
                            inputs)
    for got, want in zip(ours, reference):
        assert rel_err(got, want) <= 1e-10


def test_float32_many_pairs_two_threads():
    """N1 = 300 > one tile (128) of the CPU loop, two chunks reducing the column samples'
    and the coefficients' gradients: float32 against the float64 composite."""
    spec = _spec("relu", None, depth=5, n0=6)
    x1, x2 = _inputs(300, 140, n0=6, seed=2)
    c = torch.randn(2, 300, 300, dtype=DTYPE, generator=torch.Generator().manual_seed(1))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for b in (None, x2):
            cc = c if b is None else c[:, :, :140]
            leaves64 = [x1.clone().requires_grad_(), None if b is None else
                        b.clone().requires_grad_(), *_variances(5)]
            leaves32 = [None if t is None else t.detach().float().requires_grad_()
                        for t in leaves64]
            a, bb, w, v = leaves32
            ours = _loss_grads(analytic_kernels(spec, a, bb, weight_var=w, bias_var=v),
                               cc.float(), [t for t in leaves32 if t is not None])
            a, bb, w, v = leaves64
            want = _loss_grads(ag.mlp_kernels(ag.with_variances(spec, a, w, v), a, bb), cc,
                               [t for t in leaves64 if t is not None])
            for got, ref in zip(ours, want):
                assert got.dtype == torch.float32
                assert rel_err(got, ref) <= 1e-4
    finally:
        torch.set_num_threads(threads)


def test_the_backward_op_directly():
    """grad_coefs of the op against autograd of the composite w.r.t. the same layer
    arguments (op_coefficients: σ_w²/n₀, σ_b², c_w, c_b of the input layer, then per hidden
    layer σ_w², σ_b², c_w·n_in, c_b), and the output shapes."""
    spec = _spec("erf", None, depth=2)
    x1, x2 = _inputs()
    coefs = fb.op_coefficients(spec, x1).requires_grad_()
    g = torch.Generator().manual_seed(3)
    gn, gt = torch.randn(2, 5, 4, dtype=DTYPE, generator=g)
    nngp, ntk = fb.analytic_kernels_differentiable(x1, x2, coefs, [4, 4], [0.0, 0.0], True,
                                                    True)
    (ours,) = torch.autograd.grad((gn * nngp + gt * ntk).sum(), coefs)
    args = torch_ntk.analytic.compiled_op_args(spec)
    out = ops.analytic_kernels_backward(gn, gt, x1, x2, *[args[k] for k in list(args)[:4]],
                                        *[args[k] for k in list(args)[4:]])
    assert [list(t.shape) for t in out] == [[5, 4], [5], [4], [3, 4]]
    assert out[3].dtype == torch.float64
    torch.testing.assert_close(out[3], ours, rtol=0, atol=0)
    # the composite's gradient w.r.t. the same numbers, through with_variances
    first, *hidden = spec.dense_layers
    wv = torch.tensor([first.weight_var] + [d.weight_var for d in hidden], dtype=DTYPE,
                      requires_grad=True)
    bv = torch.tensor([first.bias_var] + [d.bias_var for d in hidden], dtype=DTYPE,
                      requires_grad=True)
    n, t = ag.mlp_kernels(ag.with_variances(spec, x1, wv, bv), x1, x2)
    gw, gb = torch.autograd.grad((gn * n + gt * t).sum(), (wv, bv))
    # NTK parametrization: row 0 is (σ_w²/n₀, σ_b², σ_w²/n₀, σ_b²), row l (σ_w², σ_b², σ_w², σ_b²)
    n0 = first.in_features
    expect_w = torch.cat([((ours[0, 0] + ours[0, 2]) / n0)[None], ours[1:, 0] + ours[1:, 2]])
    expect_b = ours[:, 1] + ours[:, 3]
    assert rel_err(expect_w, gw) <= 1e-10 and rel_err(expect_b, gb) <= 1e-10


def test_not_a_closed_form_keeps_the_composite():
    """The rule (op_backward_applies): tanh and forced quadrature take the torch composite."""
    x1 = _inputs()[0].requires_grad_()
    assert "Differentiable" not in analytic_kernels(_spec("tanh", None), x1).ntk.grad_fn.name()
    k = analytic_kernels(_spec("relu", None), x1, force_quadrature=True)
    assert "differentiable" not in k.ntk.grad_fn.name()
    assert not fb.op_backward_applies(_spec("gelu", 0.0))
    assert fb.op_backward_applies(_spec("leaky_relu", 0.1))


def test_bad_input():
    spec = _spec("relu", None)
    x1, x2 = _inputs()
    x1.requires_grad_()
    for b in (x2, None):
        (g,) = torch.autograd.grad(analytic_kernels(spec, x1, b).ntk.sum(), x1,
                                   create_graph=True)
        with pytest.raises(RuntimeError, match="no double backward.*differentiate twice"):
            g.sum().backward()
    wv = torch.tensor(1.0, requires_grad=True)
    with pytest.raises(TypeError, match="x1 must be float32 or float64"):
        analytic_kernels(spec, torch.ones(3, 3, dtype=torch.int64), weight_var=wv)
    with pytest.raises(ValueError, match="weight_var must have the dtype of x1"):
        analytic_kernels(spec, x1, weight_var=wv)
    with pytest.raises(ValueError, match="weight_var must be on x1's device"):
        analytic_kernels(spec, x1, weight_var=torch.tensor(1.0, dtype=DTYPE, device="meta"))
    with pytest.raises(ValueError, match=r"act_ids\[0\] = 6 has no closed-form derivative"):
        ops.analytic_kernels_backward(torch.ones(5, 4, dtype=DTYPE), torch.empty(0, dtype=DTYPE),
                                      x1.detach(), x2, 0.3, 0.1, 0.3, 0.1, [6], [0.0], [1.0],
                                      [0.1], [1.0], [0.1])
    with pytest.raises(ValueError, match=r"grad_ntk must have the outputs' shape \[5, 4\]"):
        ops.analytic_kernels_backward(torch.ones(5, 4, dtype=DTYPE), torch.ones(4, 5, dtype=DTYPE),
                                      x1.detach(), x2, 0.3, 0.1, 0.3, 0.1, [1], [0.0], [1.0],
                                      [0.1], [1.0], [0.1])


def test_non_contiguous_inputs_get_their_gradient():
    """A non-contiguous x1 is not an error: the op makes it contiguous, and its gradient
    equals that of the contiguous copy."""
    spec = _spec("relu", None)
    base = torch.randn(3, 10, dtype=DTYPE, generator=torch.Generator().manual_seed(4))
    x = base.T.requires_grad_()  # [10, 3], strides (1, 10)
    assert not x.is_contiguous()
    (got,) = torch.autograd.grad(analytic_kernels(spec, x).ntk.sum(), x)
    y = base.T.contiguous().requires_grad_()
    (want,) = torch.autograd.grad(analytic_kernels(spec, y).ntk.sum(), y)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_opcheck():
    spec = _spec("leaky_relu", 0.1, depth=2)
    x1, x2 = _inputs()
    coefs = fb.op_coefficients(spec, x1)
    for b in (x2, None):
        args = (x1.requires_grad_(), None if b is None else b.requires_grad_(),
                coefs.clone().requires_grad_(), [2, 2], [0.1, 0.1], True, True)
        # not the aot_dispatch tests: the op and its backward read the layer coefficients
        # to the host (the fused ops take them as numbers), data-dependent under fake tensors
        torch.library.opcheck(fb.analytic_kernels_differentiable, args, test_utils=(
            "test_schema", "test_autograd_registration", "test_faketensor"))


@CUDA
@pytest.mark.parametrize("name, param", FAMILIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("symmetric", [True, False])
def test_cuda_backward_matches_the_cpu(name, param, dtype, symmetric):
    """The CUDA backward op (atomics) against the CPU one on the same inputs: float64 1e-12,
    float32 1e-5 relative to the largest entry."""
    spec = _spec(name, param, depth=4, n0=5)
    x1, x2 = _inputs(70, 33, n0=5, seed=7, dtype=dtype)
    x2 = None if symmetric else x2
    n2 = 70 if symmetric else 33
    g = torch.Generator().manual_seed(8)
    gn, gt = torch.randn(2, 70, n2, dtype=dtype, generator=g)
    args = torch_ntk.analytic.compiled_op_args(spec)
    layer_args = [args[k] for k in args]
    cpu = ops.analytic_kernels_backward(gn, gt, x1, x2, *layer_args)
    cuda = ops.analytic_kernels_backward(gn.cuda(), gt.cuda(), x1.cuda(),
                                         None if x2 is None else x2.cuda(), *layer_args)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for a, b in zip(cuda, cpu):
        if b.numel():
            assert rel_err(a, b) <= tol
