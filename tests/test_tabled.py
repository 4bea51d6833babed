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
from functools import lru_cache

import numpy as np
import pytest
import torch
from scipy import integrate, special
from torch import nn

import torch_ntk as tn
from torch_ntk import ops
from torch_ntk.activations import Elementwise, hermite_rule
from torch_ntk.analytic import kernels as kernels_module
from torch_ntk.analytic import tabled
from torch_ntk.analytic.autograd import mlp_kernels
from torch_ntk.analytic.kernels import as_spec
from torch_ntk.layers import numeric_series
from torch_ntk.layers.elementwise import dual_functions, numeric_activation
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


# ---- the tables themselves (torch_ntk.layers.numeric_series, "Tables") against scipy ----

def _sp(x):
    return np.logaddexp(0.0, x)


# φ and φ′ written here in numpy (independent of the torch modules), with their kinks
REFERENCE = {
    "mish": (nn.Mish(), lambda x: x * np.tanh(_sp(x)),
             lambda x: np.tanh(_sp(x)) + x / (1 + np.exp(-x)) * (1 - np.tanh(_sp(x)) ** 2), ()),
    "hardswish": (nn.Hardswish(), lambda x: x * np.clip(x + 3, 0, 6) / 6,
                  lambda x: np.where(x < -3, 0.0, np.where(x > 3, 1.0, (2 * x + 3) / 6)),
                  (-3.0, 3.0)),
    # two kinks in one panel of the shared layout at q = 1 (z = 0.2, 0.5 in [0, 1])
    "hardtanh_0.2_0.5": (nn.Hardtanh(0.2, 0.5), lambda x: np.clip(x, 0.2, 0.5),
                         lambda x: np.where((x > 0.2) & (x < 0.5), 1.0, 0.0), (0.2, 0.5)),
    "celu": (nn.CELU(), lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0))),
             lambda x: np.where(x > 0, 1.0, np.exp(np.minimum(x, 0))), (0.0,)),
}
# across levels of the layout: below 1, the level-0 edge, a level edge (√q = 2^(4/8)),
# fine inner panels (√q = 31.6)
TABLE_Q = [0.3, 1.0, 1.0 + 1e-9, 2.0, 1e3]
TABLE_K = [0, 1, 7, 40, 127]


def _gaussian_quad(g, q: float, kinks) -> float:
    """E[g(z)], z ~ N(0, 1), by scipy's adaptive quadrature on [−20, 20] cut at every unit
    and at the kinks t/√q (each piece smooth)."""
    s = math.sqrt(q)
    cuts = sorted(set(np.arange(-20.0, 20.5, 1.0).tolist()
                      + [t / s for t in kinks if abs(t / s) < 20]))
    return sum(integrate.quad(lambda z: g(z) * math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi),
                              a, b, limit=200, epsabs=1e-15, epsrel=1e-12)[0]
               for a, b in zip(cuts[:-1], cuts[1:]))


def _reference_coefficient(f, q: float, k: int, kinks) -> float:
    """E[f(√q z) h_k(z)] (h_k = He_k/√k!, scipy's He_k)."""
    s, norm = math.sqrt(q), math.exp(-0.5 * math.lgamma(k + 1))
    return _gaussian_quad(lambda z: f(s * z) * special.eval_hermitenorm(k, z) * norm, q, kinks)


def _reference_norm(f, q: float, kinks) -> float:
    s = math.sqrt(q)
    return _gaussian_quad(lambda z: f(s * z) ** 2, q, kinks)


@lru_cache(maxsize=None)
def _references(name: str) -> dict:
    _, f, df, kinks = REFERENCE[name]
    return {(q, k, which): _reference_coefficient(fn, q, k, kinks)
            for q in TABLE_Q for k in TABLE_K for which, fn in (("a", f), ("b", df))} | {
        (q, "norm", which): _reference_norm(fn, q, kinks)
        for q in TABLE_Q for which, fn in (("a", f), ("b", df))}


