"""Issue 21, from the user's side: one scale for trace kernels, no silently wrong CLI
kernel, one behaviour for every entry point, errors that name what the user called.

Oracles: the infinite-width kernel (a wide network's trace kernel must be within a few
percent of ``limit().ntk``, not n_L times it); the full kernel's diagonal mean (exact);
the same model computed in eval mode by hand (exact); empirical_ntk/limit called
directly on the model the CLI should have built (1e-12).
"""

from __future__ import annotations

import os
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import torch_ntk as tn
from torch_ntk.cli import main

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


def rel(a, b) -> float:
    return float(torch.linalg.norm((a - b).double()) / torch.linalg.norm(b.double()))


def linear_mlp(widths, seed=0, dtype=F64, act=nn.ReLU):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        if i:
            layers.append(act())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers).to(dtype)


# ------------------------------------------------------------------ trace scale


@pytest.mark.parametrize("method", ["structured", "jacobian", "ntk_vp"])
def test_trace_is_the_mean_of_the_full_kernels_diagonal(method):
    model = linear_mlp([5, 16, 16, 10], seed=1)
    x1, x2 = torch.randn(4, 5, dtype=F64), torch.randn(3, 5, dtype=F64)
    full = tn.empirical_ntk(model, x1, x2, mode="full", method=method)
    trace = tn.empirical_ntk(model, x1, x2, mode="trace", method=method)
    assert rel(trace, full.diagonal(dim1=2, dim2=3).mean(-1)) <= 1e-13


def test_ten_output_trace_kernel_is_on_the_scale_of_the_limit():
    # NTK parametrization: the limit does not depend on the width, so a wide network's
    # trace kernel must be close to limit().ntk — within ~1/sqrt(width), not 10x off.
    torch.manual_seed(0)
    model = tn.ntk_mlp([8, 2048, 2048, 10], "relu", dtype=F64)
    x = torch.randn(12, 8, dtype=F64)
    net = tn.NTK(model)
    k = net.empirical(x, mode="trace")
    limit = net.limit(x).ntk
    assert rel(k, limit) < 0.15
    # the sum over outputs is 10 times the mean: the old convention would fail here
    assert rel(10 * k, limit) > 5


def test_tracker_limit_distance_uses_the_limit_itself():
    torch.manual_seed(0)
    model = tn.ntk_mlp([4, 1024, 1024, 10], "relu", dtype=F64)
    x = torch.randn(10, 4, dtype=F64)
    tracker = tn.KernelDriftTracker(model, x)
    limit = tn.analytic_kernels(model, x, get="ntk").ntk
    assert torch.allclose(tracker.limit_kernel, limit)
    assert tracker.history[0].limit_distance < 0.2


# ------------------------------------------------------------------ the CLI


@pytest.fixture
def plain_state_dict(tmp_path):
    model = linear_mlp([6, 32, 32, 3], seed=3, dtype=torch.float64)
    sd = tmp_path / "mlp_sd.pt"
    torch.save(model.state_dict(), sd)
    x = torch.randn(7, 6, dtype=torch.float64)
    xs = tmp_path / "x.npy"
    np.save(xs, x.numpy())
    return model, x, str(sd), str(xs)


