"""The GP log evidence (predict.gp_marginal_likelihood) and the hyperparameter fit (issue 30).

Oracles:
- the log evidence against scipy.stats.multivariate_normal.logpdf summed over the columns
  (float64, 1e-10 relative), and a wrong formula (log det counted once, not per column;
  the ridge left out) fails that comparison;
- its gradient w.r.t. k, y and diag_reg by torch.autograd.gradcheck (central differences,
  float64, eps 1e-6, atol 1e-5, rtol 1e-3);
- the gradient of the fit's objective w.r.t. σ_w², σ_b², σ² (per layer) by central
  differences of the *fused* op's kernels (no autograd involved; step 1e-5, relative 1e-6),
  and by gradcheck of the torch path;
- data drawn from the GP of known σ_w² = 1.6, σ_b² = 0.3, σ² = 0.05 (N = 200, 8 columns):
  the fit recovers them (σ_w² within 10%, σ_b² within 30%, σ² within 15%) and its evidence
  is at least the true parameters' (it is the maximum).
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

import torch_ntk
from torch_ntk import analytic_kernels, fit_kernel_hyperparameters, mlp_spec
from torch_ntk.predict import KernelConditioningWarning, gp_marginal_likelihood

pytestmark = pytest.mark.usefixtures("one_thread")
DTYPE = torch.float64


def _psd(n=12, rank=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, rank or n, dtype=DTYPE, generator=g)
    return a @ a.T / (rank or n), g


def _scipy_evidence(k, y, noise) -> float:
    cov = (k + noise * torch.eye(k.shape[0], dtype=DTYPE)).numpy()
    cols = y.reshape(k.shape[0], -1).T.numpy()
    return float(sum(multivariate_normal(np.zeros(k.shape[0]), cov).logpdf(c) for c in cols))


@pytest.mark.parametrize("columns", [None, 1, 3])
@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_log_evidence_against_scipy(columns, noise):
    k, g = _psd()
    k = k + 0.1 * torch.eye(12, dtype=DTYPE)  # PD also at noise 0
    shape = (12,) if columns is None else (12, columns)
    y = torch.randn(*shape, dtype=DTYPE, generator=g)
    expected = _scipy_evidence(k, y, noise)
    got = gp_marginal_likelihood(k, y, noise)
    assert got.dim() == 0 and got.dtype == DTYPE
    assert float(got) == pytest.approx(expected, rel=1e-10)
    as_tensor = gp_marginal_likelihood(k, y, torch.tensor(noise, dtype=DTYPE))
    assert float(as_tensor) == pytest.approx(expected, rel=1e-10)


def test_a_wrong_formula_fails_the_scipy_comparison():
    """The reference can tell: log det counted once for 3 columns, or the ridge left out."""
    k, g = _psd()
    y = torch.randn(12, 3, dtype=DTYPE, generator=g)
    a = k + 0.3 * torch.eye(12, dtype=DTYPE)
    logdet = float(torch.logdet(a))
    right = float(gp_marginal_likelihood(k, y, 0.3))
    once = right + 0.5 * 2 * logdet  # −½ log det once instead of three times
    no_ridge = float(gp_marginal_likelihood(k + 1e-3 * torch.eye(12, dtype=DTYPE), y))
    expected = _scipy_evidence(k, y, 0.3)
    assert right == pytest.approx(expected, rel=1e-10)
    for wrong in (once, no_ridge):
        assert abs(wrong - expected) > 1e-3 * abs(expected)


def test_log_evidence_gradcheck():
    """Gradients w.r.t. k (through a free factor, so k stays symmetric), y and diag_reg."""
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 6, dtype=DTYPE, generator=g, requires_grad=True)
    y = torch.randn(6, 2, dtype=DTYPE, generator=g, requires_grad=True)
    noise = torch.tensor(0.4, dtype=DTYPE, requires_grad=True)

    def f(a, y, noise):
        return gp_marginal_likelihood(a @ a.T / 6, y, noise)

    assert torch.autograd.gradcheck(f, (a, y, noise))


def test_log_evidence_gradient_of_k_is_the_symmetric_formula():
    """d log p / dK = ½ (α αᵀ − C A⁻¹) with α = A⁻¹Y (Rasmussen & Williams eq. 5.9)."""
    k, g = _psd(8)
    y = torch.randn(8, 3, dtype=DTYPE, generator=g)
    k.requires_grad_(True)
    gp_marginal_likelihood(k, y, 0.2).backward()
    a_inv = torch.linalg.inv(k.detach() + 0.2 * torch.eye(8, dtype=DTYPE))
    alpha = a_inv @ y
    assert torch.allclose(k.grad, 0.5 * (alpha @ alpha.T - 3 * a_inv), rtol=1e-10, atol=1e-12)


def test_log_evidence_bad_input():
    k, g = _psd(5)
    y = torch.randn(5, dtype=DTYPE, generator=g)
    cases = [
        (lambda: gp_marginal_likelihood(k.numpy(), y), TypeError, "k must be a torch.Tensor"),
        (lambda: gp_marginal_likelihood(k.long(), y), TypeError, "k must be float32"),
        (lambda: gp_marginal_likelihood(k[:, :4], y), ValueError, "k must be square"),
        (lambda: gp_marginal_likelihood(k + torch.triu(k, 1), y), ValueError, "symmetric"),
        (lambda: gp_marginal_likelihood(k * float("nan"), y), ValueError, "NaN or Inf"),
        (lambda: gp_marginal_likelihood(k, y[:4]), ValueError, r"y must have shape \[N\]"),
        (lambda: gp_marginal_likelihood(k, y.float()), ValueError, "y must have the dtype of k"),
        (lambda: gp_marginal_likelihood(k, y, -0.1), ValueError, "diag_reg must be finite and >="),
        (lambda: gp_marginal_likelihood(k, y, math.nan), ValueError, "diag_reg"),
        (lambda: gp_marginal_likelihood(k, y, "0.1"), TypeError, "diag_reg must be a number"),
        (lambda: gp_marginal_likelihood(k, y, torch.tensor(0.1)), ValueError,
         "diag_reg must have the dtype of k"),
        (lambda: gp_marginal_likelihood(k, y, torch.ones(2, dtype=DTYPE)), ValueError,
         "diag_reg must be a number or a 0-dim tensor"),
        (lambda: gp_marginal_likelihood(k, y, torch.tensor(-1.0, dtype=DTYPE)), ValueError,
         "diag_reg must be >= 0"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()


def test_log_evidence_not_positive_definite_names_a_working_ridge():
    k, g = _psd(6)
    bad = k - 2 * float(torch.linalg.eigvalsh(k)[0].abs() + 0.05) * torch.eye(6, dtype=DTYPE)
    y = torch.randn(6, dtype=DTYPE, generator=g)
    with pytest.raises(ValueError, match=r"not positive definite.*diag_reg=") as info:
        gp_marginal_likelihood(bad, y)
    ridge = float(re.search(r"diag_reg=([0-9.e+-]+)", str(info.value)).group(1))
    assert math.isfinite(float(gp_marginal_likelihood(bad, y, ridge)))
    low_rank, _ = _psd(8, rank=2)  # PD after + 1e-14·I, but λ_min below the rounding level
    with pytest.warns(KernelConditioningWarning, match="nearly singular.*diag_reg="):
        gp_marginal_likelihood(low_rank, torch.randn(8, dtype=DTYPE, generator=g), 1e-14)


# ---- the fit ---------------------------------------------------------------------------

TRUE = {"weight_var": 1.6, "bias_var": 0.3, "noise": 0.05}


def _gp_data(seed: int, n: int = 200, columns: int = 8):
    """Inputs of varied norms (so σ_b² is identifiable) and y ~ N(0, Σ_true + σ²I)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, dtype=DTYPE, generator=g) * torch.empty(n, 1, dtype=DTYPE).uniform_(
        0.3, 2.5, generator=g)
    spec = mlp_spec([3, 1, 1, 1], "relu", weight_std=TRUE["weight_var"] ** 0.5,
                    bias_std=TRUE["bias_var"] ** 0.5)
    k = analytic_kernels(spec, x).nngp
    chol = torch.linalg.cholesky(k + TRUE["noise"] * torch.eye(n, dtype=DTYPE))
    y = chol @ torch.randn(n, columns, dtype=DTYPE, generator=g)
    return x, y, float(gp_marginal_likelihood(k, y, TRUE["noise"]))


