"""The compiled backward of the fused CNN op (issue 30): ``torch_ntk::cnn_kernels_backward``.

``analytic_kernels`` with CNN inputs (or σ_w², σ_b² overrides) that require grad runs the
fused op, whose registered autograd calls the compiled backward (csrc/math/cnn_backward.h).
Checked against independent references, in float64:

- the autograd gradient of the plain-torch walker ``torch_ntk.analytic.cnn.cnn_kernels``
  (each layer's registered rule in torch; the ReLU family through ``_ABReLUDual``): x1, x2,
  σ_w², σ_b², relative 1e-10 of the largest gradient entry;
- ``torch.autograd.gradcheck`` (central differences of the op itself, eps 1e-6, atol 1e-5,
  rtol 1e-3);
- central differences of the op's outputs in each CONV/DENSE float (σ_w², σ_b², tw, tb:
  also the NTK coefficients, which the overrides tie to the variances), relative 1e-7.

A deliberately wrong adjoint (the ReLU family's ∂E/∂q11 with the wrong sign, or the
transposed taps without 1/|Q|) fails the first two (shown in the session's report, not
committed).
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import torch_ntk
from torch_ntk import analytic_kernels, ops
from torch_ntk.activations import Abs, Erf
from torch_ntk.analytic.autograd import with_variances
from torch_ntk.analytic.cnn import cnn_kernels as walker
from torch_ntk.analytic.fused import cnn_op_args
from torch_ntk.layers.sum_pool import SpatialSum
from torch_ntk.lifting.lift import lift
from torch_ntk.nn import NTKConv1d, NTKConv2d, NTKLinear

DTYPE = torch.float64
FUSED = "GeneratedBackwardFor_torch_ntk_cnn_kernels"


def _models():
    """name -> (model, input shape [C, H, W] or [C, L], number of linear layers)."""
    return {
        "flatten-relu-d2": (nn.Sequential(
            NTKConv2d(2, 3, 3, padding=1), nn.ReLU(), NTKConv2d(3, 3, 3), nn.ReLU(),
            nn.Flatten(), NTKLinear(3 * 9, 1)), (2, 5, 5)),
        "gap-relu-d3": (nn.Sequential(
            NTKConv2d(2, 3, 3, padding=1), nn.ReLU(), NTKConv2d(3, 3, 3, padding=1), nn.ReLU(),
            NTKConv2d(3, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            NTKLinear(3, 1)), (2, 5, 5)),
        "pool-erf-leaky": (nn.Sequential(
            NTKConv2d(2, 3, 3, padding=1), Erf(), nn.AvgPool2d(2),
            NTKConv2d(3, 3, 3, padding=1), nn.LeakyReLU(0.2), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), NTKLinear(3, 1)), (2, 5, 5)),
        "stride-circular-abs": (nn.Sequential(
            NTKConv2d(2, 3, 3, stride=2, padding=1, padding_mode="circular"), Abs(),
            NTKConv2d(3, 3, 2, dilation=2, parametrization="standard"), nn.ReLU(),
            nn.Flatten(), NTKLinear(6, 1, parametrization="standard")), (2, 7, 6)),
        "overlapping-pool-identity": (nn.Sequential(
            NTKConv2d(2, 3, (3, 2), padding=1, bias=False), nn.LeakyReLU(1.0),
            nn.AvgPool2d(2, stride=1), NTKConv2d(3, 3, 3, padding=1), nn.ReLU(), SpatialSum(2),
            NTKLinear(3, 4), nn.ReLU(), NTKLinear(4, 1)), (2, 4, 5)),
        "circular-dilated-gap": (nn.Sequential(
            NTKConv2d(2, 3, 3, padding=1, padding_mode="circular"), nn.ReLU(),
            NTKConv2d(3, 3, 3, padding=2, dilation=2, stride=2), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), NTKLinear(3, 1)), (2, 5, 6)),
        "conv1d-gap": (nn.Sequential(
            NTKConv1d(2, 3, 3, padding=1), nn.ReLU(), NTKConv1d(3, 3, 3, padding=1), Erf(),
            nn.AdaptiveAvgPool1d(1), nn.Flatten(), NTKLinear(3, 1)), (2, 7)),
    }


def _inputs(shape, n1=3, n2=2, seed=0, duplicate=True):
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n1, *shape, dtype=DTYPE, generator=g)
    x2 = torch.randn(n2, *shape, dtype=DTYPE, generator=g)
    if duplicate:
        x2[0] = x1[1]  # a point in both batches: the ReLU family's kink (subgradient 0)
    return x1.requires_grad_(), x2.requires_grad_()


def _num_linear(spec):
    return sum(type(layer).__name__ in ("Conv", "Dense") for layer in spec.layers)


def _loss(k, seed=3, self_pairs=True):
    """Σ c1 ⊙ NNGP + c2 ⊙ NTK with random c (``self_pairs=False``: 0 on the diagonal)."""
    g = torch.Generator().manual_seed(seed)
    c1 = torch.randn(k.nngp.shape, dtype=DTYPE, generator=g)
    c2 = torch.randn(k.ntk.shape, dtype=DTYPE, generator=g)
    if not self_pairs:
        c1.fill_diagonal_(0)
        c2.fill_diagonal_(0)
    return (c1 * k.nngp).sum() + (c2 * k.ntk).sum()


@pytest.mark.parametrize("symmetric", [True, False], ids=["x2-none", "x2-given"])
@pytest.mark.parametrize("name", list(_models()))
def test_gradients_equal_the_walkers_autograd(name, symmetric):
    model, shape = _models()[name]
    model = model.to(DTYPE)
    spec = lift(model)
    x1, x2 = _inputs(shape, duplicate=False)
    x2 = None if symmetric else x2
    linear = [layer for layer in spec.layers if type(layer).__name__ in ("Conv", "Dense")]
    wv = torch.linspace(1.5, 2.5, len(linear), dtype=DTYPE).requires_grad_()
    bv = torch.tensor([0.25 * layer.has_bias for layer in linear], dtype=DTYPE,
                      requires_grad=True)
    moving = [t for t in (x1, x2, wv, bv) if t is not None]
    # x2 = None: the self pairs (x_i, x_i) are left to test_self_pairs: at their positions
    # p = p' the ReLU family sits on its kink (ρ = 1), where the walker's angle is rounding
    # noise (its self and cross planes are different torch ops: ~1e-10 off) and the fused
    # op's is exactly 0
    loss = functools.partial(_loss, self_pairs=not symmetric)

    k = analytic_kernels(spec, x1, x2, weight_var=wv, bias_var=bv)
    got = torch.autograd.grad(loss(k), moving)
    ref_k = walker(with_variances(spec, x1, wv, bv), x1, x2)
    ref = torch.autograd.grad(loss(ref_k), moving)
    torch.testing.assert_close(k.ntk, ref_k.ntk, rtol=1e-9, atol=1e-9)
    for a, b in zip(got, ref):
        scale = float(b.abs().max())
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * scale)

    # only the inputs: the op's registered autograd (no Function for the floats)
    k = analytic_kernels(spec, x1, x2)
    assert type(k.ntk.grad_fn).__name__.startswith(FUSED)
    inputs = [t for t in (x1, x2) if t is not None]
    got = torch.autograd.grad(loss(k), inputs)
    ref = torch.autograd.grad(loss(walker(spec, x1, x2)), inputs)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10 * float(b.abs().max()))


@pytest.mark.parametrize("name", ["gap-relu-d3", "flatten-relu-d2", "conv1d-gap"])
def test_self_pairs(name):
    """x2 = None, the diagonal entries only: the gradient along a random direction against
    central differences of the op with two Richardson steps (error O(h^6), h = 1e-3),
    relative 1e-8 (they agree to ~1e-11; the walker's kink noise is ~1e-10)."""
    model, shape = _models()[name]
    spec = lift(model.to(DTYPE))
    x1, _ = _inputs(shape, duplicate=False)
    g = torch.Generator().manual_seed(6)
    c1, c2 = (torch.randn(3, dtype=DTYPE, generator=g) for _ in range(2))

    def diagonal_loss(x):
        k = analytic_kernels(spec, x)
        return (c1 * k.nngp.diagonal()).sum() + (c2 * k.ntk.diagonal()).sum()

    (grad,) = torch.autograd.grad(diagonal_loss(x1), x1)
    d = torch.randn(x1.shape, dtype=DTYPE, generator=g)
    analytic = float((grad * d).sum())

    def central(h):
        with torch.no_grad():
            return float(diagonal_loss(x1 + h * d) - diagonal_loss(x1 - h * d)) / (2 * h)

    h = 1e-3
    r1 = (4 * central(h / 2) - central(h)) / 3
    r2 = (4 * central(h / 4) - central(h / 2)) / 3
    numeric = (16 * r2 - r1) / 15
    assert abs(analytic - numeric) <= 1e-8 * max(1.0, abs(numeric)), (analytic, numeric)


@pytest.mark.parametrize("name", ["gap-relu-d3", "flatten-relu-d2"])
def test_a_point_in_both_batches(name):
    """x2[0] = x1[1]: the ReLU family's E[φ′φ′] has a kink at the pair (ρ = 1); both paths take
    the symmetric subgradient 0 where s = √(q11 q22 − q12²) is below 32·√eps·√(q11 q22), but
    s is rounding noise there and differs between them (the values by ~1e-10 relative, the
    docstring of analytic_kernels' "Precision"), so: relative 1e-6, and central differences
    of the op along a random direction of (x1, x2) (step 1e-5) to 1e-6."""
    model, shape = _models()[name]
    spec = lift(model.to(DTYPE))
    x1, x2 = _inputs(shape, duplicate=True)
    k = analytic_kernels(spec, x1, x2)
    got = torch.autograd.grad(_loss(k), (x1, x2))
    ref = torch.autograd.grad(_loss(walker(spec, x1, x2)), (x1, x2))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6 * float(b.abs().max()))
    g = torch.Generator().manual_seed(5)
    d1, d2 = (torch.randn(t.shape, dtype=DTYPE, generator=g) for t in (x1, x2))
    step = 1e-5
    with torch.no_grad():
        plus = _loss(analytic_kernels(spec, x1 + step * d1, x2 + step * d2))
        minus = _loss(analytic_kernels(spec, x1 - step * d1, x2 - step * d2))
    numeric = float(plus - minus) / (2 * step)
    analytic = float((got[0] * d1).sum() + (got[1] * d2).sum())
    assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric))


