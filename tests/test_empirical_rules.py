"""Conformance of the empirical NTK rules (torch_ntk.empirical.rules): one table of cases,
keyed by the registered module types, each checked against the torch.func Jacobian
contraction (tests/oracles.py) in float64.

For a case (a module m and its input shape), the probe model is f(x) = R·vec(m(x)) with a
fixed random readout R [n_L, |m(x)|] (a buffer: only m's parameters are differentiated), so
the cotangents at m's output are δ_k = R_k, reshaped like m(x), for every sample. The rule's
factors for (m, x, δ) must contract to the oracle's J(x) J(x′)ᵀ in every mode, for x′ of
another batch and for x′ = x (other = None), in every contraction order the
factors offer, with frozen parameters (requires_grad=False) left out of both sides. A
rule's ``input_vjp``, when it has one, must equal autograd's vector-Jacobian product.

``test_every_registered_rule_has_a_case`` fails when a module type is registered with
``@ntk_rule`` and has no case here: a new rule is one file in empirical/rules/ and one
entry in CASES.

Tolerance: 1e-10 absolute and relative on kernels of order 1-1000 (float64 rounding of
sums of a few hundred products is ~1e-13 relative; anything structurally wrong is off by
O(1)). Exact symmetry for x′ = x is the engines' promise, tested in test_cnn_structured.py
and test_empirical.py.
"""

import pytest
import torch
from torch import nn

from torch_ntk.empirical.rules import NTK_RULES, ntk_rule, rule_for
from torch_ntk.empirical.rules.conv import ORDERS
from torch_ntk.nn import NTKConv1d, NTKConv2d, NTKLinear

from oracles import func_ntk_modes

D = torch.float64
TOL = dict(rtol=1e-10, atol=1e-10)
N_OUT = 3
MODES = ("full", "trace", "diagonal")


def frozen(module: nn.Module, *names: str) -> nn.Module:
    """``module`` with the named parameters frozen (requires_grad=False)."""
    for name in names:
        getattr(module, name).requires_grad_(False)
    return module


def _stats(module: nn.Module) -> nn.Module:
    """A batch norm in eval mode with random running statistics and affine parameters."""
    with torch.no_grad():
        module.running_mean.normal_()
        module.running_var.uniform_(0.5, 2.0)
        module.weight.normal_()
        module.bias.normal_()
    return module.eval()


