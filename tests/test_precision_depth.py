"""The analytic op under torch's reduced-precision matmul settings, and at depth 1000.

* The input Gram product x1 x2^T is formed in full precision whatever
  ``torch.set_float32_matmul_precision`` / ``torch.backends.cuda.matmul.allow_tf32`` say
  (csrc/analytic_spec.h full_precision_gram). On this CPU the "medium" setting makes
  torch's own float32 matmul use bfloat16 (checked below, so the test knows it bites);
  on CUDA "high" and allow_tf32 give TF32. Oracle: the same op in float64 (its
  float32 result must stay within the float32 tier of it) and the float32 result under
  the default "highest" setting (unchanged to 1e-6 relative; a bf16 or TF32 Gram moves
  the ReLU NTK of a point present in x1 and x2 by ~1e-2).
* Depth 1000-1200 hidden layers: the CUDA kernels keep the layer table in global
  memory when it does not fit the default 48 KB of shared memory (csrc/cuda/
  analytic_ntk_cuda.cu table_placement); the CPU runs the same host preparation. Oracle:
  the plain-torch layer recursion (torch_ntk.analytic.reference) in float64.
"""

import pytest
import torch

import torch_ntk as tn
from torch_ntk.analytic.reference import analytic_kernels_reference

from conftest import CUDA, EXACT_F32, devices, rel_err


@pytest.fixture
def matmul_precision():
    """Restores torch's float32 matmul settings after the test changes them."""
    precision = torch.get_float32_matmul_precision()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    yield
    torch.set_float32_matmul_precision(precision)
    torch.backends.cuda.matmul.allow_tf32 = tf32


def _shared_points(device):
    """x1 [60, 40], x2 [30, 40] with 10 rows of x2 equal to rows of x1 (angle exactly 0)."""
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(60, 40, generator=g, dtype=torch.float64)
    x2 = torch.randn(30, 40, generator=g, dtype=torch.float64)
    x2[:10] = x1[5:15]
    return x1.to(device), x2.to(device)