@pytest.mark.parametrize("seed", [0, 1])
def test_fit_recovers_the_variances_of_the_gp_that_drew_the_data(seed):
    x, y, true_evidence = _gp_data(seed)
    start = mlp_spec([3, 1, 1, 1], "relu", weight_std=1.0, bias_std=0.1)
    fitted = fit_kernel_hyperparameters(start, x, y)
    assert fitted.weight_var.shape == fitted.bias_var.shape == (3,)
    assert torch.equal(fitted.weight_var, fitted.weight_var[:1].expand(3))  # shared
    assert float(fitted.weight_var[0]) == pytest.approx(TRUE["weight_var"], rel=0.10)
    assert float(fitted.bias_var[0]) == pytest.approx(TRUE["bias_var"], rel=0.30)
    assert float(fitted.diag_reg) == pytest.approx(TRUE["noise"], rel=0.15)
    assert float(fitted.log_evidence[-1]) >= true_evidence - 1e-6
    assert float(fitted.log_evidence[-1]) > float(fitted.log_evidence[0]) + 100
    # the reported evidence is the one of the returned spec and ridge
    again = gp_marginal_likelihood(analytic_kernels(fitted.spec, x).nngp, y, fitted.diag_reg)
    assert float(again) == pytest.approx(float(fitted.log_evidence[-1]), rel=1e-10)


