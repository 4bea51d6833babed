"""Lifting models of the user's own classes through torch.fx (torch_ntk.lifting.fx).

References: the equivalent nn.Sequential with the same parameter tensors (its spec, its
analytic and structured kernels), and an independent Jacobian contraction by torch.func
written here (float64, relative error ≤ 1e-10).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vmap

import torch_ntk as tn
from torch_ntk.activations import Abs, Erf
from torch_ntk.layers import Dense
from torch_ntk.lifting import lift

F64 = torch.float64
TOL = 1e-10


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def jacobian_ntk(model, x1, x2):
    """Θ [N1, N2, n_L, n_L] = Σ_p ∂f_k(x1)/∂θ_p ∂f_l(x2)/∂θ_p, per-sample Jacobians by
    torch.func (the contraction of PyTorch's NTK tutorial)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def f(p, x):
        return functional_call(model, p, (x[None],))[0]

    j1 = vmap(jacrev(f), (None, 0))(params, x1)
    j2 = vmap(jacrev(f), (None, 0))(params, x2)
    return sum(torch.einsum("ikp,jlp->ijkl", j1[n].flatten(2), j2[n].flatten(2))
               for n in params)


def in_mode(full, mode):
    diag = full.diagonal(dim1=2, dim2=3)
    return {"full": full, "trace": diag.mean(-1), "diagonal": diag}[mode]


class TutorialCNN(nn.Module):
    """The CNN of PyTorch's NTK tutorial (smaller: 3×9×9 inputs, 6 channels, 3 outputs)."""

    def __init__(self, channels=6, hw=9, outputs=3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, (3, 3))
        self.conv2 = nn.Conv2d(channels, channels, (3, 3))
        self.conv3 = nn.Conv2d(channels, channels, (3, 3))
        self.fc = nn.Linear(channels * (hw - 6) ** 2, outputs)

    def forward(self, x):
        x = self.conv1(x)
        x = x.relu()
        x = self.conv2(x)
        x = x.relu()
        x = self.conv3(x)
        x = x.flatten(1)
        x = self.fc(x)
        return x


def tutorial_pair(seed=0):
    torch.manual_seed(seed)
    model = TutorialCNN().to(F64)
    seq = nn.Sequential(model.conv1, nn.ReLU(), model.conv2, nn.ReLU(), model.conv3,
                        nn.Flatten(), model.fc)
    return model, seq


def images(n, seed, hw=9):
    return torch.randn(n, 3, hw, hw, dtype=F64, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ the tutorial's CNN


def test_the_tutorial_cnn_lifts_bound_to_its_modules():
    model, seq = tutorial_pair()
    spec = lift(model)
    assert spec == lift(seq)
    assert [type(layer).__name__ for layer in spec.layers] == [
        "Conv", "Activation", "Conv", "Activation", "Conv", "Flatten", "Dense"]
    assert [spec.layers[k].position for k in (0, 2, 4, 6)] == ["conv1", "conv2", "conv3", "fc"]
    assert spec.layers[0].source is model.conv1 and spec.layers[6].source is model.fc
    relu = spec.layers[1].source  # x.relu(): an nn.ReLU carrying its fx node
    assert isinstance(relu, nn.ReLU) and relu.fx_node.op == "call_method"
    assert relu.fx_node.target == "relu"


def test_the_tutorial_cnn_has_the_kernels_of_its_sequential():
    model, seq = tutorial_pair()
    x1, x2 = images(5, 1), images(4, 2)
    a, b = tn.analytic_kernels(model, x1, x2), tn.analytic_kernels(seq, x1, x2)
    assert rel_err(a.nngp, b.nngp) <= 1e-14 and rel_err(a.ntk, b.ntk) <= 1e-14
    assert rel_err(tn.NTK(model).limit(x1).ntk, tn.analytic_kernels(seq, x1).ntk) <= 1e-14
    k, info = tn.empirical_ntk(model, x1, x2, mode="full", method="structured",
                               return_info=True)
    assert info.method == "structured"
    assert rel_err(k, tn.empirical_ntk(seq, x1, x2, mode="full")) <= 1e-14


@pytest.mark.parametrize("mode", ["full", "trace", "diagonal"])
def test_the_tutorial_cnn_structured_ntk_equals_the_jacobian_contraction(mode):
    model, _ = tutorial_pair(3)
    x1, x2 = images(5, 4), images(4, 5)
    expected = jacobian_ntk(model, x1, x2)
    k, info = tn.empirical_ntk(model, x1, x2, mode=mode, return_info=True)
    assert info.method == "structured" and "lifts to a CNN" in info.reason
    assert rel_err(k, in_mode(expected, mode)) <= TOL
    if mode == "trace":  # x2 = None: the tiles on and above the diagonal, mirrored
        sym = tn.empirical_ntk(model, x1, mode=mode)
        assert rel_err(sym, in_mode(jacobian_ntk(model, x1, x1), mode)) <= TOL


# ------------------------------------------------------------------ functional forms


class Middle(nn.Module):
    """fc1 → fn → fc2: an MLP whose activation is a functional call."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(self.fn(self.fc1(x)))


ACTIVATIONS = [
    ("x.relu()", lambda x: x.relu(), nn.ReLU()),
    ("F.relu", F.relu, nn.ReLU()),
    ("F.relu inplace", lambda x: F.relu(x, inplace=True), nn.ReLU()),
    ("torch.relu", torch.relu, nn.ReLU()),
    ("torch.tanh", torch.tanh, nn.Tanh()),
    ("F.gelu", lambda x: F.gelu(x), nn.GELU()),
    ("F.gelu tanh", lambda x: F.gelu(x, approximate="tanh"), nn.GELU(approximate="tanh")),
    ("torch.erf", torch.erf, Erf()),
    ("F.silu", F.silu, nn.SiLU()),
    ("F.leaky_relu", lambda x: F.leaky_relu(x, negative_slope=0.2), nn.LeakyReLU(0.2)),
    ("F.leaky_relu positional", lambda x: F.leaky_relu(x, 0.3), nn.LeakyReLU(0.3)),
    ("F.leaky_relu default", F.leaky_relu, nn.LeakyReLU()),
    ("x.sigmoid()", lambda x: x.sigmoid(), nn.Sigmoid()),
    ("torch.abs", torch.abs, Abs()),
]


@pytest.mark.parametrize("name, fn, module", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_each_functional_activation_lifts_to_its_registry_entry(name, fn, module):
    torch.manual_seed(0)
    model = Middle(fn).to(F64)
    spec = lift(model)
    assert spec.layers[1] == tn.activations.from_module(module)  # name and parameter
    assert spec == lift(nn.Sequential(model.fc1, module, model.fc2))
    x = torch.randn(5, 4, dtype=F64)
    expected = in_mode(jacobian_ntk(model, x, x), "trace")
    k, info = tn.empirical_ntk(model, x, mode="trace", return_info=True)
    assert info.method == "structured" and rel_err(k, expected) <= TOL


# The oracle's (registry name, parameter) of each ACTIVATIONS entry, written out by hand
# (not read from the lifted spec: a wrong lift must not choose its own reference).
ORACLE_ACTIVATIONS = {
    "x.relu()": ("relu", None), "F.relu": ("relu", None), "F.relu inplace": ("relu", None),
    "torch.relu": ("relu", None), "torch.tanh": ("tanh", None), "F.gelu": ("gelu", None),
    "F.gelu tanh": ("gelu", 1.0), "torch.erf": ("erf", None), "F.silu": ("silu", None),
    "F.leaky_relu": ("leaky_relu", 0.2), "F.leaky_relu positional": ("leaky_relu", 0.3),
    "F.leaky_relu default": ("leaky_relu", 0.01), "x.sigmoid()": ("sigmoid", None),
    "torch.abs": ("abs", None)}
CLOSED_FORM = {"relu", "leaky_relu", "abs", "erf"}


@pytest.mark.parametrize("name, fn, module", ACTIVATIONS, ids=[a[0] for a in ACTIVATIONS])
def test_each_functional_activation_has_the_independent_limit(name, fn, module):
    """The analytic kernels of the fx-lifted class against tests/independent.py (numpy/scipy,
    the recursion and the activation written out again; nn.Linear's default law): 1e-12
    relative for closed forms (ReLU family, erf), 1e-8 for the rest at quadrature degree 256
    (test_independent.py's tolerances)."""
    import independent as ind
    torch.manual_seed(0)
    model = Middle(fn).to(F64)
    act_name, param = ORACLE_ACTIVATIONS[name]
    closed = act_name in CLOSED_FORM
    x1, x2 = torch.randn(4, 4, dtype=F64), torch.randn(3, 4, dtype=F64)
    net = ind.mlp([4, 8, 2], act_name, param, linear=True, closed_form=closed)
    want_nngp, want_ntk = ind.kernels(net, x1.numpy(), x2.numpy())
    got = tn.analytic_kernels(model, x1, x2, quadrature_degree=None if closed else 256)
    tol = 1e-12 if closed else 1e-8
    assert ind.rel_err(got.nngp.numpy(), want_nngp) < tol
    assert ind.rel_err(got.ntk.numpy(), want_ntk) < tol


class Readout(nn.Module):
    """conv → relu → readout(x) → fc: a CNN whose readout is a functional call."""

    def __init__(self, readout, features):
        super().__init__()
        self.readout = readout
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(features, 2)

    def forward(self, x):
        return self.fc(self.readout(self.conv(x).relu()))


READOUTS = [  # 3×8×8 inputs: the conv gives 4×6×6
    ("torch.flatten(x, 1)", lambda x: torch.flatten(x, 1), [nn.Flatten()], 144),
    ("x.flatten(1)", lambda x: x.flatten(1), [nn.Flatten()], 144),
    ("x.view(x.size(0), -1)", lambda x: x.view(x.size(0), -1), [nn.Flatten()], 144),
    ("x.reshape(len(x), -1)", lambda x: x.reshape(len(x), -1), [nn.Flatten()], 144),
    ("x.reshape(x.shape[0], -1)", lambda x: x.reshape(x.shape[0], -1), [nn.Flatten()], 144),
    ("F.avg_pool2d", lambda x: F.avg_pool2d(x, 2).flatten(1), [nn.AvgPool2d(2), nn.Flatten()],
     36),
    ("F.avg_pool2d stride", lambda x: F.avg_pool2d(x, 3, stride=1).flatten(1),
     [nn.AvgPool2d(3, 1), nn.Flatten()], 64),
    ("F.adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, 1).flatten(1),
     [nn.AdaptiveAvgPool2d(1), nn.Flatten()], 4),
    ("x.mean((2, 3))", lambda x: x.mean((2, 3)), [nn.AdaptiveAvgPool2d(1)], 4),
    ("x.mean(dim=(-2, -1))", lambda x: x.mean(dim=(-2, -1)), [nn.AdaptiveAvgPool2d(1)], 4),
]


@pytest.mark.parametrize("name, fn, modules, features", READOUTS, ids=[r[0] for r in READOUTS])
def test_each_functional_readout_lifts_like_its_module(name, fn, modules, features):
    torch.manual_seed(0)
    model = Readout(fn, features).to(F64)
    seq = nn.Sequential(model.conv, nn.ReLU(), *modules, model.fc)
    assert lift(model) == lift(seq)
    x = torch.randn(4, 3, 8, 8, dtype=F64)
    assert rel_err(tn.analytic_kernels(model, x).ntk, tn.analytic_kernels(seq, x).ntk) <= 1e-14
    expected = in_mode(jacobian_ntk(model, x, x), "full")
    k, info = tn.empirical_ntk(model, x, mode="full", return_info=True)
    assert info.method == "structured" and rel_err(k, expected) <= TOL


def _op_reference_net(readout_id, features, channels=4, k=3, c0=3):
    """tests/test_cnn_op.py's description of Readout(...): nn.Conv2d/nn.Linear default laws
    (σ_w² = 1/3, σ_b² = 1/(3·fan_in), standard parametrization), written out by hand."""
    from test_cnn_op import FLAT_, GAP_, act, conv, dense, pool
    fan = c0 * k * k
    readout = {"F.avg_pool2d": [pool((2, 2), (2, 2)), FLAT_],
               "F.avg_pool2d stride": [pool((3, 3), (1, 1)), FLAT_]}.get(
        readout_id, [GAP_] if features == channels else [FLAT_])
    return [conv(channels, (k, k), wv=1 / 3, bv=1 / (3 * fan)), act("relu"), *readout,
            dense(2, wv=1 / 3, bv=1 / (3 * features))]


@pytest.mark.parametrize("name, fn, modules, features", READOUTS, ids=[r[0] for r in READOUTS])
def test_each_functional_readout_has_the_independent_limit(name, fn, modules, features):
    """The analytic kernels of the fx-lifted class against tests/test_cnn_op.py's
    selection-matrix reference (no torch_ntk code): 1e-10 relative, N1 ≠ N2."""
    from test_cnn_op import encode, reference
    torch.manual_seed(0)
    model = Readout(fn, features).to(F64)
    x1, x2 = torch.randn(3, 3, 8, 8, dtype=F64), torch.randn(2, 3, 8, 8, dtype=F64)
    layers = encode(_op_reference_net(name, features), 3, 8, 8, "standard")[3]
    want_nngp, want_ntk = reference(layers, x1, x2)
    got = tn.analytic_kernels(model, x1, x2)
    assert rel_err(got.nngp, want_nngp) <= TOL and rel_err(got.ntk, want_ntk) <= TOL


def test_the_tutorial_cnn_has_the_independent_limit():
    """TutorialCNN (fx-lifted) against the selection-matrix reference of test_cnn_op.py."""
    from test_cnn_op import FLAT_, act, conv, dense, encode, reference
    model, _ = tutorial_pair()
    c, fan0, fan = 6, 27, 54
    net = [conv(c, (3, 3), wv=1 / 3, bv=1 / (3 * fan0)), act("relu"),
           conv(c, (3, 3), wv=1 / 3, bv=1 / (3 * fan)), act("relu"),
           conv(c, (3, 3), wv=1 / 3, bv=1 / (3 * fan)), FLAT_, dense(3, 1 / 3, 1 / (3 * 54))]
    x1, x2 = images(3, 1), images(2, 2)
    want_nngp, want_ntk = reference(encode(net, 3, 9, 9, "standard")[3], x1, x2)
    got = tn.analytic_kernels(model, x1, x2)
    assert rel_err(got.nngp, want_nngp) <= TOL and rel_err(got.ntk, want_ntk) <= TOL


def test_a_bare_layer_a_wrapped_model_and_a_sequential_holding_a_chain_lift():
    assert lift(nn.Linear(3, 2)) == tn.LayerSpec((Dense(3, 2, 1 / 3, 1 / 9, "standard"),))
    torch.manual_seed(0)
    model, _ = tutorial_pair()
    outer = nn.Sequential(model, nn.Tanh(), nn.Linear(3, 2, dtype=F64))
    spec = lift(outer)
    assert [layer.position for layer in spec.dense_layers] == ["0.fc", 2]
    assert spec.layers[0].position == "0.conv1" and spec.layers[0].source is model.conv1
    for wrapper in (torch.compile(model, backend="eager"), nn.DataParallel(model)):
        assert lift(wrapper) == lift(model)  # lifted through the wrapper: the same layers
        assert lift(wrapper).layers[0].source is model.conv1
    x = images(4, 6)
    assert rel_err(tn.empirical_ntk(outer, x, mode="full"),
                   jacobian_ntk(outer, x, x)) <= TOL


class SharedActivation(nn.Module):
    """One nn.Tanh (no parameters) applied twice, a Dropout, nested Sequentials."""

    def __init__(self):
        super().__init__()
        self.act, self.drop = nn.Tanh(), nn.Dropout(0.5)
        self.body = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.Tanh(), nn.Linear(8, 8)))
        self.mid, self.head = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.drop(self.act(self.mid(self.act(self.body(x))))))


def test_a_parameterless_module_may_be_called_twice():
    torch.manual_seed(0)
    model = SharedActivation().to(F64)
    spec = lift(model)
    assert [layer.position for layer in spec.dense_layers] == ["body.0", "body.1.1", "mid",
                                                               "head"]
    assert spec.activations[1].source is model.act and spec.activations[2].source is model.act
    x = torch.randn(5, 4, dtype=F64)
    kernel = tn.empirical_ntk(model, x, mode="full")  # in eval mode: dropout off
    assert model.drop.training
    assert rel_err(kernel, jacobian_ntk(model.eval(), x, x)) <= TOL


# ------------------------------------------------------------------ what does not lift


class Dependent(nn.Module):
    """h + tanh(h): a sum of dependent branches (a concatenation or a residual block whose
    branch starts with a weight layer lifts: a graph, tests/test_graph_lift.py)."""

    def __init__(self):
        super().__init__()
        self.a, self.c = nn.Linear(4, 3), nn.Linear(3, 2)

    def forward(self, x):
        h = self.a(x)
        return self.c(h + torch.tanh(h))


class UsedTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = self.a(x)
        return self.b(torch.tanh(h) * h)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = self.a(x)
        if h.sum() > 0:
            h = h.relu()
        return self.b(h)


class Atan(nn.Module):  # torch.sin lifts since issue 31 (torch_ntk.layers.dual.Sin)
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(torch.atan(self.a(x)))


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(self.a(self.a(x).relu()))


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 2)

    def forward(self, x, y):
        return self.a(x) + y


