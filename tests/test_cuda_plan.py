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

import numpy as np
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


# ---- issue 28, second round: the reworked kernels (compile-checked only until a GPU run)

@pytest.mark.parametrize("name", ["pool_gap", "pool_flatten", "gap_only", "pool_k3_s2",
                                  "pool_3x2_s1x2"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_cnn_separable_taps_match_cpu(name, dtype):
    """Full planes: the CUDA block sums the taps separably (cnn_conv_separable_team) in the
    CPU's order, so CUDA and CPU agree to rounding of the final reductions: 1e-13 in
    float64, 1e-6 in float32 (both against the CPU in the same dtype); and the CPU float64
    reference of tests/test_cnn_op.py at 1e-10 (float64)."""
    import test_cnn_op as cnn_op
    net = cnn_op.NETS[name]
    g = torch.Generator().manual_seed(2)
    x1 = torch.randn(7, 2, 6, 5, generator=g, dtype=torch.float64)
    x2 = torch.randn(4, 2, 6, 5, generator=g, dtype=torch.float64)
    codes, ints, floats, layers = cnn_op.encode(net, 2, 6, 5, "ntk")
    nodes, weights = (torch.as_tensor(v) for v in np.polynomial.hermite.hermgauss(24))
    tol = 1e-13 if dtype == torch.float64 else 1e-5
    for b in (None, x2):
        args = (codes, ints, floats, nodes.to(dtype), weights.to(dtype))
        cpu = tn.ops.cnn_kernels(x1.to(dtype), None if b is None else b.to(dtype), *args)
        gpu = tn.ops.cnn_kernels(_cuda(x1, dtype), _cuda(b, dtype),
                                 codes, ints, floats, nodes.to("cuda", dtype),
                                 weights.to("cuda", dtype))
        for g_, c_ in zip(gpu, cpu):
            assert rel_err(g_.cpu(), c_) <= tol
    if dtype == torch.float64:
        ref = cnn_op.reference(layers, x1, x2)
        gpu = tn.ops.cnn_kernels(x1.cuda(), x2.cuda(), codes, ints, floats, nodes.cuda(),
                                 weights.cuda())
        assert all(rel_err(g_.cpu(), r_) <= 1e-10 for g_, r_ in zip(gpu, ref))


def test_cuda_cnn_wide_temporary_plane():
    """A CONV whose output is wider and lower than its input (its separable temporary plane
    is the largest plane: cnn_spec.h sizes the scratch for it), on a 9 x 11 image, float64,
    against the CPU op (1e-13)."""
    import test_cnn_op as cnn_op
    net = [cnn_op.conv(3, (5, 5), pad=((0, 0), (3, 3))), cnn_op.act("relu"),
           cnn_op.conv(2, (3, 3), pad=((1, 1), (1, 1))), cnn_op.act("relu"),
           cnn_op.GAP_, cnn_op.dense()]
    x = torch.randn(5, 2, 9, 11, dtype=torch.float64)
    codes, ints, floats, _ = cnn_op.encode(net, 2, 9, 11, "ntk")
    empty = torch.zeros(0, dtype=torch.float64)
    cpu = tn.ops.cnn_kernels(x, None, codes, ints, floats, empty, empty)
    gpu = tn.ops.cnn_kernels(x.cuda(), None, codes, ints, floats, empty.cuda(), empty.cuda())
    assert all(rel_err(g_.cpu(), c_) <= 1e-13 for g_, c_ in zip(gpu, cpu))


@pytest.mark.parametrize("symmetric", [True, False])
def test_cuda_series_fallback_second_pass(symmetric):
    """Inputs x 30, tanh depth 4: many pairs fail the series bound and go to the fallback
    pass (fallback_kernel, after the pair kernels marked them in the mask). The first
    wanted output overwrites the Gram buffer, so the pair kernels must leave those pairs'
    entries unwritten for fallback_kernel to read: each wanted subset, both layouts, N1 =
    100 (several 32-column mask words per row, ragged tiles), against the CPU (1e-12,
    float64; one CPU call per layout, ~1 s on 16 cores), exactly symmetric when x2 = None."""
    spec = tn.mlp_spec([5, 32, 32, 32, 32, 1], "tanh", 1.2, 0.2)
    x1, x2 = _pair(100, 45, scale=30.0)
    b = None if symmetric else x2
    ref = tn.analytic_kernels(spec, x1, b)
    for get in ("nngp", "ntk", ("nngp", "ntk")):
        got = tn.analytic_kernels(spec, x1.cuda(), _cuda(b, torch.float64), get=get)
        for field in (get,) if isinstance(get, str) else get:
            g_, r_ = getattr(got, field).cpu(), getattr(ref, field)
            assert rel_err(g_, r_) <= 1e-12, (get, field)
            if symmetric:
                assert torch.equal(g_, g_.T)


def test_cuda_series_float32_work_buffer():
    """float32 series tables accumulate their coefficients in a [2, K, n] double work
    buffer shared by the x1 and x2 launches (n1 = 300 and n2 = 517: several blocks, two
    sizes): against the CPU float32 result (EXACT_F32) and float64 (EXACT_F32)."""
    spec = tn.mlp_spec([5, 32, 32, 1], "gelu", 1.2, 0.2)
    x1, x2 = _pair(300, 517)
    ref = tn.analytic_kernels(spec, x1, x2)
    cpu32 = tn.analytic_kernels(spec, x1.float(), x2.float())
    gpu = tn.analytic_kernels(spec, x1.float().cuda(), x2.float().cuda())
    for field in ("ntk", "nngp"):
        g_ = getattr(gpu, field).cpu()
        assert rel_err(g_, getattr(cpu32, field)) <= EXACT_F32
        assert rel_err(g_.double(), getattr(ref, field)) <= EXACT_F32


@pytest.mark.parametrize("n_out", [3, 40])
def test_cuda_structured_diagonal_tiles(n_out):
    """mode 'diagonal' goes through accumulate_diagonal_kernel's 32 x 32 shared-memory
    tiles: 40 channels (a full and a partial channel tile), 70 columns (ragged column
    tiles), several layers (first and accumulating launches), against the CPU (1e-12)."""
    from test_empirical import F64, op_inputs
    for n2 in (None, 70):
        a1, d1, a2, d2, cw, cb = op_inputs(150, n2, n_out, F64)
        cpu = tn.ops.structured_ntk(a1, d1, a2, d2, cw, cb, "diagonal")
        mv = lambda ts: None if ts is None else [t.cuda() for t in ts]  # noqa: E731
        gpu = tn.ops.structured_ntk(mv(a1), mv(d1), mv(a2), mv(d2), cw, cb, "diagonal")
        assert rel_err(gpu.cpu(), cpu) <= 1e-12
