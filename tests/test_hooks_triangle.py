"""The hook engine's symmetric and projected contractions (issue 27, speed): the triangle
of a Gram for x2 = None (``parts.triangle_gram``, the row slices and tiles of
``parts._ghost`` / ``parts._projected`` with their mirror) and the projected path of the
"grams" order in "full" mode (the cotangents weighted by the input Gram first).

Oracles: ``a @ a.T`` in float64 for the Gram; ``tests/oracles.func_ntk_modes`` (per-sample
Jacobians by ``torch.func.vmap(jacrev)``, contracted by einsum: no code shared with the
engine) for the kernels, x2 = None and x2 ≠ x1, chunked and not, with tiles and row
slices forced small so that every mirror runs.

Tolerance: 1e-10 relative to the kernel's largest entry (float64 sums of a few thousand
products round at ~1e-14; a wrong mirror or a skipped tile is off by 1e-3 to O(1));
the Gram 1e-12.
The mutation tests show that a mirror without the k ↔ k′ swap, a triangle left unmirrored
and a projection pairing the wrong positions fail these comparisons.
"""

import functools

import pytest
import torch
from torch import nn

import torch_ntk as tn
from torch_ntk.bench.models import Encoder, TokenLM
from torch_ntk.empirical.hooks import HookBlocks
from torch_ntk.empirical.rules import parts

from oracles import func_ntk_modes

D = torch.float64
REL = 1e-10
MODES = ("full", "trace", "diagonal")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)


@pytest.mark.parametrize("shape", [(5, 7), (127, 9), (256, 3), (300, 11), (2, 513, 4)])
@pytest.mark.parametrize("min_rows", [1, 64, 128])
def test_triangle_gram_is_the_full_product(shape, min_rows):
    """Every row block count (1 … 4, uneven splits, leading batch dims): a aᵀ, exactly
    symmetric."""
    torch.manual_seed(0)
    a = torch.randn(*shape, dtype=D)
    g = parts.triangle_gram(a, min_rows=min_rows)
    assert rel_err(g, a @ a.transpose(-1, -2)) <= 1e-12
    assert torch.equal(g, g.transpose(-1, -2))


class SeqProbe(nn.Module):
    """f(x) = R·vec(m(x)) for a module m on [N, T, ...] (a fixed readout R, a buffer)."""

    def __init__(self, module: nn.Module, readout: torch.Tensor):
        super().__init__()
        self.module = module
        self.register_buffer("readout", readout)

    def forward(self, x):
        return self.module(x).flatten(1) @ self.readout.T


def _seq_linear():
    torch.manual_seed(1)
    return (SeqProbe(nn.Linear(5, 6).to(D), torch.randn(4, 4 * 6, dtype=D)),
            torch.randn(7, 4, 5, dtype=D), torch.randn(5, 4, 5, dtype=D))


def _grouped_conv():
    torch.manual_seed(2)
    conv = nn.Conv1d(4, 6, 3, padding=1, groups=2).to(D)
    return (SeqProbe(conv, torch.randn(3, 6 * 5, dtype=D)), torch.randn(6, 4, 5, dtype=D),
            torch.randn(4, 4, 5, dtype=D))


def _encoder():
    torch.manual_seed(3)
    return (Encoder(3, 8, 2, 16, layers=1, n_out=3).to(D), torch.randn(6, 4, 3, dtype=D),
            torch.randn(3, 4, 3, dtype=D))


def _token_lm():
    torch.manual_seed(4)
    return (TokenLM(vocab=7, tokens=3, d=8, heads=2, ff=8, layers=1).to(D),
            torch.randint(0, 7, (6, 3)), torch.randint(0, 7, (4, 3)))


CASES = {"linear-on-sequences": _seq_linear, "grouped-conv": _grouped_conv,
         "encoder": _encoder, "token-lm": _token_lm}


def _small_pieces(monkeypatch, workspace, tile, min_rows):
    """Row slices of the ghost from a ``workspace`` in bytes, tiles of the projected path
    of ``tile`` numbers, Gram row blocks from ``min_rows`` rows (None: as shipped); calls
    of the projected path counted."""
    calls = []
    projected = parts._projected

    def counted(*args, **kwargs):
        calls.append(1)
        if tile is not None:
            kwargs["tile"] = tile
        return projected(*args, **kwargs)

    monkeypatch.setattr(parts, "_projected", counted)
    if min_rows is not None:
        monkeypatch.setattr(parts, "triangle_gram",
                            functools.partial(parts.triangle_gram, min_rows=min_rows))
    if workspace is not None:
        sized = HookBlocks.size_blocks

        def small(self, *args):
            c = sized(self, *args)
            self.workspace = workspace
            return c

        monkeypatch.setattr(HookBlocks, "size_blocks", small)
    return calls


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("pieces", [(None, None, None), (1, 1, 2)], ids=["shipped", "small"])
def test_triangle_and_projected_path_against_the_oracle(case, pieces, monkeypatch):
    """The grams order forced on every module (the projected path in "full", the cotangent
    Gram otherwise), then the gradients order: every mode, x2 = None and x2 ≠ x1, chunked
    and not; "small" makes every row slice one sample, every tile 1 × 1 and every Gram
    split into row blocks, so that each mirror runs."""
    model, x1, x2 = CASES[case]()
    calls = _small_pieces(monkeypatch, *pieces)
    oracle, oracle_sym = func_ntk_modes(model, x1, x2), func_ntk_modes(model, x1)
    for order in ("grams", "gradients"):
        monkeypatch.setattr(parts.ModuleFactors, "choose", lambda self, *a, o=order: o)
        for mode in MODES:
            for chunk in (None, 2):
                calls.clear()
                k, info = tn.empirical_ntk(model, x1, x2, mode=mode, method="hooks",
                                           chunk_size=chunk, return_info=True)
                assert rel_err(k, oracle[mode]) <= REL, (order, mode, chunk)
                ks = tn.empirical_ntk(model, x1, mode=mode, method="hooks", chunk_size=chunk)
                assert rel_err(ks, oracle_sym[mode]) <= REL, (order, mode, chunk, "x2=None")
                assert bool(calls) == (order == "grams" and mode == "full"), (order, mode)
        assert not any("torch.func" in c for c in info.contractions), info.contractions


