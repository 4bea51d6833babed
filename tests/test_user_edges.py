"""Issue 21, from the user's side: one scale for trace kernels, no silently wrong CLI
kernel, one behaviour for every entry point, errors that name what the user called.

Oracles: the infinite-width kernel (a wide network's trace kernel must be within a few
percent of ``limit().ntk``, not n_L times it); the full kernel's diagonal mean (exact);
the same model computed in eval mode by hand (exact); empirical_ntk/limit called
directly on the model the CLI should have built (1e-12).
"""

from __future__ import annotations

import os
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
    """Not a chain of layers that lift (sin is not a registered activation)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 8), nn.Linear(8, 1)

    def forward(self, x):
        return self.b(torch.sin(self.a(x)))


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
