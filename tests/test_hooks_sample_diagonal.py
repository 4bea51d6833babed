"""mode="sample_diagonal" on the hook engine (issue 27): Θ_kk(x_i, x_i) [N, n_L] as each
module's per-sample squared gradient norms from its factors, one backward over the n_L
outputs per chunk.

Oracle: the diagonal (i = j, k = k′) of ``tests/oracles.func_ntk_modes`` (per-sample
Jacobians by ``torch.func.vmap(jacrev)``, contracted by einsum; no code shared with the
engine), float64, 1e-10 relative to the largest entry; both orders of every Outer/Tokens
part forced in turn, chunked and not, and against the Jacobian engine's own
sample_diagonal. A mutation (the per-sample Gram without its off-diagonal position pairs)
must fail.
"""

import functools

import pytest
import torch
from torch import nn

import torch_ntk as tn
from torch_ntk.bench.models import Encoder, ResNet, TokenLM
from torch_ntk.empirical.rules import parts

from oracles import func_ntk_modes
from test_hooks import HOOK_TABLE, probe_case

D = torch.float64
REL = 1e-10


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)


def want(model, x):
    """Θ_kk(x_i, x_i) from the oracle's full kernel."""
    full = func_ntk_modes(model, x)["full"]
    n = full.shape[0]
    return full[torch.arange(n), torch.arange(n)].diagonal(dim1=-2, dim2=-1)


def _models():
    torch.manual_seed(20)
    yield "encoder", Encoder(3, 8, 2, 16, layers=1, n_out=3).to(D), torch.randn(5, 4, 3,
                                                                                 dtype=D)
    yield "token-lm", TokenLM(vocab=7, tokens=3, d=8, heads=2, ff=8, layers=1).to(D), \
        torch.randint(0, 7, (5, 3))
    yield "resnet", ResNet(4, (1, 1), n_out=3).to(D).eval(), torch.randn(4, 3, 6, 6, dtype=D)


@pytest.mark.parametrize("order", [None, "grams", "gradients"])
def test_sample_diagonal_by_hooks_matches_the_oracle(order, monkeypatch):
    if order is not None:
        monkeypatch.setattr(parts, "_sample_norm",
                            functools.partial(parts._sample_norm, order=order))
    for name, model, x in _models():
        expected = want(model, x)
        for chunk in (None, 2):
            got, info = tn.empirical_ntk(model, x, mode="sample_diagonal", method="hooks",
                                         chunk_size=chunk, return_info=True)
            assert info.method == "hooks" and got.shape == expected.shape
            assert rel_err(got, expected) <= REL, (name, order, chunk)
            assert not any("torch.func" in c for c in info.contractions), info.contractions
        auto = tn.empirical_ntk(model, x, mode="sample_diagonal")
        jac = tn.empirical_ntk(model, x, mode="sample_diagonal", method="jacobian")
        assert rel_err(auto, expected) <= REL and rel_err(jac, expected) <= REL


@pytest.mark.parametrize("make, shape", HOOK_TABLE)
def test_sample_diagonal_of_every_rule(make, shape):
    """Each registered module type's rule (a frozen or absent parameter included)."""
    model, x1, _ = probe_case(make, shape)
    got = tn.empirical_ntk(model, x1, mode="sample_diagonal", method="hooks")
    assert rel_err(got, want(model, x1)) <= REL


def test_sample_diagonal_of_parameters_no_rule_covers():
    """A free parameter and an unruled module: their norms by torch.func, added."""
    class Free(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 4)
            self.scale = nn.Parameter(torch.randn(4))
            self.head = nn.Bilinear(4, 4, 2)

        def forward(self, x):
            h = torch.tanh(self.lin(x)) * self.scale
            return self.head(h, h)

    torch.manual_seed(21)
    model, x = Free().to(D), torch.randn(4, 3, dtype=D)
    got, info = tn.empirical_ntk(model, x, mode="sample_diagonal", method="hooks",
                                 return_info=True)
    assert any("torch.func" in c for c in info.contractions)
    assert rel_err(got, want(model, x)) <= REL


def test_dropping_off_diagonal_position_pairs_is_caught(monkeypatch):
    """The per-sample Gram with only t = s (Σ_t ‖a_t‖²‖d_kt‖², a common shortcut that is
    wrong for sequences) fails the oracle."""
    def diagonal_only(part, order=None):
        if isinstance(part, parts.Outer):
            h = (part.d.square().sum(-1))  # [N, n_L, G, T]
            return (h * part.a.square().sum(-1).unsqueeze(1)).sum((2, 3))
        return parts.Direct.gradient(part).square().sum(-1) if isinstance(
            part, parts.Direct) else part.gradient().square().sum(-1)

    torch.manual_seed(22)
    model = Encoder(3, 8, 2, 16, layers=1, n_out=3).to(D)
    x = torch.randn(4, 4, 3, dtype=D)
    monkeypatch.setattr(parts, "_sample_norm", diagonal_only)
    got = tn.empirical_ntk(model, x, mode="sample_diagonal", method="hooks")
    assert rel_err(got, want(model, x)) > 1e-2


def test_sample_diagonal_refuses_other_methods():
    model, x = tn.ntk_mlp([3, 4, 2], "relu", dtype=D), torch.randn(3, 3, dtype=D)
    with pytest.raises(ValueError, match="method must be 'auto', 'hooks' or 'jacobian'"):
        tn.empirical_ntk(model, x, mode="sample_diagonal", method="ntk_vp")
