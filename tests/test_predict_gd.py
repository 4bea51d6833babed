"""torch_ntk.predict.gradient_descent (kernel gradient descent on any cost, by an ODE solver).

References: the closed form of gradient_descent_mse (1e-8 in float64), a fixed-step RK4
written here with step 1e-3·t_max (the two agree to ≤ 4.7e-12 on these smooth flows;
tolerance 5e-11), a damped-oscillator closed form per eigenmode for momentum, and the NaN
checks of gp_inference / kernel_pca (issue 16).
"""

from __future__ import annotations

import importlib.util
import math
import sys

import pytest
import torch

import torch_ntk
from torch_ntk.predict import gp_inference, gradient_descent, gradient_descent_mse, kernel_pca

pytestmark = pytest.mark.usefixtures("one_thread")
needs_ode = pytest.mark.skipif(importlib.util.find_spec("torchdiffeq") is None,
                               reason="needs torchdiffeq: pip install 'torch-ntk[ode]'")

F64 = torch.float64
N, M, C = 24, 7, 3


# the ODE solver (rtol 1e-10) against fixed-step RK4: achieved ≤ 4.7e-12 (measured on every
# comparison below); ~10× that.
ODE_TOL = 5e-11


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| / max |b|."""
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module")
def problem():
    """An infinite-width NTK on 24 + 7 random inputs, targets, initial outputs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 5, generator=g, dtype=F64)
    x_test = torch.randn(M, 5, generator=g, dtype=F64)
    spec = torch_ntk.ntk_mlp([5, 8, 8, C], "relu", dtype=F64)
    k = torch_ntk.analytic_kernels(spec, x).ntk
    k_test = torch_ntk.analytic_kernels(spec, x_test, x).ntk
    labels = torch.randint(0, C, (N,), generator=g)
    return {
        "k": k, "k_test": k_test, "labels": labels,
        "onehot": torch.nn.functional.one_hot(labels, C).to(F64),
        "y": torch.randn(N, C, generator=g, dtype=F64),
        "f0": 0.5 * torch.randn(N, C, generator=g, dtype=F64),
        "g0": 0.5 * torch.randn(M, C, generator=g, dtype=F64),
    }


def rk4(grad, kernel, k_test, f0, g0, eta, t_end, steps):
    """Fixed-step classical RK4 of f' = −η K ∇C(f), g' = −η K_test ∇C(f) (the reference)."""
    h = t_end / steps

    def field(f):
        d = grad(f)
        return -eta * (kernel @ d), -eta * (k_test @ d)

    f, g = f0.clone(), g0.clone()
    for _ in range(steps):
        a1, b1 = field(f)
        a2, b2 = field(f + 0.5 * h * a1)
        a3, b3 = field(f + 0.5 * h * a2)
        a4, b4 = field(f + h * a3)
        f = f + h / 6 * (a1 + 2 * a2 + 2 * a3 + a4)
        g = g + h / 6 * (b1 + 2 * b2 + 2 * b3 + b4)
    return f, g


def ce_grad(onehot):
    return lambda f: (torch.softmax(f, -1) - onehot) / f.shape[0]


# --------------------------------------------------------------------------- mse


@needs_ode
@pytest.mark.parametrize("eta", [0.5, 3.0])
def test_mse_matches_closed_form(problem, eta):
    p = problem
    ts = torch.tensor([0.0, 0.3, 2.0, 15.0, 120.0], dtype=F64)
    args = (ts, p["f0"], p["g0"], p["k_test"])
    got = gradient_descent("mse", p["k"], p["y"], learning_rate=eta)(*args)
    ref = gradient_descent_mse(p["k"], p["y"], learning_rate=eta)(*args)
    for i in range(len(ts)):
        assert rel(got.train[i], ref.train[i]) < 1e-8, float(ts[i])
        assert rel(got.test[i], ref.test[i]) < 1e-8, float(ts[i])
        # and the change from f_0 itself, not just the outputs, to 1e-7
        if ts[i] > 0:
            assert rel(got.train[i] - p["f0"], ref.train[i] - p["f0"]) < 1e-7


