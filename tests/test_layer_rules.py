"""Conformance of every registered layer kind, keyed by the registries of torch_ntk.layers.

One case per layer kind with an infinite-width rule (``@kernel_rule``): a model builder
``make(width)`` and an input shape. For each case

- the model lifts to a spec that holds the kind;
- its limit equals an independent reference: the recursion of tests/independent.py (numpy,
  MLPs), or — for networks linear in their input — the mean over random networks of
  f(x)f(x′)ᵀ and of the NTK (tests/oracles.py), which equals the limit exactly at any width
  (the layers are linear maps of independent Gaussian weights, so each layer's expected
  Gram is the recursion's), tested by z-scores of the Monte-Carlo mean;
- ``analytic_kernels`` (the fused op where every kind has an op encoding) equals the torch
  walker of the registered rules (float64, 1e-10);
- the NTK of one wide random network (torch.func, tests/oracles.py) is within a few percent
  of the limit (the O(1/√width) fluctuation of a finite network);
- and a kind registered without a case fails :func:`test_every_registered_kind_has_a_case`.

Some cases add a formula: sum pooling is average pooling times the window size |B| (and a
global sum the global mean times the positions P), so with nothing but linear layers
without bias after the pool both kernels scale by |B|² (P²).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import pytest
import torch
from torch import nn

import graph_reference
import independent
import torch_ntk as tn
from oracles import func_ntk
from torch_ntk.activations import Activation, Erf
from torch_ntk.analytic.cnn import cnn_kernels
from torch_ntk.analytic.fused import cnn_op_args
from torch_ntk.layers.base import rule_of
from torch_ntk.layers import (KERNEL_RULES, OP_ENCODINGS, Add, AvgPool, Concat, Conv, Dense,
                              Flatten, GlobalAvgPool, GlobalSumPool, LayerNorm, SumPool)
from torch_ntk.nn import NTKConv1d, NTKConv2d, NTKLinear

D = torch.float64


def conv2d(c_in, c_out, k, **kw):
    return NTKConv2d(c_in, c_out, k, weight_std=1.2, bias_std=0.3, dtype=D, **kw)


def dense(n_in, n_out, **kw):
    return NTKLinear(n_in, n_out, dtype=D, **kw)


class SumReadout(nn.Module):
    """A CNN whose readout is ``x.sum((2, 3))`` in forward (lifted by torch.fx); ``relu``:
    an activation after the first conv, ``head_bias``: the dense head's bias."""

    def __init__(self, width, relu=True, head_bias=True):
        super().__init__()
        self.conv, self.act = conv2d(2, width, 3), nn.ReLU() if relu else nn.Identity()
        self.conv2 = conv2d(width, width, 2, padding=1)
        self.head = dense(width, 1, bias=head_bias)

    def forward(self, x):
        return self.head(self.conv2(self.act(self.conv(x))).sum((2, 3)))


class Residual(nn.Module):
    """A linear residual CNN: h + 0.5·conv(h) (Add), or a concatenation of two conv
    branches of w and 2w channels (Concat), then Flatten and a dense head."""

    def __init__(self, width, join):
        super().__init__()
        self.join = join
        self.stem = conv2d(2, width, 3, padding=1)
        self.other = conv2d(width, width, 3, padding=1) if join == "add" else conv2d(
            2, 2 * width, 3, padding=1)
        self.head = dense((width if join == "add" else 3 * width) * 25, 1)

    def forward(self, x):
        h = self.stem(x)
        h = h + 0.5 * self.other(h) if self.join == "add" else torch.cat([h, self.other(x)], 1)
        return self.head(h.flatten(1))