def _table_error(name: str) -> float:
    """max over q, k of |a_k − ref|/√E[φ²] and |b_k − ref|/√E[φ′²], and of the relative
    error of E[φ²], E[φ′²], from one series_tables call on all of TABLE_Q (several levels)."""
    module, _, _, kinks = REFERENCE[name]
    numeric_series.clear_cache()
    phi, dphi, kinks = dual_functions(numeric_activation(module))
    a, b, na, nb, _, _ = numeric_series.series_tables(
        phi, dphi, kinks, torch.tensor(TABLE_Q, dtype=torch.float64), name, terms=128)
    ref = _references(name)
    worst = 0.0
    for i, q in enumerate(TABLE_Q):
        for which, got, norm in (("a", a, na), ("b", b, nb)):
            scale = math.sqrt(ref[(q, "norm", which)])
            worst = max(worst, abs(float(norm[i]) - ref[(q, "norm", which)]) / scale ** 2)
            for k in TABLE_K:
                worst = max(worst, abs(float(got[i, k]) - ref[(q, k, which)]) / scale)
    return worst


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_tables_against_scipy(name):
    """The coefficients a_k, b_k (k = 0 … 127) and E[φ²], E[φ′²] at five variances (four
    levels of the shared layouts, kinks inside panels, on panel edges, two in one panel)
    equal scipy's adaptive quadrature of the numpy φ, φ′ to 1e-12 on the scale √E[φ²]."""
    assert _table_error(name) < 1e-12


def test_tables_without_the_kink_split_fail(monkeypatch):
    """A wrong implementation that does not split the panels holding a kink (the shared
    nodes only) is more than 1e-8 off: the check above can fail."""
    def unsplit(edges, s, kinks):
        keep, ze, we = real(edges, s, kinks)
        return torch.ones_like(keep), ze, torch.zeros_like(we)

    real = numeric_series._kink_panels
    monkeypatch.setattr(numeric_series, "_kink_panels", unsplit)
    assert _table_error("hardswish") > 1e-8
    assert _table_error("hardtanh_0.2_0.5") > 1e-8


def test_tables_with_too_coarse_panels_fail(monkeypatch):
    """A wrong layout whose fine panels stop at |x| = 2 (INNER = 2) is more than 1e-8 off
    for Mish at q = 1e3 (x-panels of width 31 where φ turns)."""
    monkeypatch.setattr(numeric_series, "INNER", 2)
    numeric_series._layout.cache_clear()
    try:
        assert _table_error("mish") > 1e-8
    finally:
        monkeypatch.undo()
        numeric_series._layout.cache_clear()
        numeric_series.clear_cache()


def test_terms_are_the_fewest_that_meet_the_tolerance():
    """K is the smallest multiple of 8 at which every sample's squared tails r_K² (a and
    b) are ≤ the tolerance, r_K² = 1 − Σ_{k<K} a_k²/E[φ²] recomputed here from the tables."""
    phi, dphi, kinks = dual_functions(numeric_activation(nn.Mish()))
    q = torch.tensor([0.3, 1.0, 2.5], dtype=torch.float64)
    for tolerance in (1e-8, 1e-11):
        numeric_series.clear_cache()
        a, b, na, nb, ra, rb = numeric_series.series_tables(phi, dphi, kinks, q,
                                                            tolerance=tolerance)
        K = a.shape[1]
        tails = [1 - torch.cumsum(c * c, 1)[:, 7::8] / n[:, None] for c, n in ((a, na), (b, nb))]
        worst = torch.maximum(*tails).amax(0)  # [K/8]: the worst sample per checkpoint
        assert 8 <= K < 128 and float(worst[-1]) <= tolerance
        assert K == 8 or float(worst[-2]) > tolerance
        torch.testing.assert_close(ra[:, -1] ** 2, tails[0][:, -1].clamp(min=0), atol=1e-15,
                                   rtol=0)


def test_cuda_specs_keep_the_torch_recursion():
    """On CUDA the op refuses tables (CPU only), so the plan sends CUDA inputs to the torch
    recursion (which computes the same tables in torch on the GPU)."""
    spec = as_spec(model(nn.Mish()))
    assert tabled.table_plan(spec, torch.device("cuda"), None, False) is None
    assert tabled.table_plan(spec, torch.device("cpu"), None, False) == [True]


@pytest.mark.skipif(not torch.cuda.is_available() or not ops.cuda_built(),
                    reason="needs a CUDA build and a GPU")
def test_cuda_op_refuses_tables():
    x, args, tables = _op_args()
    args = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    with pytest.raises(ValueError, match="series tables run on the CPU only"):
        ops.analytic_kernels_tabled(x.cuda(), None, **args, series_x1=tables.cuda(),
                                    series_terms=[8], series_tolerance=1e-11)
