"""Lifting graphs through torch.fx (torch_ntk.lifting.graph, issue 26): the forms people
write become the expected nodes; the graphs whose limit is not the sum/recursion of
kernels are refused with the fx node named (op, target, file:line) and the methods that
still work; method="auto" picks the Jacobian method and says why (checked against the
torch.func NTK, float64, 1e-10); the fused paths decline graphs and padded pools.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graph_reference as ref
import torch_ntk as tn
from oracles import func_ntk_modes
from torch_ntk.activations import Activation
from torch_ntk.analytic.fused import cnn_op_args
from torch_ntk.layers import Add, AvgPool, Concat, Conv, Dense, GlobalSumPool, LayerNorm
from torch_ntk.lifting.spec import LayerSpec
from torch_ntk.nn import NTKConv2d, NTKLinear

D = torch.float64
FILE = r"test_graph_lift\.py:\d+"
HINT = "empirical_ntk(..., method='hooks', 'jacobian' or 'ntk_vp')"

pytestmark = pytest.mark.usefixtures("one_thread")


def kinds(spec):
    return [(type(n.layer).__name__, n.inputs) for n in spec.nodes]


class Forms(nn.Module):
    """Each way of writing a residual sum, selected by ``form``."""

    def __init__(self, form):
        super().__init__()
        self.form = form
        self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.drop, self.ident, self.out = nn.Dropout(0.1), nn.Identity(), nn.Linear(4, 1)

    def forward(self, x):
        h = self.a(x)
        f = self.b(torch.relu(h))
        if self.form == "plus":
            z = h + f
        elif self.form == "torch.add":
            z = torch.add(h, f)
        elif self.form == "iadd":
            z = h
            z += f
        elif self.form == "scalars":
            z = 0.5 * h + f * 2.0
        elif self.form == "alpha":
            z = torch.add(h, f, alpha=-3)
        elif self.form == "minus":
            z = h - f / 4
        elif self.form == "method":
            z = h.add(self.drop(f))
        else:  # three terms, an Identity and a Dropout on the way
            z = self.ident(h) + self.drop(f) - self.c(torch.relu(h))
        return self.out(z)


@pytest.mark.parametrize("form, coefficients", [
    ("plus", (1, 1)), ("torch.add", (1, 1)), ("iadd", (1, 1)), ("scalars", (0.5, 2)),
    ("alpha", (1, -3)), ("minus", (1, -0.25)), ("method", (1, 1)), ("three", (1, 1, -1))])
def test_the_forms_of_a_residual_sum_lift_to_one_add(form, coefficients):
    spec = tn.lift(Forms(form))
    adds = [n for n in spec.nodes if isinstance(n.layer, Add)]
    assert len(adds) == 1 and adds[0].layer.coefficients == coefficients
    assert adds[0].inputs[:2] == (0, 2)  # h (node 0) and f (node 2: a, relu, b)
    assert isinstance(spec.layers[-1], Dense) and spec.nodes[-1].inputs == (len(spec.nodes) - 2,)


class Block(nn.Module):
    """A pre-activation block of its own class: x + conv(relu(GroupNorm(1)(x)))."""

    def __init__(self, c):
        super().__init__()
        self.norm, self.conv = nn.GroupNorm(1, c), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return x + self.conv(torch.relu(self.norm(x)))


def test_blocks_of_the_users_class_inside_a_sequential_lift():
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), Block(3), Block(3),
                          nn.AvgPool2d(3, 2, padding=1, count_include_pad=False),
                          nn.Flatten(), nn.Linear(3 * 9, 1))
    spec = tn.lift(model)
    assert kinds(spec) == [("Conv", (-1,)), ("LayerNorm", (0,)), ("Activation", (1,)),
                           ("Conv", (2,)), ("Add", (0, 3)), ("LayerNorm", (4,)),
                           ("Activation", (5,)), ("Conv", (6,)), ("Add", (4, 7)),
                           ("AvgPool", (8,)), ("Flatten", (9,)), ("Dense", (10,))]
    assert spec.layers[1].over == "channels_positions" and spec.layers[1].affine
    pool = spec.layers[9]
    assert pool.padding == (1, 1) and not pool.count_include_pad and pool.padded
    assert spec.check_input("t", "x", torch.randn(2, 2, 5, 5)).shape == (2, 2, 5, 5)
    with pytest.raises(ValueError, match="9 positions per channel"):
        spec.check_input("t", "x", torch.randn(2, 2, 7, 7))


class ChannelsLast(nn.Module):
    """A LayerNorm over the channels, written between channels-last permutes, then the
    global sum x.sum(dim=(2, 3)); a concatenation of two conv branches on channels."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 3, 3), nn.Conv2d(2, 5, 3)
        self.ln, self.out = nn.LayerNorm(8), nn.Linear(8, 1)

    def forward(self, x):
        h = torch.cat([self.a(x), self.b(x)], dim=1)
        h = self.ln(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
        return self.out(h.sum(dim=(2, 3)))


def test_layernorm_over_channels_concat_and_global_sum():
    spec = tn.lift(ChannelsLast())
    assert kinds(spec) == [("Conv", (-1,)), ("Conv", (-1,)), ("Concat", (0, 1)),
                           ("LayerNorm", (2,)), ("GlobalSumPool", (3,)), ("Dense", (4,))]
    assert spec.layers[2].widths == (3, 5) and spec.layers[3].over == "channels"
    assert isinstance(spec.layers[4], GlobalSumPool)


def test_a_spec_holding_a_layernorm_is_a_graph_and_a_chain_is_not():
    chain = tn.lift(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)))
    assert not chain.is_graph and chain.inputs is None
    normed = tn.lift(nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.ReLU(),
                                   nn.Linear(4, 1)))
    assert normed.is_graph and normed.inputs == ((-1,), (0,), (1,), (2,))