@needs_ode
def test_mse_full_kernel_matches_closed_form():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 4, generator=g, dtype=F64)
    x_test = torch.randn(4, 4, generator=g, dtype=F64)
    torch.manual_seed(1)
    model = torch_ntk.ntk_mlp([4, 16, 2], "tanh", dtype=F64)
    k = torch_ntk.empirical_ntk(model, x, mode="full")            # [10, 10, 2, 2]
    k_test = torch_ntk.empirical_ntk(model, x_test, x, mode="full")
    y = torch.randn(10, 2, generator=g, dtype=F64)
    with torch.no_grad():
        f0, g0 = model(x), model(x_test)
    ts = torch.tensor([0.5, 4.0, 40.0], dtype=F64)
    got = gradient_descent("mse", k, y, learning_rate=2.0)(ts, f0, g0, k_test)
    ref = gradient_descent_mse(k, y, learning_rate=2.0)(ts, f0, g0, k_test)
    assert got.train.shape == (3, 10, 2) and got.test.shape == (3, 4, 2)
    assert rel(got.train, ref.train) < 1e-8 and rel(got.test, ref.test) < 1e-8


# ----------------------------------------------------------------- cross-entropy


@needs_ode
@pytest.mark.parametrize("targets", ["onehot", "labels"])
def test_cross_entropy_matches_rk4(problem, targets):
    p = problem
    eta, t_end = 4.0, 6.0
    predict = gradient_descent("cross_entropy", p["k"], p[targets], learning_rate=eta)
    got = predict(t_end, p["f0"], p["g0"], p["k_test"])
    f, g = rk4(ce_grad(p["onehot"]), p["k"], p["k_test"], p["f0"], p["g0"], eta, t_end, 6000)
    assert rel(got.train, f) < ODE_TOL and rel(got.test, g) < ODE_TOL
    assert rel(got.train - p["f0"], f - p["f0"]) < ODE_TOL   # the motion, not only f_0


@needs_ode
def test_cross_entropy_full_kernel_matches_rk4():
    """A full kernel couples the outputs: reference on the flattened [N·n_L] system."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(9, 3, generator=g, dtype=F64)
    x_test = torch.randn(5, 3, generator=g, dtype=F64)
    torch.manual_seed(2)
    model = torch_ntk.ntk_mlp([3, 12, 3], "tanh", dtype=F64)
    k = torch_ntk.empirical_ntk(model, x, mode="full")            # [9, 9, 3, 3]
    k_test = torch_ntk.empirical_ntk(model, x_test, x, mode="full")
    labels = torch.arange(9) % 3
    onehot = torch.nn.functional.one_hot(labels, 3).to(F64)
    with torch.no_grad():
        f0, g0 = model(x), model(x_test)
    got = gradient_descent("cross_entropy", k, onehot, learning_rate=3.0)(5.0, f0, g0, k_test)
    flat = k.permute(0, 2, 1, 3).reshape(27, 27)
    flat_test = k_test.permute(0, 2, 1, 3).reshape(15, 27)

    def grad(v):  # v: [27, 1] flattened [9, 3]
        return ce_grad(onehot)(v.reshape(9, 3)).reshape(27, 1)

    f, gt = rk4(grad, flat, flat_test, f0.reshape(27, 1), g0.reshape(15, 1), 3.0, 5.0, 5000)
    assert rel(got.train, f.reshape(9, 3)) < ODE_TOL and rel(got.test, gt.reshape(5, 3)) < ODE_TOL


@needs_ode
def test_cross_entropy_classifies_its_training_set(problem):
    p = problem
    out = gradient_descent("cross_entropy", p["k"], p["labels"], learning_rate=4.0)(
        [20.0, 2000.0], torch.zeros(N, C, dtype=F64))
    loss = [float(torch.nn.functional.cross_entropy(f, p["labels"])) for f in out.train]
    assert loss[1] < loss[0] < math.log(C)
    assert bool((out.train[1].argmax(1) == p["labels"]).all())


# ------------------------------------------------------------------ custom costs


@needs_ode
def test_callable_cost_matches_rk4(problem):
    """A quartic cost C = (1/4N) Σ (f − y)⁴, gradient by autograd vs its analytic form."""
    p = problem

    def quartic(f, y):
        return (f - y).pow(4).sum() / (4 * f.shape[0])

    got = gradient_descent(quartic, p["k"], p["y"], learning_rate=2.0)(3.0, p["f0"], p["g0"],
                                                                       p["k_test"])
    f, g = rk4(lambda f: (f - p["y"]).pow(3) / N, p["k"], p["k_test"], p["f0"], p["g0"], 2.0,
               3.0, 3000)
    assert rel(got.train, f) < ODE_TOL and rel(got.test, g) < ODE_TOL


@needs_ode
def test_callable_cross_entropy_agrees_with_named(problem):
    """torch's cross_entropy through autograd against the closed-form gradient path."""
    p = problem
    ts = [0.5, 5.0]
    named = gradient_descent("cross_entropy", p["k"], p["labels"], learning_rate=2.0)(
        ts, p["f0"], p["g0"], p["k_test"])
    custom = gradient_descent(torch.nn.functional.cross_entropy, p["k"], p["labels"],
                              learning_rate=2.0)(ts, p["f0"], p["g0"], p["k_test"])
    assert rel(custom.train, named.train) < 1e-8 and rel(custom.test, named.test) < 1e-8


