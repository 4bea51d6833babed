"""Infinite-width NNGP and NTK: the fused op against the plain-torch recursion (the same
formulas in another implementation, torch_ntk.analytic.reference: an implementation check, not an
independent one), against tests/independent.py (numpy/scipy, shares nothing with the
package; every activation is in test_independent.py), Monte Carlo of wide random
networks built from the package's modules, and the kernels' structural properties."""

import itertools

import pytest
import torch
from torch import nn

import torch_ntk as tn
from torch_ntk.analytic.reference import analytic_kernels_reference

from conftest import EXACT_F32, EXACT_F64, devices, dtypes, rel_err
import independent as ind

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
def test_depths_and_biases_match_the_independent_oracle(depth, bias_std):
    spec = _spec("relu", None, depth, bias_std=bias_std)
    net = ind.mlp([5] + [64] * depth + [2], "relu", None, 1.2, bias_std, closed_form=True)
    x1, x2 = torch.randn(7, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    for b in (None, x2):
        k = tn.analytic_kernels(spec, x1, b)
        nngp, ntk = ind.kernels(net, x1.numpy(), None if b is None else b.numpy())
        assert ind.rel_err(k.nngp.numpy(), nngp) <= 1e-12
        assert ind.rel_err(k.ntk.numpy(), ntk) <= 1e-12


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


# Monte Carlo of the package's own modules (their real initialization and forward), one
# hidden layer of width 512, where the mean over networks is the limit at any width: every
# entry within Z_MAX standard errors. NNGP: 200 networks × 16 outputs (forward passes);
# NTK: 40 networks × 4 outputs, per-sample gradients by autograd. nn.Linear is checked at
# n_0 = 64: its uniform first layer is Gaussian only by the central limit (at n_0 = 4 the
# mean NTK is 3.4% off the Gaussian limit; see test_independent.py).
Z_MAX = 4.5


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("kind, name, bias_std", [
    ("ntk", "relu", 0.5), ("ntk", "tanh", 0.5), ("ntk", "elu", 0.5), ("torch", "relu", None)])
def test_modules_match_the_limit_within_standard_errors(kind, name, bias_std):
    d = 64 if kind == "torch" else 3
    x1, x2 = torch.randn(4, d, dtype=torch.float64), torch.randn(3, d, dtype=torch.float64)

    def make(n_out):
        if kind == "torch":
            return nn.Sequential(nn.Linear(d, 512), nn.ReLU(), nn.Linear(512, n_out)).double()
        return tn.ntk_mlp([d, 512, n_out], name, weight_std=1.3, bias_std=bias_std,
                          dtype=torch.float64)

    def jacobian(model, x):  # [N, n_out, P]
        params = list(model.parameters())
        return torch.stack([torch.stack([torch.cat([g.flatten() for g in torch.autograd.grad(
            model(xi[None])[0, k], params)]) for k in range(4)]) for xi in x])

    nngp, ntk = [], []
    for s in range(200):
        torch.manual_seed(s)
        model = make(16)
        with torch.no_grad():
            nngp.append(model(x1) @ model(x2).T / 16)
        if s < 40:
            model = make(4)
            ntk.append(torch.einsum("ikp,jkp->ij", jacobian(model, x1), jacobian(model, x2)) / 4)
    k = tn.analytic_kernels(make(1), x1, x2)
    for samples, target in ((torch.stack(nngp), k.nngp), (torch.stack(ntk), k.ntk)):
        z = (samples.mean(0) - target) / (samples.std(0) / len(samples) ** 0.5)
        assert z.abs().max() <= Z_MAX, z


def _device_cases():
    """(device, dtype, name, param, symmetric), leaving out CPU float64 with a quadrature
    activation: it would be a call compared with an identical call (test_independent.py
    checks the CPU float64 quadrature against scipy), so it is not generated at all."""
    cases = []
    for device in devices:
        for dtype in dtypes:
            for name, param in [("relu", None), ("erf", None), ("tanh", None), ("elu", 1.0)]:
                for symmetric in (True, False):
                    dev = device.values[0] if hasattr(device, "values") else device
                    if dev == "cpu" and dtype == torch.float64 and name in ("tanh", "elu"):
                        continue
                    marks = device.marks if hasattr(device, "marks") else ()
                    cases.append(pytest.param(dev, dtype, name, param, symmetric, marks=marks))
    return cases


@pytest.mark.parametrize("device, dtype, name, param, symmetric", _device_cases())
def test_devices_against_cpu_float64(device, dtype, name, param, symmetric):
    """Closed forms against the independent oracle; quadrature activations against the
    CPU in float64 (the same quadrature: 1e-12)."""
    closed = name in ind.CLOSED_FORMS
    spec = _spec(name, param, 3)
    x1 = torch.randn(70, 5, dtype=torch.float64)  # not a multiple of the CUDA tile
    x2 = None if symmetric else torch.randn(33, 5, dtype=torch.float64)
    if closed:
        net = ind.mlp([5, 64, 64, 64, 2], name, param, 1.2, 0.3, closed_form=True)
        nngp, ntk = (torch.from_numpy(t) for t in ind.kernels(
            net, x1.numpy(), None if x2 is None else x2.numpy()))
    else:
        nngp, ntk = tn.analytic_kernels(spec, x1, x2)
    k = tn.analytic_kernels(spec, x1.to(device, dtype), None if x2 is None else x2.to(device, dtype))
    assert k.ntk.device.type == device and k.ntk.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else EXACT_F32
    assert rel_err(k.ntk, ntk) <= tol and rel_err(k.nngp, nngp) <= tol
    if symmetric:
        assert torch.equal(k.ntk, k.ntk.T)


# Bad-input fuzzing: any batch either gives finite kernels or a ValueError/TypeError that
# names the argument; never NaN, never another exception.
from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None, derandomize=True)
@given(n1=st.integers(0, 4), n2=st.one_of(st.none(), st.integers(0, 3)),
       d1=st.integers(4, 6), d2=st.integers(4, 6),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.int64, torch.float16]),
       bad=st.sampled_from([None, float("nan"), float("inf")]), where=st.sampled_from(["x1", "x2"]))
def test_fuzzed_inputs_give_finite_kernels_or_errors_naming_the_argument(n1, n2, d1, d2, dtype,
                                                                         bad, where):
    spec = tn.mlp_spec([5, 8, 1], "tanh")
    x1 = torch.randn(n1, d1, dtype=torch.float64).to(dtype)
    x2 = None if n2 is None else torch.randn(n2, d2, dtype=torch.float64).to(dtype)
    target = x1 if where == "x1" or x2 is None else x2
    if bad is not None and target.numel() and target.is_floating_point():
        target.view(-1)[0] = bad
    try:
        k = tn.analytic_kernels(spec, x1, x2)
    except (ValueError, TypeError) as error:
        assert "analytic_kernels: x1" in str(error) or "analytic_kernels: x2" in str(error)
        return
    assert torch.isfinite(k.ntk).all() and torch.isfinite(k.nngp).all()
    assert k.ntk.shape == (n1, n1 if n2 is None else n2)