# ------------------------------------------------------------------ refusals


class Refused(nn.Module):
    def __init__(self, case):
        super().__init__()
        self.case = case
        self.a, self.b, self.o = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 1)
        self.c = nn.Linear(4, 4)
        self.conv, self.head = nn.Conv2d(2, 3, 3, padding=1), nn.Linear(3, 1)
        self.ln = nn.LayerNorm(5)

    def forward(self, x):
        if self.case == "x + relu(x)":
            h = self.a(x)
            return self.o(h + torch.relu(h))
        if self.case == "x + x":
            h = self.a(x)
            return self.o(h + h)
        if self.case == "shared module":
            return self.o(self.b(self.a(x)) + self.b(self.a(x)))
        if self.case == "shared weight layer":
            c = self.conv(x)
            return self.head((c + F.avg_pool2d(c, 3, 1, padding=1)).mean((2, 3)))
        if self.case == "resnet-v1":
            h = torch.relu(self.a(x))
            return self.o(torch.relu(h + self.b(h)))
        if self.case == "two means":
            h = self.a(x)
            return self.o(torch.relu(self.b(h)) + torch.relu(self.c(h)))
        if self.case == "layernorm on W":
            return self.head(self.ln(self.conv(x)).mean((2, 3)))
        if self.case == "unsupported":
            h = self.a(x)
            return self.o(h + self.b(torch.atan(h)))
        if self.case == "scalar outside a sum":
            return self.o(torch.relu(self.a(x)) * 3)
        if self.case == "shift":
            return self.o(self.a(x) + 1.0)
        raise AssertionError(self.case)


