"""Graph specs (residual sums, concatenation, LayerNorm, padded and global sum pools) through
the fused CNN op (``torch_ntk.analytic.fused.graph_program``) against the package's torch
walker (``torch_ntk.analytic.cnn.cnn_kernels``, each node kind's registered rule, itself
checked against independent references in g26a's tests), float64 at 1e-10; the
linearization itself (registers, loads, joins) on small DAGs; autograd routed to the walker.
"""

import pytest
import torch

from torch_ntk import ops
from torch_ntk.activations import from_name
from torch_ntk.analytic import fused
from torch_ntk.analytic.cnn import cnn_kernels as walker
from torch_ntk.analytic.kernels import analytic_kernels
from torch_ntk.layers import Add, AvgPool, Concat, Conv, Dense, GlobalAvgPool, LayerNorm
from torch_ntk.layers.sum_pool import GlobalSumPool
from torch_ntk.lifting.spec import LayerSpec

from conftest import rel_err

RELU = from_name("relu")
TOL = 1e-10


def conv(c_in, c_out, k=3, pad=1, wv=1.8, bv=0.1):
    return Conv(c_in, c_out, (k, k), padding=((pad, pad), (pad, pad)), weight_var=wv, bias_var=bv)


def residual_mlp(shortcut="identity", coefficients=(1.0, 1.0), width=12):
    layers = [Dense(5, width, 1.6, 0.1), RELU, Dense(width, width, 1.9, 0.05), RELU,
              Dense(width, width, 1.4, 0.2)]
    inputs = [(-1,), (0,), (1,), (2,), (3,)]
    if shortcut == "projection":
        layers.append(Dense(width, width, 0.8, 0.3))
        inputs.append((0,))
        layers.append(Add(coefficients))
        inputs.append((5, 4))
    else:
        layers.append(Add(coefficients))
        inputs.append((0, 4))
    n = len(layers)
    layers += [RELU, Dense(width, 1, 1.2, 0.1)]
    inputs += [(n - 1,), (n,)]
    return LayerSpec(tuple(layers), inputs=tuple(inputs))


def concat_mlp():
    layers = (Dense(5, 8, 1.5, 0.1), RELU, Dense(8, 6, 1.7, 0.3), Dense(5, 10, 2.0, 0.0),
              Concat((6, 10)), Dense(16, 1, 1.1, 0.2))
    inputs = ((-1,), (0,), (1,), (-1,), (2, 3), (4,))
    return LayerSpec(layers, inputs=inputs)


def layernorm_mlp(affine):
    layers = (Dense(5, 9, 2.5, 0.1), LayerNorm(1e-5, affine, "features", 9), RELU,
              Dense(9, 9, 1.4, 0.2), LayerNorm(0.3, affine, "features", 9), RELU,
              Dense(9, 1, 1.3, 0.1))
    return LayerSpec(layers, inputs=tuple((k - 1,) for k in range(len(layers))))


def residual_cnn(norm=None, readout=None, pool=None):
    """conv → two blocks h + conv(relu(conv(relu(h)))) [→ LayerNorm] [→ pool] → relu →
    readout → dense."""
    layers, inputs = [conv(2, 4, wv=1.7)], [(-1,)]
    for b in range(2):
        h = len(layers) - 1
        block = [RELU, conv(4, 4, wv=1.9, bv=0.05), RELU, conv(4, 4, wv=1.5, bv=0.2)]
        for layer in block:
            inputs.append((len(layers) - 1,))
            layers.append(layer)
        layers.append(Add((1.0, 1.0)))
        inputs.append((h, len(layers) - 2))
        # An affine norm only after the last block: a sum that carries an earlier affine
        # norm's gain term into another norm is refused by the graph checks (two gain terms).
        if norm is not None and (b == 1 or not norm.affine):
            layers.append(norm)
            inputs.append((len(layers) - 2,))
    for layer in ([pool] if pool is not None else []) + [RELU, readout or GlobalAvgPool(),
                                                         Dense(4, 1, 1.3, 0.1)]:
        inputs.append((len(layers) - 1,))
        layers.append(layer)
    return LayerSpec(tuple(layers), inputs=tuple(inputs))