def test_cli_refuses_a_plain_linear_state_dict_read_as_ntk_layers(plain_state_dict, tmp_path,
                                                                      capsys):
    _, _, sd, xs = plain_state_dict
    out = tmp_path / "k.npy"
    with pytest.raises(SystemExit) as exit_info:
        main(["kernel", xs, "--widths", "6", "32", "32", "3", "--kind", "empirical",
              "--state-dict", sd, "--dtype", "float64", "-o", str(out), "--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--state-dict" in err and "--parametrization torch" in err
    assert not out.exists()


def test_cli_reads_a_plain_linear_state_dict_as_that_architecture(plain_state_dict, tmp_path):
    model, x, sd, xs = plain_state_dict
    out = tmp_path / "k.npy"
    assert main(["kernel", xs, "--widths", "6", "32", "32", "3", "--kind", "empirical",
                 "--parametrization", "torch", "--state-dict", sd, "--dtype", "float64",
                 "-o", str(out), "--no-progress"]) == 0
    expected = tn.empirical_ntk(model, x, mode="trace")
    assert rel(torch.from_numpy(np.load(out)), expected) <= 1e-12


@pytest.mark.parametrize("kind", ["ntk", "nngp"])
def test_cli_limit_of_torch_linear_layers_is_pythons_limit(plain_state_dict, tmp_path, kind):
    model, x, _, xs = plain_state_dict
    out = tmp_path / "k.npy"
    assert main(["kernel", xs, "--widths", "6", "32", "32", "3", "--kind", kind,
                 "--parametrization", "torch", "--dtype", "float64", "-o", str(out),
                 "--no-progress"]) == 0
    expected = getattr(tn.NTK(model).limit(x), kind)
    assert rel(torch.from_numpy(np.load(out)), expected) <= 1e-12


# ------------------------------------------------------------------ entry points


def test_numpy_inputs_get_the_same_clear_error_everywhere():
    model = linear_mlp([3, 8, 2])
    x = np.random.randn(4, 3)
    calls = {
        "empirical_ntk": lambda: tn.empirical_ntk(model, x),
        "NTK.empirical": lambda: tn.NTK(model).empirical(x),
        "NTK.limit": lambda: tn.NTK(model).limit(x),
        "analytic_kernels": lambda: tn.analytic_kernels(model, x),
        "KernelDriftTracker": lambda: tn.KernelDriftTracker(model, x),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError) as info:
            call()
        message = str(info.value)
        assert message.startswith(name + ":"), (name, message)
        assert "torch.Tensor" in message and "torch.from_numpy" in message, message


def batchnorm_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    model = model.to(F64)
    with torch.no_grad():  # running statistics that differ from a batch's own
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model


def test_batchnorm_in_train_mode_is_computed_in_eval_mode_by_every_entry_point():
    from oracles import func_ntk_modes  # torch.func, evaluated in eval mode
    model = batchnorm_mlp()
    x = torch.randn(1, 3, dtype=F64)  # one sample: train-mode batch norm would fail
    x5 = torch.randn(5, 3, dtype=F64)
    model.train()
    expected = func_ntk_modes(model, x5)["trace"]
    one = func_ntk_modes(model, x)["full"]
    assert model.training
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    k1 = tn.empirical_ntk(model, x5, mode="trace")
    k2 = tn.NTK(model).empirical(x5, mode="trace")
    assert model.training and model[1].training  # the caller's modes are restored
    for k, v in model.named_buffers():  # running statistics untouched
        assert torch.equal(v, buffers[k]), k
    assert rel(k1, expected) <= 1e-12 and rel(k2, expected) <= 1e-12
    got = tn.empirical_ntk(model, x)
    assert got.shape == one.shape == (1, 1, 2, 2) and rel(got, one) <= 1e-12
    tracker = tn.KernelDriftTracker(model, x5)
    assert rel(tracker.last_kernel.to(F64), expected) <= 1e-12


def test_dropout_in_train_mode_gives_the_eval_mode_kernel():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 16), nn.Dropout(0.5), nn.Tanh(), nn.Linear(16, 1)).to(F64)
    x = torch.randn(4, 3, dtype=F64)
    model.eval()
    expected = tn.empirical_ntk(model, x)
    model.train()
    state = torch.random.get_rng_state()
    assert torch.equal(tn.empirical_ntk(model, x), expected)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert model.training


# ------------------------------------------------------------------ errors