REFUSALS = [
    ("x + relu(x)", rf"node \d+ \(Add at add\) adds branches that are not independent .*node "
                    rf"add \(call_function _operator\.add, at .*{FILE}: return self\.o\(h \+ "
                    r"torch\.relu\(h\)\)\)"),
    ("x + x", rf"adds node 0 \(Dense at a\) to itself .*node add \(call_function "
              rf"_operator\.add, at .*{FILE}: return self\.o\(h \+ h\)\)"),
    ("shared module", rf"node a_1 \(call_module a, at .*{FILE}: .*\): it calls a module already "
                      "called by node a"),
    ("shared weight layer", r"adds branches that are not independent given their fork: neither "
                            r"node 0 \(Conv at conv\) nor node 1 \(AvgPool at avg_pool2d\)"),
    ("two means", r"adds node 2 \(Activation\) and node 4 \(Activation\), neither of which "
                  r"has mean zero .*node add \(call_function _operator\.add"),
    ("resnet-v1", r"applies a nonlinearity to node 3 \(Add at add\), which is not Gaussian .*"
                  rf"ResNet-v1 .*node relu_1 \(call_function torch\.relu, at .*{FILE}"),
    ("layernorm on W", r"node 1 \(LayerNorm at ln\) normalizes over features; its input gives 3 "
                       r"channels: a LayerNorm over the last axis of a 2-D CNN's \[N, C, H, W\] "
                       r"normalizes the position axis W \(the width\), not the channels.*; node "
                       rf"ln \(call_module ln, at .*{FILE}"),
    ("unsupported", rf"node atan \(call_function torch\.atan, at .*{FILE}: .*\) is not a "
                    "supported layer"),
    ("scalar outside a sum", r"node mul \(call_function _operator\.mul, .*\) scales a layer's "
                             r"output by 3\.0: a scalar multiple lifts only as a term of a sum"),
    ("shift", r"node add \(call_function _operator\.add, .*\): it adds a constant"),
]


@pytest.mark.parametrize("case, match", REFUSALS, ids=[c for c, _ in REFUSALS])
def test_refusals_name_the_node_and_the_methods_that_still_work(case, match):
    model = Refused(case).to(D)
    with pytest.raises(ValueError, match=match) as error:
        tn.lift(model)
    assert str(error.value).endswith(HINT), str(error.value)
    with pytest.raises(ValueError, match="has no infinite-width"):
        tn.NTK(model).limit(torch.randn(2, *((2, 4, 4) if "W" in case or "weight layer"
                                              in case else (3,)), dtype=D))


def test_the_finite_width_ntk_of_a_refused_model_is_still_computed():
    model = Refused("resnet-v1").to(D)
    x = torch.randn(4, 3, dtype=D)
    k, info = tn.empirical_ntk(model, x, mode="full", return_info=True)
    assert info.method == "hooks"
    torch.testing.assert_close(k, func_ntk_modes(model, x)["full"], rtol=1e-10, atol=1e-12)


class NormAfterRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.ln, self.o = nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 1)

    def forward(self, x):
        return self.o(self.ln(torch.relu(self.a(x))))


class ReluAfterConcat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.o = nn.Linear(3, 2), nn.Linear(3, 4), nn.Linear(6, 1)

    def forward(self, x):
        return self.o(torch.relu(torch.cat([self.a(x), self.b(x)], 1)))


class BadPermute(nn.Module):
    def __init__(self):
        super().__init__()
        self.c, self.o = nn.Conv2d(2, 3, 3), nn.Linear(3, 1)

    def forward(self, x):
        return self.o(self.c(x).permute(0, 1, 3, 2).mean((2, 3)))


@pytest.mark.parametrize("model, match", [
    (NormAfterRelu(), r"node 2 \(LayerNorm at ln\) normalizes node 1 \(Activation\), which is "
                      "not a zero-mean Gaussian"),
    (ReluAfterConcat(), r"applies a nonlinearity to node 2 \(Concat at cat\), a concatenation "
                        "whose parts have different variances"),
    (BadPermute(), r"node permute .*: permute\(0, 1, 3, 2\) lifts only as the channels-last "
                   "permute around a LayerNorm"),
    (nn.Sequential(nn.Linear(3, 4), nn.GroupNorm(2, 4), nn.Linear(4, 1)),
     r"module 1 \(GroupNorm\) does not lift: num_groups=2"),
], ids=["layernorm after relu", "relu after concat", "permute", "groupnorm(2)"])
def test_more_refusals(model, match):
    with pytest.raises(ValueError, match=match) as error:
        tn.lift(model)
    assert str(error.value).endswith(HINT), str(error.value)