# ----------------------------------------------------------------- times, momentum


@needs_ode
def test_t_zero_returns_initial_function(problem):
    p = problem
    out = gradient_descent("cross_entropy", p["k"], p["onehot"])(0.0, p["f0"], p["g0"], p["k_test"])
    assert torch.equal(out.train, p["f0"]) and torch.equal(out.test, p["g0"])
    zero = gradient_descent("mse", p["k"], p["y"])(0, None)
    assert torch.equal(zero.train, torch.zeros(N, C, dtype=F64)) and zero.test is None


@needs_ode
def test_vector_t_equals_separate_calls(problem):
    p = problem
    predict = gradient_descent("cross_entropy", p["k"], p["labels"], learning_rate=2.0)
    ts = torch.tensor([5.0, 0.0, 1.0, 5.0], dtype=F64)          # unsorted, repeated, zero
    out = predict(ts, p["f0"], p["g0"], p["k_test"])
    assert out.train.shape == (4, N, C) and out.test.shape == (4, M, C)
    assert torch.equal(out.train[1], p["f0"]) and torch.equal(out.train[0], out.train[3])
    for i in (0, 2):
        one = predict(float(ts[i]), p["f0"], p["g0"], p["k_test"])
        assert rel(out.train[i], one.train) < 1e-8 and rel(out.test[i], one.test) < 1e-8


@needs_ode
def test_momentum_mse_matches_damped_oscillators(problem):
    """Per eigenmode of K the residual solves r'' + (1 − μ) r' + (ηλ/N) r = 0, r'(0) = 0."""
    p = problem
    eta, mu, ts = 2.0, 0.9, torch.tensor([1.0, 7.0, 30.0], dtype=F64)
    got = gradient_descent("mse", p["k"], p["y"], learning_rate=eta, momentum=mu)(ts, p["f0"])
    lam, u = torch.linalg.eigh(p["k"])
    r0 = u.T @ (p["f0"] - p["y"])                                 # [N, C]
    gamma = 1.0 - mu
    omega2 = (eta * lam.clamp_min(0) / N).to(torch.complex128)
    root = torch.sqrt(gamma ** 2 - 4 * omega2)
    s1, s2 = (-gamma + root) / 2, (-gamma - root) / 2
    for i, t in enumerate(ts):
        mode = ((s2 * torch.exp(s1 * t) - s1 * torch.exp(s2 * t)) / (s2 - s1)).real
        ref = p["y"] + u @ (mode[:, None] * r0)
        assert rel(got.train[i], ref) < 1e-8, float(t)
    # test points equal to the training points follow the same second-order flow
    same = gradient_descent("mse", p["k"], p["y"], learning_rate=eta, momentum=mu)(
        ts, p["f0"], p["f0"], p["k"])
    assert rel(same.test, same.train) < 1e-8 and rel(same.train, got.train) < 1e-8