class Custom(nn.Module):
    """Not a chain of layers that lift (atan is not a supported layer; sin lifts since
    issue 31)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 1)

    def forward(self, x):
        return self.b(torch.atan(self.a(x)))


def test_limit_of_a_custom_class_points_at_what_exists():
    with pytest.raises(ValueError) as info:
        tn.NTK(Custom()).limit(torch.randn(2, 3))
    message = str(info.value)
    assert message.startswith("NTK.limit:")
    assert "method=" not in message  # limit has no method argument
    assert "NTK.empirical" in message


def test_nan_in_the_probe_set_names_the_tracker():
    model = linear_mlp([3, 8, 1])
    x = torch.randn(4, 3, dtype=F64)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"^KernelDriftTracker: probe_x contains NaN"):
        tn.KernelDriftTracker(model, x)


def test_limit_refuses_inputs_of_another_dtype_than_the_model_like_empirical():
    model = linear_mlp([3, 8, 1], dtype=torch.float32)
    x = torch.randn(4, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"^NTK\.empirical: .*float32"):
        tn.NTK(model).empirical(x)
    with pytest.raises(ValueError, match=r"^NTK\.limit: .*float32"):
        tn.NTK(model).limit(x)


def test_auto_falling_back_from_a_sequential_says_why():
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 4), nn.Softmax(-1)).to(F64)
    x = torch.randn(4, 3, dtype=F64)
    with pytest.warns(tn.MethodFallbackWarning, match="Softmax"):
        tn.empirical_ntk(model, x)
    with warnings.catch_warnings():  # asking for a method, or a custom class: no warning
        warnings.simplefilter("error")
        tn.empirical_ntk(model, x, method="jacobian")
        tn.empirical_ntk(Custom().to(F64), x)


# ------------------------------------------------------------------ issue 32: items 4, 6, 7, 11, 12


def _alignment_by_hand(k, y):
    yyt = y @ y.t()
    return float((k * yyt).sum() / (torch.linalg.norm(k) * torch.linalg.norm(yyt)))


def test_label_alignment_has_one_definition_whatever_the_labels_spelling():
    model = linear_mlp([5, 32, 32, 3], seed=4)
    torch.manual_seed(4)
    x = torch.randn(12, 5, dtype=F64)
    labels = torch.tensor([0, 1, 2, 1, 0, 2, 2, 1, 0, 0, 1, 2])
    one_hot = nn.functional.one_hot(labels, 3).to(F64)
    values = {}
    for name, y in {"int": labels, "int column": labels[:, None], "one-hot": one_hot,
                    "one-hot, 10 classes": nn.functional.one_hot(labels, 10).float()}.items():
        tracker = tn.KernelDriftTracker(model, x, y)
        values[name] = tracker.history[0].label_alignment
    k = tracker.last_kernel.double()
    expected = _alignment_by_hand(k, one_hot)
    for name, value in values.items():
        assert abs(value - expected) <= 1e-12, name
    assert abs(tn.tracking.label_alignment(k, labels) - expected) <= 1e-12
    # floats are taken as given: a 1-D float vector is one target column
    yf = labels.to(F64)
    assert abs(tn.tracking.label_alignment(k, yf) - _alignment_by_hand(k, yf[:, None])) <= 1e-12
    with pytest.raises(ValueError, match=r"probe_y.*ambiguous.*float"):
        tn.KernelDriftTracker(model, x, labels[:, None].repeat(1, 2))


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h, _ = self.attn(x, x, x)
        return self.head(h.mean(1))


def test_ntk_vp_and_the_tracker_work_on_multihead_attention():
    torch.manual_seed(7)
    model = _Attention().to(F64)
    x = torch.randn(5, 4, 8, dtype=F64)
    before = torch.backends.mha.get_fastpath_enabled()
    vp = tn.empirical_ntk(model, x, method="ntk_vp")
    jac = tn.empirical_ntk(model, x, method="jacobian")
    assert rel(vp, jac) <= 1e-12
    assert torch.backends.mha.get_fastpath_enabled() == before  # restored
    tracker = tn.KernelDriftTracker(model, x, method="ntk_vp")
    assert rel(tracker.last_kernel, jac.diagonal(dim1=2, dim2=3).mean(-1)) <= 1e-12


class _Residual(nn.Module):
    """x + relu(x): branches that are not independent (x + relu(W x) has a limit)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 8)
        self.block = nn.ReLU()
        self.out = nn.Linear(8, 1)

    def forward(self, x):
        x = self.inp(x)
        x = x + self.block(x)
        return self.out(x)


