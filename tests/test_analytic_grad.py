"""Gradients of the infinite-width kernels (issue 30).

The old silent failure: ``analytic_kernels(model, x1, x2)`` with ``x1.requires_grad`` gave a
kernel whose grad_fn differentiated only the input Gram (x1.grad off by a relative 2.8 from
finite differences), and the CNN op's output left x.grad None. Now the fused ops' outputs
raise on backward, and analytic_kernels routes inputs that require grad to the torch
composite (torch_ntk.analytic.autograd), checked here against two independent references:

- ``torch.autograd.gradcheck`` (float64, its default tolerances: central differences of the
  torch path itself, eps 1e-6, atol 1e-5, rtol 1e-3);
- central differences of the *fused* op's values (computed under no_grad, independent of
  the torch path and of autograd) along random directions: relative 1e-6 for the closed
  forms (step 1e-5), 1e-5 for the Hermite series and quadrature (step 1e-4).

Every case holds a point in both x1 and x2 (a duplicate: the ReLU family's Σ̇ has a kink
there, the gradient is the symmetric subgradient that central differences give) and a zero
row of x1.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import torch_ntk
from torch_ntk import analytic_kernels, mlp_spec, ops
from torch_ntk.nn import NTKConv2d, NTKLinear

DTYPE = torch.float64
CLOSED = ("relu", "leaky_relu", "abs", "erf", "identity")
SMOOTH = ("tanh", "gelu")  # Hermite series in the fused op and in the torch path
QUADRATURE = ("elu",)  # 2-D Gauss–Hermite quadrature in both (asked for explicitly: without
# it and without grad, ELU takes the numeric series of torch_ntk.layers.numeric_series)
PINNED = {"quadrature_degree": 64}


def _inputs(n1=4, n2=3, n0=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n1, n0, dtype=DTYPE, generator=g)
    x2 = torch.randn(n2, n0, dtype=DTYPE, generator=g)
    x2[0] = x1[1]  # a duplicated point
    x1[-1] = 0  # a zero input row
    return x1.requires_grad_(), x2.requires_grad_()


def _fused(model, x1, x2, **kwargs):
    with torch.no_grad():
        k = analytic_kernels(model, x1.detach(), None if x2 is None else x2.detach(), **kwargs)
    return torch.cat([k.nngp.flatten(), k.ntk.flatten()])


def _check_against_fused_differences(model, x1, x2, step, rtol, **kwargs):
    """The directional derivative of Σ_ij (c1 ⊙ NNGP + c2 ⊙ NTK) along a random direction of
    (x1, x2): autograd of the torch path against central differences of the fused op."""
    g = torch.Generator().manual_seed(1)
    k = analytic_kernels(model, x1, x2, **kwargs)
    out = torch.cat([k.nngp.flatten(), k.ntk.flatten()])
    c = torch.randn(out.shape, dtype=DTYPE, generator=g)
    args = [x1, x2]
    moving = [i for i, t in enumerate(args) if t is not None and t.requires_grad]
    grads = torch.autograd.grad((c * out).sum(), [args[i] for i in moving])
    dirs = [torch.randn(args[i].shape, dtype=DTYPE, generator=g) for i in moving]
    analytic = sum((gr * d).sum() for gr, d in zip(grads, dirs))

    def shifted(sign):
        new = [None if t is None else t.detach() for t in args]
        for i, d in zip(moving, dirs):
            new[i] = new[i] + sign * step * d
        return _fused(model, *new, **kwargs)

    plus, minus = shifted(1), shifted(-1)
    numeric = (c * (plus - minus)).sum() / (2 * step)
    scale = max(1.0, float(analytic.abs()))
    assert abs(float(analytic - numeric)) <= rtol * scale, (float(analytic), float(numeric))
    return k


def _cnn():
    return nn.Sequential(NTKConv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), NTKLinear(4 * 16, 1))


def test_fused_op_outputs_do_not_backpropagate():
    spec = mlp_spec([3, 8, 8, 1], "relu")
    x1 = torch.randn(4, 3, dtype=DTYPE, requires_grad=True)
    args = torch_ntk.analytic.compiled_op_args(spec)
    nodes, weights = torch_ntk.activations.hermite_rule(1)
    nngp, ntk = ops.analytic_kernels(x1, None, **args, gh_nodes=nodes, gh_weights=weights)
    with pytest.raises(RuntimeError, match="has no backward"):
        ntk.sum().backward()
    from torch_ntk.analytic.cnn import cnn_op_args
    from torch_ntk.lifting.lift import lift
    # the CNN op differentiates closed-form programs (tests/test_cnn_backward.py); for the
    # others its backward raises, naming the layer
    x = torch.randn(3, 1, 6, 6, dtype=DTYPE, requires_grad=True)
    tanh_cnn = nn.Sequential(NTKConv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), NTKLinear(4 * 16, 1))
    nngp, ntk = ops.cnn_kernels(x, None, *cnn_op_args(lift(tanh_cnn)), nodes, weights)
    with pytest.raises(NotImplementedError, match=r"layer 1 \(ACTIVATION, act_id 6\) has no backward"):
        ntk.sum().backward()




def test_the_old_wrong_case_now_matches_finite_differences():
    """ReLU MLP, x1 requires grad: x1.grad was off by 2.8 relative; now within 1e-6."""
    spec = mlp_spec([3, 8, 8, 1], "relu")
    x1, x2 = _inputs()
    x2.requires_grad_(False)
    _check_against_fused_differences(spec, x1, x2, 1e-5, 1e-6)
    k = analytic_kernels(spec, x1, x2)
    assert k.ntk.grad_fn is not None
    k.ntk.sum().backward()
    grad = x1.grad.clone()
    x1.grad = None
    model = torch_ntk.ntk_mlp([3, 8, 8, 1], "relu", dtype=DTYPE)
    torch_ntk.NTK(model).limit(x1, x2, get="ntk").ntk.sum().backward()
    torch.testing.assert_close(x1.grad, grad, rtol=1e-12, atol=1e-14)
    with torch.no_grad():  # nothing recorded: the fused op
        assert analytic_kernels(spec, x1, x2).ntk.grad_fn is None
    assert analytic_kernels(spec, x1.detach(), x2).ntk.grad_fn is None


@pytest.mark.parametrize("act, depth", [("relu", 1), ("relu", 2), ("relu", 3), ("erf", 1),
                                        ("erf", 3)] + [(a, 2) for a in CLOSED[1:] + SMOOTH
                                                       + QUADRATURE if a != "erf"])
def test_mlp_gradients(act, depth):
    spec = mlp_spec([3] + [8] * depth + [1], act)
    x1, x2 = _inputs()
    closed = act in CLOSED
    step, rtol = (1e-5, 1e-6) if closed else (1e-4, 1e-5)
    kwargs = PINNED if act in QUADRATURE else {}
    _check_against_fused_differences(spec, x1, x2, step, rtol, **kwargs)
    _check_against_fused_differences(spec, x1, None, step, rtol, **kwargs)
    fast = not closed  # random projections (gradcheck's fast mode) where forwards are slower
    assert torch.autograd.gradcheck(lambda a, b: analytic_kernels(spec, a, b), (x1, x2),
                                    fast_mode=fast)
    assert torch.autograd.gradcheck(lambda a: analytic_kernels(spec, a), (x1,), fast_mode=fast)


@pytest.mark.parametrize("act", CLOSED + SMOOTH + QUADRATURE)
def test_torch_path_values_match_the_fused_op(act):
    spec = mlp_spec([3, 8, 8, 8, 1], act)
    x1, x2 = _inputs()
    # closed forms: rounding; series/quadrature: both truncated, differently (on the diagonal
    # at large q the fused op's 2-D quadrature fallback and the torch series agree to ~1e-8)
    tol = 1e-12 if act in CLOSED else 1e-7
    for b in (x2, None):
        k = analytic_kernels(spec, x1, b)
        assert k.ntk.requires_grad
        torch.testing.assert_close(torch.cat([k.nngp.flatten(), k.ntk.flatten()]),
                                   _fused(spec, x1, b, **(PINNED if act in QUADRATURE else {})),
                                   rtol=tol, atol=tol)


def _cnn_models():
    return {
        "flatten-relu": (nn.Sequential(NTKConv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
                                       NTKLinear(4 * 4, 1)), {}),
        "pool-gap-relu": (nn.Sequential(
            NTKConv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
            NTKConv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            NTKLinear(4, 1)), {}),
        "gap-erf": (nn.Sequential(NTKConv2d(1, 4, 3, padding=1), torch_ntk.nn.Erf(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), NTKLinear(4, 1)), {}),
        "flatten-tanh-quadrature": (nn.Sequential(
            NTKConv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), NTKLinear(4 * 16, 1)),
            {"quadrature_degree": 8}),
    }


@pytest.mark.parametrize("name", list(_cnn_models()))
def test_cnn_gradients(name):
    model, kwargs = _cnn_models()[name]
    model = model.to(DTYPE)
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(3, 1, 4, 4, dtype=DTYPE, generator=g)
    x2 = torch.randn(2, 1, 4, 4, dtype=DTYPE, generator=g)
    x2[0] = x1[1]
    x1[-1] = 0
    x1.requires_grad_()
    x2.requires_grad_()
    k = _check_against_fused_differences(model, x1, x2, 1e-5, 1e-6, **kwargs)
    assert isinstance(k.ntk.grad_fn, torch.autograd.graph.Node)
    _check_against_fused_differences(model, x1, None, 1e-5, 1e-6, **kwargs)
    fast = name != "flatten-relu"
    assert torch.autograd.gradcheck(lambda a, b: analytic_kernels(model, a, b, **kwargs),
                                    (x1, x2), fast_mode=fast)
    assert torch.autograd.gradcheck(lambda a: analytic_kernels(model, a, **kwargs), (x1,),
                                    fast_mode=fast)


def test_no_double_backward():
    spec = mlp_spec([3, 8, 8, 1], "relu")
    x1, x2 = _inputs()
    (g,) = torch.autograd.grad(analytic_kernels(spec, x1, x2).ntk.sum(), x1, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice|once_differentiable"):
        g.sum().backward()


def _with_stds(widths, act, weight_var, bias_var):
    """The spec whose every layer has these variances (the fused op's reference values)."""
    return mlp_spec(widths, act, weight_std=weight_var ** 0.5, bias_std=bias_var ** 0.5)


@pytest.mark.parametrize("act", ["relu", "erf", "tanh"])
def test_variance_gradients(act):
    """σ_w², σ_b² as 0-dim tensors (every layer) and per layer: gradcheck, and the derivative
    against central differences of the fused op on specs built with those variances."""
    widths = [3, 8, 8, 1]
    spec = mlp_spec(widths, act)
    x1, x2 = _inputs()
    x1, x2 = x1.detach(), x2.detach()
    wv = torch.tensor(1.3, dtype=DTYPE, requires_grad=True)
    bv = torch.tensor(0.2, dtype=DTYPE, requires_grad=True)
    k = analytic_kernels(spec, x1, x2, weight_var=wv, bias_var=bv)
    assert k.ntk.requires_grad
    fused = _fused(_with_stds(widths, act, 1.3, 0.2), x1, x2)
    torch.testing.assert_close(torch.cat([k.nngp.flatten(), k.ntk.flatten()]), fused,
                               rtol=1e-7, atol=1e-7)
    c = torch.randn(fused.shape, dtype=DTYPE, generator=torch.Generator().manual_seed(2))
    gw, gb = torch.autograd.grad((c * torch.cat([k.nngp.flatten(), k.ntk.flatten()])).sum(),
                                 (wv, bv))
    step = 1e-5 if act != "tanh" else 1e-4
    for grad, (dw, db) in ((gw, (step, 0)), (gb, (0, step))):
        plus = _fused(_with_stds(widths, act, 1.3 + dw, 0.2 + db), x1, x2)
        minus = _fused(_with_stds(widths, act, 1.3 - dw, 0.2 - db), x1, x2)
        numeric = (c * (plus - minus)).sum() / (2 * step)
        assert abs(float(grad - numeric)) <= 1e-5 * max(1.0, abs(float(numeric)))
    fast = act == "tanh"
    # gradcheck differences the forward, for the closed forms the fused op: at the point in
    # both x1 and x2 it resolves the angle to ~√eps only (analytic_kernels' Precision note),
    # which puts ~1e-3 of noise into differences of step 1e-6; move that point off x1 here
    # (test_mlp_backward.py checks the gradient at a duplicate against the exact composite)
    x2 = x2.clone()
    x2[0] += 0.1
    assert torch.autograd.gradcheck(
        lambda w, b: analytic_kernels(spec, x1, x2, weight_var=w, bias_var=b), (wv, bv),
        fast_mode=fast)
    per_layer = torch.tensor([1.0, 1.5, 0.7], dtype=DTYPE, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda w: analytic_kernels(spec, x1, None, weight_var=w, bias_var=[0.1, bv, 0.3]),
        (per_layer,), fast_mode=fast)


def test_cnn_variance_gradients():
    model = nn.Sequential(NTKConv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), NTKLinear(4, 1)).to(DTYPE)
    x = torch.randn(3, 1, 4, 4, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    wv = torch.tensor([1.2, 0.8], dtype=DTYPE, requires_grad=True)
    bv = torch.tensor(0.05, dtype=DTYPE, requires_grad=True)
    k = analytic_kernels(model, x, weight_var=wv, bias_var=bv)
    with torch.no_grad():
        ref = analytic_kernels(model, x, weight_var=[1.2, 0.8], bias_var=0.05)
    torch.testing.assert_close(k.ntk, ref.ntk, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(
        lambda w, b: analytic_kernels(model, x, weight_var=w, bias_var=b), (wv, bv))


def test_variance_override_errors():
    spec = mlp_spec([3, 8, 1], "relu")
    x = torch.randn(4, 3, dtype=DTYPE)
    with pytest.raises(ValueError, match="weight_var must have the dtype of x1"):
        analytic_kernels(spec, x, weight_var=torch.tensor(1.0, dtype=torch.float32))
    with pytest.raises(ValueError, match="one entry per linear"):
        analytic_kernels(spec, x, weight_var=torch.ones(3, dtype=DTYPE))
    with pytest.raises(ValueError, match="one entry per linear"):
        analytic_kernels(spec, x, bias_var=[0.1])
    with pytest.raises(ValueError, match="non-negative"):
        analytic_kernels(spec, x, bias_var=-0.1)
    with pytest.raises(ValueError, match="without bias"):
        analytic_kernels(mlp_spec([3, 8, 1], "relu", bias=False), x, bias_var=0.1)


def _log_evidence(k: torch.Tensor, y: torch.Tensor, ridge: float) -> torch.Tensor:
    """log N(y | 0, K + ridge·I) by Cholesky."""
    n = k.shape[0]
    chol = torch.linalg.cholesky(k + ridge * torch.eye(n, dtype=k.dtype))
    alpha = torch.cholesky_solve(y[:, None], chol)[:, 0]
    return (-0.5 * (y * alpha).sum() - torch.log(torch.diagonal(chol)).sum()
            - 0.5 * n * torch.log(torch.tensor(2 * torch.pi, dtype=k.dtype)))


def test_fitting_variances_by_the_gp_marginal_likelihood():
    """The use the gradients enable (tiny sizes): σ_w², σ_b² of a ReLU NNGP fitted by
    gradient ascent of the log evidence; it rises and the variances move to finite values."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 3, dtype=DTYPE, generator=g)
    y = 3.0 * torch.sin(x @ torch.tensor([1.0, -0.5, 0.3], dtype=DTYPE))
    spec = mlp_spec([3, 64, 64, 1], "relu")
    log_w = torch.zeros((), dtype=DTYPE, requires_grad=True)
    log_b = torch.tensor(-2.0, dtype=DTYPE, requires_grad=True)
    opt = torch.optim.Adam([log_w, log_b], lr=0.1)

    def evidence():
        k = analytic_kernels(spec, x, get="nngp", weight_var=log_w.exp(),
                             bias_var=log_b.exp()).nngp
        return _log_evidence(k, y, 1e-2)

    start = float(evidence().detach())
    for _ in range(40):
        opt.zero_grad()
        (-evidence()).backward()
        opt.step()
    end = float(evidence().detach())
    print(f"log evidence {start:.2f} -> {end:.2f}; σ_w² {float(log_w.detach().exp()):.3f}, "
          f"σ_b² {float(log_b.detach().exp()):.3f}")
    assert end > start + 5, (start, end)
    assert torch.isfinite(log_w) and torch.isfinite(log_b)


def _naive_kernels(x1, x2, act, depth, weight_var=1.0, bias_var=0.01):
    """(NNGP, NTK) by the recursion written out here, arccos form (Cho & Saul), no fused op,
    no symmetric tricks: plain autograd is right wherever |ρ| < 1 (no duplicate points)."""
    import math
    n0 = x1.shape[1]

    def dual(q1, q2, q12):
        if act == "erf":
            d = (1 + 2 * q1) * (1 + 2 * q2)
            return (2 / math.pi) * torch.asin(2 * q12 / d.sqrt()), (4 / math.pi) / (
                d - 4 * q12 ** 2).sqrt()
        norm = (q1 * q2).sqrt()
        t = torch.acos(q12 / norm)
        return norm * (t.sin() + (math.pi - t) * t.cos()) / (2 * math.pi), (math.pi - t) / (
            2 * math.pi)

    q1 = weight_var * (x1 * x1).sum(1)[:, None] / n0 + bias_var
    q2 = weight_var * (x2 * x2).sum(1)[None, :] / n0 + bias_var
    sigma = weight_var * x1 @ x2.T / n0 + bias_var
    theta = sigma
    for _ in range(depth):
        e, ed = dual(q1, q2, sigma)
        theta = theta * weight_var * ed + weight_var * e + bias_var
        sigma = weight_var * e + bias_var
        q1, q2 = (weight_var * (q / 2 if act == "relu" else dual(q, q, q)[0]) + bias_var
                  for q in (q1, q2))  # E[relu(u)²] = q/2
    return sigma, theta


@pytest.mark.parametrize("act", ["relu", "erf"])
def test_gradients_match_an_independent_autograd(act):
    """Away from duplicates, against autograd of the recursion written in this test: 1e-10."""
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(5, 4, dtype=DTYPE, generator=g, requires_grad=True)
    x2 = torch.randn(6, 4, dtype=DTYPE, generator=g, requires_grad=True)
    spec = mlp_spec([4, 16, 16, 16, 1], act, weight_std=1.0, bias_std=0.1)
    c = torch.randn(2, 5, 6, dtype=DTYPE, generator=g)
    ours = analytic_kernels(spec, x1, x2)
    with torch.no_grad():
        naive = _naive_kernels(x1, x2, act, 3)
    torch.testing.assert_close(ours.ntk, naive[1], rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad((c[0] * ours.nngp + c[1] * ours.ntk).sum(), (x1, x2))
    nngp, ntk = _naive_kernels(x1, x2, act, 3)
    expected = torch.autograd.grad((c[0] * nngp + c[1] * ntk).sum(), (x1, x2))
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
