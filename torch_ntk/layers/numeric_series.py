"""Dual maps of any elementwise φ by a numeric Hermite series (NTK_MATH §10), in torch.

For (u, v) ~ N(0, [[q11, q12], [q12, q22]]), ρ = q12/√(q11 q22) and h_k = He_k/√(k!):

    E[φ(u) φ(v)]   = Σ_k a_k(q11) a_k(q22) ρ^k,    a_k(q) = E[φ(√q z) h_k(z)]
    E[φ′(u) φ′(v)] = Σ_k b_k(q11) b_k(q22) ρ^k,    b_k(q) = E[φ′(√q z) h_k(z)]

(Mehler's formula; csrc/math/hermite.h computes the same tables for its five smooth
activations). Per sample the coefficients a_k, b_k (k < 128) come from a composite
16-point Gauss–Legendre rule in z on [−13, 13]:

- panels of width h ≤ min(1, 1/√q) in z out to |z| = 18 h (width ≤ 1 in x = √q·z on
  |x| ≤ 16, where φ turns: 16 nodes per unit of x integrate a φ analytic within ~1 of the
  real axis to rounding; width ≤ 1 in z for the Gaussian weight and h_k), then panels of
  width 1 in z;
- the panels that hold a kink t_j/√q that φ declares split there (each smooth piece
  integrated separately, so kinks cost nothing: geometric instead of algebraic
  convergence).

Tables: h is quantized to the levels 2^(−j/8) (j = ⌈8 log₂ √q⌉, 0 for q ≤ 1), so the
samples of one level share their nodes z_n and weights w_n: their coefficients are one
product [2 G, nodes] × [nodes, K] of φ and φ′ at √q z_n (one batched evaluation) with the
level's projection P_nk = w_n h_k(z_n) (computed once per level), the panels holding a kink
zeroed there and redone per sample by the Hermite recurrence on their pieces. The products
run 32 terms at a time until every sample's tails meet the tolerance (below).

The truncation after K terms is bounded per pair by Cauchy–Schwarz,
|Σ_{k≥K} a_k a′_k ρ^k| ≤ r_K(q11) r_K(q22) |ρ|^K · √(E[φ(u)²] E[φ(v)²]), r_K² the relative tail
1 − Σ_{k<K} a_k²/E[φ²]; K is the smallest multiple of 8 (at most 128) at which every
sample's r_K² meets the tolerance (1e-11 relative in float64, 1e-8 in float32), one K per
call (the fused op's tabled layers, ``torch_ntk.analytic.tabled``, sum the same K terms and
flag the same pairs), and the pairs whose bound those terms do not meet (|ρ|
near 1 for kinked φ, whose coefficients decay like powers of k) take a 2-D composite rule
split at the kinks in both variables (:func:`pair_expectations`; the conditional of v given
u has its kinks at (t_j − √q22 ρ z1)/(√q22 √(1−ρ²)), and the outer rule is graded towards the
points where that conditional mean crosses a kink). Everything runs in float64 and is
returned in the inputs' dtype.

Bad φ: NaN/Inf at a node, or growth so fast that E[φ(√q z)²] has mass beyond |z| = 13
(exp(x²) at q ≥ 1/8, exp(|x|) at large q) raise ValueError naming φ and what to do.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["TERMS", "TOLERANCE", "clear_cache", "numeric_expectations", "pair_expectations", "paired_tables",
           "rho_power", "series_tables", "table_expectations"]

TERMS = 128  # K_max, as csrc/math/hermite.h
STEP = 8  # K is a multiple of this
Z_MAX = 13.0  # the Gaussian weight e^{−z²/2} is below 1e-36 beyond
TOLERANCE = {torch.float64: 1e-11, torch.float32: 1e-8}
LEVELS = 8  # panel layouts per octave of √q (module doc, "Tables")
INNER = 18  # inner panels per side: they reach |x| = 18 h √q > 16 at every √q of a level
_TERM_BLOCK = 32  # coefficients per product; K is decided after each block
_CHUNK_ELEMENTS = 1 << 22  # nodes × samples (or pairs) per evaluation chunk
# the last tables computed (the self-pair and cross calls of one layer ask for the same q)
_CACHE: dict = {}

Fn = Callable[[Tensor], Tensor]
_GROWTH_HINT = ("use a function of at most exponential growth, smaller inputs or weight "
                "variances, or Elementwise(fn, nngp_fn=..., ntk_fn=...) with its kernel map")


@lru_cache(maxsize=None)
def _legendre() -> tuple[Tensor, Tensor]:
    t, w = np.polynomial.legendre.leggauss(16)
    return torch.as_tensor(t), torch.as_tensor(w)


def _edges(center: Tensor, scale: Tensor, kinks: Sequence[float], z_width: float,
           x_reach: float, x_width: float, extra: Optional[Tensor] = None) -> Tensor:
    """[*B, E] sorted panel edges in z for x = center + scale·z (module doc), clamped to
    ±Z_MAX (repeated edges give empty panels, of weight 0)."""
    dev = center.device
    zg = torch.arange(-Z_MAX, Z_MAX + z_width / 2, z_width, dtype=torch.float64, device=dev)
    xg = torch.arange(-x_reach, x_reach + x_width / 2, x_width, dtype=torch.float64,
                      device=dev)
    xs = torch.cat([xg, torch.tensor(kinks, dtype=torch.float64, device=dev)])
    inv = 1 / torch.clamp(scale, min=1e-300)
    parts = [zg.expand(*center.shape, -1),
             ((xs - center[..., None]) * inv[..., None]).clamp(-Z_MAX, Z_MAX)]
    if extra is not None:
        parts.append(extra.clamp(-Z_MAX, Z_MAX))
    return torch.sort(torch.cat(parts, -1), -1).values


def _nodes(edges: Tensor) -> tuple[Tensor, Tensor]:
    """Nodes z [*B, 16·P] and weights (times the N(0, 1) density) of the panels ``edges``."""
    t, w = (a.to(edges.device) for a in _legendre())
    half = (edges[..., 1:] - edges[..., :-1])[..., None] / 2
    mid = (edges[..., 1:] + edges[..., :-1])[..., None] / 2
    z = (mid + half * t).flatten(-2)
    weight = (half * w).flatten(-2) * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return z, weight


def _evaluate(fn: Fn, x: Tensor, name: str, what: str) -> Tensor:
    """fn(x) in float64, ValueError naming φ if it is not finite at a node."""
    return _checked(fn(x), x, name, what)


def _evaluate_both(phi: Fn, dphi: Fn, x: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """(φ(x), φ′(x)) in float64, checked as :func:`_evaluate`; by one pass when φ′ has a
    ``with_value(x) -> (φ(x), φ′(x))`` (the autograd derivative of
    ``torch_ntk.layers.elementwise``: one forward instead of two)."""
    joint = getattr(dphi, "with_value", None)
    if joint is None:
        return _evaluate(phi, x, name, "φ"), _evaluate(dphi, x, name, "φ′")
    f, df = joint(x)
    return _checked(f, x, name, "φ"), _checked(df, x, name, "φ′")


def _checked(y, x: Tensor, name: str, what: str) -> Tensor:
    if not isinstance(y, Tensor) or y.shape != x.shape:
        raise ValueError(f"{name}: {what} is not elementwise (a {list(x.shape)} input gave "
                         f"{getattr(y, 'shape', type(y).__name__)})")
    y = y.to(torch.float64)
    if math.isfinite(float(y.sum())):  # one reduction; a NaN or ±Inf makes it so
        return y
    bad = ~torch.isfinite(y)
    if bool(bad.any()):
        at = float(x[bad][0])
        if not bool(torch.isnan(y[bad]).any()):
            raise ValueError(f"{name}: {what} overflows ({float(y[bad][0])} at x = {at:.6g}, a "
                             "node of the quadrature): it grows too fast for the Gaussian "
                             f"expectations (e.g. exp(x²)); {_GROWTH_HINT}")
        raise ValueError(f"{name}: {what} is {float(y[bad][0])} at x = {at:.6g}, a node of "
                         "the quadrature of its Gaussian expectations; the limit needs a "
                         "function finite on the real line (clamp it, or give a kernel map "
                         "with Elementwise(fn, nngp_fn=..., ntk_fn=...))")
    return y


def series_tables(phi: Fn, dphi: Fn, kinks: Sequence[float], q: Tensor, name: str = "φ",
                  terms: int = TERMS, tolerance: float = 0.0,
                  min_terms: int = STEP) -> tuple[Tensor, ...]:
    """Per sample variance q [M] (float64): a, b [M, K] (the Hermite coefficients of
    φ(√q z) and φ′(√q z)), E[φ²], E[φ′²] [M] and the relative tails r_K of a and b at
    K = 8, 16, …, K [M, K/8] (module doc). K ≤ ``terms``: the recursion stops at the first
    multiple of 8 (≥ ``min_terms``) where every sample's squared tails are ≤ ``tolerance``
    (then every pair's bound is met at any ρ, and further terms are not needed)."""
    key = (phi, dphi, tuple(kinks), terms, tolerance, min_terms, q.device, q.numel(),
           hash(q.cpu().numpy().tobytes()))
    cached = _CACHE.get(key)
    if cached is not None and torch.equal(cached[0], q):
        return cached[1]
    unique, inverse = torch.unique(q, return_inverse=True)
    if unique.numel() < q.numel():  # samples of equal variance (e.g. inputs of one norm)
        tables = tuple(t[inverse] for t in series_tables(phi, dphi, kinks, unique, name, terms,
                                                         tolerance, min_terms))
        _remember(key, q, tables)
        return tables
    out = []
    step = max(1, _CHUNK_ELEMENTS // 2 // (16 * 64))
    for i in range(0, q.numel(), step):
        out.append(_tables_chunk(phi, dphi, kinks, q[i:i + step], name, terms, tolerance,
                                 min_terms))
    k = max(o[0].shape[1] for o in out)
    if any(o[0].shape[1] < k for o in out):  # chunks that stopped earlier: recompute
        out = [o if o[0].shape[1] == k else _tables_chunk(
            phi, dphi, kinks, q[i * step:(i + 1) * step], name, terms, tolerance, k)
            for i, o in enumerate(out)]
    tables = tuple(torch.cat([o[j] for o in out]) for j in range(6))
    _remember(key, q, tables)
    return tables


def clear_cache() -> None:
    """Forget the tables :func:`series_tables` keeps for the variances last asked (the
    benchmarks time a call without them)."""
    _CACHE.clear()


def _remember(key: tuple, q: Tensor, tables: tuple) -> None:
    if len(_CACHE) >= 4:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = (q.clone(), tables)


def _tables_chunk(phi, dphi, kinks, q, name, terms, tolerance, min_terms):
    """:func:`series_tables` for one chunk of samples q [M] (module doc, "Tables"): per
    level of √q one product of φ on the level's nodes with its projection, the panels
    that hold a kink redone per sample."""
    s = torch.sqrt(torch.clamp(q, min=0))
    levels = torch.ceil(LEVELS * torch.log2(torch.clamp(s, min=1))).long()
    groups = [_Group(phi, dphi, kinks, s, torch.nonzero(levels == j).flatten(), int(j), name)
              for j in torch.unique(levels).tolist()]
    na, nb, mass = (torch.zeros_like(q) for _ in range(3))
    for g in groups:
        na[g.idx], nb[g.idx], mass[g.idx] = g.na, g.nb, g.mass
    big = mass > 1e-20 * torch.clamp(na, min=1e-300)
    if bool(big.any()):
        qb = float(q[big][0])
        raise ValueError(f"{name}: φ grows too fast for the Gaussian expectations: at variance "
                         f"q = {qb:.4g} E[φ(√q z)²] has a share "
                         f"{float(mass[big][0] / na[big][0]):.2g} "
                         f"beyond |z| = {Z_MAX - 1.5} (e.g. exp(x²)); the series cannot represent "
                         f"it: {_GROWTH_HINT}")
    # the coefficients a block of terms at a time, until every sample's tails meet the
    # tolerance at a multiple of 8 (≥ min_terms)
    ab = torch.empty(q.shape[0], 2, terms, dtype=torch.float64, device=q.device)
    norms = torch.stack([na, nb], 1)[..., None]
    first = max(min_terms, STEP)
    for k0 in range(0, terms, _TERM_BLOCK):
        k1 = min(k0 + _TERM_BLOCK, terms)
        for g in groups:
            ab[g.idx, :, k0:k1] = g.coefficients(k0, k1)
        if tolerance <= 0 or k1 < first:
            continue
        kept = torch.cumsum(ab[:, :, :k1] ** 2, -1)[..., STEP - 1::STEP]
        met = (norms - kept <= tolerance * norms).flatten(0, 1).all(0)
        met[:(first - 1) // STEP] = False
        done = torch.nonzero(met).flatten()
        if done.numel() > 0:
            ab = ab[:, :, :STEP * (int(done[0]) + 1)]
            break
    a, b = ab[:, 0], ab[:, 1]
    tails = []
    for c, norm in ((a, na), (b, nb)):
        kept = torch.cumsum(c * c, -1)[:, STEP - 1::STEP]
        tails.append(torch.where(norm[:, None] > 0, torch.sqrt(torch.clamp(
            1 - kept / torch.clamp(norm[:, None], min=1e-300), min=0)), 0))
    return a, b, na, nb, tails[0], tails[1]


@lru_cache(maxsize=512)
def _layout(level: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The panels of level j (√q ≤ 2^{j/8}; module doc, "Tables"): edges [E], nodes
    z [16 (E − 1)], their weights w times the N(0, 1) density, and the projection
    P [nodes, TERMS] = w h_k(z) (float64, CPU)."""
    h = 2.0 ** (-level / LEVELS)
    m = min(math.ceil(Z_MAX / h), INNER)
    inner = np.arange(-m, m + 1) * h
    outer = np.arange(m * h + 1, Z_MAX, 1.0)
    edges = torch.as_tensor(np.unique(np.clip(
        np.concatenate([inner, outer, -outer, [-Z_MAX, Z_MAX]]), -Z_MAX, Z_MAX)))
    z, w = _nodes(edges)
    proj = torch.empty(z.numel(), TERMS, dtype=torch.float64)
    h_prev, h_k = torch.zeros_like(z), torch.ones_like(z)
    for k in range(TERMS):  # h_{k+1} = (z h_k − √k h_{k−1})/√(k+1)
        proj[:, k] = w * h_k
        h_prev, h_k = h_k, (z * h_k - math.sqrt(k) * h_prev) / math.sqrt(k + 1)
    return edges, z, w, proj


class _Group:
    """The samples idx [G] of one level: φ, φ′ on the level's shared nodes (the panels
    that hold one of a sample's kinks zeroed), and per sample those panels split at its
    kinks (16 nodes per piece); their norms E[φ²], E[φ′²] and the mass of φ² in the
    outermost panels (the growth check)."""

    def __init__(self, phi, dphi, kinks, s, idx, level, name):
        dev = s.device
        edges, z, w, proj = (t.to(dev) for t in _layout(level))
        self.idx, self.proj = idx, proj
        s = s[idx]
        f, df = _evaluate_both(phi, dphi, s[:, None] * z, name)
        self.kinked = None
        if kinks:
            keep, ze, we = _kink_panels(edges, s, kinks)
            f, df = f * keep, df * keep
            fe, dfe = _evaluate_both(phi, dphi, s[:, None] * ze, name)
            self.kinked = (ze, we * fe, we * dfe, torch.zeros_like(ze), torch.ones_like(ze))
        self.fd = torch.cat([f, df])  # [2G, nodes]: one product per block of terms
        ff = f * f
        outer = torch.where(z.abs() > Z_MAX - 1.5, w, 0)
        self.na, self.nb, self.mass = ff @ w, (df * df) @ w, ff @ outer
        if self.kinked is not None:
            ze, fw, dw = self.kinked[:3]
            self.na += (fw * fe).sum(-1)
            self.nb += (dw * dfe).sum(-1)
            self.mass += torch.where(ze.abs() > Z_MAX - 1.5, fw * fe, 0).sum(-1)

    def coefficients(self, k0: int, k1: int) -> Tensor:
        """[G, 2, k1 − k0] the coefficients k0 ≤ k < k1 of φ and φ′ (called for
        consecutive blocks: the kink panels' h_k run on from the last block)."""
        out = (self.fd @ self.proj[:, k0:k1]).unflatten(0, (2, -1)).transpose(0, 1)
        if self.kinked is not None:
            ze, fw, dw, h_prev, h = self.kinked
            block = torch.empty(*ze.shape, k1 - k0, dtype=ze.dtype, device=ze.device)
            for k in range(k0, k1):  # h_{k+1} = (z h_k − √k h_{k−1})/√(k+1)
                block[..., k - k0] = h
                h_prev, h = h, torch.addcmul(h_prev * (-math.sqrt(k / (k + 1))), ze, h,
                                             value=1 / math.sqrt(k + 1))
            self.kinked = (ze, fw, dw, h_prev, h)
            out += torch.bmm(torch.stack([fw, dw], 1), block)
        return out


def _kink_panels(edges: Tensor, s: Tensor, kinks: Sequence[float]
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """For samples of scale s [G] on the panels ``edges`` [E]: keep [G, nodes] (0 on the
    nodes of a panel that holds a kink t/s strictly inside), and the nodes ze [G, n] and
    weights we (0 outside those panels) of those panels split at the kinks."""
    t = torch.tensor(kinks, dtype=torch.float64, device=s.device)
    zt = t / torch.clamp(s, min=1e-300)[:, None]  # [G, J]
    p = (torch.searchsorted(edges, zt.clamp(-Z_MAX, Z_MAX).contiguous(), right=True) - 1
         ).clamp(0, edges.numel() - 2)
    lo, hi = edges[p], edges[p + 1]
    inside = (s[:, None] > 0) & (lo < zt) & (zt < hi)
    keep = torch.ones(s.numel(), edges.numel() - 1, dtype=torch.float64, device=s.device)
    rows = torch.arange(s.numel(), device=s.device)
    for j in range(t.numel()):
        keep[rows[inside[:, j]], p[inside[:, j], j]] = 0
    keep = keep.repeat_interleave(16, 1)
    lo, hi, zt = (torch.where(inside, v, -Z_MAX) for v in (lo, hi, zt))
    points = torch.sort(torch.cat([lo, hi, zt], 1), 1).values
    mid = (points[:, 1:] + points[:, :-1]) / 2
    piece = ((lo[:, None] < mid[..., None]) & (mid[..., None] < hi[:, None])
             & inside[:, None]).any(-1)  # [G, 3J − 1]: the piece lies in a kink's panel
    ze, we = _nodes(points)
    return keep, ze, we * piece.repeat_interleave(16, 1)


def pair_expectations(phi: Fn, dphi: Fn, kinks: Sequence[float], q11: Tensor, q22: Tensor,
                      q12: Tensor, name: str = "φ") -> tuple[Tensor, Tensor]:
    """(E[φ(u)φ(v)], E[φ′(u)φ′(v)]) [P] for pairs (q11, q22, q12) [P] (float64) by a 2-D
    composite Gauss–Legendre rule split at the kinks (module doc): z1 outer, and the
    conditional v | z1 = √q22 (ρ z1 + √(1−ρ²) z2) inner (one point when |ρ| = 1)."""
    s1, s2 = torch.sqrt(torch.clamp(q11, min=0)), torch.sqrt(torch.clamp(q22, min=0))
    norm = torch.sqrt(torch.clamp(q11 * q22, min=0))  # exact for q11 = q22: ρ = 1 exactly
    rho = torch.where(norm > 0, q12 / torch.where(norm > 0, norm, 1), 0).clamp(-1, 1)
    perp = torch.sqrt(torch.clamp((1 - rho) * (1 + rho), min=0))
    e = torch.empty_like(q12)
    ed = torch.empty_like(q12)
    if q12.numel() == 0:
        return e, ed
    # the outer rule: u's grid and kinks, the grid of the conditional mean c = s2 ρ z1, and
    # edges graded (ratio 2) towards where c crosses a kink (width b/(s2|ρ|) = perp/|ρ|)
    slope = s2 * rho
    width = perp / torch.clamp(rho.abs(), min=1e-300)
    grade = torch.tensor([0.0] + [2.0 ** j for j in range(-3, 7)], dtype=torch.float64,
                         device=q12.device)
    grade = torch.cat([grade, -grade[1:]])
    extra = [torch.where(slope.abs() > 0, t / torch.where(slope.abs() > 0, slope, 1), Z_MAX)
             [:, None] + width[:, None] * grade for t in kinks]
    xg = torch.arange(-12.0, 12.5, 1.0, dtype=torch.float64, device=q12.device)
    extra.append(torch.where(slope.abs() > 0, 1, 0)[:, None] * xg
                 / torch.clamp(slope.abs(), min=1e-300)[:, None] * torch.sign(slope)[:, None])
    z1, w1 = _nodes(_edges(torch.zeros_like(s1), s1, kinks, 2.0, 12.0, 1.0,
                           torch.cat(extra, -1)))
    n1 = z1.shape[-1]
    per_pair = n1 * (int(26 / 2) + 26 + len(kinks)) * 16
    step = max(1, _CHUNK_ELEMENTS // per_pair)
    for i in range(0, q12.numel(), step):
        sl = slice(i, i + step)
        fu = _evaluate(phi, s1[sl, None] * z1[sl], name, "φ")
        dfu = _evaluate(dphi, s1[sl, None] * z1[sl], name, "φ′")
        center = slope[sl, None] * z1[sl]
        g = _evaluate(phi, center, name, "φ")  # |ρ| = 1 or q22 = 0: v = c exactly
        dg = _evaluate(dphi, center, name, "φ′")
        spread = (s2 * perp)[sl] > 0
        if bool(spread.any()):
            c = center[spread]
            b = (s2 * perp)[sl][spread][:, None].expand_as(c)
            z2, w2 = _nodes(_edges(c, b, kinks, 2.0, 12.0, 1.0))
            xv = c[..., None] + b[..., None] * z2
            g[spread] = (_evaluate(phi, xv, name, "φ") * w2).sum(-1)
            dg[spread] = (_evaluate(dphi, xv, name, "φ′") * w2).sum(-1)
        e[sl] = (w1[sl] * fu * g).sum(-1)
        ed[sl] = (w1[sl] * dfu * dg).sum(-1)
    return e, ed


def paired_tables(phi: Fn, dphi: Fn, kinks: Sequence[float], q1: Tensor, q2: Tensor,
                  name: str = "φ", tolerance: float = 1e-11) -> tuple[tuple, tuple]:
    """The :func:`series_tables` of q1 [M1] and q2 [M2] (float64) with the same K (the
    bound of a pair needs both tails at one K): the larger of their own K."""
    t1 = series_tables(phi, dphi, kinks, q1, name, tolerance=tolerance)
    t2 = series_tables(phi, dphi, kinks, q2, name, tolerance=tolerance)
    k1, k2 = t1[0].shape[1], t2[0].shape[1]
    if k1 < k2:
        t1 = series_tables(phi, dphi, kinks, q1, name, tolerance=tolerance, min_terms=k2)
    elif k2 < k1:
        t2 = series_tables(phi, dphi, kinks, q2, name, tolerance=tolerance, min_terms=k1)
    return t1, t2


def rho_power(rho: Tensor, terms: int) -> Tensor:
    """|ρ|^K for K a positive multiple of 8, by the products of csrc/math/hermite.h's
    ``hermite_rho_power`` (so that the fused op and torch flag the same pairs)."""
    r2 = rho * rho
    r8 = (r2 * r2) * (r2 * r2)
    p = r8
    for _ in range(STEP, terms, STEP):
        p = p * r8
    return p


def table_expectations(phi: Fn, dphi: Fn, kinks: Sequence[float], t1: Sequence[Tensor],
                       t2: Sequence[Tensor], q11: Tensor, q22: Tensor, q12: Tensor,
                       name: str = "φ", tolerance: float = 1e-11) -> tuple[Tensor, Tensor]:
    """(E[φ(u)φ(v)], E[φ′(u)φ′(v)]) (float64, the broadcast shape of q11, q22, q12) from
    tables t1 = (a1, b1, ra1, rb1) of the q11 side (a, b [..., K] broadcasting like
    q11 [...]; ra, rb [...] the relative tails at K) and t2 of the q22 side: the K-term
    series by Horner in ρ, and the 2-D rule (:func:`pair_expectations`) for the pairs
    whose bound r1 r2 |ρ|^K (of a or of b) exceeds ``tolerance``. The fused op's tabled
    layers (``torch_ntk.analytic.tabled``) compute the same sum and flag the same pairs."""
    a1, b1, ra1, rb1 = t1
    a2, b2, ra2, rb2 = t2
    terms = a1.shape[-1]
    shape = torch.broadcast_shapes(q11.shape, q22.shape, q12.shape)
    norm = torch.sqrt(torch.clamp(q11 * q22, min=0))
    rho = torch.where(norm > 0, q12 / torch.where(norm > 0, norm, 1), 0).clamp(-1, 1)
    rho = rho.expand(shape)
    power = rho_power(rho, terms)
    final = (ra1 * ra2 * power <= tolerance) & (rb1 * rb2 * power <= tolerance)
    ea = (a1[..., terms - 1] * a2[..., terms - 1]).expand(shape).clone()
    eb = (b1[..., terms - 1] * b2[..., terms - 1]).expand(shape).clone()
    for k in range(terms - 2, -1, -1):
        ea.mul_(rho).add_(a1[..., k] * a2[..., k])
        eb.mul_(rho).add_(b1[..., k] * b2[..., k])
    fallback = ~final
    if bool(fallback.any()):
        e, ed = pair_expectations(phi, dphi, kinks, q11.expand(shape)[fallback],
                                  q22.expand(shape)[fallback], q12.expand(shape)[fallback],
                                  name)
        ea[fallback], eb[fallback] = e, ed
    return ea, eb


def numeric_expectations(phi: Fn, dphi: Fn, kinks: Sequence[float], q11: Tensor, q22: Tensor,
                         q12: Tensor, name: str = "φ",
                         tolerance: Optional[float] = None) -> tuple[Tensor, Tensor]:
    """(E[φ(u)φ(v)], E[φ′(u)φ′(v)]) over the broadcast shape of q11, q22, q12 by the numeric
    Hermite series, with the 2-D fallback for the pairs it does not meet to ``tolerance``
    (relative to the Cauchy–Schwarz scale; default by the dtype, module doc). The tables
    are computed once per element of q11 and of q22 (per sample when they are [N1, 1] and
    [1, N2]; :func:`paired_tables`), the sum by :func:`table_expectations` with all K terms
    of the tables. Not differentiable (the kernels' autograd path refuses these
    activations)."""
    like = next(q for q in (q12, q11, q22) if isinstance(q, Tensor))
    dtype = like.dtype
    q11, q22, q12 = (torch.as_tensor(q, device=like.device).detach().to(torch.float64)
                     for q in (q11, q22, q12))
    if tolerance is None:
        tolerance = TOLERANCE.get(dtype, 1e-8)
    t1, t2 = paired_tables(phi, dphi, kinks, q11.reshape(-1), q22.reshape(-1), name, tolerance)
    t1 = [t.reshape(*q11.shape, -1) for t in t1]
    t2 = [t.reshape(*q22.shape, -1) for t in t2]
    side1 = (t1[0], t1[1], t1[4][..., -1], t1[5][..., -1])
    side2 = (t2[0], t2[1], t2[4][..., -1], t2[5][..., -1])
    ea, eb = table_expectations(phi, dphi, kinks, side1, side2, q11, q22, q12, name, tolerance)
    return ea.to(dtype), eb.to(dtype)
