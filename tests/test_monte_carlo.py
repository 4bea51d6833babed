"""Monte-Carlo kernels and the random-features view (torch_ntk.monte_carlo).

Three oracle tiers:
- exact: the estimator against tests/oracles.py's torch.func Monte Carlo with the
  same seeds, Welford moments against a two-pass mean/std, random-feature Grams
  against empirical_ntk, structured path against torch.func path (float64, 1e-10);
- statistical, fixed seeds: means against analytic_kernels within Z_MAX standard
  errors, standard errors against the spread of independent repetitions, log-log
  slopes of the error against P and n;
- behaviour: seeds, RNG state, running estimates, argument errors.
"""

import itertools
import math

import pytest
import torch
from torch import nn

import torch_ntk as tn
from torch_ntk.monte_carlo import ConvergenceRecord, SlopeFit

from conftest import EXACT_F64, devices, rel_err
from oracles import func_ntk, monte_carlo

# Every entry must satisfy |MC mean − analytic| ≤ Z_MAX · stderr. With P = 64 samples the
# ratio is Student-t with 63 d.o.f.: P(|t| > 4) ≈ 1.6e-4 per entry, so about 3e-3 for the
# ≤ 15 distinct entries of one test (the seeds are fixed; this bounds a change of seeds).
Z_MAX = 4.0
# Fitted log-log slope of the error against P (and against n at small P): theory −½.
SLOPE_RANGE = (-0.75, -0.25)
# Spread of independent repetitions / reported standard error (pooled over entries).
SE_RATIO_RANGE = (0.67, 1.5)

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")  # many tiny GEMMs


def _points(n, d=3, seed=1, dtype=F64):
    """n points on the sphere of radius √d (unit-variance coordinates), fixed seed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    return x / x.norm(dim=1, keepdim=True) * math.sqrt(d)


def _mlp(widths, act="relu", bias_std=0.3, dtype=F64):
    return lambda seed: tn.ntk_mlp(widths, act, bias_std=bias_std, dtype=dtype)


class Wrapped(nn.Module):
    """The same network behind a module of its own (a chain: it lifts through torch.fx)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