def _relu_spec(depth=3):
    return tn.mlp_spec([40] + [64] * depth + [1], "relu", 1.4, 0.1)


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("setting", ["medium", "high", "tf32"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_gram_ignores_reduced_matmul_precision(device, setting, symmetric, matmul_precision):
    spec = _relu_spec()
    x1, x2 = _shared_points(device)
    x2 = None if symmetric else x2
    f32 = lambda t: None if t is None else t.float()  # noqa: E731
    ref64 = tn.analytic_kernels(spec, x1, x2)
    base = tn.analytic_kernels(spec, f32(x1), f32(x2))  # default: "highest"
    if setting == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        torch.set_float32_matmul_precision(setting)
    # The setting is live: torch's own float32 product changes where the backend has a
    # reduced-precision path (bf16 on this CPU for "medium"; TF32 on CUDA for the others).
    y = x2 if x2 is not None else x1
    plain = f32(x1) @ f32(y).T
    reduced = rel_err(plain, x1 @ y.T) > 1e-4
    got = tn.analytic_kernels(spec, f32(x1), f32(x2))
    for a, b in ((got.ntk, base.ntk), (got.nngp, base.nngp)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
    assert rel_err(got.ntk, ref64.ntk) <= 2e-6 and rel_err(got.nngp, ref64.nngp) <= 2e-6
    if device == "cpu" and setting == "medium":
        assert reduced, "bf16 matmul expected on this CPU under 'medium'; test would not bite"


@pytest.mark.parametrize("device", devices)
def test_shared_point_angle_is_exact_in_float32(device, matmul_precision):
    """A point present in x1 and x2 gets angle 0: its ReLU NTK entry equals the diagonal
    entry of the symmetric call (which is exact by construction) to float32 rounding.
    A Gram in TF32 or bf16 (rho off by ~1e-3) moves it by ~1e-2."""
    torch.set_float32_matmul_precision("medium")
    torch.backends.cuda.matmul.allow_tf32 = True
    spec = _relu_spec(depth=5)
    x1, x2 = (t.float() for t in _shared_points(device))
    rect = tn.analytic_kernels(spec, x1, x2).ntk
    diag = tn.analytic_kernels(spec, x1).ntk.diagonal()
    torch.testing.assert_close(rect[5:15, :10].diagonal(), diag[5:15], rtol=1e-5, atol=0)


def test_sensitivity_of_the_shared_point_check():
    """The check above fails for a bf16-rounded Gram: the reference recursion fed with
    bf16-rounded inputs (what "medium" gives torch's matmul) moves the shared-point
    entries by more than 100 times the 1e-5 tolerance."""
    spec = _relu_spec(depth=5)
    x1, x2 = _shared_points("cpu")
    exact = analytic_kernels_reference(spec, x1, x2)[1][5:15, :10].diagonal()
    rounded = analytic_kernels_reference(
        spec, x1.bfloat16().double(), x2.double())[1][5:15, :10].diagonal()
    assert rel_err(rounded, exact) > 1e-3


def _deep_cases():
    """float64: 1000 ReLU layers (He variance), past the ~500 (symmetric) / ~767
    (rectangular) layers whose table fits 48 KB of shared memory. float32: 1200 erf
    layers, past the ~1130 of float32; erf (ordered phase) and not ReLU because deep ReLU
    correlations approach 1 as 1 - O(1/l^2), so float32 loses ~1e-2 in the angle at this
    depth on any device (measured 2e-2 on the CPU), a property of the arithmetic and not
    of the table path."""
    cases = []
    for device in devices:
        dev = device.values[0] if hasattr(device, "values") else device
        marks = device.marks if hasattr(device, "marks") else ()
        for dtype, tol in ((torch.float64, 1e-10), (torch.float32, EXACT_F32)):
            for symmetric in (True, False):
                cases.append(pytest.param(dev, dtype, tol, symmetric, marks=marks,
                                          id=f"{dev}-{str(dtype)[6:]}-{'sym' if symmetric else 'rect'}"))
    return cases


@pytest.mark.parametrize("device, dtype, tol, symmetric", _deep_cases())
def test_deep_mlp_matches_reference(device, dtype, tol, symmetric):
    """Tolerance 1e-10 (float64) and EXACT_F32 (float32; measured 7e-7 on the CPU)."""
    if dtype == torch.float64:
        spec = tn.mlp_spec([6] + [32] * 1000 + [1], "relu", 2**0.5, 0.05)
    else:
        spec = tn.mlp_spec([6] + [32] * 1200 + [1], "erf", 1.0, 0.3)
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(40, 6, generator=g, dtype=torch.float64)
    x2 = None if symmetric else torch.randn(23, 6, generator=g, dtype=torch.float64)
    nngp, ntk = analytic_kernels_reference(spec, x1, x2)
    got = tn.analytic_kernels(spec, x1.to(device, dtype),
                              None if x2 is None else x2.to(device, dtype))
    assert rel_err(got.ntk, ntk) <= tol and rel_err(got.nngp, nngp) <= tol
    if symmetric:
        assert torch.equal(got.ntk, got.ntk.T)


@CUDA
@pytest.mark.parametrize("name", ["tanh", "gelu"])
def test_cuda_depth_600_series_and_large_quadrature_degree(name):
    """Deep smooth nets on CUDA (Hermite series tables, 600 layers, float64) against the
    CPU, and a quadrature degree of 300 (the old CUDA cap was 256) against the CPU."""
    spec = tn.mlp_spec([5] + [16] * 600 + [1], name, 1.1, 0.2)
    x1 = torch.randn(37, 5, dtype=torch.float64)
    x2 = torch.randn(19, 5, dtype=torch.float64)
    for b in (None, x2):
        cpu = tn.analytic_kernels(spec, x1, b)
        gpu = tn.analytic_kernels(spec, x1.cuda(), None if b is None else b.cuda())
        # 1e-11: the rounding of 600 layers (FMA contraction differs between the compilers)
        assert rel_err(gpu.ntk, cpu.ntk) <= 1e-11 and rel_err(gpu.nngp, cpu.nngp) <= 1e-11
    spec = tn.mlp_spec([5, 16, 16, 1], name, 1.1, 0.2)
    cpu = tn.analytic_kernels(spec, x1, x2, quadrature_degree=300, force_quadrature=True)
    gpu = tn.analytic_kernels(spec, x1.cuda(), x2.cuda(), quadrature_degree=300,
                              force_quadrature=True)
    assert rel_err(gpu.ntk, cpu.ntk) <= 1e-12


# ---- the differentiable (autograd) path: torch's own products (issue 28, item 6)

def _small_cnn():
    from torch import nn
    return nn.Sequential(tn.nn.NTKConv2d(2, 8, 3, padding=1), nn.ReLU(),
                         tn.nn.NTKConv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), tn.NTKLinear(8, 1))


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("setting", ["medium", "tf32"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_autograd_path_ignores_reduced_matmul_precision(device, setting, kind,
                                                        matmul_precision):
    """Inputs that require grad take the torch composite (torch_ntk.analytic.autograd, the
    CNN walker); its Gram ⟨x, x′⟩ is formed in float64 and rounded once like the fused
    op's, so "medium" (bf16 matmul on this CPU, checked) or TF32 leave the float32 kernels
    unchanged to 1e-6 (elementwise) against the default "highest", and within 2e-6 of
    float64. x1 and x2 share points (angle 0), where a bf16/TF32 Gram moves the ReLU NTK
    by ~1e-2 (test_sensitivity_of_the_shared_point_check)."""
    if kind == "mlp":
        model = _relu_spec()
        x1, x2 = _shared_points(device)
    else:
        model = _small_cnn().double().to(device)
        g = torch.Generator().manual_seed(4)
        x1 = torch.randn(5, 2, 6, 6, generator=g, dtype=torch.float64).to(device)
        x2 = torch.cat([x1[:2], torch.randn(2, 2, 6, 6, generator=g,
                                            dtype=torch.float64).to(device)])
    ref64 = tn.analytic_kernels(model, x1, x2)
    model32 = model if kind == "mlp" else model.float()

    def run():
        a, b = x1.float().requires_grad_(), x2.float().requires_grad_()
        out = tn.analytic_kernels(model32, a, b)
        out.ntk.sum().backward()  # the composite ran: gradients reached both inputs
        assert a.grad is not None and b.grad is not None
        return out

    base = run()
    if setting == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        torch.set_float32_matmul_precision(setting)
    got = run()
    for a, b, r in ((got.ntk, base.ntk, ref64.ntk), (got.nngp, base.nngp, ref64.nngp)):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=0)
        assert rel_err(a.detach().double(), r) <= 2e-6
    if device == "cpu" and setting == "medium":  # the composite's own product, in float32
        if kind == "mlp":
            plain, exact = x1.float() @ x2.float().T, x1 @ x2.T
        else:
            eq = "achw,bcij->abhwij"  # the CNN walker's input planes
            plain, exact = torch.einsum(eq, x1.float(), x2.float()), torch.einsum(eq, x1, x2)
        assert rel_err(plain.double(), exact) > 1e-4, \
            "bf16 products expected on this CPU under 'medium'; the test would not bite"