@pytest.mark.parametrize("kind", ["residual", "batchnorm"])
def test_models_without_a_limit_are_refused_with_what_works_today(kind):
    if kind == "residual":
        build, where = _Residual, r"adds branches that are not independent .*node add"
    else:
        def build():
            return nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
        where = r"module 1 \(BatchNorm1d\) does not lift"
    model = build()
    x = torch.randn(4, 3)
    for name, call in {"analytic_kernels": lambda: tn.analytic_kernels(model, x),
                       "NTK.limit": lambda: tn.NTK(model).limit(x),
                       "lift": lambda: tn.lift(model)}.items():
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"{name}:"), message
        assert re.search(where, message), message
        assert "monte_carlo_kernels(model_fn, x)" in message, message
        assert "empirical" in message.lower(), message
    # what the message points to does run on this model
    mc = tn.monte_carlo_kernels(lambda seed: build(), x, n_samples=2, get="ntk",
                                method="jacobian")
    assert mc.ntk.shape == (4, 4)


def _small_cnn():
    torch.manual_seed(11)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3)).to(F64)


@pytest.mark.parametrize("entry", ["NTK.limit", "analytic_kernels"])
def test_limit_progress_bar_on_request_and_never_when_off(entry, capsys):
    model = _small_cnn()
    torch.manual_seed(12)
    x = torch.randn(9, 2, 6, 6, dtype=F64)
    call = (lambda **kw: tn.NTK(model).limit(x, **kw)) if entry == "NTK.limit" else \
        (lambda **kw: tn.analytic_kernels(model, x, **kw))
    plain = call(progress=False)
    assert capsys.readouterr().err == ""
    shown = call(progress=True)
    err = capsys.readouterr().err
    assert "analytic_kernels" in err and "pair" in err and "/45" in err  # 9·10/2 pairs
    for name in ("nngp", "ntk"):  # row blocks: the same kernels, exactly symmetric
        a, b = getattr(shown, name), getattr(plain, name)
        assert rel(a, b) <= 1e-13 and torch.equal(a, a.T)
        assert torch.equal(a.diagonal(), b.diagonal())
    assert capsys.readouterr().err == ""


def test_limit_progress_rows_blocks_cover_a_cross_kernel_and_an_mlp(capsys):
    torch.manual_seed(13)
    x1, x2 = torch.randn(7, 2, 6, 6, dtype=F64), torch.randn(5, 2, 6, 6, dtype=F64)
    cnn = _small_cnn()
    a = tn.analytic_kernels(cnn, x1, x2, progress=True)
    assert "/35" in capsys.readouterr().err  # 7·5 pairs
    b = tn.analytic_kernels(cnn, x1, x2, progress=False)
    assert rel(a.ntk, b.ntk) <= 1e-13 and rel(a.nngp, b.nngp) <= 1e-13
    mlp = tn.ntk_mlp([3, 64, 64, 2], "relu", dtype=F64)
    z = torch.randn(40, 3, dtype=F64)
    a = tn.NTK(mlp).limit(z, get="ntk", progress=True)
    assert "/820" in capsys.readouterr().err  # 40·41/2 pairs
    b = tn.NTK(mlp).limit(z, get="ntk")  # progress=None on a short run: one call, no bar
    assert capsys.readouterr().err == ""
    assert a.nngp is None and rel(a.ntk, b.ntk) <= 1e-13 and torch.equal(a.ntk, a.ntk.T)