def two_branch_cnn():
    """a(x) + b(x): two convolutions of the input, summed, then relu → GAP → dense."""
    layers = (conv(2, 4, wv=1.7), conv(2, 4, k=1, pad=0, wv=0.9), Add((0.6, 1.1)), RELU,
              GlobalAvgPool(), Dense(4, 1, 1.3, 0.1))
    inputs = ((-1,), (-1,), (0, 1), (2,), (3,), (4,))
    return LayerSpec(layers, inputs=inputs)


MLPS = {
    "residual identity": residual_mlp(),
    "residual identity alpha beta": residual_mlp(coefficients=(0.7, 1.3)),
    "residual projection": residual_mlp("projection"),
    "residual projection alpha beta": residual_mlp("projection", (1.2, 0.5)),
    "concat": concat_mlp(),
    "layernorm features": layernorm_mlp(False),
    "layernorm features affine": layernorm_mlp(True),
}
CNNS = {
    "two-block residual gap": residual_cnn(),
    "two branches of the input": two_branch_cnn(),
    "layernorm channels": residual_cnn(norm=LayerNorm(1e-3, False, "channels", 4)),
    "layernorm channels affine": residual_cnn(norm=LayerNorm(1e-3, True, "channels", 4)),
    "groupnorm channels_positions": residual_cnn(
        norm=LayerNorm(1e-5, False, "channels_positions", 4)),
    "groupnorm channels_positions affine": residual_cnn(
        norm=LayerNorm(1e-5, True, "channels_positions", 4)),
    "padded avgpool include": residual_cnn(
        pool=AvgPool((3, 3), (2, 2), padding=(1, 1), count_include_pad=True)),
    "padded avgpool exclude": residual_cnn(
        pool=AvgPool((3, 3), (2, 2), padding=(1, 1), count_include_pad=False)),
    "global sum pool": residual_cnn(readout=GlobalSumPool()),
}
CASES = [("mlp", k, v) for k, v in MLPS.items()] + [("cnn", k, v) for k, v in CNNS.items()]


