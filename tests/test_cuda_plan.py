"""The GPU test plan of issue 28 (the desk review's section 3): what a first GPU run must
catch. Every test needs CUDA (skipped without it) and compares the CUDA op with the CPU
op on the same inputs; the CPU ops are checked against independent oracles elsewhere
(test_analytic.py, test_independent.py, test_cnn_op.py). scripts/gpu_check.sh runs this
file in its cuda_tests step.

Tolerances: float64 1e-12 relative to the largest entry (1e-10 for the CNN op, its
tier in test_cnn_op.py); float32 against the CPU in float64 at EXACT_F32; the float32
exact-diagonal check elementwise (torch.testing.assert_close, rtol 1e-6) against the
CPU float32 diagonal, which --use_fast_math breaks (4.65e-5 measured on an H200).
"""

import pytest
import torch
from torch import nn

import torch_ntk as tn
from torch_ntk.activations import REGISTRY

from conftest import CUDA, EXACT_F32, rel_err

pytestmark = CUDA

SERIES = [("tanh", None), ("sigmoid", None), ("silu", None), ("gelu", 0.0), ("gelu", 1.0),
          ("softplus", 1.0)]


def _pair(n1=70, n2=33, n0=5, scale=1.0):
    g = torch.Generator().manual_seed(7)
    return (scale * torch.randn(n1, n0, generator=g, dtype=torch.float64),
            scale * torch.randn(n2, n0, generator=g, dtype=torch.float64))


def _cuda(t, dtype):
    return None if t is None else t.to("cuda", dtype)


@pytest.mark.parametrize("name, param", SERIES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("symmetric", [True, False])
def test_cuda_series_activations(name, param, dtype, symmetric):
    """Default degree: the Hermite-series path (tables, K choice, exact series diagonal)."""
    spec = tn.mlp_spec([5, 32, 32, 32, 1], tn.activations.from_name(name, param), 1.2, 0.2)
    x1, x2 = _pair()
    x2 = None if symmetric else x2
    ref = tn.analytic_kernels(spec, x1, x2)
    got = tn.analytic_kernels(spec, _cuda(x1, dtype), _cuda(x2, dtype))
    tol = 1e-12 if dtype == torch.float64 else EXACT_F32
    assert rel_err(got.ntk, ref.ntk) <= tol and rel_err(got.nngp, ref.nngp) <= tol
    if symmetric:
        assert torch.equal(got.ntk, got.ntk.T)


def test_cuda_series_fallback_large_inputs():
    """Inputs x 30: sample variances beyond the series' K_max, so pairs take the composite
    quadrature fallback (a warp-divergent branch on the GPU)."""
    spec = tn.mlp_spec([5, 32, 32, 32, 32, 1], "tanh", 1.2, 0.2)
    x1, x2 = _pair(40, 21, scale=30.0)
    for b in (None, x2):
        ref = tn.analytic_kernels(spec, x1, b)
        got = tn.analytic_kernels(spec, x1.cuda(), _cuda(b, torch.float64))
        assert rel_err(got.ntk, ref.ntk) <= 1e-12 and rel_err(got.nngp, ref.nngp) <= 1e-12


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "abs"])
def test_cuda_float32_exact_diagonal(name):
    """x2 = None in float32, N = 513, depth 5: the diagonal equals the CPU float32 diagonal
    elementwise to 1e-6 (IEEE sqrt gives sqrt(q*q) == q, so the angle is exactly 0), and
    the whole matrix is within 2e-6 of the CPU float32 result."""
    spec = tn.mlp_spec([20] + [64] * 5 + [1], name, 1.4, 0.1)
    x = torch.randn(513, 20)
    cpu = tn.analytic_kernels(spec, x)
    gpu = tn.analytic_kernels(spec, x.cuda())
    for field in ("ntk", "nngp"):
        a, b = getattr(gpu, field).cpu(), getattr(cpu, field)
        torch.testing.assert_close(a.diagonal(), b.diagonal(), rtol=1e-6, atol=0)
        torch.testing.assert_close(a, b, rtol=2e-6, atol=2e-6 * float(b.abs().max()))
        assert rel_err(a, b) <= 2e-6


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("derivative", [False, True])
def test_cuda_activation_op_float32(name, derivative):
    """phi and phi' in float32 against the CPU float32 (rtol 1e-6, atol 1e-7: libm and
    CUDA's IEEE-accurate expf/tanhf/erff differ by a few ulp; MUFU.TANH is ~1e-5)."""
    entry = REGISTRY[name]
    x = torch.linspace(-8, 8, 4001)
    cpu = tn.ops.activation(x, entry.id, entry.default_param or 0.7, derivative)
    gpu = tn.ops.activation(x.cuda(), entry.id, entry.default_param or 0.7, derivative)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-7)