FILE = r"test_fx_lift\.py:\d+"
NOT_LIFTING = [
    (Dependent, r"node 2 \(Add at add\) adds branches that are not independent given their "
                rf"fork: .*; node add \(call_function _operator\.add, at .*{FILE}: return "
                r"self\.c\(h \+ torch\.tanh\(h\)\)\)"),
    (UsedTwice, rf"node mul \(call_function _operator\.mul, at .*{FILE}: return self\.b\("
                r"torch\.tanh\(h\) \* h\)\): only a layer's output times or divided by a "
                "Python number lifts"),
    (DataDependent, rf"torch\.fx cannot trace DataDependent\.forward, at .*{FILE}: "
                    r"if h\.sum\(\) > 0: \(TraceError"),
    (Atan, rf"node atan \(call_function torch\.atan, at .*{FILE}: return self\.b\(torch\.atan"
           r"\(self\.a\(x\)\)\)\) is not a supported layer"),
    (Shared, r"node a_1 \(call_module a, .*\): it calls a module already called by node a "),
    (TwoInputs, r"node y \(placeholder y\): forward takes a second input"),
]


@pytest.mark.parametrize("cls, match", NOT_LIFTING, ids=[c.__name__ for c, _ in NOT_LIFTING])
def test_what_is_not_a_chain_names_the_node_and_the_methods_that_work(cls, match):
    model = cls().to(F64)
    with pytest.raises(ValueError, match=match) as error:
        lift(model)
    message = str(error.value)
    assert message.startswith(f"lift: the model must be an nn.Sequential or a module whose "
                              f"forward torch.fx reads as a graph of supported layers; "
                              f"{cls.__name__}: ")
    assert message.endswith("empirical_ntk(..., method='hooks', 'jacobian' or 'ntk_vp')")
    if cls in (TwoInputs, DataDependent):  # (vmap refuses data-dependent control flow too)
        return
    x = torch.randn(3, 4, dtype=F64)
    with pytest.raises(ValueError, match=r"method='structured' is not available: lift: .*"
                                         r"method='hooks', 'jacobian' or 'ntk_vp'"):
        tn.empirical_ntk(model, x, method="structured")
    with warnings.catch_warnings():  # auto falls back silently for a class of one's own ...
        warnings.simplefilter("error")
        k, info = tn.empirical_ntk(model, x, mode="full", return_info=True)
    assert info.method == "hooks"
    assert message.split("; ", 1)[1][:40] in info.reason  # ... and says why when asked
    assert rel_err(k, jacobian_ntk(model, x, x)) <= TOL
    with pytest.raises(ValueError, match=rf"NTK.limit: {cls.__name__} has no infinite-width"):
        tn.NTK(model).limit(x)