class _SmallResidual(nn.Module):
    """Not liftable (a residual branch): "auto" runs the hook engine; the budget warning
    below is the Jacobian method's, asked for by name."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 64), nn.Linear(64, 64), nn.Linear(64, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        h = h + torch.tanh(self.b(h))
        return self.c(h)


def test_a_small_memory_budget_warns_how_much_slower_and_what_budget_avoids_it():
    torch.manual_seed(14)
    model = _SmallResidual().to(F64)
    x = torch.randn(16, 4, dtype=F64)
    with pytest.warns(tn.empirical.MemoryBudgetWarning,
                      match=r"^empirical_ntk: memory_budget=3 MiB splits .*x slower.*"
                            r"memory_budget=\S+ \w?i?B or more would avoid it") as record:
        small = tn.empirical_ntk(model, x, memory_budget=3 * 2**20, method="jacobian")
    assert issubclass(record[0].category, UserWarning)
    assert tn.MemoryBudgetWarning is tn.empirical.MemoryBudgetWarning
    with warnings.catch_warnings():  # the default budget, or an ample one: no warning
        warnings.simplefilter("error")
        default = tn.empirical_ntk(model, x, method="jacobian")
        tn.empirical_ntk(model, x, memory_budget=2**30, method="jacobian")
    assert rel(small, default) <= 1e-13


@pytest.mark.parametrize("mib", [3, 4, 8, 64])
def test_jacobian_blocks_stay_within_the_budgets_memory_model(mib):
    from torch_ntk.empirical import budget as model_of
    from torch_ntk.empirical.engines import JacobianBlocks

    torch.manual_seed(15)
    model = _SmallResidual().to(F64)
    x = torch.randn(40, 4, dtype=F64)
    trainable = dict(model.named_parameters())
    engine = JacobianBlocks(model, trainable, x, None, "full", 3)
    budget = mib * 2**20
    chunk = engine.size_blocks(budget, None, False)
    sizes = {k: v.numel() for k, v in trainable.items()}
    plan = model_of.jacobian_plan(budget, sizes, 40, 3, 8, engine.act, 9)
    assert plan.fits and chunk == plan.chunk and engine.groups == plan.groups
    # fixed + chunk's Jacobians and their temporaries + block + cache: the whole budget
    largest = max(sum(sizes[k] for k in g) for g in plan.groups)
    per_sample = (3 * 3 * largest + 4 * engine.act) * 8
    used = model_of.fixed_bytes(sum(sizes.values()), 8) + chunk * per_sample + chunk**2 * 2 * 9 * 8
    assert used == plan.model_bytes and used + engine.cache.limit <= budget
    # every op's output counts (the residual branch's tanh and add too)
    assert engine.act >= 64 * 4 + 3


_PEAK_SCRIPT = r"""
import sys, warnings, torch, torch.nn as nn, torch_ntk as tn
torch.set_num_threads(1)
class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
    def forward(self, x):
        return x + self.c2(torch.relu(self.c1(x)))
class ResNet(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.stem, self.b1, self.b2 = nn.Conv2d(3, c, 3, padding=1), Block(c), Block(c)
        self.head = nn.Linear(c, 10)
    def forward(self, x):
        return self.head(self.b2(self.b1(torch.relu(self.stem(x)))).mean((2, 3)))
def status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))
torch.manual_seed(0)
model, x = ResNet(), torch.randn(24, 3, 16, 16)
budget = int(sys.argv[1])
tn.empirical_ntk(model, x[:2])  # imports and first calls out of the measurement
warnings.simplefilter("ignore")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak RSS (VmHWM) to the current RSS
before = status("VmRSS:")
k = tn.empirical_ntk(model, x, memory_budget=budget, progress=False)
print(status("VmHWM:") - before - k.numel() * k.element_size())
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_measured_peak_memory_stays_within_the_budget(tmp_path):
    # Peak RSS growth of a fresh process during the call (VmHWM reset just before it), the
    # result not counted, must stay within the budget (tolerance: 25%, for the
    # allocator's rounding and RSS noise).
    import subprocess
    import sys

    script = tmp_path / "peak.py"
    script.write_text(_PEAK_SCRIPT)
    budget = 16 * 2**20
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(tn.__file__)), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, str(script), str(budget)], capture_output=True,
                         text=True, env=env, timeout=600, check=True).stdout
    peak = int(out.strip().splitlines()[-1])
    assert peak <= 1.25 * budget, f"peak {peak / 2**20:.1f} MiB for a 16 MiB budget"