def _cnn(c0, readout, act=nn.ReLU, depth=2, width=8):
    layers, c = [], c0
    for _ in range(depth):
        layers += [tn.nn.NTKConv2d(c, width, 3, padding="same"), act()]
        c = width
    if readout == "gap":
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), tn.NTKLinear(width, 1)]
    elif readout == "pool":
        layers += [nn.AvgPool2d(2), nn.Flatten(), tn.NTKLinear(width * 16, 1)]
    else:
        layers += [nn.Flatten(), tn.NTKLinear(width * 15, 1)]  # 5 x 3 images
    return nn.Sequential(*layers)


@pytest.mark.parametrize("hw, readout, dtype", [
    ((8, 8), "gap", torch.float64),      # full planes 4 x 64^2 doubles: ~130 KB opt-in
    ((8, 8), "pool", torch.float32),     # ~65 KB opt-in, AVGPOOL then FLATTEN
    ((6, 6), "gap", torch.float32),
    ((5, 3), "flatten", torch.float32),  # FLATTEN ReLU: (p, p) entries, sqrt-sensitive
])
def test_cuda_cnn_shared_memory_paths(hw, readout, dtype):
    model = _cnn(2, readout)
    x1 = torch.randn(6, 2, *hw, dtype=torch.float64)
    x2 = torch.randn(5, 2, *hw, dtype=torch.float64)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for b in (None, x2):
        ref = tn.analytic_kernels(model, x1.to(dtype), None if b is None else b.to(dtype))
        got = tn.analytic_kernels(model, _cuda(x1, dtype), _cuda(b, dtype))
        assert rel_err(got.ntk, ref.ntk) <= tol and rel_err(got.nngp, ref.nngp) <= tol
        if b is None:
            assert torch.equal(got.ntk, got.ntk.T)
            if readout == "flatten":  # the diagonal elementwise, as the MLP check above
                torch.testing.assert_close(got.ntk.diagonal().cpu(), ref.ntk.diagonal(),
                                           rtol=1e-6, atol=0)


def test_cuda_ops_on_a_side_stream():
    """Each op launched on a non-default stream, on inputs made on that stream, gives the
    default stream's result bit for bit (the kernels' order of arithmetic is fixed)."""
    mlp = tn.mlp_spec([5, 32, 32, 1], "tanh", 1.2, 0.2)
    cnn = _cnn(2, "gap")
    x, img = torch.randn(50, 5, dtype=torch.float64), torch.randn(4, 2, 6, 6, dtype=torch.float64)
    base = (tn.analytic_kernels(mlp, x.cuda()).ntk, tn.analytic_kernels(cnn, img.cuda()).ntk,
            tn.ops.activation(x.cuda(), REGISTRY["gelu"].id, 0.0))
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        xs, imgs = x.to("cuda", non_blocking=False), img.to("cuda")
        side = (tn.analytic_kernels(mlp, xs).ntk, tn.analytic_kernels(cnn, imgs).ntk,
                tn.ops.activation(xs, REGISTRY["gelu"].id, 0.0))
    stream.synchronize()
    for a, b in zip(side, base):
        assert torch.equal(a, b)


def test_cuda_noncontiguous_and_channels_last():
    mlp = tn.mlp_spec([5, 32, 32, 1], "relu", 1.4, 0.1)
    wide = torch.randn(60, 10, dtype=torch.float64, device="cuda")
    x = wide[:, ::2]                     # strided columns
    xt = x.T.contiguous().T              # column-major
    ref = tn.analytic_kernels(mlp, x.contiguous()).ntk
    assert torch.equal(tn.analytic_kernels(mlp, x).ntk, ref)
    assert torch.equal(tn.analytic_kernels(mlp, xt).ntk, ref)
    cnn = _cnn(3, "gap")
    img = torch.randn(5, 3, 6, 6, dtype=torch.float64, device="cuda")
    ref = tn.analytic_kernels(cnn, img).ntk
    got = tn.analytic_kernels(cnn, img.to(memory_format=torch.channels_last)).ntk
    assert torch.equal(got, ref)


def test_cuda_large_symmetric_case():
    """N = 3000 (94 tiles a side), float32 ReLU: exactly symmetric, within 2e-6 of the CPU
    float32 result and its diagonal to 1e-6 elementwise."""
    spec = tn.mlp_spec([30, 64, 64, 64, 1], "relu", 1.4, 0.1)
    x = torch.randn(3000, 30)
    gpu = tn.analytic_kernels(spec, x.cuda()).ntk
    cpu = tn.analytic_kernels(spec, x).ntk
    assert torch.equal(gpu, gpu.T)
    assert rel_err(gpu, cpu) <= 2e-6
    torch.testing.assert_close(gpu.diagonal().cpu(), cpu.diagonal(), rtol=1e-6, atol=0)