class Branches(nn.Module):
    """Two branches added: not a chain of layers, so no readout layer to find."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 1), nn.Linear(3, 1)

    def forward(self, x):
        return self.a(x) + self.b(x)


def _layernorm_model(seed):
    return nn.Sequential(nn.Linear(3, 32), nn.LayerNorm(32), nn.Tanh(), nn.Linear(32, 2)).double()


# ---------------------------------------------------------------------------------
# exact tier


@pytest.mark.parametrize("kind", ["lifts", "layernorm"])
def test_means_match_the_reference_oracle_with_the_same_seeds(kind):
    # reference.monte_carlo seeds torch with 1000 + s before make_model(): base_seed=1000.
    make = (lambda: tn.ntk_mlp([3, 16, 16, 2], "erf", dtype=F64)) if kind == "lifts" else (
        lambda: _layernorm_model(0))
    x1, x2 = _points(5), _points(4, seed=2)
    mc = tn.monte_carlo_kernels(lambda seed: make(), x1, x2, 6, base_seed=1000)
    nngp, ntk = monte_carlo(make, x1, x2, samples=6)
    assert rel_err(mc.nngp, nngp) <= EXACT_F64 and rel_err(mc.ntk, ntk) <= EXACT_F64
    assert mc.method == ("structured" if kind == "lifts" else "hooks")
    assert mc.n_samples == 6 and mc.nngp.dtype == F64 and mc.ntk.shape == (5, 4)


def test_standard_errors_are_the_two_pass_sample_statistics():
    x = _points(5)
    make = _mlp([3, 24, 24, 3])
    mc = tn.monte_carlo_kernels(make, x, None, 9, base_seed=7)
    nngp, ntk = [], []
    for s in range(7, 16):
        torch.manual_seed(s)
        model = make(s)
        f = model(x).detach()
        nngp.append(f @ f.T / 3)
        ntk.append(func_ntk(model, x, x) / 3)
    for mean, se, samples in ((mc.nngp, mc.nngp_stderr, nngp), (mc.ntk, mc.ntk_stderr, ntk)):
        stack = torch.stack(samples)
        assert rel_err(mean, stack.mean(0)) <= EXACT_F64
        assert rel_err(se, stack.std(0) / 3) <= 1e-8  # std divisor P − 1, then / √P


def test_structured_and_torch_func_paths_give_the_same_estimate():
    x1, x2 = _points(5), _points(3, seed=2)
    make = _mlp([3, 32, 32, 2], "relu")
    fast = tn.monte_carlo_kernels(make, x1, x2, 5, get="ntk")
    slow = tn.monte_carlo_kernels(lambda s: Wrapped(make(s)), x1, x2, 5, get="ntk",
                                  method="jacobian")
    assert (fast.method, slow.method) == ("structured", "jacobian")
    assert rel_err(fast.ntk, slow.ntk) <= EXACT_F64
    assert rel_err(fast.ntk_stderr, slow.ntk_stderr) <= 1e-8
    assert fast.nngp is None and fast.nngp_stderr is None


def test_readout_estimator_is_the_output_covariance_given_the_hidden_layers():
    # Outputs are i.i.d. given the hidden layers, so f fᵀ/n_L over many outputs tends to the
    # readout Gram Φ Φᵀ of the same hidden layers (parameters are drawn layer by layer, so
    # widening the output layer does not change the hidden ones).
    x = _points(5)
    phi = tn.random_features([3, 48, 48, 1], None, x, seed=3, kernel="nngp")
    assert phi.shape == (5, 49) and phi.dtype == F64
    wide = tn.random_network([3, 48, 48, 4096], None, seed=3, dtype=F64)
    with torch.no_grad():
        f = wide(x)
    products = f.T[:, :, None] * f.T[:, None, :]  # [n_L, N, N]
    se = products.std(0) / math.sqrt(f.shape[1])
    z = (products.mean(0) - phi @ phi.T) / se
    assert z.abs().max() <= Z_MAX
    one = tn.monte_carlo_kernels(lambda s: tn.random_network([3, 48, 48, 1], None, s, dtype=F64),
                                 x, None, 1, get="nngp", base_seed=3, nngp_estimator="readout")
    assert rel_err(one.nngp, phi @ phi.T) <= EXACT_F64


@pytest.mark.parametrize("widths", [[3, 8, 2], [3, 6, 5, 4]])
def test_ntk_features_gram_is_the_trace_ntk_over_outputs(widths):
    x = _points(5)
    phi = tn.random_features(widths, None, x, seed=11, kernel="ntk")
    model = tn.random_network(widths, None, seed=11, dtype=F64)
    n_params = sum(p.numel() for p in model.parameters())
    assert phi.shape == (5, widths[-1] * n_params)
    theta = tn.empirical_ntk(model, x, mode="trace")  # the mean over outputs
    assert rel_err(phi @ phi.T, theta) <= EXACT_F64


def test_random_network_is_the_model_monte_carlo_draws():
    net = tn.random_network([3, 1, 2], 16, seed=5, dtype=F64)
    torch.manual_seed(5)
    ref = tn.ntk_mlp([3, 16, 2], "relu", dtype=F64)
    assert [p.shape for p in net.parameters()] == [p.shape for p in ref.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), ref.parameters()))
    spec = tn.mlp_spec([3, 100, 100, 2], "erf", weight_std=1.3, bias_std=0.2)
    net = tn.random_network(spec, 8, seed=0)
    assert tn.lift(net) == tn.mlp_spec([3, 8, 8, 2], "erf", weight_std=1.3, bias_std=0.2)


def test_chunked_evaluation_matches():
    x1, x2 = _points(7), _points(5, seed=2)
    make = _mlp([3, 16, 2])
    a = tn.monte_carlo_kernels(make, x1, x2, 3)
    b = tn.monte_carlo_kernels(make, x1, x2, 3, chunk_size=2)
    c = tn.monte_carlo_kernels(make, x1, x2, 3, chunk_size=2, nngp_estimator="readout")
    d = tn.monte_carlo_kernels(make, x1, x2, 3, nngp_estimator="readout")
    for u, v in ((a.nngp, b.nngp), (a.ntk, b.ntk), (c.nngp, d.nngp)):
        assert rel_err(u, v) <= EXACT_F64


# ---------------------------------------------------------------------------------
# statistical tier: convergence to the analytic kernels


# One hidden layer: the mean over networks *is* the limit at any width (the first layer's
# pre-activations are exactly Gaussian), so a narrow network is the right target. Three
# hidden layers: the mean differs from the limit by O(1/n); at n = 256 that is far below
# the standard error of 64 samples (measured: relative bias < 1% at n = 64, 512 samples).
CASES = [("relu", [3, 64, 4]), ("erf", [3, 64, 4]), ("tanh", [3, 64, 4]), ("elu", [3, 64, 4]),
         ("relu", [3, 256, 256, 256, 4]), ("erf", [3, 256, 256, 256, 4])]


@pytest.mark.parametrize("act, widths", CASES)
@pytest.mark.parametrize("estimator", ["outputs", "readout"])
def test_estimate_within_standard_errors_of_the_analytic_kernels(act, widths, estimator):
    x1, x2 = _points(5), _points(3, seed=2)
    make = _mlp(widths, act)
    mc = tn.monte_carlo_kernels(make, x1, x2, 64, base_seed=100, nngp_estimator=estimator)
    limit = tn.analytic_kernels(tn.mlp_spec(widths, act, bias_std=0.3), x1, x2)
    for name in ("nngp", "ntk"):
        mean, se, target = getattr(mc, name), getattr(mc, name + "_stderr"), getattr(limit, name)
        assert bool((se > 0).all())
        z = (mean - target) / se
        assert z.abs().max() <= Z_MAX, (name, z)


def test_symmetric_inputs_give_exactly_symmetric_estimates():
    x = _points(6)
    make = _mlp([3, 32, 32, 2], "erf")
    mc = tn.monte_carlo_kernels(make, x, None, 8)
    for t in (mc.nngp, mc.ntk, mc.nngp_stderr, mc.ntk_stderr):
        assert torch.equal(t, t.T)
    same = tn.monte_carlo_kernels(make, x, x, 8)
    assert all(torch.equal(a, b) for a, b in zip(mc[:4], same[:4]))
    assert torch.linalg.eigvalsh(mc.ntk).min() > 0


def test_standard_error_matches_the_spread_of_independent_repetitions():
    # 16 independent runs of 16 networks (disjoint seeds): the variance of their means
    # across runs, pooled over entries, against the mean reported stderr².
    x1, x2 = _points(4), _points(3, seed=2)
    make = _mlp([3, 64, 64, 2], "relu")
    runs = [tn.monte_carlo_kernels(make, x1, x2, 16, base_seed=16 * r) for r in range(16)]
    for name in ("nngp", "ntk"):
        means = torch.stack([getattr(r, name) for r in runs])
        se2 = torch.stack([getattr(r, name + "_stderr") for r in runs]).square().mean(0)
        ratio = math.sqrt(float(means.var(0).sum() / se2.sum()))
        assert SE_RATIO_RANGE[0] <= ratio <= SE_RATIO_RANGE[1], (name, ratio)


@pytest.mark.parametrize("act, arch, width, counts, repeats", [
    ("relu", [3, 1, 2], 64, (1, 2, 4, 8, 16, 32, 64), 16),
    ("erf", [3, 1, 1, 1, 2], 128, (1, 2, 4, 8, 16, 32), 8),
])
def test_error_falls_like_inverse_square_root_of_samples(act, arch, width, counts, repeats):
    # RMS error over `repeats` independent runs at each P; measured slopes −0.43 … −0.60
    # over five base seeds for both cases.
    x = _points(6)
    study = tn.convergence_study(arch, x, widths=(width,), sample_counts=counts,
                                 repeats=repeats, activation=act, bias_std=0.3, base_seed=1)
    for kernel in ("nngp", "ntk"):
        slope = study.slope(kernel, "n_samples", width)
        assert SLOPE_RANGE[0] <= slope <= SLOPE_RANGE[1], (kernel, slope)
        rows = [r for r in study.records if r.kernel == kernel]
        # The error is what the sampling variance predicts (no bias floor at these P).
        for r in rows:
            assert 0.5 <= r.error / r.stderr <= 2.0, r


def test_error_falls_like_inverse_square_root_of_width():
    # One hidden layer: the unbiased random-feature estimate from P networks of width n
    # has error ∝ (nP)^−½, so at fixed P the width slope is −½ (measured −0.37 … −0.56).
    x = _points(6)
    study = tn.convergence_study([3, 1, 2], x, widths=(16, 64, 256), sample_counts=(1, 2),
                                 repeats=16, bias_std=0.3, base_seed=3)
    for kernel, p in itertools.product(("nngp", "ntk"), (1, 2)):
        slope = study.slope(kernel, "width", p)
        assert SLOPE_RANGE[0] <= slope <= SLOPE_RANGE[1], (kernel, p, slope)
    # Unbiased at every width: the pooled mean is within Z_MAX noise floors of the limit.
    for r in study.records:
        assert r.bias <= Z_MAX * r.bias_stderr, r


def test_convergence_study_table():
    x1, x2 = _points(4), _points(3, seed=2)
    study = tn.convergence_study([3, 1, 1, 1], x1, x2, widths=(8, 16), sample_counts=(1, 3),
                                 repeats=2, get="ntk", activation="erf")
    assert len(study.records) == 4 and all(isinstance(r, ConvergenceRecord) for r in study.records)
    assert [(r.kernel, r.width, r.n_samples, r.n_features) for r in study.records] == [
        ("ntk", 8, 1, 8), ("ntk", 8, 3, 24), ("ntk", 16, 1, 16), ("ntk", 16, 3, 48)]
    assert all(r.repeats == 2 and r.error > 0 and r.stderr > 0 for r in study.records)
    assert {(s.kernel, s.along, s.at) for s in study.slopes} == {
        ("ntk", "n_samples", 8), ("ntk", "n_samples", 16), ("ntk", "width", 1),
        ("ntk", "width", 3)}
    assert all(isinstance(s, SlopeFit) and s.points == 2 for s in study.slopes)
    rows = study.rows()
    assert rows[0]["kernel"] == "ntk" and set(rows[0]) >= {"error", "stderr", "bias"}
    with pytest.raises(KeyError):
        study.slope("nngp", "width", 1)


# ---------------------------------------------------------------------------------
# behaviour: seeds, RNG state, running estimates


def test_same_seed_identical_and_other_seed_different():
    x = _points(5)
    make = _mlp([3, 16, 16, 2])
    a = tn.monte_carlo_kernels(make, x, None, 4, base_seed=3)
    b = tn.monte_carlo_kernels(make, x, None, 4, base_seed=3)
    c = tn.monte_carlo_kernels(make, x, None, 4, base_seed=4)
    assert all(torch.equal(u, v) for u, v in zip(a[:4], b[:4])) and a[4:] == b[4:]
    assert not torch.equal(a.ntk, c.ntk)
    # Seeds are base_seed + i: runs with base seeds 3 and 4 share networks 4, 5, 6.
    shared = tn.monte_carlo_kernels(make, x, None, 3, base_seed=4)
    first = tn.monte_carlo_kernels(make, x, None, 1, base_seed=3)
    assert rel_err((first.ntk + 3 * shared.ntk) / 4, a.ntk) <= EXACT_F64


def test_merging_runs_equals_one_longer_run():
    x1, x2 = _points(4), _points(3, seed=2)
    make = _mlp([3, 16, 16, 2])
    whole = tn.monte_carlo_kernels(make, x1, x2, 8, base_seed=10)
    first = tn.monte_carlo_kernels(make, x1, x2, 1, base_seed=10)
    rest = tn.monte_carlo_kernels(make, x1, x2, 7, base_seed=11)
    for merged in (first.merge(rest), rest.merge(first),
                   tn.monte_carlo_kernels(make, x1, x2, 3, base_seed=10).merge(
                       tn.monte_carlo_kernels(make, x1, x2, 5, base_seed=13))):
        assert merged.n_samples == 8 and merged.method == "structured"
        for a, b in zip(merged[:4], whole[:4]):
            assert rel_err(a, b) <= 1e-12
    with pytest.raises(ValueError, match="both estimates must hold nngp"):
        whole.merge(tn.monte_carlo_kernels(make, x1, x2, 2, get="ntk"))
    with pytest.raises(TypeError, match="other must be a MonteCarloKernels"):
        whole.merge(whole.ntk)


def test_model_fn_may_use_its_seed_instead_of_the_global_generator():
    x = _points(4)

    def make(seed):
        g = torch.Generator().manual_seed(seed)
        model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1)).double()
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
        return model

    a = tn.monte_carlo_kernels(make, x, None, 3, base_seed=0)
    b = tn.monte_carlo_kernels(make, x, None, 3, base_seed=0)
    assert torch.equal(a.ntk, b.ntk)


def test_callers_random_state_is_untouched():
    x = _points(4)
    make = _mlp([3, 8, 1])
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    tn.monte_carlo_kernels(make, x, None, 3)
    tn.random_features([3, 8, 1], None, x, seed=9)
    tn.random_network([3, 8, 1], seed=9)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(torch.rand(5), expected)

    # Interleaving draws with a running generator: the caller's stream is unchanged.
    torch.manual_seed(123)
    alone = torch.cat([torch.rand(1) for _ in range(3)])
    torch.manual_seed(123)
    interleaved = torch.cat([torch.rand(1) for _ in tn.iter_monte_carlo_kernels(make, x, None, 3)])
    assert torch.equal(interleaved, alone)

    # ... also when model_fn fails half-way.
    def failing(seed):
        if seed == 2:
            raise RuntimeError("boom")
        return make(seed)

    torch.manual_seed(123)
    with pytest.raises(RuntimeError, match="boom"):
        tn.monte_carlo_kernels(failing, x, None, 3)
    assert torch.equal(torch.get_rng_state(), before)


def test_running_estimates():
    x = _points(4)
    make = _mlp([3, 16, 2], "erf")
    steps = list(tn.iter_monte_carlo_kernels(make, x, None, checkpoints=[1, 2, 5], base_seed=2))
    assert [s.n_samples for s in steps] == [1, 2, 5]
    assert torch.isnan(steps[0].ntk_stderr).all() and not torch.isnan(steps[1].ntk_stderr).any()
    final = tn.monte_carlo_kernels(make, x, None, 5, base_seed=2)
    assert all(torch.equal(u, v) for u, v in zip(steps[-1][:4], final[:4]))
    two = tn.monte_carlo_kernels(make, x, None, 2, base_seed=2)
    assert torch.equal(steps[1].ntk, two.ntk)  # estimates are fresh tensors, not views
    counts = [s.n_samples for s in tn.iter_monte_carlo_kernels(make, x, None, 7, every=3)]
    assert counts == [3, 6, 7]
    # No n_samples: runs until the caller stops.
    for est in tn.iter_monte_carlo_kernels(make, x, get="ntk", every=4):
        if est.n_samples >= 12:
            break
    assert est.n_samples == 12 and est.nngp is None and est.method == "structured"


def test_float32_inputs_and_models_are_converted():
    x = _points(4, dtype=torch.float32)
    mc = tn.monte_carlo_kernels(lambda s: tn.ntk_mlp([3, 32, 1]), x, None, 4)  # float32 model
    assert mc.ntk.dtype == F64 and torch.isfinite(mc.ntk).all()
    mc64 = tn.monte_carlo_kernels(lambda s: tn.ntk_mlp([3, 32, 1]), x.double(), None, 4)
    assert rel_err(mc.ntk, mc64.ntk) <= 1e-5  # the same float32 draws, converted


@pytest.mark.parametrize("device", devices)
def test_devices(device):
    x = _points(4).to(device)
    make = _mlp([3, 32, 2])
    before = torch.get_rng_state()
    cuda_before = torch.cuda.get_rng_state_all() if device == "cuda" else None
    a = tn.monte_carlo_kernels(make, x, None, 3, base_seed=5)
    b = tn.monte_carlo_kernels(make, x, None, 3, base_seed=5)
    assert a.ntk.device.type == device and torch.equal(a.ntk, b.ntk)
    assert torch.equal(torch.get_rng_state(), before)
    if device == "cuda":
        assert all(torch.equal(u, v) for u, v in zip(torch.cuda.get_rng_state_all(), cuda_before))
        # The networks are drawn on the CPU (ntk_mlp's default) and moved: the same draws.
        ref = tn.monte_carlo_kernels(make, x.cpu(), None, 3, base_seed=5)
        assert rel_err(a.nngp, ref.nngp) <= EXACT_F64 and rel_err(a.ntk, ref.ntk) <= EXACT_F64


# ---------------------------------------------------------------------------------
# argument errors


def _call(**kw):
    args = dict(model_fn=_mlp([3, 8, 1]), x1=_points(3), x2=None, n_samples=2)
    args.update(kw)
    return tn.monte_carlo_kernels(**args)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(n_samples=0), ValueError, "n_samples must be at least 1"),
    (dict(n_samples=-3), ValueError, "n_samples"),
    (dict(n_samples=2.5), TypeError, "n_samples must be an integer"),
    (dict(n_samples=None), TypeError, "n_samples .* is required"),
    (dict(model_fn="relu"), TypeError, "model_fn must be a callable"),
    (dict(model_fn=lambda s: torch.zeros(3)), TypeError, "model_fn must return an nn.Module"),
    (dict(x2=_points(2, d=4)), ValueError, "x2 must have the per-sample shape of x1"),
    (dict(x1=_points(3, d=4)), ValueError, r"x1 of shape \[3, 4\] does not fit"),
    (dict(x1=_points(3, d=4), get="ntk"), ValueError, "x1"),
    (dict(x1=torch.ones(3, 3, dtype=torch.int64)), TypeError, "x1 must be float32 or float64"),
    (dict(x1=_points(3)[:0]), ValueError, "x1 must be a batch"),
    (dict(x1=_points(3).index_fill(0, torch.tensor([1]), float("nan"))), ValueError,
     "monte_carlo_kernels: x1 contains NaN or Inf"),
    (dict(x2=_points(2).index_fill(0, torch.tensor([0]), float("inf"))), ValueError,
     "monte_carlo_kernels: x2 contains NaN or Inf"),
    (dict(x2=_points(2).float()), ValueError, "x2 must have the dtype of x1"),
    (dict(get="ntkk"), ValueError, "get must name some of"),
    (dict(get=()), ValueError, "get must name some of"),
    (dict(nngp_estimator="exact"), ValueError, "nngp_estimator must be one of"),
    (dict(method="fast"), ValueError, "method must be one of"),
    (dict(base_seed="0"), TypeError, "base_seed must be an integer"),
    (dict(model_fn=lambda s: nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.Linear(4, 1))),
     ValueError, "Dropout"),
    (dict(model_fn=lambda s: nn.Sequential(nn.Linear(3, 4), nn.Tanh()),
          nngp_estimator="readout"), ValueError, "readout"),
    (dict(model_fn=lambda s: Branches(), nngp_estimator="readout"), ValueError,
     r"readout.*Branches \(lift: .* used by 2 nodes"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        _call(**kwargs)


def test_bad_arguments_of_the_generator_and_random_features():
    make, x = _mlp([3, 8, 1]), _points(3)
    with pytest.raises(ValueError, match="checkpoints must be strictly increasing"):
        tn.iter_monte_carlo_kernels(make, x, checkpoints=[4, 2])  # raised before iterating
    with pytest.raises(ValueError, match="smaller than the last checkpoint"):
        tn.iter_monte_carlo_kernels(make, x, n_samples=2, checkpoints=[1, 4])
    with pytest.raises(ValueError, match="every must be at least 1"):
        tn.iter_monte_carlo_kernels(make, x, every=0)
    with pytest.raises(ValueError, match="kernel must be one of"):
        tn.random_features([3, 8, 1], None, x, kernel="cov")
    with pytest.raises(ValueError, match="width must be at least 1"):
        tn.random_features([3, 8, 1], 0, x)
    with pytest.raises(ValueError, match=r"x must have shape \[N, 4\]"):
        tn.random_features([4, 8, 1], None, x)
    with pytest.raises(ValueError, match="no hidden layer"):
        tn.random_network([3, 1], 16)
    with pytest.raises(TypeError, match="spec_or_widths"):
        tn.random_network("relu", 16)
    with pytest.raises(ValueError, match="widths must be strictly increasing"):
        tn.convergence_study([3, 1, 1], x, widths=(64, 16))
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        tn.convergence_study([3, 1, 1], x, repeats=0)
