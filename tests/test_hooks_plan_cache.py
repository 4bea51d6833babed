"""The hook engine's plan cache (issue 27, speed): ``hooks._cached_plan`` keeps a model's
plans (which modules take which rule, their calls and samples' dims, the probe's shapes)
across calls while the model's modules, its trainable parameters, one sample's input
shapes and ``output_fn`` are the same objects; ``HookBlocks.features`` probes again when a
batch's forward contradicts a cached plan (a module called a different number of times).
Also the norm rules' GEMM and the conv rule's patch columns through a small ResNet.

Oracle: ``tests/oracles.func_ntk_modes`` (per-sample Jacobians by ``torch.func``,
contracted by einsum; no code shared with the engine), float64, 1e-10 relative to the
kernel's largest entry (float64 sums of a few thousand products round at ~1e-14; a stale
plan is off by 1e-4 or more: a module's term missing).
The mutation test shows that a cache keyed on nothing (every call reusing the first
plan) fails these comparisons. (A frozen parameter or a swapped submodule alone would not
expose it: the rules read coefficients and modules, by name, at each call.)
"""

import gc
import weakref

import pytest
import torch
from torch import nn

import torch_ntk as tn
from torch_ntk.bench.models import ResNet
from torch_ntk.empirical import hooks
from torch_ntk.empirical.hooks import HookBlocks

from oracles import func_ntk_modes

D = torch.float64
REL = 1e-10


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)


def small_resnet(seed=0):
    torch.manual_seed(seed)
    model = ResNet(4, (1, 1), n_out=3).to(D).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    return model


def engine(model, x, output_fn=None):
    trainable = {k: v for k, v in model.named_parameters() if v.requires_grad}
    n_out = 3 if output_fn is None else 2
    return HookBlocks(model, trainable, x, None, "full", n_out, output_fn)


def test_second_call_reuses_the_plan_and_matches_the_oracle():
    model = small_resnet()
    x1, x2 = torch.randn(3, 3, 6, 6, dtype=D), torch.randn(2, 3, 6, 6, dtype=D)
    hooks._PLANS.pop(model, None)
    assert not engine(model, x1).cached
    again = engine(model, torch.randn(5, 3, 6, 6, dtype=D))  # other batch size, same shapes
    assert again.cached and again.plans and not again.rest
    assert all(p.probe.parts[0].__class__ and all(t.is_meta for t in p.probe)
               for p in again.plans)  # the cache holds shapes, not numbers
    ref = func_ntk_modes(model, x1, x2)
    for mode in ("full", "trace", "diagonal"):
        for x in (x2, None):
            k = tn.empirical_ntk(model, x1, x, mode=mode, method="hooks")
            want = ref[mode] if x is not None else func_ntk_modes(model, x1)[mode]
            assert rel_err(k, want) <= REL, (mode, x is None)
    k = tn.empirical_ntk(model, x1, x2, method="hooks", chunk_size=2)
    assert rel_err(k, ref["full"]) <= REL


def _frozen_bn_weight(model, x):
    model.bn1.weight.requires_grad_(False)
    return x


def _unfrozen_bn(model, x):  # bn1 had no trainable parameter when the plan was cached
    model.bn1.requires_grad_(True)
    return x


def _swapped_fc(model, x):
    model.fc = nn.Linear(8, 3).to(D)
    return x


def _other_size(model, x):
    return torch.randn(3, 3, 8, 8, dtype=D)


@pytest.mark.parametrize("change", [_frozen_bn_weight, _unfrozen_bn, _swapped_fc, _other_size])
def test_a_changed_model_or_input_is_planned_again(change):
    model = small_resnet(1)
    if change is _unfrozen_bn:
        model.bn1.requires_grad_(False)
    x = torch.randn(3, 3, 6, 6, dtype=D)
    tn.empirical_ntk(model, x, method="hooks")  # fills the cache
    x = change(model, x)
    assert not engine(model, x).cached
    k = tn.empirical_ntk(model, x, method="hooks")
    assert rel_err(k, func_ntk_modes(model, x)["full"]) <= REL


def test_another_output_fn_is_planned_again():
    model = small_resnet(2)
    x = torch.randn(3, 3, 6, 6, dtype=D)
    first = engine(model, x, lambda y: y[:, :2])
    assert not engine(model, x, lambda y: y[:, 1:]).cached  # a new function object
    fn = lambda y: y[:, 1:]  # noqa: E731
    engine(model, x, fn)
    assert engine(model, x, fn).cached
    k = tn.empirical_ntk(model, x, method="hooks", output_fn=fn)
    want = func_ntk_modes(nn.Sequential(model, _Slice()), x)["full"]
    assert rel_err(k, want) <= REL and first.plans


class _Slice(nn.Module):
    def forward(self, y):
        return y[:, 1:]


class Switch(nn.Module):
    """A forward that depends on an attribute no signature sees: ``twice`` calls ``mid``
    again (weight sharing), so a plan cached with one call is wrong for the other."""

    def __init__(self):
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(4, 5), nn.Linear(5, 5), nn.Linear(5, 3)
        self.twice = False

    def forward(self, x):
        h = torch.tanh(self.mid(torch.tanh(self.inp(x))))
        if self.twice:
            h = torch.tanh(self.mid(h))
        return self.out(h)


def test_a_forward_that_contradicts_the_cached_plan_is_probed_again():
    torch.manual_seed(3)
    model = Switch().to(D).eval()
    x1, x2 = torch.randn(4, 4, dtype=D), torch.randn(3, 4, dtype=D)
    tn.empirical_ntk(model, x1, x2, method="hooks")
    model.twice = True
    assert engine(model, x1).cached  # the signature cannot see the flag ...
    k, info = tn.empirical_ntk(model, x1, x2, method="hooks", return_info=True)
    assert rel_err(k, func_ntk_modes(model, x1, x2)["full"]) <= REL  # ... the forward does
    assert any("mid (Linear, 2 calls)" in c for c in info.contractions)
    model.twice = False
    k = tn.empirical_ntk(model, x1, None, mode="trace", method="hooks")
    assert rel_err(k, func_ntk_modes(model, x1)["trace"]) <= REL


def test_a_cache_keyed_on_nothing_would_fail(monkeypatch):
    """Mutation: a signature that ignores the model's parameters reuses the plan of a
    model whose frozen BatchNorm has since been unfrozen: its term is missing."""
    monkeypatch.setattr(hooks, "_signature", lambda *args: "always the same")
    model = small_resnet(4)
    model.bn1.requires_grad_(False)
    x = torch.randn(3, 3, 6, 6, dtype=D)
    tn.empirical_ntk(model, x, method="hooks")
    model.bn1.requires_grad_(True)
    k = tn.empirical_ntk(model, x, method="hooks")
    assert rel_err(k, func_ntk_modes(model, x)["full"]) > 1e-6  # 1.7e-4 here: 10⁶× REL


def test_the_cache_does_not_keep_the_model_alive():
    model = small_resnet(5)
    tn.empirical_ntk(model, torch.randn(2, 3, 6, 6, dtype=D), method="hooks")
    assert model in hooks._PLANS
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