# module type → [(case id, module factory, one sample's input shape or a function n → a
# batch of n inputs (integer token ids))]
CASES = {
    nn.Linear: [
        ("linear", lambda: nn.Linear(4, 5), (4,)),
        ("linear-frozen-weight", lambda: frozen(nn.Linear(4, 5), "weight"), (4,)),
        ("linear-frozen-bias", lambda: frozen(nn.Linear(4, 5), "bias"), (4,)),
        ("linear-no-bias", lambda: nn.Linear(4, 5, bias=False), (4,)),
    ],
    NTKLinear: [
        ("ntk-linear", lambda: NTKLinear(4, 5, weight_std=1.3, bias_std=0.4), (4,)),
        ("ntk-linear-standard", lambda: NTKLinear(4, 5, parametrization="standard"), (4,)),
        ("ntk-linear-frozen-weight",
         lambda: frozen(NTKLinear(4, 5, bias_std=0.7), "weight"), (4,)),
        ("ntk-linear-frozen-bias", lambda: frozen(NTKLinear(4, 5), "bias"), (4,)),
    ],
    nn.Conv1d: [
        ("conv1d-same", lambda: nn.Conv1d(2, 3, 3, padding="same"), (2, 7)),
        ("conv1d-stride-dilation", lambda: nn.Conv1d(2, 3, 2, stride=2, dilation=2), (2, 9)),
        ("conv1d-frozen-bias", lambda: frozen(nn.Conv1d(2, 3, 3, padding=1), "bias"), (2, 6)),
    ],
    nn.Conv2d: [
        ("conv2d", lambda: nn.Conv2d(2, 3, (3, 2), stride=(2, 1), dilation=(1, 2), padding=1),
         (2, 6, 5)),
        ("conv2d-circular", lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"),
         (2, 4, 4)),
        ("conv2d-frozen-weight", lambda: frozen(nn.Conv2d(2, 3, 2), "weight"), (2, 4, 4)),
        ("conv2d-no-bias", lambda: nn.Conv2d(2, 3, 2, bias=False), (2, 4, 3)),
    ],
    NTKConv1d: [
        ("ntk-conv1d-circular",
         lambda: NTKConv1d(2, 3, 3, padding=1, padding_mode="circular", bias_std=0.5), (2, 6)),
        ("ntk-conv1d-standard-frozen-bias",
         lambda: frozen(NTKConv1d(2, 3, 2, stride=2, parametrization="standard"), "bias"),
         (2, 8)),
    ],
    NTKConv2d: [
        ("ntk-conv2d-same", lambda: NTKConv2d(2, 3, 3, padding="same", weight_std=1.4,
                                              bias_std=0.3), (2, 5, 4)),
        ("ntk-conv2d-frozen-weight",
         lambda: frozen(NTKConv2d(2, 3, (2, 3), dilation=(2, 1), bias_std=0.6), "weight"),
         (2, 6, 5)),
    ],
    nn.Conv3d: [
        ("conv3d-groups", lambda: nn.Conv3d(4, 6, (2, 3, 2), padding=(1, 0, 1), groups=2),
         (4, 3, 4, 3)),
    ],
    nn.ConvTranspose1d: [
        ("convtranspose1d", lambda: nn.ConvTranspose1d(2, 3, 3, stride=2, padding=1), (2, 5)),
    ],
    nn.ConvTranspose2d: [
        ("convtranspose2d-groups",
         lambda: nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0),
                                    output_padding=(1, 0), dilation=(1, 2), groups=2),
         (4, 3, 4)),
        ("convtranspose2d-frozen-bias",
         lambda: frozen(nn.ConvTranspose2d(2, 3, 2, stride=2), "bias"), (2, 3, 3)),
    ],
    nn.ConvTranspose3d: [
        ("convtranspose3d", lambda: nn.ConvTranspose3d(2, 2, 2, stride=2), (2, 2, 2, 3)),
    ],
    nn.Embedding: [
        ("embedding", lambda: nn.Embedding(5, 3), lambda n: torch.randint(0, 5, (n, 4))),
        ("embedding-padding-idx", lambda: nn.Embedding(5, 3, padding_idx=1),
         lambda n: torch.randint(0, 5, (n, 2, 3))),
    ],
    nn.LayerNorm: [
        ("layernorm-sequence", lambda: nn.LayerNorm(4), (3, 4)),
        ("layernorm-2d-frozen-bias", lambda: frozen(nn.LayerNorm((2, 3)), "bias"), (2, 3)),
    ],
    nn.GroupNorm: [
        ("groupnorm", lambda: nn.GroupNorm(2, 4), (4, 3, 2)),
    ],
    nn.BatchNorm1d: [
        ("batchnorm1d", lambda: _stats(nn.BatchNorm1d(3)), (3,)),
        ("batchnorm1d-sequence", lambda: _stats(nn.BatchNorm1d(3)), (3, 5)),
    ],
    nn.BatchNorm2d: [
        ("batchnorm2d", lambda: _stats(nn.BatchNorm2d(3)), (3, 2, 3)),
        ("batchnorm2d-frozen-weight", lambda: frozen(_stats(nn.BatchNorm2d(2)), "weight"),
         (2, 3, 3)),
    ],
    nn.BatchNorm3d: [
        ("batchnorm3d", lambda: _stats(nn.BatchNorm3d(2)), (2, 2, 2, 2)),
    ],
    nn.MultiheadAttention: [  # called as self-attention m(x, x, x) by the Probe
        ("mha", lambda: nn.MultiheadAttention(4, 2, batch_first=True), (3, 4)),
        ("mha-frozen-in-proj", lambda: frozen(nn.MultiheadAttention(4, 2, batch_first=True),
                                              "in_proj_weight"), (3, 4)),
    ],
}

# Modules called otherwise than m(x) by the Probe.
CALLS = {nn.MultiheadAttention: lambda m, x: m(x, x, x, need_weights=False)[0]}

TABLE = [pytest.param(t, make, shape, id=name)
         for t, cases in CASES.items() for name, make, shape in cases]


