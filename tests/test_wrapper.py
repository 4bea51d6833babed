"""torch_ntk.NTK: a drop-in wrapper (outputs, parameters, state_dict, training are the
bare model's, bit for bit) and its kernel methods (empirical, limit, linearize).

Oracles: the bare model itself (exact equality); empirical_ntk/analytic_kernels on
the bare model (exact: the same call); for linearize, the network f(θ0 + εd) — the
Taylor remainder must shrink like ε² (fitted log-log slope in [1.9, 2.1], float64).
"""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from torch import nn

import torch_ntk
from torch_ntk import NTK, analytic_kernels, empirical_ntk, ntk_mlp
from torch_ntk.wrapper import Linearized, kernel_context

F64 = torch.float64

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.usefixtures("one_thread"),
]


def dropout_mlp(seed: int = 0, dtype=torch.float32) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Dropout(0.3), nn.Linear(32, 16),
                         nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2)).to(dtype)


class TwoBranch(nn.Module):
    """Not a Sequential: no infinite-width limit in torch_ntk; kwargs in forward."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(4, 8)
        self.head = nn.Linear(8, 1)
        self.scale = 2.0

    def forward(self, x, shift=0.0):
        return self.head(torch.tanh(self.a(x)) * torch.sigmoid(self.b(x))) + shift


def test_forward_returns_the_models_output_unchanged():
    model = dropout_mlp()
    wrapped = NTK(model)
    x = torch.randn(8, 4)
    model.eval()
    assert torch.equal(wrapped(x), model(x))
    net = TwoBranch()
    out = NTK(net)(x, shift=3.0)
    assert torch.equal(out, net(x, shift=3.0))
    # Train mode draws the same dropout mask from the same generator state.
    model.train()
    torch.manual_seed(5)
    a = wrapped(x)
    torch.manual_seed(5)
    assert torch.equal(a, model(x))


def test_parameters_modes_and_attributes_are_the_models():
    model = dropout_mlp()
    wrapped = NTK(model)
    assert [id(p) for p in wrapped.parameters()] == [id(p) for p in model.parameters()]
    assert [id(b) for b in wrapped.buffers()] == [id(b) for b in model.buffers()]
    assert [n for n, _ in wrapped.named_parameters()] == [f"model.{n}" for n, _ in model.named_parameters()]
    assert wrapped[0] is model[0] and len(wrapped) == len(model) and list(wrapped) == list(model)
    assert bool(wrapped)
    net = TwoBranch()
    assert NTK(net).scale == 2.0 and NTK(net).head is net.head
    with pytest.raises(AttributeError):
        NTK(net).no_such_attribute
    wrapped.eval()
    assert not any(m.training for m in model.modules())
    assert NTK(wrapped).model is model  # wrapping twice does not nest


def test_state_dict_has_the_models_keys_and_loads_either_spelling():
    model = dropout_mlp()
    wrapped = NTK(model)
    sd, bare = wrapped.state_dict(), model.state_dict()
    assert list(sd) == list(bare)  # same keys, same order (BatchNorm buffers included)
    assert all(sd[k].data_ptr() == bare[k].data_ptr() and torch.equal(sd[k], bare[k]) for k in bare)

    # A checkpoint of the bare model loads into the wrapper and vice versa.
    other = dropout_mlp(seed=1)
    NTK(other).load_state_dict(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), bare.values()))
    other = dropout_mlp(seed=2)
    other.load_state_dict(wrapped.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), bare.values()))
    # The "model."-prefixed spelling loads too.
    other = dropout_mlp(seed=3)
    NTK(other).load_state_dict({f"model.{k}": v for k, v in bare.items()})
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), bare.values()))

    # Through torch.save/torch.load (weights_only), including version metadata.
    buffer = io.BytesIO()
    torch.save(wrapped.state_dict(), buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    fresh = dropout_mlp(seed=4)
    fresh.load_state_dict(loaded)
    NTK(dropout_mlp(seed=5)).load_state_dict(loaded)

    # Errors speak the bare model's spelling.
    partial = dict(bare)
    del partial["0.weight"]
    with pytest.raises(RuntimeError, match=r'Missing key\(s\) in state_dict: "0.weight"'):
        NTK(dropout_mlp()).load_state_dict(partial)
    result = NTK(dropout_mlp()).load_state_dict({**partial, "junk": torch.ones(1)}, strict=False)
    assert result.missing_keys == ["0.weight"] and result.unexpected_keys == ["junk"]


def test_state_dict_of_a_wrapper_inside_a_larger_model():
    class Parent(nn.Module):
        def __init__(self, seed):
            super().__init__()
            self.net = NTK(dropout_mlp(seed))
            self.head = nn.Linear(2, 1)

    parent = Parent(0)
    keys = list(parent.state_dict())
    assert keys == [f"net.{k}" for k in dropout_mlp().state_dict()] + ["head.weight", "head.bias"]
    other = Parent(1)
    other.load_state_dict(parent.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), parent.state_dict().values()))
    prefixed = {k.replace("net.", "net.model.", 1): v for k, v in parent.state_dict().items()}
    Parent(2).load_state_dict(prefixed)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_through_the_wrapper_is_bit_identical(optimizer):
    def train(wrap: bool):
        model = dropout_mlp(seed=0)
        net = NTK(model) if wrap else model
        opt = (torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9) if optimizer == "sgd"
               else torch.optim.Adam(net.parameters(), lr=1e-2))
        torch.manual_seed(123)
        g = torch.Generator().manual_seed(7)
        net.train()
        for _ in range(5):
            x, y = torch.randn(16, 4, generator=g), torch.randn(16, 2, generator=g)
            opt.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            opt.step()
        return model, opt

    (bare, opt_a), (wrapped, opt_b) = train(False), train(True)
    for a, b in zip(bare.state_dict().values(), wrapped.state_dict().values()):
        assert torch.equal(a, b)
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])


def test_empirical_equals_empirical_ntk_and_leaves_no_trace():
    model = dropout_mlp(dtype=F64)
    x = torch.randn(6, 4, dtype=F64)
    model.train()
    model[2].eval()  # mixed modes must survive
    modes = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    running = model[4].running_mean.clone()
    nn.functional.mse_loss(model(x), torch.zeros(6, 2, dtype=F64)).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    running = model[4].running_mean.clone()
    rng = torch.get_rng_state()

    wrapped = NTK(model)
    for mode in ("full", "trace", "diagonal"):
        k = wrapped.empirical(x, mode=mode)
        assert not k.requires_grad
        with kernel_context(model):
            assert torch.equal(k, empirical_ntk(model, x, mode=mode))
    k, info = wrapped.empirical(x, x[:3], mode="trace", method="jacobian", return_info=True)
    assert info.method == "jacobian" and k.shape == (6, 3)

    assert [m.training for m in model.modules()] == modes
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(model[4].running_mean, running)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))


def test_limit_is_the_analytic_kernel_and_names_the_obstacle():
    model = ntk_mlp([4, 64, 64, 2], "erf", dtype=F64)
    x = torch.randn(5, 4, dtype=F64)
    lim = NTK(model).limit(x)
    ref = analytic_kernels(model, x)
    assert torch.equal(lim.ntk, ref.ntk) and torch.equal(lim.nngp, ref.nngp)
    assert NTK(model).limit(x, x[:2], get="ntk").nngp is None

    with pytest.raises(ValueError, match=r"NTK.limit: TwoBranch .*nn.Sequential"):
        NTK(TwoBranch()).limit(torch.randn(3, 4))
    conv = nn.Sequential(nn.Linear(4, 8), nn.Unflatten(1, (1, 8)), nn.Conv1d(1, 1, 3))
    with pytest.raises(ValueError, match=r"module 1 \(Unflatten\) does not lift"):
        NTK(conv).limit(torch.randn(3, 4))


def _linearization_errors(model: nn.Module, x: torch.Tensor, eps_values):
    lin = NTK(model).linearize()
    theta0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(3)
    direction = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in theta0.items()}
    norm = math.sqrt(sum(float(d.square().sum()) for d in direction.values()))
    errors = []
    for eps in eps_values:
        theta = {k: theta0[k] + eps * direction[k] / norm for k in theta0}
        with torch.no_grad():
            for name, p in lin.model.named_parameters():
                p.copy_(theta[name])
            f = torch.func.functional_call(model, theta, (x,))
            errors.append(float((f - lin(x)).norm()))
    return errors


def test_linearized_model_agrees_to_first_order():
    torch.manual_seed(0)
    model = ntk_mlp([3, 48, 48, 2], "tanh", dtype=F64)
    x = torch.randn(7, 3, dtype=F64)
    eps = np.logspace(-1, -3, 5)
    errors = _linearization_errors(model, x, eps)
    slope = np.polyfit(np.log(eps), np.log(errors), 1)[0]
    assert 1.9 <= slope <= 2.1, f"Taylor remainder slope {slope:.3f} (errors {errors})"


def test_linearized_model_value_gradient_and_training():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 16), nn.GELU(), nn.Linear(16, 2)).double()
    x = torch.randn(5, 3, dtype=F64)
    before = copy.deepcopy(model.state_dict())
    lin = NTK(model).linearize()
    assert isinstance(lin, Linearized)
    # At θ = θ0: the network's value, and its Jacobian as the gradient.
    assert torch.allclose(lin(x), model(x), rtol=0, atol=1e-14)
    v = torch.randn(5, 2, dtype=F64)
    (lin(x) * v).sum().backward()
    (model(x) * v).sum().backward()
    lin_params = dict(lin.model.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(lin_params[name].grad, p.grad, rtol=1e-12, atol=1e-14)
    # The linear model is linear in θ: f_lin(θ0 + 2Δ) − f_lin(θ0) = 2 (f_lin(θ0 + Δ) − f_lin(θ0)).
    opt = torch.optim.SGD(lin.parameters(), lr=0.1)
    opt.step()
    with torch.no_grad():
        y1 = lin(x)
        for p, p0 in zip(lin.model.parameters(), lin.reference_parameters().values()):
            p.copy_(p0 + 2 * (p - p0))
        y2 = lin(x)
    y0 = model(x)
    torch.testing.assert_close(y2 - y0, 2 * (y1 - y0), rtol=1e-10, atol=1e-13)
    # Training the linearization never touches the original.
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), before.values()))
    # θ and θ0 both round-trip through state_dict.
    assert set(lin.state_dict()) == {f"model.{k}" for k in before} | {f"theta0.{k}" for k in before}
    copy_ = NTK(model).linearize()
    copy_.load_state_dict(lin.state_dict())
    assert torch.equal(copy_(x), lin(x))


def test_linearize_frozen_parameters_are_constants():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    model[0].bias.requires_grad_(False)
    lin = NTK(model).linearize()
    assert "0.bias" not in lin.reference_parameters()
    x = torch.randn(4, 3, dtype=F64)
    assert torch.allclose(lin(x), model(x), rtol=0, atol=1e-14)


def test_tracker_shortcut():
    model = ntk_mlp([3, 16, 1], "relu")
    tracker = NTK(model).tracker(torch.randn(5, 3), every=2)
    assert isinstance(tracker, torch_ntk.KernelDriftTracker) and tracker.model is model


def test_bad_arguments():
    with pytest.raises(TypeError, match="nn.Module"):
        NTK("not a model")


def test_linearized_kernel_is_the_networks_kernel_at_theta0():
    """f_lin is linear in θ, so its NTK is Θ(θ0) wherever θ has moved (exact)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 12), nn.Tanh(), nn.Linear(12, 2)).double()
    x = torch.randn(5, 3, dtype=F64)
    lin = NTK(model).linearize()
    with torch.no_grad():
        for p in lin.parameters():
            p.add_(0.3 * torch.randn_like(p))
    k0 = empirical_ntk(model, x, mode="full", method="jacobian")
    for method in ("jacobian", "ntk_vp"):
        torch.testing.assert_close(empirical_ntk(lin, x, mode="full", method=method), k0,
                                   rtol=1e-12, atol=1e-13)


