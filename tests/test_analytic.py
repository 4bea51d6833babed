"""Infinite-width NNGP and NTK: the fused op against the plain-torch recursion,
Monte Carlo of wide random networks, and the kernels' structural properties."""

import itertools

import pytest
import torch
from torch import nn

import torch_ntk as tn
from torch_ntk.reference import analytic_kernels_reference

from conftest import EXACT_F32, EXACT_F64, devices, dtypes, rel_err
from oracles import monte_carlo

ACTIVATIONS = [
    ("relu", None), ("leaky_relu", 0.1), ("abs", None), ("identity", None), ("erf", None),
    ("gelu", None), ("tanh", None), ("sigmoid", None), ("silu", None), ("softplus", 2.0),
    ("elu", 1.3), ("selu", None),
]


def _spec(name, param, depth, parametrization="ntk", bias_std=0.3, weight_std=1.2, widths=64):
    act = tn.activations.from_name(name, param)
    return tn.mlp_spec([5] + [widths] * depth + [2], act, weight_std, bias_std, parametrization)


@pytest.mark.parametrize("name, param", ACTIVATIONS)
@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_fused_op_matches_reference_float64(name, param, parametrization, symmetric):
    depth = 3
    spec = _spec(name, param, depth, parametrization)
    x1 = torch.randn(9, 5, dtype=torch.float64)
    x2 = None if symmetric else torch.randn(4, 5, dtype=torch.float64)
    degree = 16  # the reference's quadrature holds N1·N2·degree² values
    k = tn.analytic_kernels(spec, x1, x2, quadrature_degree=degree)
    nngp, ntk = analytic_kernels_reference(spec, x1, x2, quadrature_degree=degree)
    assert rel_err(k.nngp, nngp) <= EXACT_F64
    assert rel_err(k.ntk, ntk) <= EXACT_F64