@pytest.mark.parametrize("readout, match", [
    (lambda x: F.avg_pool2d(x, 2, ceil_mode=True).flatten(1), r"module avg_pool2d \(AvgPool2d\) "
     rf"does not lift: only ceil_mode=False.*; node avg_pool2d \(call_function .*avg_pool2d, "
     rf"at .*{FILE}"),
    (lambda x: x.view(x.size(0), 2, -1).flatten(1),
     r"node view .*only x\.view\(x\.size\(0\), -1\)"),
    (lambda x: torch.flatten(x), r"node flatten .* flattens from dim 0; only start_dim=1"),
    (lambda x: x.mean(2).flatten(1), r"node mean .*: a mean over dims 2 after a 2-D convolution "
     r"is not a global average pool"),
    (lambda x: F.gelu(x.flatten(1), approximate="erf"), r"approximate must be 'none' or 'tanh'"),
    (lambda x: x.flatten(1) * 2, r"node mul \(call_function _operator\.mul"),
])
def test_unsupported_arguments_name_the_node(readout, match):
    model = Readout(readout, 144)
    with pytest.raises(ValueError, match=match):
        lift(model)


# ------------------------------------------------------------------ the other consumers


def test_monte_carlo_tracker_and_the_command_line_take_the_class(tmp_path):
    x = images(4, 7)
    make = lambda seed: TutorialCNN().to(F64)  # noqa: E731
    make_seq = lambda seed: nn.Sequential(  # noqa: E731 — the same draws in the same order
        nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 6, 3), nn.ReLU(), nn.Conv2d(6, 6, 3),
        nn.Flatten(), nn.Linear(54, 3)).to(F64)
    mc = tn.monte_carlo_kernels(make, x, n_samples=2, get="ntk", progress=False)
    ref = tn.monte_carlo_kernels(make_seq, x, n_samples=2, get="ntk", progress=False)
    assert mc.method == "structured" and rel_err(mc.ntk, ref.ntk) <= 1e-14
    mc = tn.monte_carlo_kernels(make, x, n_samples=2, get="nngp", nngp_estimator="readout",
                                progress=False)
    ref = tn.monte_carlo_kernels(make_seq, x, n_samples=2, get="nngp", nngp_estimator="readout",
                                 progress=False)
    assert rel_err(mc.nngp, ref.nngp) <= 1e-14

    model, seq = tutorial_pair(8)
    tracker = tn.KernelDriftTracker(model, x, method="structured", projections=1)
    assert rel_err(tracker.limit_kernel, tn.analytic_kernels(seq, x).ntk) <= 1e-14
    assert tracker.history[0].trace > 0

    from torch_ntk.cli import main

    torch.save(model, tmp_path / "model.pt")
    np.save(tmp_path / "x.npy", x.numpy())
    for kind, expected in (("ntk", tn.analytic_kernels(seq, x).ntk),
                           ("empirical", in_mode(jacobian_ntk(model, x, x), "trace"))):
        out = tmp_path / f"{kind}.npy"
        assert main(["kernel", str(tmp_path / "x.npy"), "-o", str(out), "--kind", kind,
                     "--model", str(tmp_path / "model.pt"), "--device", "cpu",
                     "--no-progress"]) == 0
        assert rel_err(torch.from_numpy(np.load(out)), expected) <= TOL
