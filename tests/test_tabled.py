"""Numeric activations on the fused MLP op (issue 31's speed): the per-sample Hermite tables
computed in torch, the pair pass in ``torch_ntk::analytic_kernels`` (its series_tables), the
pairs it flags recomputed in torch (``torch_ntk.analytic.tabled``).

Reference: the torch recursion of the same series (``mlp_kernels(..., numeric=True)``, the
path every numeric activation took before; its accuracy against an independent 2-D
quadrature is tests/test_elementwise.py's). float64: equal to 1e-12 on the Cauchy–Schwarz
scale |K − K_ref|_ij / √(K_ref,ii K_ref,jj); float32: 1e-5.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import torch_ntk as tn
from torch_ntk import ops
from torch_ntk.activations import Elementwise, hermite_rule
from torch_ntk.analytic import kernels as kernels_module
from torch_ntk.analytic import tabled
from torch_ntk.analytic.autograd import mlp_kernels
from torch_ntk.analytic.kernels import as_spec
from torch_ntk.nn import NTKLinear

SW2, SB2 = 1.5, 0.1


def model(*acts, n0: int = 3, width: int = 16) -> nn.Module:
    layers = [NTKLinear(n0, width, weight_std=math.sqrt(SW2), bias_std=math.sqrt(SB2))]
    for k, act in enumerate(acts):
        layers += [act, NTKLinear(width, 1 if k == len(acts) - 1 else width,
                                  weight_std=math.sqrt(SW2), bias_std=math.sqrt(SB2))]
    return nn.Sequential(*layers).double()


def inputs(n: int, scale: float = 1.0, dtype=torch.float64, seed: int = 0,
           duplicate: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    if duplicate:
        x[1] = x[0] * 1.0001  # a pair with ρ near 1 (kinked φ: outside the series' bound)
    return (x * scale).to(dtype)


def cs_error(got: torch.Tensor, ref: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor) -> float:
    """max |got − ref| / √(d1_i d2_j): the error on the Cauchy–Schwarz scale."""
    return float(((got.double() - ref.double()).abs()
                  / torch.sqrt(torch.outer(d1.double(), d2.double()))).max())


class Spy:
    """Counts the tabled op calls and the pairs they flag; the torch recursion raises."""

    def __init__(self, monkeypatch):
        self.calls, self.flagged = 0, 0
        real = ops.analytic_kernels_tabled

        def op(*args, **kwargs):
            out = real(*args, **kwargs)
            self.calls += 1
            self.flagged += int(out[2].sum())
            return out

        def torch_path(*args, **kwargs):
            raise AssertionError("the torch recursion ran instead of the op")

        monkeypatch.setattr(tabled.ops, "analytic_kernels_tabled", op)
        monkeypatch.setattr(kernels_module, "mlp_kernels", torch_path)


CHAINS = {
    "mish": (nn.Mish(), nn.Mish(), nn.Mish()),
    "hardswish_relu_elu": (nn.Hardswish(), nn.ReLU(), nn.ELU()),
    "relu6_user": (nn.ReLU6(), Elementwise(lambda t: t * torch.sigmoid(1.702 * t),
                                           name="quick_gelu"), nn.Softsign()),
}


@pytest.mark.parametrize("chain", sorted(CHAINS))
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_op_path_equals_the_torch_path(chain, scale, monkeypatch):
    """float64, depth 3, x2 None and given: the op path is taken and equals the torch
    recursion to 1e-12; with kinked φ pairs are flagged and recomputed (the diagonal,
    ρ = 1, and the near-duplicate pair)."""
    net = model(*CHAINS[chain])
    spec = as_spec(net)
    x, y = inputs(6, scale), inputs(4, scale, seed=1)
    y[0] = x[0] * (1 - 1e-4)  # ρ near 1 across the batches
    with torch.no_grad():
        ref_sym = mlp_kernels(spec, x, None, numeric=True)
        ref_cross = mlp_kernels(spec, x, y, numeric=True)
        ref_y = mlp_kernels(spec, y, None, numeric=True)
    (n1, d1), (n2, d2) = ((r[0].diagonal(), r[1].diagonal()) for r in (ref_sym, ref_y))
    spy = Spy(monkeypatch)
    with torch.no_grad():
        sym = tn.analytic_kernels(net, x)
        cross = tn.analytic_kernels(net, x, y)
    assert spy.calls == 2
    if chain != "mish":  # kinked φ: the op flags pairs (Mish is analytic: it need not)
        assert spy.flagged > 0
    assert torch.equal(sym.ntk, sym.ntk.T)
    assert cs_error(sym.nngp, ref_sym[0], n1, n1) < 1e-12
    assert cs_error(sym.ntk, ref_sym[1], d1, d1) < 1e-12
    assert cs_error(cross.nngp, ref_cross[0], n1, n2) < 1e-12
    assert cs_error(cross.ntk, ref_cross[1], d1, d2) < 1e-12


def test_the_flagged_pairs_matter(monkeypatch):
    """A wrong implementation that keeps the op's truncated series for the flagged pairs
    (no recomputation) is more than 1e-10 off the torch path: the check above can fail."""
    net = model(nn.ReLU6(), nn.Hardswish(), nn.ELU())
    spec = as_spec(net)
    x = inputs(8, 30.0)
    with torch.no_grad():
        ref = mlp_kernels(spec, x, None, numeric=True)
    monkeypatch.setattr(tabled, "_recompute", lambda *args: None)
    with torch.no_grad():
        got = tn.analytic_kernels(net, x)
    d = ref[1].diagonal()
    assert cs_error(got.ntk, ref[1], d, d) > 1e-10


@pytest.mark.parametrize("chain", ["mish", "hardswish_relu_elu"])
def test_float32(chain, monkeypatch):
    """float32 inputs: the op's float32 pair pass within 1e-5 of the float64 torch path.
    (No near-duplicate points: float32 resolves their angle to √eps only, and kinked φ
    turn that into ~1e-4 in any float32 path; kernels.analytic_kernels' docstring.)"""
    net = model(*CHAINS[chain]).float()
    spec = as_spec(net)
    x = inputs(10, 3.0, torch.float32, duplicate=False)
    with torch.no_grad():
        ref = mlp_kernels(spec, x.double(), None, numeric=True)
    spy = Spy(monkeypatch)
    with torch.no_grad():
        got = tn.analytic_kernels(net, x)
    assert spy.calls == 1 and got.ntk.dtype == torch.float32
    d = ref[1].diagonal()
    assert cs_error(got.ntk, ref[1], d, d) < 1e-5


def test_closed_forms_and_op_native_specs_keep_their_paths():
    """A numeric activation with a kernel map in torch keeps the torch recursion (its closed
    form); a spec without numeric layers keeps the plain op; Mish takes tables."""
    net = model(Elementwise(torch.sin, nngp_fn=lambda c, a, b: torch.exp(-(a + b) / 2)
                            * torch.sinh(c), ntk_fn=lambda c, a, b: torch.exp(-(a + b) / 2)
                            * torch.cosh(c), name="sin"), nn.Mish())
    assert tabled.table_plan(as_spec(net), torch.device("cpu"), None, False) is None
    assert tabled.table_plan(as_spec(model(nn.Mish())), torch.device("cpu"), None, False) == [True]
    assert tabled.table_plan(as_spec(model(nn.ReLU())), torch.device("cpu"), None, False) is None


def _op_args(n: int = 4, k: int = 8):
    """Op arguments of one series layer (act id −1) and its tables [1, 2k + 3, n]: rows
    var (1), a_0..a_{k−1}, b_0..b_{k−1}, ra, rb (0)."""
    x = torch.randn(n, 3, dtype=torch.float64)
    nodes, weights = hermite_rule(8, torch.float64)
    args = dict(input_weight_var=0.5, input_bias_var=0.1, input_ntk_weight=0.5,
                input_ntk_bias=0.1, act_ids=[-1], act_params=[0.0], weight_var=[1.5],
                bias_var=[0.1], ntk_weight=[1.5], ntk_bias=[0.1], gh_nodes=nodes,
                gh_weights=weights)
    tables = torch.zeros(1, 2 * k + 3, n, dtype=torch.float64)
    tables[0, 0] = 1.0
    return x, args, tables


def test_op_with_tables_against_a_formula():
    """The op's series layer on hand-made tables (a_0 = 1, a_1 = 2, b_0 = 3, tails 0):
    E[φφ] = 1 + 4ρ, E[φ′φ′] = 9 with ρ = Σ^(1)_ij / √(q_i q_j), q = var given."""
    x, args, tables = _op_args()
    tables[0, 1], tables[0, 2], tables[0, 9] = 1.0, 2.0, 3.0
    tables[0, 0] = 0.5 * (x * x).sum(1) + 0.1
    nngp, ntk, fallback = ops.analytic_kernels_tabled(
        x, None, **args, series_x1=tables, series_terms=[8], series_tolerance=1e-11)
    s1 = 0.5 * x @ x.T + 0.1
    q = tables[0, 0]
    rho = (s1 / torch.sqrt(torch.outer(q, q))).clamp(-1, 1)
    e, ed = 1 + 4 * rho, torch.full_like(rho, 9.0)
    torch.testing.assert_close(nngp, 1.5 * e + 0.1, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(ntk, s1 * 1.5 * ed + 1.5 * e + 0.1, rtol=1e-13, atol=1e-13)
    assert fallback.shape == (4, 4) and not bool(fallback.any())
    tables[0, 17] = 1.0  # ra = 1 (rb = 0): every pair with |ρ|^8 > 1e-11 is flagged
    *_, fallback = ops.analytic_kernels_tabled(
        x, None, **args, series_x1=tables, series_terms=[8], series_tolerance=1e-11)
    assert torch.equal(fallback, rho.abs() ** 8 > 1e-11)


def test_opcheck_with_tables():
    x, args, tables = _op_args()
    y = torch.randn(3, 3, dtype=torch.float64)
    _, _, t2 = _op_args(3)
    op_args = (x, y, 0.5, 0.1, 0.5, 0.1, [-1], [0.0], [1.5], [0.1], [1.5], [0.1],
               args["gh_nodes"], args["gh_weights"], False, True, True, True, [], [], [],
               tables, t2, [8], 1e-11)
    torch.library.opcheck(torch.ops.torch_ntk.analytic_kernels.default, op_args)


@pytest.mark.parametrize("edit, match", [
    (lambda a: a.__setitem__("series_x1", a["series_x1"][:, :, :3]),
     r"series_x1 must have shape \[L-1, 2 K_max \+ 3, N\] = \[1, 19, 4\]"),
    (lambda a: a.__setitem__("series_x1", a["series_x1"][:, :18]), r"series_x1 must have shape"),
    (lambda a: a.__setitem__("series_x1", a["series_x1"].float()),
     r"series_x1 must have x1's dtype"),
    (lambda a: a["series_x1"].__setitem__((0, 0, 0), float("nan")), r"series_x1 must be finite"),
    (lambda a: a.__setitem__("series_x2", a["series_x1"]), r"series_x2 must be given exactly "
                                                            r"when x2 is"),
    (lambda a: a.__setitem__("series_terms", [4]), r"series_terms\[0\] = 4 must be a "
                                                     r"positive multiple of 8"),
    (lambda a: a.__setitem__("series_terms", [16]), r"series_terms\[0\] = 16"),
    (lambda a: a.__setitem__("series_tolerance", 0.0), r"series_tolerance must be positive"),
])
def test_bad_tables_raise(edit, match):
    """Tables of the wrong shape, dtype or values, or terms and tolerance out of range: a
    ValueError naming the argument."""
    x, args, tables = _op_args()
    extra = dict(series_x1=tables, series_terms=[8], series_tolerance=1e-11)
    edit(extra)
    with pytest.raises(ValueError, match=match):
        ops.analytic_kernels_tabled(x, None, **args, **extra)


def test_act_id_minus_one_needs_tables():
    x, args, _ = _op_args()
    with pytest.raises(ValueError, match=r"act_ids\[0\] = -1 .*-1 needs series_x1"):
        ops.analytic_kernels(x, None, **args)