class Doubled(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.a, self.b = dense(4, width), dense(width, 1)

    def forward(self, x):
        h = self.a(x)
        return self.b(h + h)


def layer_norm_mlp(s):
    """The reference of CASES[LayerNorm]: dense(4, w), LayerNorm (affine), relu, dense(w, 1)."""
    h = graph_reference.layer_norm(graph_reference.dense(s, 1.0, 0.1), 1e-5, True)
    return graph_reference.dense(graph_reference.activation(h, "relu"), 1.0, 0.1)


class Case(NamedTuple):
    """make(width) → model; the per-sample input shape; the independent reference:
    "linear" (Monte Carlo of narrow linear networks), "mlp" (tests/independent.py, with
    ``mlp`` the oracle's description) or "graph" (tests/graph_reference.py, ``graph`` the
    reference's forward); ``formula``: (model, model of the related kind,
    factor); ``refuse``: settings of the kind's modules that must not lift."""

    make: Callable
    shape: tuple
    reference: str
    mlp: Optional[Callable] = None
    formula: Optional[tuple] = None
    graph: Optional[Callable] = None
    wide: int = 256
    refuse: tuple = ()  # (model, regex of the ValueError lift raises)


CASES: dict[type, Case] = {
    Dense: Case(lambda w: nn.Sequential(dense(4, w), dense(w, w, bias_std=0.5), dense(w, 1)),
                (4,), "linear", wide=1024),
    Activation: Case(lambda w: tn.ntk_mlp([4, w, w, 1], "erf", bias_std=0.2, dtype=D), (4,),
                     "mlp", mlp=lambda: independent.mlp([4, 8, 8, 1], "erf", bias_std=0.2),
                     wide=1024),
    Conv: Case(lambda w: nn.Sequential(conv2d(2, w, 3, padding=1, padding_mode="circular"),
                                       conv2d(w, w, 2, stride=2), nn.Flatten(),
                                       dense(w * 4, 1)), (2, 5, 5), "linear"),
    Flatten: Case(lambda w: nn.Sequential(NTKConv1d(2, w, 3, stride=2, dtype=D), nn.Flatten(),
                                          dense(w * 4, 1)), (2, 9), "linear", wide=1024),
    AvgPool: Case(lambda w: nn.Sequential(conv2d(2, w, 3, padding=1), nn.AvgPool2d(2, 1),
                                          conv2d(w, w, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                          dense(w, 1)), (2, 5, 5), "linear"),
    GlobalAvgPool: Case(lambda w: nn.Sequential(conv2d(2, w, 3), nn.AdaptiveAvgPool2d(1),
                                                nn.Flatten(), dense(w, 1)), (2, 5, 5), "linear"),
    # the recipe's demonstration (docs/architecture.md, "Adding a layer kind"): SumPool and GlobalSumPool
    SumPool: Case(lambda w: nn.Sequential(conv2d(2, w, 3, padding=1), nn.LPPool2d(1, 2),
                                          nn.Flatten(), dense(w * 4, 1)), (2, 5, 5), "linear",
                  formula=(lambda w: nn.Sequential(
                      conv2d(2, w, 3, padding=1), nn.ReLU(), nn.LPPool2d(1, 2), nn.Flatten(),
                      dense(w * 4, 1, bias=False)), lambda w: nn.Sequential(
                      conv2d(2, w, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                      dense(w * 4, 1, bias=False)), 4 ** 2),
                  refuse=((nn.Sequential(conv2d(2, 2, 3), nn.LPPool2d(2, 2), nn.Flatten(),
                                         dense(2, 1)), r"module 1 \(LPPool2d\) does not lift: "
                           "norm_type=2"),)),
    GlobalSumPool: Case(lambda w: SumReadout(w, relu=False), (2, 5, 5), "linear",
                        formula=(lambda w: SumReadout(w, head_bias=False), lambda w: (
                            nn.Sequential(conv2d(2, w, 3), nn.ReLU(), conv2d(w, w, 2, padding=1),
                                          nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                          dense(w, 1, bias=False))), 16 ** 2)),
    # graphs (issue 26): tests/test_graph_kernels.py has the deeper checks
    Add: Case(lambda w: Residual(w, "add"), (2, 5, 5), "linear",
              refuse=((Doubled(3), r"adds node 0 \(Dense at a\) to itself"),)),
    Concat: Case(lambda w: Residual(w, "cat"), (2, 5, 5), "linear"),
    LayerNorm: Case(lambda w: nn.Sequential(dense(4, w), nn.LayerNorm(w, dtype=D), nn.ReLU(),
                                            dense(w, 1)), (4,), "graph",
                    graph=layer_norm_mlp, wide=4096,
                    refuse=((nn.Sequential(dense(4, 6), nn.LayerNorm((2, 3))),
                             r"module 1 \(LayerNorm\) does not lift: normalized_shape=\(2, 3\)"),
                            (nn.Sequential(dense(4, 6), nn.LayerNorm(6), Erf(), dense(6, 1)),
                             r"node 2 \(Activation\) follows node 1 \(LayerNorm at 1\), which "
                             "carries the NTK term of an affine LayerNorm's gain"))),
}


def inputs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, *shape, dtype=D, generator=g), torch.randn(2, *shape, dtype=D,
                                                                      generator=g)


@pytest.fixture(autouse=True)
def one_thread():
    """The models here are tiny: one intra-op thread (several spin against each other on a
    busy machine, ~50× slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gradients(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[N, P]: ∂f(x_i)/∂θ of a one-output model, one backward pass per sample (plain
    autograd; Θ = J₁J₂ᵀ)."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for xi in x:
        grads = torch.autograd.grad(model(xi[None]).sum(), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def test_every_registered_kind_has_a_case():
    """A layer kind registered with @kernel_rule and no case here fails: add its case."""
    missing = [kind.__name__ for kind in KERNEL_RULES if kind not in CASES]
    assert not missing, f"layer kinds without a conformance case: {missing}"


@pytest.mark.parametrize("kind", list(CASES), ids=lambda k: k.__name__)
def test_case_lifts_to_its_kind(kind):
    spec = tn.lift(CASES[kind].make(3))
    assert any(type(layer) is kind for layer in spec.layers), spec.layers


@pytest.mark.parametrize("kind", list(CASES), ids=lambda k: k.__name__)
def test_limit_against_independent_reference(kind):
    case = CASES[kind]
    x1, x2 = inputs(case.shape, 1)
    limit = tn.analytic_kernels(case.make(3), x1, x2)
    if case.reference == "graph":
        nngp, ntk = graph_reference.kernels(case.graph, x1.numpy(), x2.numpy())
        assert independent.rel_err(limit.nngp.numpy(), nngp) < 1e-10
        assert independent.rel_err(limit.ntk.numpy(), ntk) < 1e-10
        return
    if case.reference == "mlp":
        nngp, ntk = independent.kernels(case.mlp(), x1.numpy(), x2.numpy())
        assert independent.rel_err(limit.nngp.numpy(), nngp) < 1e-9
        assert independent.rel_err(limit.ntk.numpy(), ntk) < 1e-9
        return
    # linear networks: the mean over draws is the limit at any width (here 3 channels)
    draws = {"nngp": [], "ntk": []}
    for s in range(96):
        torch.manual_seed(100 + s)
        model = case.make(3)
        g1, g2 = gradients(model, x1), gradients(model, x2)
        with torch.no_grad():
            draws["nngp"].append(model(x1) @ model(x2).T)
        draws["ntk"].append(g1 @ g2.T)
    for name, values in draws.items():
        values = torch.stack(values)
        mean, err = values.mean(0), values.std(0) / len(values) ** 0.5
        z = ((mean - getattr(limit, name)) / err).abs().max().item()
        assert z < 5, (kind.__name__, name, z)


@pytest.mark.parametrize("kind", list(CASES), ids=lambda k: k.__name__)
def test_fused_op_equals_the_torch_rules(kind):
    """analytic_kernels (the fused op where every layer has an op encoding, else the
    walker) against the walker of the registered rules, x2 given and None."""
    case = CASES[kind]
    model = case.make(4)
    spec = tn.lift(model)
    x1, x2 = inputs(case.shape, 2)
    if not spec.is_mlp and any(rule_of(OP_ENCODINGS, layer) is None
                               and getattr(layer, "role", None) != "join"  # the op's JOINs
                               for layer in spec.layers):
        assert cnn_op_args(spec) is None  # a kind without op encoding: the walker runs it
    for second in (x2, None):
        fused, walker = tn.analytic_kernels(model, x1, second), cnn_kernels(spec, x1, second)
        for name in ("nngp", "ntk"):
            ref, got = getattr(walker, name), getattr(fused, name)
            if second is None:  # the diagonal pairs (x, x): the ops set their angle exactly
                # to 0; the walker's cosine can be 1 − ulp there, and arccos turns that into
                # ~1e-8 (√(2·ulp)), ~1e-9 in E[φ′φ′]: the diagonal within 1e-8
                torch.testing.assert_close(got.diagonal(), ref.diagonal(), rtol=1e-8, atol=0)
                got, ref = got - got.diagonal().diag(), ref - ref.diagonal().diag()
            torch.testing.assert_close(got, ref, rtol=1e-10,
                                       atol=1e-10 * getattr(walker, name).abs().max().item())


@pytest.mark.parametrize("kind", list(CASES), ids=lambda k: k.__name__)
def test_wide_network_ntk_is_near_the_limit(kind):
    """One random network of width ``case.wide``: ‖Θ − Θ∞‖/‖Θ∞‖ < 0.1 (Θ by torch.func)."""
    case = CASES[kind]
    x1, x2 = inputs(case.shape, 3)
    torch.manual_seed(7)
    model = case.make(case.wide)
    limit = tn.analytic_kernels(model, x1, x2).ntk
    empirical = func_ntk(model, x1, x2)
    rel = ((empirical - limit).norm() / limit.norm()).item()
    assert rel < 0.1, (kind.__name__, rel)


@pytest.mark.parametrize("kind", [k for k in CASES if CASES[k].formula],
                         ids=lambda k: k.__name__)
def test_formula_against_the_related_kind(kind):
    """SumPool = AvgPool·|B| ⇒ kernels ×|B|² (2×2 windows: 16); GlobalSumPool = mean·P ⇒
    ×P² (4×4 positions: 256), when only bias-free linear layers follow the pool."""
    make, related, factor = CASES[kind].formula
    x1, x2 = inputs(CASES[kind].shape, 4)
    got, ref = tn.analytic_kernels(make(3), x1, x2), tn.analytic_kernels(related(3), x1, x2)
    assert any(type(layer) is kind for layer in tn.lift(make(3)).layers)
    for name in ("nngp", "ntk"):
        torch.testing.assert_close(getattr(got, name), factor * getattr(ref, name),
                                   rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", [k for k in CASES if CASES[k].refuse],
                         ids=lambda k: k.__name__)
def test_unsupported_settings_are_refused_by_name(kind):
    for model, match in CASES[kind].refuse:
        with pytest.raises(ValueError, match=match):
            tn.lift(model)


def test_a_chain_spec_is_a_graph_of_one_input_nodes():
    """LayerSpec.nodes: node k reads node k − 1 (-1: the input); the walker runs nodes."""
    spec = tn.lift(CASES[AvgPool].make(2))
    assert [node.layer for node in spec.nodes] == list(spec.layers)
    assert [node.inputs for node in spec.nodes] == [(k - 1,) for k in range(len(spec.layers))]