@needs_ode
def test_float32_close_to_float64(problem):
    p = problem
    ref = gradient_descent("cross_entropy", p["k"], p["labels"], learning_rate=2.0)(
        10.0, p["f0"], p["g0"], p["k_test"])
    got = gradient_descent("cross_entropy", p["k"].float(), p["labels"], learning_rate=2.0)(
        10.0, p["f0"].float(), p["g0"].float(), p["k_test"].float())
    assert got.train.dtype == torch.float32
    assert rel(got.train.double(), ref.train) < 1e-4 and rel(got.test.double(), ref.test) < 1e-4


@needs_ode
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(problem):
    p = problem
    cpu = gradient_descent("cross_entropy", p["k"], p["labels"], learning_rate=2.0)(
        [1.0, 10.0], p["f0"], p["g0"], p["k_test"])
    dev = {k: v.cuda() for k, v in p.items()}
    gpu = gradient_descent("cross_entropy", dev["k"], dev["labels"], learning_rate=2.0)(
        [1.0, 10.0], dev["f0"], dev["g0"], dev["k_test"])
    assert gpu.train.is_cuda and gpu.test.is_cuda
    assert rel(gpu.train.cpu(), cpu.train) < 1e-8 and rel(gpu.test.cpu(), cpu.test) < 1e-8


# -------------------------------------------------------------------- bad input


@needs_ode
def test_bad_cost(problem):
    p = problem
    with pytest.raises(ValueError, match="cost must be one of"):
        gradient_descent("hinge", p["k"], p["y"])
    with pytest.raises(TypeError, match="cost must be a name"):
        gradient_descent(3, p["k"], p["y"])
    per_sample = gradient_descent(lambda f, y: (f - y).pow(2).sum(1), p["k"], p["y"])
    with pytest.raises(ValueError, match="must return a scalar"):
        per_sample(1.0, p["f0"])
    with pytest.raises(TypeError, match="must return a scalar torch.Tensor"):
        gradient_descent(lambda f, y: 1.0, p["k"], p["y"])(1.0, p["f0"])
    with pytest.raises(ValueError, match="does not depend on f"):
        gradient_descent(lambda f, y: y.sum(), p["k"], p["y"])(1.0, p["f0"])
    with pytest.raises(ValueError, match="finite float scalar"):
        gradient_descent(lambda f, y: f.sum() * math.nan, p["k"], p["y"])(1.0, p["f0"])


@needs_ode
def test_nan_kernels(problem):
    p = problem
    k = p["k"].clone()
    k[2, 3] = k[3, 2] = math.nan
    with pytest.raises(ValueError, match="k_train_train contains NaN"):
        gradient_descent("cross_entropy", k, p["labels"])
    k_test = p["k_test"].clone()
    k_test[0, 0] = math.nan
    predict = gradient_descent("cross_entropy", p["k"], p["labels"])
    with pytest.raises(ValueError, match="k_test_train contains NaN"):
        predict(1.0, p["f0"], None, k_test)
    f0 = p["f0"].clone()
    f0[1, 1] = math.inf
    with pytest.raises(ValueError, match="fx_train_0 contains NaN"):
        predict(1.0, f0)


