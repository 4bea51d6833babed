"""The structured finite-width NTK of CNNs against torch.func Jacobian contractions (float64,
1e-10): kernel sizes, strides, dilation, zero/"same"/circular padding, AvgPool, GlobalAvgPool
and Flatten readouts, bias or not, frozen layers, n_L = 1 and 10, every mode, x2 of another
batch size, x2 = None exactly symmetric, chunking and memory budgets, both contraction orders."""

import warnings

import pytest
import torch
from torch import nn

import torch_ntk as tn
from torch_ntk.empirical.cnn_plan import ConvStructuredPlan
from torch_ntk.empirical.rules.conv import choose_order, conv_layer_ntk, symmetric_gram
from torch_ntk.nn import NTKConv1d, NTKConv2d, NTKLinear

from oracles import func_ntk, func_ntk_modes

D = torch.float64
TOL = 1e-10


def _gap(n_out):
    return nn.Sequential(
        NTKConv2d(2, 3, 3, padding="same", bias_std=0.5), nn.ReLU(),
        NTKConv2d(3, 4, 2, stride=2), nn.Tanh(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), NTKLinear(4, 5), nn.ReLU(), NTKLinear(5, n_out))


def _circular_pool():
    return nn.Sequential(
        NTKConv2d(2, 3, (3, 2), padding=1, padding_mode="circular", dilation=(1, 2)),
        nn.GELU(), nn.AvgPool2d(2), nn.Flatten(), NTKLinear(3 * 3 * 3, 2))


def _standard():
    """nn.Conv2d/nn.Linear (standard parametrization), stride, dilation, a conv without bias."""
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, dilation=2, padding=1), nn.ReLU(),
        nn.Conv2d(3, 2, 1, bias=False), nn.Flatten(), nn.Linear(2 * 2 * 2, 10))


def _one_d():
    return nn.Sequential(
        NTKConv1d(2, 3, 3, stride=2, padding="valid"), nn.Sigmoid(),
        NTKConv1d(3, 3, 2, padding="same", padding_mode="circular", bias=False), nn.ReLU(),
        nn.AvgPool1d(2), nn.Flatten(), NTKLinear(3 * 1, 1))


def _frozen():
    model = _gap(3)
    model[0].weight.requires_grad_(False)
    model[2].bias.requires_grad_(False)
    for p in model[6].parameters():
        p.requires_grad_(False)
    return model


def _pool_stride():
    """Every geometry parameter distinct from its partner: H ≠ W, kh ≠ kw, sh ≠ sw, dh ≠ dw,
    an AvgPool whose stride is not its kernel, C_in ≠ C_out, n_L = 3."""
    return nn.Sequential(
        NTKConv2d(2, 3, (3, 2), stride=(2, 1), dilation=(1, 2), padding=(1, 0)), nn.ReLU(),
        nn.AvgPool2d(3, stride=(1, 2)), NTKConv2d(3, 4, (2, 1), stride=(1, 2)), nn.Tanh(),
        nn.Flatten(), NTKLinear(4 * 2 * 1, 3))


MODELS = {"gap-n10": (lambda: _gap(10), (2, 6, 6)), "gap-n1": (lambda: _gap(1), (2, 6, 6)),
          "circular-avgpool": (_circular_pool, (2, 6, 6)), "standard": (_standard, (2, 5, 5)),
          "conv1d": (_one_d, (2, 7)), "frozen": (_frozen, (2, 6, 6)),
          "pool-stride-hw": (_pool_stride, (2, 9, 8))}


def _setup(name, seed=0):
    torch.manual_seed(seed)
    make, shape = MODELS[name]
    model = make().double()
    return model, torch.randn(5, *shape, dtype=D), torch.randn(3, *shape, dtype=D)


def _modes(full):
    diag = full.diagonal(dim1=2, dim2=3)
    return {"full": full, "trace": diag.mean(-1), "diagonal": diag}