def test_per_layer_fit_with_adam_raises_the_evidence():
    x, y, _ = _gp_data(2, n=60, columns=4)
    start = mlp_spec([3, 1, 1, 1], "relu", weight_std=1.0, bias_std=0.1)
    fitted = fit_kernel_hyperparameters(start, x, y, per_layer=True, method="adam", steps=60,
                                        lr=0.05, kernel="ntk")
    assert fitted.log_evidence.shape == (61,)
    assert float(fitted.log_evidence[-1]) > float(fitted.log_evidence[0])
    assert len(set(fitted.weight_var.tolist())) == 3  # one per layer
    only_noise = fit_kernel_hyperparameters(start, x, y, fit="diag_reg", steps=20)
    assert only_noise.weight_var.tolist() == [1.0] * 3
    assert only_noise.bias_var.tolist() == pytest.approx([0.01] * 3, rel=1e-12)


def _objective(spec, x, y, w, b, s, kernel):
    k = getattr(analytic_kernels(spec, x, get=kernel, weight_var=w, bias_var=b), kernel)
    return gp_marginal_likelihood(k, y, s)


@pytest.mark.parametrize("kernel", ["nngp", "ntk"])
@pytest.mark.parametrize("activation", ["relu", "erf", "tanh"])
def test_objective_gradient_against_differences_of_the_fused_op(kernel, activation):
    """Autograd of the torch path against central differences of the fused op's kernels."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 3, dtype=DTYPE, generator=g)
    y = torch.randn(10, 2, dtype=DTYPE, generator=g)
    spec = mlp_spec([3, 1, 1, 1], activation)
    w = torch.tensor([1.3, 0.8, 1.1], dtype=DTYPE, requires_grad=True)
    b = torch.tensor([0.2, 0.05, 0.1], dtype=DTYPE, requires_grad=True)
    s = torch.tensor(0.3, dtype=DTYPE, requires_grad=True)
    _objective(spec, x, y, w, b, s, kernel).backward()
    h = 1e-5
    for name, value, grad in (("w", w, w.grad), ("b", b, b.grad), ("s", s, s.grad)):
        for i in range(value.numel()):
            diffs = []
            for sign in (1, -1):
                args = {"w": w.detach().tolist(), "b": b.detach().tolist(),
                        "s": float(s.detach())}
                if name == "s":
                    args["s"] += sign * h
                else:
                    args[name][i] += sign * h
                with torch.no_grad():  # floats: the fused op, no autograd
                    diffs.append(float(_objective(spec, x, y, args["w"], args["b"], args["s"],
                                                  kernel)))
            numeric = (diffs[0] - diffs[1]) / (2 * h)
            assert float(grad.reshape(-1)[i]) == pytest.approx(numeric, rel=1e-6, abs=1e-8), (
                name, i)


def test_objective_gradcheck_cnn():
    model = torch.nn.Sequential(torch_ntk.nn.NTKConv2d(1, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch_ntk.nn.NTKLinear(4 * 16, 1))
    spec = torch_ntk.lift(model)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 1, 4, 4, dtype=DTYPE, generator=g)
    y = torch.randn(5, dtype=DTYPE, generator=g)
    w = torch.tensor([1.5, 0.9], dtype=DTYPE, requires_grad=True)
    b = torch.tensor([0.1, 0.2], dtype=DTYPE, requires_grad=True)
    s = torch.tensor(0.1, dtype=DTYPE, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda w, b, s: _objective(spec, x, y, w, b, s, "ntk"), (w, b, s))


def test_fit_bad_input():
    x, y, _ = _gp_data(0, n=10, columns=1)
    spec = mlp_spec([3, 1, 1], "relu")
    fit = fit_kernel_hyperparameters
    cases = [
        (lambda: fit(spec, x, y, kernel="gram"), ValueError, "kernel must be 'nngp' or 'ntk'"),
        (lambda: fit(spec, x, y, fit=("sigma",)), ValueError, "fit must name some of"),
        (lambda: fit(spec, x, y, fit=()), ValueError, "fit must name some of"),
        (lambda: fit(spec, x, y, steps=-1), ValueError, "steps must be at least 0"),
        (lambda: fit(spec, x, y, method="sgd"), ValueError, "method must be"),
        (lambda: fit(spec, x, y, lr=0.0), ValueError, "lr must be a positive number"),
        (lambda: fit(spec, x, y[:5]), ValueError, r"y must be a tensor \[N\] or \[N, C\]"),
        (lambda: fit(spec, x, y.numpy()), TypeError, "y must be a torch.Tensor"),
        (lambda: fit(mlp_spec([3, 1, 1], "relu", bias_std=0.0), x, y), ValueError,
         "bias_var starts at 0.0"),
        (lambda: fit(spec, x, y, diag_reg=0.0), ValueError, "diag_reg starts at 0.0"),
        (lambda: fit(spec, x.float(), y), ValueError, "y must have the dtype of k"),
        (lambda: fit(spec, x[:, :2], y), ValueError, "x"),
        (lambda: fit("relu", x, y), TypeError, "model_or_spec"),
    ]
    for call, error, message in cases:
        with pytest.raises(error, match=message):
            call()