@needs_ode
def test_mismatched_shapes(problem):
    p = problem
    with pytest.raises(ValueError, match="y_train must have shape"):
        gradient_descent("mse", p["k"], p["y"][:-1])
    with pytest.raises(ValueError, match="k_train_train must be square"):
        gradient_descent("mse", p["k"][:, :-1], p["y"])
    with pytest.raises(ValueError, match="integer y_train must hold N = 24"):
        gradient_descent("cross_entropy", p["k"], p["labels"][:-1])
    with pytest.raises(ValueError, match=r"one-hot .* \[N, C\]"):
        gradient_descent("cross_entropy", p["k"], p["y"][:, 0])
    with pytest.raises(TypeError, match="float tensor for cost='mse'"):
        gradient_descent("mse", p["k"], p["labels"])
    predict = gradient_descent("cross_entropy", p["k"], p["labels"])
    with pytest.raises(ValueError, match=r"fx_train_0 must have shape \[N, C\]"):
        predict(1.0, p["f0"][:, 0])
    with pytest.raises(ValueError, match="fx_train_0 .* needed with class-index"):
        predict(1.0)
    with pytest.raises(ValueError, match="class indices must be < C = 2"):
        predict(1.0, p["f0"][:, :2])
    with pytest.raises(ValueError, match=r"k_test_train must have shape \[M, N\]"):
        predict(1.0, p["f0"], None, p["k_test"][:, :-1])
    with pytest.raises(ValueError, match=r"fx_test_0 must have shape \[7, 3\]"):
        predict(1.0, p["f0"], p["g0"][:, :2], p["k_test"])
    with pytest.raises(ValueError, match="fx_test_0 was given without k_test_train"):
        predict(1.0, p["f0"], p["g0"])
    with pytest.raises(ValueError, match="must have the dtype of k_train_train"):
        predict(1.0, p["f0"].float())


@needs_ode
def test_bad_times_and_settings(problem):
    p = problem
    predict = gradient_descent("mse", p["k"], p["y"])
    with pytest.raises(ValueError, match="t must be non-negative"):
        predict(-1.0, p["f0"])
    with pytest.raises(ValueError, match="t must be non-negative"):
        predict([1.0, -0.5], p["f0"])
    with pytest.raises(ValueError, match="t must be finite"):
        predict(math.inf, p["f0"])
    with pytest.raises(ValueError, match="t contains NaN"):
        predict(math.nan, p["f0"])
    with pytest.raises(ValueError, match="learning_rate must be finite and > 0"):
        gradient_descent("mse", p["k"], p["y"], learning_rate=0.0)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        gradient_descent("mse", p["k"], p["y"], momentum=1.0)
    with pytest.raises(ValueError, match="rtol must be finite and > 0"):
        gradient_descent("mse", p["k"], p["y"], rtol=-1e-3)
    with pytest.raises(RuntimeError, match="max_steps = 3"):
        gradient_descent("mse", p["k"], p["y"], max_steps=3)(50.0, p["f0"])


def test_missing_torchdiffeq_is_a_clear_import_error(problem, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchdiffeq", None)
    with pytest.raises(ImportError, match=r"pip install 'torch-ntk\[ode\]'"):
        gradient_descent("mse", problem["k"], problem["y"])


# --------------------------------------------- NaN kernels elsewhere (issue 16)


def test_nan_kernels_in_gp_inference_and_kernel_pca(problem):
    p = problem
    k = p["k"].clone()
    k[0, 0] = math.nan
    with pytest.raises(ValueError, match="k_train_train contains NaN"):
        gp_inference(k, p["y"])
    with pytest.raises(ValueError, match="k_train_train contains NaN"):
        kernel_pca(k)
    k_test = p["k_test"].clone()
    k_test[1, 2] = math.nan
    with pytest.raises(ValueError, match="k_test_train contains NaN"):
        gp_inference(p["k"], p["y"])(k_test)
    k_self = torch.eye(M, dtype=F64)
    k_self[0, 0] = math.nan
    with pytest.raises(ValueError, match="k_test_test contains NaN"):
        gp_inference(p["k"], p["y"])(p["k_test"], k_self)
    with pytest.raises(ValueError, match="k_test_train contains NaN"):
        kernel_pca(p["k"]).components(k_test)
    y = p["y"].clone()
    y[0, 0] = math.nan
    with pytest.raises(ValueError, match="y contains NaN"):
        kernel_pca(p["k"]).coefficients(y)