@pytest.fixture
def force(monkeypatch):
    def set_order(order):
        monkeypatch.setattr(ConvStructuredPlan, "forced_order", order)
    return set_order


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("order", [None, "gradients", "grams"])
def test_equals_jacobian_contraction(name, order, force):
    model, x1, x2 = _setup(name)
    force(order)
    for other in (None, x2):
        ref = _modes(tn.empirical_ntk(model, x1, other, method="jacobian", progress=False))
        for mode in ("full", "trace", "diagonal"):
            for chunk in (None, 2):
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    got, info = tn.empirical_ntk(model, x1, other, mode=mode, chunk_size=chunk,
                                                 progress=False, return_info=True)
                assert info.method == "structured"
                if order is not None:
                    assert all(c.endswith(order) for c in info.contractions)
                assert got.shape == ref[mode].shape
                torch.testing.assert_close(got, ref[mode], rtol=0, atol=TOL)
                if other is None:  # exactly symmetric
                    t = got.transpose(0, 1)
                    assert torch.equal(got, t.transpose(2, 3) if mode == "full" else t)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_equals_func_oracle(name):
    """Every model, every mode, x2 given and x2 = None, against per-sample Jacobians by
    torch.func (tests/oracles.py, no torch_ntk code): absolute 1e-10 (kernels are O(1))."""
    model, x1, x2 = _setup(name, seed=1)
    n_out = model(x1[:1]).shape[1]
    got = tn.empirical_ntk(model, x1, x2, mode="trace", progress=False)
    torch.testing.assert_close(got * n_out, func_ntk(model, x1, x2), rtol=0, atol=TOL)
    for other in (x2, None):
        ref = func_ntk_modes(model, x1, other)
        for mode in ("full", "trace", "diagonal"):
            got = tn.empirical_ntk(model, x1, other, mode=mode, progress=False)
            assert got.shape == ref[mode].shape, (mode, got.shape, ref[mode].shape)
            torch.testing.assert_close(got, ref[mode], rtol=0, atol=TOL)


def test_orders_agree_and_grams_row_blocks():
    model, x1, x2 = _setup("gap-n10", seed=2)
    plan = ConvStructuredPlan.of(model)
    plan.check_input("test", "x1", x1)
    layers = {}
    for order in ("gradients", "grams"):
        plan.orders = [order] * len(plan.convs)
        layers[order] = (plan.features(x1)[2], plan.features(x2)[2])
    for mode in ("full", "trace", "diagonal"):
        for fa1, fa2, fb1, fb2 in zip(*layers["gradients"], *layers["grams"]):
            a = conv_layer_ntk(fa1, fa2, mode)
            for workspace in (1 << 28, 1):  # one block of rows, or one row at a time
                torch.testing.assert_close(conv_layer_ntk(fb1, fb2, mode, workspace), a,
                                           rtol=0, atol=TOL)


def test_auto_order_and_memory_budget():
    # Tiny batches of a wide layer with few positions favour the Gram order, else gradients.
    assert choose_order(1, 1, 1, "trace", c_out=512, patch=4608, positions=4) == "grams"
    assert choose_order(256, 256, 10, "full", c_out=128, patch=1152, positions=64) == "gradients"
    model, x1, _ = _setup("gap-n10", seed=3)
    x = torch.cat([x1, x1 + 0.1])
    ref = tn.empirical_ntk(model, x, method="jacobian", mode="trace", progress=False)
    got, info = tn.empirical_ntk(model, x, mode="trace", memory_budget=40_000, progress=False,
                                 return_info=True)
    assert info.blocks > 1 and info.row_chunk < x.shape[0]
    torch.testing.assert_close(got, ref, rtol=0, atol=TOL)
    assert torch.equal(got, got.t())


def test_float32_and_structured_request():
    model, x1, x2 = _setup("circular-avgpool", seed=4)
    model = model.float()
    got = tn.empirical_ntk(model, x1.float(), x2.float(), method="structured", progress=False)
    ref = tn.empirical_ntk(model, x1.float(), x2.float(), method="jacobian", progress=False)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"shape \[N, 2, H, W\]"):
        tn.empirical_ntk(model, torch.randn(2, 3, 6, 6), method="structured")


def test_wrapper_uses_structured_path():
    model, x1, x2 = _setup("standard", seed=5)
    got = tn.NTK(model).empirical(x1, x2, mode="diagonal")
    ref = tn.empirical_ntk(model, x1, x2, mode="diagonal", method="jacobian", progress=False)
    torch.testing.assert_close(got, ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("shape", [(300, 7), (3, 200, 5), (64, 3)])
def test_symmetric_gram_tiles(shape):
    a = torch.randn(*shape, dtype=D)
    g = symmetric_gram(a)
    torch.testing.assert_close(g, a @ a.transpose(-1, -2), rtol=0, atol=TOL)
    assert torch.equal(g, g.transpose(-1, -2))


def test_tracker_reference_is_the_structured_kernel():
    model, x1, _ = _setup("conv1d", seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", tn.MethodFallbackWarning)
        tracker = tn.KernelDriftTracker(model, x1)
    ref = tn.empirical_ntk(model, x1, mode="trace", method="jacobian", progress=False)
    torch.testing.assert_close(tracker.state_dict()["reference"], ref, rtol=0, atol=TOL)