def test_projected_path_hand_formula():
    """One Linear on sequences, its weight term written out in the test:
    Θ_kk′ = Σ_{t,s} ⟨a_t, a′_s⟩ ⟨d_kt, d′_k′s⟩ for random a, d (float64), against
    ``_projected`` with tiles of one pair and the diagonal mirror."""
    torch.manual_seed(5)
    n, nl, t, a_dim, d_dim = 5, 3, 4, 6, 2
    a = torch.randn(n, 1, t, a_dim, dtype=D)
    d = torch.randn(n, nl, 1, t, d_dim, dtype=D)
    want = torch.einsum("ita,jsa,iktd,jlsd->ijkl", a[:, 0], a[:, 0], d[:, :, 0], d[:, :, 0])
    part = parts.Outer(a, d)
    ga = part.gram_a(part, 0, n)
    for diagonal in (False, True):
        for tile in (1, 10 ** 6):
            got = parts._projected(d, d, ga, diagonal, tile=tile)
            assert rel_err(got, want) <= REL, (diagonal, tile)


def _kernel_error(model, x1, mode="full"):
    k = tn.empirical_ntk(model, x1, mode=mode, method="hooks")
    return rel_err(k, func_ntk_modes(model, x1)[mode])


def test_a_mirror_without_the_output_swap_fails(monkeypatch):
    """Mirroring a tile as Θ(x_i, x_j) → Θ(x_j, x_i) without swapping k and k′ (full mode)
    is caught: the kernel is off by ~1e-3 relative (the k ≠ k′ entries of the mirrored
    tiles, smaller than the largest diagonal ones), 10⁷ times the tolerance."""
    model, x1, _ = _encoder()
    _small_pieces(monkeypatch, 1, 1, 2)
    monkeypatch.setattr(parts.ModuleFactors, "choose", lambda self, *a: "grams")
    assert _kernel_error(model, x1) <= REL
    monkeypatch.setattr(parts, "_mirror", lambda block, mode: block.transpose(0, 1))
    assert _kernel_error(model, x1) > 1e-3


def test_an_unmirrored_triangle_fails(monkeypatch):
    """A Gram whose blocks below the diagonal are left at zero (the triangle computed, the
    mirror forgotten) is caught, even after the block loop's (B + Bᵀ)/2."""
    model, x1, _ = _seq_linear()
    monkeypatch.setattr(parts.ModuleFactors, "choose", lambda self, *a: "gradients")
    good = parts.triangle_gram

    def upper_only(a, blocks=4, min_rows=2):
        g = good(a, blocks, min_rows)
        m = g.shape[-1]
        cut = m // min(blocks, max(1, m // min_rows))
        g[..., cut:, :cut] = 0
        return g

    assert _kernel_error(model, x1) <= REL
    monkeypatch.setattr(parts, "triangle_gram", upper_only)
    assert _kernel_error(model, x1) > 1e-2


def test_a_projection_pairing_the_wrong_positions_fails(monkeypatch):
    """The input Gram transposed in its positions (⟨a_s, a′_t⟩ for ⟨a_t, a′_s⟩) before the
    projection is caught."""
    model, x1, _ = _seq_linear()
    monkeypatch.setattr(parts.ModuleFactors, "choose", lambda self, *a: "grams")
    good = parts._projected

    def swapped(x, y, ga, diagonal=False, tile=1 << 20):
        return good(x, y, ga.transpose(2, 4), diagonal, tile)

    assert _kernel_error(model, x1) <= REL
    monkeypatch.setattr(parts, "_projected", swapped)
    assert _kernel_error(model, x1) > 1e-2


def test_order_choice_follows_the_flop_model():
    """The "full" mode choice against the counts written out here: a Linear 512 → 128 on
    16 positions with 10 outputs (projected: 2·T·n_L·D·(T + n_L) + 2·T²·A per pair, weighted
    by PROJECTED_SLOWDOWN, against gradients 2·n_L²·A·D) takes the grams order; 16 → 16 on
    64 positions takes the gradients order; in "trace" the projected path is not used."""
    def factors(t, a_dim, d_dim, nl=10, n=4):
        return parts.ModuleFactors([parts.Outer(torch.zeros(n, 1, t, a_dim),
                                                torch.zeros(n, nl, 1, t, d_dim))])

    for (t, a_dim, d_dim), want in (((16, 512, 128), "grams"), ((64, 16, 16), "gradients")):
        f = factors(t, a_dim, d_dim)
        nl = 10
        projected = 2.0 * t * nl * d_dim * (t + nl) + 2.0 * t * t * a_dim
        gradients = 2.0 * nl * nl * a_dim * d_dim + 2.0 * nl * t * d_dim * a_dim * 2 / 4
        assert f.flops("grams", 4, 4, "full") == pytest.approx(16 * projected)
        assert f.flops("gradients", 4, 4, "full") == pytest.approx(16 * gradients)
        assert f.choose(4, 4, "full") == want
        assert parts.grams_path(f.parts[0], "full") == "projected"
        assert parts.grams_path(f.parts[0], "trace") == "cotangent"
    # one position (a pooled head): the cotangent Gram is the cheaper grams path
    assert parts.grams_path(factors(1, 8, 8).parts[0], "full") == "cotangent"