class Probe(nn.Module):
    """f(x) = R·vec(m(x)): the module under test followed by a fixed linear readout."""

    def __init__(self, module: nn.Module, readout: torch.Tensor):
        super().__init__()
        self.module = module
        self.register_buffer("readout", readout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        call = CALLS.get(type(self.module), lambda m, a: m(a))
        return call(self.module, x).flatten(1) @ self.readout.T


def _setup(make, shape, seed):
    torch.manual_seed(seed)
    module = make().to(D)
    if callable(shape):
        x1, x2 = shape(4), shape(3)
    else:
        x1 = torch.randn(4, *shape, dtype=D)
        x2 = torch.randn(3, *shape, dtype=D)
    with torch.no_grad():
        out_shape = CALLS.get(type(module), lambda m, a: m(a))(module, x1[:1]).shape[1:]
    readout = torch.randn(N_OUT, out_shape.numel(), dtype=D)
    return module, Probe(module, readout), x1, x2, readout.view(N_OUT, *out_shape)


def _cotangents(delta: torch.Tensor, n: int) -> torch.Tensor:
    """δ [n_L, *out_shape] for each of n samples: [n, n_L, *out_shape]."""
    return delta.unsqueeze(0).expand(n, *delta.shape)


def _variants(factors):
    """The factors in each contraction order they offer (ConvFactors: both orders)."""
    if hasattr(factors, "in_order"):
        return {order: factors.in_order(order) for order in ORDERS}
    return {"": factors}


def missing_cases(registry=None) -> list[str]:
    """Registered module types with no case in CASES."""
    registry = NTK_RULES if registry is None else registry
    return sorted(t.__name__ for t in registry if t not in CASES)


def test_every_registered_rule_has_a_case():
    missing = missing_cases()
    assert not missing, (f"module types registered with @ntk_rule but without a conformance "
                         f"case in tests/test_empirical_rules.py CASES: {missing}")
    assert all(CASES[t] for t in NTK_RULES)


def test_a_new_rule_without_a_case_is_caught():
    """Registering a rule for a new module type makes the coverage check name it."""

    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight, self.bias = nn.Parameter(torch.ones(())), None

        def forward(self, x):
            return self.weight * x

    try:
        @ntk_rule(Scale, coefficients=lambda m: (1.0, 0.0))
        def scale(module, inputs, cotangents):  # pragma: no cover - never contracted
            raise NotImplementedError

        assert rule_for(Scale()).name == "scale"
        assert missing_cases() == ["Scale"]
    finally:
        NTK_RULES.pop(Scale, None)
    assert missing_cases() == []


def test_registry_errors():
    with pytest.raises(ValueError, match="Linear already has the rule 'linear'"):
        ntk_rule(nn.Linear, coefficients=lambda m: (1.0, 1.0))(lambda m, a, d: None)
    with pytest.raises(TypeError, match="nn.Module types"):
        ntk_rule(int, coefficients=lambda m: (1.0, 1.0))
    with pytest.raises(ValueError, match=r"no empirical NTK rule for Softmax; registered: "
                                         r"BatchNorm1d, .*'jacobian'"):
        rule_for(nn.Softmax(-1))


def test_subclass_finds_its_base_rule():
    class MyLinear(nn.Linear):
        pass

    assert rule_for(MyLinear(2, 3)) is NTK_RULES[nn.Linear]


@pytest.mark.parametrize("module_type, make, shape", TABLE)
def test_rule_matches_jacobian_contraction(module_type, make, shape):
    module, probe, x1, x2, delta = _setup(make, shape, seed=0)
    assert type(module) is module_type
    rule = rule_for(module)
    f1 = rule.factors(module, x1, _cotangents(delta, x1.shape[0]))
    f2 = rule.factors(module, x2, _cotangents(delta, x2.shape[0]))
    oracle = func_ntk_modes(probe, x1, x2)
    oracle_sym = func_ntk_modes(probe, x1)
    v1, v2 = _variants(f1), _variants(f2)
    for order in v1:
        g1, g2 = v1[order], v2[order]
        for mode in MODES:
            got = g1.ntk(g2, mode)
            torch.testing.assert_close(got, oracle[mode], **TOL,
                                       msg=lambda m: f"{order} {mode}: {m}")
            sym = g1.ntk(None, mode)
            torch.testing.assert_close(sym, oracle_sym[mode], **TOL,
                                       msg=lambda m: f"{order} {mode} x2 = x1: {m}")


@pytest.mark.parametrize("module_type, make, shape", TABLE)
def test_coefficients_zero_exactly_the_frozen_terms(module_type, make, shape):
    module, *_ = _setup(make, shape, seed=1)
    cw, cb = rule_for(module).coefficients(module)
    named = list(module.named_parameters())  # MultiheadAttention: in_proj_*, out_proj.*
    assert (cw != 0) == any(p.requires_grad for n, p in named if n.endswith("weight"))
    assert (cb != 0) == any(p.requires_grad for n, p in named if n.endswith("bias"))


@pytest.mark.parametrize("module_type, make, shape", TABLE)
def test_input_vjp_matches_autograd(module_type, make, shape):
    module, _, x1, _, delta = _setup(make, shape, seed=2)
    rule = rule_for(module)
    if rule.input_vjp is None:
        pytest.skip(f"the {rule.name} rule has no input_vjp (the plans use autograd)")
    g = torch.randn(5, *delta.shape[1:], dtype=D)
    a = torch.zeros(5, *shape, dtype=D, requires_grad=True)
    (expected,) = torch.autograd.grad(module(a), a, g)
    with torch.no_grad():
        got = rule.input_vjp(module, tuple(shape), g)
    torch.testing.assert_close(got, expected, **TOL)