@pytest.mark.parametrize("layers, inputs, match", [
    ((Dense(3, 4), LayerNorm(affine=True), LayerNorm(), Activation("relu"), Dense(4, 1)),
     ((-1,), (0,), (1,), (2,), (3,)), r"node 3 \(Activation\) follows node 2 \(LayerNorm\), "
     "which carries the NTK term of an affine LayerNorm's gain"),
    ((Dense(3, 4), Dense(4, 1)), ((-1,), (1,)), r"node 1 \(Dense\) reads \(1,\)"),
    ((Dense(3, 4), Dense(3, 4), Add((1.0, 1.0)), Dense(4, 1)), ((-1,), (-1,), (0,), (2,)),
     r"node 2 \(Add\) reads 1 nodes; its layer takes 2"),
    ((Dense(3, 4), Dense(3, 5), Add((1.0, 1.0)), Dense(4, 1)), ((-1,), (-1,), (0, 1), (2,)),
     r"node 2 \(Add\) adds inputs of different shapes: 4 features, 5 features"),
    ((Dense(3, 4), Dense(3, 5), Concat((4, 4)), Dense(8, 1)), ((-1,), (-1,), (0, 1), (2,)),
     r"node 2 \(Concat\) has widths \(4, 4\); its inputs give 4 features, 5 features"),
    ((Dense(3, 4), LayerNorm(width=5), Dense(4, 1)), ((-1,), (0,), (1,)),
     r"node 1 \(LayerNorm\) normalizes 5 features; its input gives 4 features"),
    ((Dense(3, 4), Dense(3, 4), Dense(4, 1)), ((-1,), (-1,), (1,)),
     r"node 0 \(Dense\) is read by no node"),
    ((Conv(2, 3, (3, 3)), LayerNorm(over="channels_positions"), AvgPool((2, 2), (2, 2)),
      Dense(3, 1)), ((-1,), (0,), (1,), (2,)), r"node 3 \(Dense\) has in_features=3; its "
     r"input gives 3 channels"),
])
def test_hand_built_graph_specs_are_checked(layers, inputs, match):
    with pytest.raises(ValueError, match=match):
        LayerSpec(layers, inputs=inputs)


# ------------------------------------------------------------------ engines


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.ln, self.o = (nn.Linear(3, 6), nn.Linear(6, 6), nn.LayerNorm(6),
                                           nn.Linear(6, 2))

    def forward(self, x):
        h = self.a(x)
        return self.o(self.ln(h + self.b(torch.tanh(h))))


@pytest.mark.parametrize("model, shape", [(Residual(), (3,)), (ChannelsLast(), (2, 5, 5))],
                         ids=["residual mlp", "cnn"])
def test_auto_chooses_the_hook_engine_for_graphs_and_says_why(model, shape):
    model = model.to(D)
    x = torch.randn(3, *shape, dtype=D)
    k, info = tn.empirical_ntk(model, x, mode="full", return_info=True)
    assert info.method == "hooks" and "lifts to a graph" in info.reason
    assert "structured engine runs chains only" in info.reason
    torch.testing.assert_close(k, func_ntk_modes(model, x)["full"], rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="method='structured' is not available: the model "
                                         "lifts to a graph"):
        tn.empirical_ntk(model, x, method="structured")