def test_linearized_batch_norm_in_training_mode():
    """Buffers updated in forward (batch norm statistics) take the forward_ad route; the
    expansion and the running statistics match the original network's."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1)).double()
    x = torch.randn(6, 3, dtype=F64)
    lin = NTK(model).linearize()
    model.train()
    lin.train()
    torch.testing.assert_close(lin(x), model(x), rtol=0, atol=1e-14)
    assert torch.equal(lin.model[1].running_mean, model[1].running_mean)
    assert int(lin.model[1].num_batches_tracked) == 1
    lin(x).sum().backward()
    assert all(p.grad is not None for p in lin.parameters())
    # The two jvp routes agree away from θ0.
    plain = NTK(nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()).linearize()
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.1 * torch.randn_like(p))
    theta0 = plain.reference_parameters()
    out, tangent = plain._jvp_forward_ad(
        theta0, {n: p - theta0[n] for n, p in plain.model.named_parameters()}, (x,), {})
    torch.testing.assert_close(out + tangent, plain(x), rtol=1e-13, atol=1e-14)


def test_linearize_of_a_fully_frozen_model_is_refused():
    model = ntk_mlp([3, 4, 1], "relu")
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="NTK.linearize: every parameter .* requires_grad=False"):
        NTK(model).linearize()