@pytest.mark.parametrize("depth", [1, 2, 5])
@pytest.mark.parametrize("bias_std", [0.0, 0.5])
def test_depths_and_biases_match_reference(depth, bias_std):
    spec = _spec("relu", None, depth, bias_std=bias_std)
    x1, x2 = torch.randn(7, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    for b in (None, x2):
        k = tn.analytic_kernels(spec, x1, b)
        nngp, ntk = analytic_kernels_reference(spec, x1, b)
        assert rel_err(k.nngp, nngp) <= EXACT_F64 and rel_err(k.ntk, ntk) <= EXACT_F64


def test_depth_one_is_the_input_gram():
    spec = tn.mlp_spec([5, 3], "relu", weight_std=1.5, bias_std=0.2)
    x = torch.randn(6, 5, dtype=torch.float64)
    k = tn.analytic_kernels(spec, x)
    expected = 1.5**2 * x @ x.T / 5 + 0.2**2
    assert rel_err(k.nngp, expected) <= EXACT_F64 and rel_err(k.ntk, expected) <= EXACT_F64


@pytest.mark.parametrize("name", ["relu", "erf", "tanh"])
def test_float32_close_to_float64(name):
    spec = _spec(name, None, 4)
    x = torch.randn(40, 5, dtype=torch.float64)
    k64 = tn.analytic_kernels(spec, x)
    k32 = tn.analytic_kernels(spec, x.float())
    assert k32.ntk.dtype == torch.float32
    assert rel_err(k32.nngp, k64.nngp) <= EXACT_F32 and rel_err(k32.ntk, k64.ntk) <= EXACT_F32


@pytest.mark.parametrize("name, param", [("relu", None), ("erf", None), ("gelu", None)])
@pytest.mark.parametrize("dtype", dtypes)
def test_symmetric_exact_psd_and_consistent(name, param, dtype):
    spec = _spec(name, param, 3)
    x = torch.randn(60, 5, dtype=dtype)
    k = tn.analytic_kernels(spec, x)
    assert torch.equal(k.ntk, k.ntk.T) and torch.equal(k.nngp, k.nngp.T)
    both = tn.analytic_kernels(spec, x, x)
    # With x2 = x the diagonal pairs are coincident points seen from two batches: their angle
    # (θ = 0) is resolved only to ~sqrt(eps), 3e-4 in float32 (documented in analytic.py).
    # Quadrature is not symmetric under swapping u and v: there the orders differ by the
    # quadrature error (~1e-5 at the default degree).
    if tn.activations.from_name(name).has_closed_form:
        tol = 1e-7 if dtype == torch.float64 else 3e-3
    else:
        tol = 1e-4
    assert rel_err(both.ntk, k.ntk) <= tol and rel_err(both.nngp, k.nngp) <= tol
    for K in (k.ntk.double(), k.nngp.double()):
        eig = torch.linalg.eigvalsh(K)
        assert eig.min() > 0, "distinct inputs give a positive definite Gram matrix"


def test_positive_definite_on_sphere():
    """Jacot Prop. 2: Θ∞ is PD on distinct points of the sphere (non-polynomial φ).

    24 points: smooth activations give analytic kernels whose spectra decay exponentially
    (min eigenvalue ~1e-7 of the max here, ~1e-11 at 80 points: then rounding decides)."""
    x = torch.nn.functional.normalize(torch.randn(24, 3, dtype=torch.float64), dim=1)
    for name in ("relu", "tanh", "erf"):
        k = tn.analytic_kernels(tn.mlp_spec([3, 8, 8, 1], name, bias_std=0.0), x)
        assert torch.linalg.eigvalsh(k.ntk).min() > 1e-9 * k.ntk.diagonal().max()


@pytest.mark.parametrize("name", ["relu", "erf", "tanh", "selu"])
@pytest.mark.parametrize("bias_std", [0.0, 0.1])
def test_zero_inputs_give_finite_values(name, bias_std):
    spec = _spec(name, None, 3, bias_std=bias_std)
    x = torch.randn(5, 5, dtype=torch.float64)
    x[1] = 0
    x[3] = 0
    for b in (None, x[:2]):
        # The reference's path: 2-D quadrature of degree 64 (the series path with zero inputs:
        # tests/test_hermite.py).
        k = tn.analytic_kernels(spec, x, b, quadrature_degree=64)
        assert torch.isfinite(k.ntk).all() and torch.isfinite(k.nngp).all()
        nngp, ntk = analytic_kernels_reference(spec, x, b)
        assert rel_err(k.ntk, ntk) <= EXACT_F64 and rel_err(k.nngp, nngp) <= EXACT_F64


def test_non_contiguous_inputs():
    spec = _spec("tanh", None, 2)
    base = torch.randn(5, 20, dtype=torch.float64)
    x1 = base[:, ::4]  # strided columns
    x2 = torch.randn(5, 8, dtype=torch.float64).T[:, :5]  # transposed, [8, 5] non-contiguous
    assert not x1.is_contiguous() and not x2.is_contiguous()
    k = tn.analytic_kernels(spec, x1, x2)
    k_ref = tn.analytic_kernels(spec, x1.contiguous(), x2.contiguous())
    assert torch.equal(k.ntk, k_ref.ntk) and torch.equal(k.nngp, k_ref.nngp)


def test_get_selects_outputs():
    spec = _spec("relu", None, 2)
    x = torch.randn(6, 5)
    both = tn.analytic_kernels(spec, x)
    only_ntk = tn.analytic_kernels(spec, x, get="ntk")
    only_nngp = tn.analytic_kernels(spec, x, get=("nngp",))
    assert only_ntk.nngp is None and torch.equal(only_ntk.ntk, both.ntk)
    assert only_nngp.ntk is None and torch.equal(only_nngp.nngp, both.nngp)


def test_model_and_spec_agree_and_flatten():
    model = nn.Sequential(nn.Flatten(), tn.NTKLinear(6, 32), nn.Tanh(), nn.Dropout(0.1),
                          tn.NTKLinear(32, 1))
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    k_model = tn.analytic_kernels(model, x)
    k_spec = tn.analytic_kernels(tn.mlp_spec([6, 32, 1], "tanh"), x.flatten(1))
    assert torch.equal(k_model.ntk, k_spec.ntk)


# Monte Carlo: Jacot et al. Prop. 1 (NNGP) and Thm. 1 (NTK at initialization), width-1024
# hidden layers. NNGP: 48 networks with 256 outputs each (conditionally i.i.d. given the last
# hidden layer), forward passes only; NTK: 12 networks with 8 outputs, by torch.func. The
# tolerances (relative to the largest entry) cover the Monte-Carlo error (measured spread
# ~2-3%) and the O(1/width) finite-width bias.
MC_CASES = [
    ("relu", 1, 0.1), ("relu", 3, 0.0), ("erf", 2, 0.1), ("tanh", 2, 0.0), ("gelu", 4, 0.1),
]
MC_NNGP_TOL, MC_NTK_TOL = 0.06, 0.06


def _monte_carlo_errors(make, widths_out, spec_or_model, x1, x2):
    nngp_mc, _ = monte_carlo(lambda: make(256), x1, x2, samples=48, want_ntk=False)
    _, ntk_mc = monte_carlo(lambda: make(8), x1, x2, samples=12)
    k = tn.analytic_kernels(spec_or_model, x1.double(), x2.double())
    return rel_err(nngp_mc, k.nngp), rel_err(ntk_mc, k.ntk)


@pytest.mark.parametrize("name, depth, bias_std", MC_CASES)
def test_analytic_matches_monte_carlo_of_wide_networks(name, depth, bias_std):
    width = 1024
    x1, x2 = torch.randn(4, 3), torch.randn(3, 3)
    widths = [3] + [width] * depth

    def make(n_out):
        return tn.ntk_mlp(widths + [n_out], name, weight_std=1.0, bias_std=bias_std)

    spec = tn.mlp_spec(widths + [1], name, bias_std=bias_std)
    err_nngp, err_ntk = _monte_carlo_errors(make, widths, spec, x1, x2)
    assert err_nngp < MC_NNGP_TOL and err_ntk < MC_NTK_TOL


def test_standard_parametrization_of_torch_linear_matches_monte_carlo():
    """nn.Linear with PyTorch's default init lifts to σ_w² = 1/3, σ_b² = 1/(3 fan_in), and the
    standard-parametrization NTK (weight term ⟨a, a'⟩ without 1/n) matches torch.func."""
    width = 1024
    x1, x2 = torch.randn(4, 3), torch.randn(3, 3)

    def make(n_out):
        return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                             nn.Linear(width, n_out))

    err_nngp, err_ntk = _monte_carlo_errors(make, None, make(1), x1, x2)
    assert err_nngp < MC_NNGP_TOL and err_ntk < MC_NTK_TOL


@pytest.mark.parametrize("device", devices)
@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("name, param", [("relu", None), ("erf", None), ("tanh", None), ("elu", 1.0)])
@pytest.mark.parametrize("symmetric", [True, False])
def test_devices_against_cpu_float64(device, dtype, name, param, symmetric):
    spec = _spec(name, param, 3)
    x1 = torch.randn(70, 5, dtype=torch.float64)  # not a multiple of the CUDA tile
    x2 = None if symmetric else torch.randn(33, 5, dtype=torch.float64)
    ref = tn.analytic_kernels(spec, x1, x2)
    k = tn.analytic_kernels(spec, x1.to(device, dtype), None if x2 is None else x2.to(device, dtype))
    assert k.ntk.device.type == device and k.ntk.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else EXACT_F32
    assert rel_err(k.ntk, ref.ntk) <= tol and rel_err(k.nngp, ref.nngp) <= tol
    if symmetric:
        assert torch.equal(k.ntk, k.ntk.T)