def data(kind, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    shape = (5,) if kind == "mlp" else (2, 6, 6)
    return (torch.randn(4, *shape, generator=g).to(dtype),
            torch.randn(3, *shape, generator=g).to(dtype))


@pytest.mark.parametrize("kind,name,spec", CASES, ids=[c[1] for c in CASES])
@pytest.mark.parametrize("symmetric", [False, True], ids=["x2", "x2=None"])
def test_fused_graph_matches_walker(kind, name, spec, symmetric):
    assert fused.cnn_op_args(spec) is not None  # the op runs it, not the walker
    x1, x2 = data(kind)
    x2 = None if symmetric else x2
    got = analytic_kernels(spec, x1, x2)
    want = walker(spec, x1, x2)
    assert rel_err(got.nngp, want.nngp) < TOL
    assert rel_err(got.ntk, want.ntk) < TOL


@pytest.mark.parametrize("kind,name,spec", CASES[::4], ids=[c[1] for c in CASES[::4]])
def test_fused_graph_float32(kind, name, spec):
    """float32 within 2e-5 relative (max error / max |reference|) of the float64 walker."""
    x1, x2 = data(kind)
    got = analytic_kernels(spec, x1.float(), x2.float())
    want = walker(spec, x1, x2)
    assert rel_err(got.ntk, want.ntk) < 2e-5
    assert rel_err(got.nngp, want.nngp) < 2e-5


INTS = [11, 1, 4, 0, 0, 0, 1, 1, 1, 2, 7, 0]  # per code, as csrc/cnn_spec.h reads them
FLOATS = [4, 1, 0, 0, 0, 4, 0, 0, 2, 1, 0, 0]


def steps(program):
    """[(code, ints, floats)] of an op program."""
    codes, ints, floats = program
    out, i, f = [], 0, 0
    for c in codes:
        out.append((c, ints[i:i + INTS[c]], floats[f:f + FLOATS[c]]))
        i, f = i + INTS[c], f + FLOATS[c]
    assert (i, f) == (len(ints), len(floats))
    return out


def test_program_of_a_residual_block():
    """h + f(h): h pushed at the fork, joined with c² weights after the branch (the current
    f(h) weighted by 1.3², the register's h by 0.7²)."""
    got = steps(fused.cnn_op_args(residual_mlp(coefficients=(0.7, 1.3))))
    assert [c for c, _, _ in got] == [0, 6, 1, 0, 1, 0, 8, 1, 3, 5]
    assert got[1][1] == [0] and got[6][1] == [0]
    assert got[6][2] == pytest.approx([1.3 ** 2, 0.7 ** 2])


def test_program_of_a_projection_and_a_reused_register():
    """The projection branch LOADs h and joins the pushed f(h); in a two-block CNN the
    second block's fork reuses register 0, freed by the first join."""
    got = steps(fused.cnn_op_args(residual_mlp("projection", (1.2, 0.5))))
    assert [c for c, _, _ in got] == [0, 6, 1, 0, 1, 0, 6, 7, 0, 8, 1, 3, 5]
    assert [g[1] for g in got if g[0] in (6, 7, 8)] == [[0], [1], [0], [1]]
    assert got[9][2] == pytest.approx([1.2 ** 2, 0.5 ** 2])  # current projection, then f(h)
    cnn = steps(fused.cnn_op_args(residual_cnn()))
    assert [g[1] for g in cnn if g[0] in (6, 7, 8)] == [[0], [0], [0], [0]]


def test_program_two_branches_load_the_input():
    got = steps(fused.cnn_op_args(two_branch_cnn()))
    assert [c for c, _, _ in got] == [6, 0, 6, 7, 0, 8, 1, 3, 5]
    assert got[5][2] == pytest.approx([1.1 ** 2, 0.6 ** 2])


def test_too_many_live_values_decline():
    """More than MAX_SLOTS values live at once: None (the walker runs it), not an error."""
    n = fused.MAX_SLOTS + 2
    layers = [Dense(5, 4, 1.0, 0.1) for _ in range(n)] + [Concat((4,) * n), Dense(4 * n, 1)]
    inputs = [(-1,)] * n + [tuple(range(n)), (n,)]
    spec = LayerSpec(tuple(layers), inputs=tuple(inputs))
    assert fused.cnn_op_args(spec) is None
    x1, _ = data("mlp")
    got, want = analytic_kernels(spec, x1), walker(spec, x1)
    assert rel_err(got.ntk, want.ntk) < TOL


def test_grad_routes_to_the_walker():
    """Inputs that require grad take the differentiable walker (the op's backward raises):
    the gradient of Σ Θ(x, x′) matches finite differences of the fused forward."""
    spec = residual_cnn()
    x1, x2 = data("cnn")
    x = x1.clone().requires_grad_(True)
    analytic_kernels(spec, x, x2).ntk.sum().backward()
    direction = torch.randn_like(x1)
    h = 1e-6
    plus = analytic_kernels(spec, x1 + h * direction, x2).ntk.sum()
    minus = analytic_kernels(spec, x1 - h * direction, x2).ntk.sum()
    fd = (plus - minus) / (2 * h)
    assert abs(float((x.grad * direction).sum() - fd)) < 1e-6 * max(1.0, abs(float(fd)))
    codes, ints, floats = fused.cnn_op_args(spec)
    empty = torch.zeros(0, dtype=torch.float64)
    y = x1.clone().requires_grad_(True)
    nngp, ntk = ops.cnn_kernels(y, None, codes, ints, floats, empty, empty)
    with pytest.raises(RuntimeError):
        ntk.sum().backward()


# ----------------------------------------------------------------------------- the MLP op


def smooth_residual_mlp(name):
    """A residual MLP of a smooth activation (the MLP op's Hermite-series or quadrature
    layers, whose per-sample tables follow the graph program's variances)."""
    act = from_name(name)
    layers = (Dense(5, 8, 1.6, 0.1), act, Dense(8, 8, 1.9, 0.05), LayerNorm(1e-5, False,
              "features", 8), act, Dense(8, 8, 1.4, 0.2), Add((1.0, 0.8)), act, Dense(8, 1))
    inputs = ((-1,), (0,), (1,), (2,), (3,), (4,), (0, 5), (6,), (7,))
    return LayerSpec(layers, inputs=inputs)


def test_mlp_op_declines_a_second_reader_of_the_input():
    """The MLP op's state starts after the input layer: a graph reading the input twice
    (concat of two input layers) has no MLP program and runs on the CNN op (checked
    against the walker by test_fused_graph_matches_walker)."""
    assert fused.mlp_graph_args(MLPS["concat"]) is None
    assert fused.cnn_op_args(MLPS["concat"]) is not None


@pytest.mark.parametrize("name", [n for n in MLPS if n != "concat"])
def test_mlp_graphs_run_on_the_mlp_op(name):
    """The MLP op's graph program (CPU) and the CNN op on 1 x 1 images give the walker's
    kernels; both programs exist for these graphs."""
    spec = MLPS[name]
    args = fused.mlp_graph_args(spec)
    assert args is not None and args["graph_codes"]
    x1, x2 = data("mlp")
    nodes, weights = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    for b in (None, x2):
        want = walker(spec, x1, b)
        got = ops.analytic_kernels(x1, b, **args, gh_nodes=nodes, gh_weights=weights)
        assert rel_err(got[0], want.nngp) < TOL and rel_err(got[1], want.ntk) < TOL
        images = None if b is None else b[:, :, None, None]
        got = ops.cnn_kernels(x1[:, :, None, None], images, *fused.graph_program(spec),
                              nodes, weights)
        assert rel_err(got[0], want.nngp) < TOL and rel_err(got[1], want.ntk) < TOL


@pytest.mark.parametrize("name", ["erf", "tanh", "gelu"])
def test_mlp_op_graph_smooth_activations(name):
    """With the same Gauss–Hermite rule as the walker (quadrature_degree=48: the op's
    quadrature layers) at 1e-10; by default (erf closed form, tanh/GELU by their Hermite
    series, whose per-sample tables follow the program's variances) within 1e-6 of the
    walker at degree 160."""
    spec = smooth_residual_mlp(name)
    assert fused.mlp_graph_args(spec) is not None
    x1, x2 = data("mlp")
    for b in (None, x2):
        got, want = analytic_kernels(spec, x1, b, quadrature_degree=48), walker(
            spec, x1, b, quadrature_degree=48)
        assert rel_err(got.nngp, want.nngp) < TOL and rel_err(got.ntk, want.ntk) < TOL
        got, want = analytic_kernels(spec, x1, b), walker(spec, x1, b, quadrature_degree=160)
        tol = TOL if name == "erf" else 1e-6
        assert rel_err(got.nngp, want.nngp) < tol and rel_err(got.ntk, want.ntk) < tol


MLP_BAD = [
    (dict(graph_codes=[1, 0, 3], graph_ints=[4, 0], graph_floats=[1.0, 1.0]),
     "slot = 4 is out of range"),
    (dict(graph_codes=[0, 3], graph_ints=[1], graph_floats=[1.0, 1.0]),
     "which no earlier PUSH filled"),
    (dict(graph_codes=[0, 4], graph_ints=[0], graph_floats=[-1e-5]),
     "eps = -1e-05 in graph_floats must be >= 0"),
    (dict(graph_codes=[0, 0]), "HIDDEN"),
    (dict(graph_codes=[5], graph_floats=[1.0, 0.0, 1.0, 0.0]), "runs 0 HIDDEN steps"),
    (dict(graph_codes=[0, 9]), "is not a step code"),
    (dict(graph_codes=[4, 0], graph_ints=[1], graph_floats=[0.0], act_ids=[4]),
     "right after an affine LAYERNORM has no exact rule"),
]


@pytest.mark.parametrize("kwargs,match", MLP_BAD, ids=[m for _, m in MLP_BAD])
def test_mlp_op_bad_graph_programs(kwargs, match):
    x = torch.randn(3, 4, dtype=torch.float64)
    empty = torch.zeros(0, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        args = dict(act_ids=[1], act_params=[0.0], weight_var=[2.0], bias_var=[0.1],
                    ntk_weight=[2.0], ntk_bias=[0.1], gh_nodes=empty, gh_weights=empty)
        args.update(kwargs)
        ops.analytic_kernels(x, None, 0.5, 0.1, 0.5, 0.1, **args)


def test_grad_of_an_mlp_graph_routes_to_the_walker():
    """An MLP graph with inputs that require grad: the walker's gradient, equal to finite
    differences of the fused (MLP op) forward."""
    spec = MLPS["residual projection alpha beta"]
    x1, x2 = data("mlp")
    x = x1.clone().requires_grad_(True)
    analytic_kernels(spec, x, x2).ntk.sum().backward()
    direction = torch.randn_like(x1)
    h = 1e-6
    fd = (analytic_kernels(spec, x1 + h * direction, x2).ntk.sum()
          - analytic_kernels(spec, x1 - h * direction, x2).ntk.sum()) / (2 * h)
    assert abs(float((x.grad * direction).sum() - fd)) < 1e-6 * max(1.0, abs(float(fd)))