def test_the_fused_path_runs_graphs_and_padded_pools():
    """Graph specs and a chain with a padded pool run on the fused op (its program with skip
    registers and AVGPOOL_PAD), and the padded chain equals the independent reference."""
    assert cnn_op_args(tn.lift(ChannelsLast())) is not None
    torch.manual_seed(0)
    chain = nn.Sequential(NTKConv2d(2, 3, 3, padding=1, weight_std=1.2, bias_std=0.3,
                                       dtype=D), nn.ReLU(),
                          nn.AvgPool2d(3, 2, padding=1, count_include_pad=False), nn.Flatten(),
                          NTKLinear(27, 1, weight_std=1.3, bias_std=0.4, dtype=D))
    spec = tn.lift(chain)
    assert not spec.is_graph and cnn_op_args(spec)[0][2] == 10  # AVGPOOL_PAD
    unpadded = tn.lift(nn.Sequential(nn.Conv2d(2, 3, 3), nn.AvgPool2d(2), nn.Flatten(),
                                     nn.Linear(3, 1)))
    assert cnn_op_args(unpadded) is not None
    x1, x2 = torch.randn(3, 2, 5, 5, dtype=D), torch.randn(2, 2, 5, 5, dtype=D)
    got = tn.analytic_kernels(chain, x1, x2)

    def forward(s):
        h = ref.activation(ref.conv(s, (5, 5), 3, 1, 1.2, 0.3), "relu")
        h = ref.pool(h, ref.pool_matrix((5, 5), 3, 2, 1, False))
        return ref.dense(ref.flatten(h), 1.3, 0.4)
    nngp, ntk = ref.kernels(forward, x1.numpy(), x2.numpy())
    np.testing.assert_allclose(got.nngp.numpy(), nngp, rtol=1e-10, atol=0)
    np.testing.assert_allclose(got.ntk.numpy(), ntk, rtol=1e-10, atol=0)
    # a padded pool in a chain: the structured finite-width engine runs it (through the
    # module itself), against the torch.func oracle
    k, info = tn.empirical_ntk(chain, x1, mode="full", return_info=True)
    assert info.method == "structured"
    torch.testing.assert_close(k, func_ntk_modes(chain, x1)["full"], rtol=1e-10, atol=1e-12)


def test_activation_descriptor_is_the_graph_activation():
    spec = tn.lift(Residual())
    assert isinstance(spec.layers[1], Activation) and spec.layers[1].name == "tanh"


class OneD(nn.Module):
    """A 1-D residual CNN (LayerNorm over channels by permute(0, 2, 1), padded avg_pool1d),
    or the same network as 2-D with (1, k) windows on [N, C, 1, L]."""

    def __init__(self, two_d):
        super().__init__()
        self.two_d = two_d
        if two_d:
            self.a = NTKConv2d(2, 3, (1, 3), padding=(0, 1), dtype=D)
            self.b = NTKConv2d(3, 3, (1, 3), padding=(0, 1), weight_std=0.8, dtype=D)
        else:
            self.a = tn.nn.NTKConv1d(2, 3, 3, padding=1, dtype=D)
            self.b = tn.nn.NTKConv1d(3, 3, 3, padding=1, weight_std=0.8, dtype=D)
        self.ln, self.o = nn.LayerNorm(3, dtype=D), NTKLinear(3, 1, dtype=D)

    def forward(self, x):
        h = self.a(x)
        h = h + self.b(F.relu(h))
        if self.two_d:
            h = self.ln(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            h = F.avg_pool2d(h, (1, 3), (1, 2), padding=(0, 1), count_include_pad=False)
            return self.o(h.mean((2, 3)))
        h = self.ln(h.permute(0, 2, 1)).permute(0, 2, 1)
        return self.o(F.avg_pool1d(h, 3, 2, padding=1, count_include_pad=False).mean(2))


def test_a_1d_graph_equals_the_2d_graph_of_height_one():
    x1, x2 = torch.randn(3, 2, 7, dtype=D), torch.randn(2, 2, 7, dtype=D)
    one = tn.analytic_kernels(OneD(False), x1, x2)
    two = tn.analytic_kernels(OneD(True), x1[:, :, None], x2[:, :, None])
    assert tn.lift(OneD(False)).spatial_dims == 1
    for name in ("nngp", "ntk"):
        torch.testing.assert_close(getattr(one, name), getattr(two, name), rtol=1e-12, atol=0)