SMALL = {
    "flatten-d2": (nn.Sequential(
        NTKConv2d(1, 2, 3, padding=1), nn.ReLU(), NTKConv2d(2, 2, 3), nn.ReLU(), nn.Flatten(),
        NTKLinear(2 * 4, 1)), (1, 4, 4)),
    "gap-d3": (nn.Sequential(
        NTKConv2d(1, 2, 3, padding=1), nn.ReLU(), NTKConv2d(2, 2, 3, padding=1), Erf(),
        NTKConv2d(2, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        NTKLinear(2, 1)), (1, 4, 4)),
    "pool-flatten-d2": (nn.Sequential(
        NTKConv2d(2, 2, 3, padding=1), nn.LeakyReLU(0.1), nn.AvgPool2d(2),
        NTKConv2d(2, 2, 2), nn.ReLU(), nn.Flatten(), NTKLinear(2 * 1, 1)), (2, 5, 5)),
}


@pytest.mark.parametrize("name", list(SMALL))
def test_gradcheck(name):
    model, shape = SMALL[name]
    model = model.to(DTYPE)
    spec = lift(model)
    x1, x2 = _inputs(shape, n1=3, n2=2, seed=1, duplicate=False)
    assert torch.autograd.gradcheck(lambda a, b: analytic_kernels(spec, a, b), (x1, x2))
    assert torch.autograd.gradcheck(lambda a: analytic_kernels(spec, a), (x1,))
    n = _num_linear(spec)
    wv = torch.linspace(1.0, 2.0, n, dtype=DTYPE).requires_grad_()
    bv = torch.linspace(0.1, 0.3, n, dtype=DTYPE).requires_grad_()
    x1, x2 = x1.detach(), x2.detach()
    assert torch.autograd.gradcheck(
        lambda w, b: analytic_kernels(spec, x1, x2, weight_var=w, bias_var=b), (wv, bv))
    assert torch.autograd.gradcheck(
        lambda a, w: analytic_kernels(spec, a, weight_var=w), (x1.requires_grad_(), wv))


def test_float_gradients_against_central_differences():
    """grad_floats of every CONV/DENSE entry (σ_w², σ_b², tw, tb) against central differences
    of the op's outputs in that float."""
    model, shape = _models()["pool-erf-leaky"]
    codes, ints, floats = cnn_op_args(lift(model.to(DTYPE)))
    x1, x2 = (t.detach() for t in _inputs(shape))
    nodes = weights = x1.new_zeros(0)
    g = torch.Generator().manual_seed(4)
    gn, gt = (torch.randn(3, 2, dtype=DTYPE, generator=g) for _ in range(2))
    _, _, grad = ops.cnn_kernels_backward(gn, gt, x1, x2, codes, ints, floats, nodes, weights)
    assert grad.shape == (len(floats),)
    offsets, f = [], 0
    for code in codes:
        if code in (0, 5):
            offsets += range(f, f + 4)
        f += {0: 4, 1: 1, 5: 4}.get(code, 0)
    assert len(offsets) == 12 and set(range(len(floats))) - set(offsets) == {4, 9}
    step = 1e-5
    for i in range(len(floats)):
        def value(delta):
            shifted = list(floats)
            shifted[i] += delta
            n, t = ops.cnn_kernels(x1, x2, codes, ints, shifted, nodes, weights)
            return float((gn * n).sum() + (gt * t).sum())
        if i in offsets:
            numeric = (value(step) - value(-step)) / (2 * step)
            assert abs(float(grad[i]) - numeric) <= 1e-7 * max(1.0, abs(numeric)), i
        else:  # activation parameters are not differentiated: 0
            assert float(grad[i]) == 0


def test_opcheck():
    model, shape = SMALL["gap-d3"]
    codes, ints, floats = cnn_op_args(lift(model.to(DTYPE)))
    x1, x2 = _inputs(shape, duplicate=False)
    nodes = weights = x1.new_zeros(0)
    for b in (x2, None):
        torch.library.opcheck(torch.ops.torch_ntk.cnn_kernels.default,
                              (x1, b, codes, ints, floats, nodes, weights, False, True, True))
        n2 = 3 if b is None else 2
        grads = (torch.randn(3, n2, dtype=DTYPE), torch.randn(3, n2, dtype=DTYPE))
        torch.library.opcheck(torch.ops.torch_ntk.cnn_kernels_backward.default,
                              (*grads, x1.detach(), None if b is None else b.detach(), codes,
                               ints, floats, nodes, weights, False))


def test_one_output_wanted_and_float32():
    model, shape = SMALL["flatten-d2"]
    spec = lift(model.to(DTYPE))
    x1, x2 = _inputs(shape, duplicate=False)
    (got,) = torch.autograd.grad(analytic_kernels(spec, x1, x2, get="ntk").ntk.sum(), x1)
    (ref,) = torch.autograd.grad(walker(spec, x1, x2).ntk.sum(), x1)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    # float32: the same gradient to float32 rounding (error of the float64 result's order)
    a = x1.detach().float().requires_grad_()
    (got32,) = torch.autograd.grad(analytic_kernels(spec, a, x2.detach().float()).ntk.sum(), a)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def test_programs_without_a_compiled_backward_take_the_walker_or_raise():
    shape = (1, 4, 4)
    x1, _ = _inputs(shape, duplicate=False)
    tanh = nn.Sequential(NTKConv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         NTKLinear(2 * 16, 1)).to(DTYPE)
    k = analytic_kernels(tanh, x1)  # the torch walker differentiates it
    assert not type(k.ntk.grad_fn).__name__.startswith(FUSED)
    k.ntk.sum().backward()
    assert x1.grad is not None and torch.isfinite(x1.grad).all()
    codes, ints, floats = cnn_op_args(lift(tanh))
    nodes, weights = torch_ntk.activations.hermite_rule(8)
    _, ntk = ops.cnn_kernels(x1, None, codes, ints, floats, nodes, weights)
    with pytest.raises(NotImplementedError, match=r"layer 1 \(ACTIVATION, act_id 6\) has no backward"):
        ntk.sum().backward()
    assert not ops.cnn_backward_supported(codes, ints)
    relu_codes, relu_ints, _ = cnn_op_args(lift(SMALL["flatten-d2"][0]))
    assert ops.cnn_backward_supported(relu_codes, relu_ints)
    assert not ops.cnn_backward_supported(relu_codes, relu_ints, force_quadrature=True)


def test_bad_input_and_no_double_backward():
    model, shape = SMALL["gap-d3"]
    spec = lift(model.to(DTYPE))
    codes, ints, floats = cnn_op_args(spec)
    x1, x2 = _inputs(shape, duplicate=False)
    nodes = weights = x1.new_zeros(0)
    with pytest.raises(ValueError, match=r"grad_ntk must have the outputs' shape \[3, 2\]"):
        ops.cnn_kernels_backward(torch.zeros(3, 2, dtype=DTYPE), torch.zeros(2, 3, dtype=DTYPE),
                                 x1.detach(), x2.detach(), codes, ints, floats, nodes, weights)
    with pytest.raises(TypeError, match="grad_nngp"):
        ops.cnn_kernels_backward(torch.zeros(3, 2), torch.zeros(3, 2, dtype=DTYPE), x1.detach(),
                                 x2.detach(), codes, ints, floats, nodes, weights)
    (g,) = torch.autograd.grad(analytic_kernels(spec, x1, x2).ntk.sum(), x1, create_graph=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        g.sum().backward()
    wv = torch.tensor(2.0, dtype=DTYPE, requires_grad=True)
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(analytic_kernels(spec, x1, x2, weight_var=wv).ntk.sum(), x1,
                            create_graph=True)


def test_non_contiguous_inputs():
    """A strided view that requires grad: the same gradient as the contiguous images."""
    model, shape = SMALL["gap-d3"]
    spec = lift(model.to(DTYPE))
    x1, x2 = _inputs(shape, duplicate=False)
    view = x1.detach().repeat_interleave(2, dim=3)[..., ::2].requires_grad_()
    assert not view.is_contiguous()
    (got,) = torch.autograd.grad(analytic_kernels(spec, view, x2.detach()).ntk.sum(), view)
    (ref,) = torch.autograd.grad(analytic_kernels(spec, x1, x2.detach()).ntk.sum(), x1)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
