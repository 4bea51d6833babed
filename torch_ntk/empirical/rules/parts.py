"""The factors of the hook engine's rules: a module's per-sample Jacobian as a sum of parts.

A module's parameters θ split into disjoint blocks (a weight, a bias, the groups of a
grouped convolution); each block's per-sample Jacobian J [N, n_L, |block|] is one **part**,
kept in the cheapest form there is:

- :class:`Outer` — J_k = Σ_t d_kt ⊗ a_t per group g, with a [N, G, T, A] (inputs, patches)
  and d [N, n_L, G, T, D] (cotangents at T positions): a Linear on sequences, a convolution
  (a = patches, t = output positions), a transposed convolution (a = inputs, d = cotangent
  patches);
- :class:`Tokens` — the same with a_t = one-hot(id_t) of a vocabulary V (an Embedding),
  whose Gram is token equality [id_t = id′_s] and whose gradient is a scatter-add;
- :class:`Direct` — J itself [N, n_L, p] (a bias: Σ_t d_t; a norm layer's affine weight:
  Σ_t d_t ⊙ x̂_t; the torch.func fallback).

The module's term of the NTK is Σ_parts J Jᵀ′ (parts are disjoint parameters: no cross
terms), contracted per part in one of two orders (NTK_MATH.md §6):

    "gradients": J = Σ_t d_t ⊗ a_t materialized [N, n_L, G·D·A], then one Gram GEMM;
    "grams":     Σ_g Σ_{t,s} ⟨a_gt, a′_gs⟩ · ⟨d_kgt, d′_k′gs⟩ (the "ghost" order), never J:
                 in "full" either the cotangent Gram [N·n_L·T]² times the input Gram, or
                 (:func:`grams_path`) the cotangents projected first,
                 E_{i t, j k′} = Σ_s ⟨a_it, a′_js⟩ d′_jk′s, then Σ_t ⟨d_ikt, E_{i t, j k′}⟩
                 (T·n_L·D·(T + n_L) products per pair instead of T²·n_L²·D).

:func:`part_flops` is the FLOP model that :meth:`ModuleFactors.choose` uses to pick the order
per module; ``NTKInfo.contractions`` reports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from ..._utils.modes import channels

__all__ = ["ORDERS", "PROJECTED_SLOWDOWN", "Direct", "ModuleFactors", "Outer", "Part", "Tokens",
           "contract", "grams_path", "part_bytes", "part_flops", "symmetric_gram",
           "triangle_gram"]

ORDERS = ("gradients", "grams")
PROJECTED_SLOWDOWN = 3.0
"""How much slower than a square GEMM a FLOP of the projected path runs (its GEMMs have
K = T or N = n_L: 10–17 GFLOP/s against 33–42 GFLOP/s for square ones on one core of the
2-core Xeon of ``bench models``, measured under load): the order choice weights its FLOPs
by this; :func:`part_flops` counts them unweighted."""


def symmetric_gram(a: Tensor, tiles: int = 6, min_tile: int = 512) -> Tensor:
    """a aᵀ for a [..., M, K], exactly symmetric. With M ≥ 2·min_tile, from the tiles on and
    above the diagonal (about (t + 1)/(2t) of the products for t tiles per side); smaller
    M in one product (tiles of a few rows against a long K run far below a GEMM's rate:
    measured 4× slower at M = 256, K = 147,584 in ``torch-ntk bench cnn_structured``)."""
    m = a.shape[-2]
    t = max(1, min(tiles, m // min_tile))
    bounds = [m * i // t for i in range(t + 1)]
    out = a.new_empty((*a.shape[:-2], m, m))
    for i in range(t):
        rows = slice(bounds[i], bounds[i + 1])
        for j in range(i, t):
            cols = slice(bounds[j], bounds[j + 1])
            block = torch.matmul(a[..., rows, :], a[..., cols, :].transpose(-1, -2))
            if j != i:
                out[..., rows, cols] = block
                out[..., cols, rows] = block.transpose(-1, -2)
            else:  # a diagonal tile rounds asymmetrically: mirror its upper triangle
                upper = torch.triu(block)
                out[..., rows, cols] = upper.add_(torch.triu(block, 1).transpose(-1, -2))
    return out


def triangle_gram(a: Tensor, blocks: int = 4, min_rows: int = 128) -> Tensor:
    """a aᵀ for a [..., M, K], exactly symmetric, from about (b + 1)/(2b) of the products:
    the M rows split into b = min(blocks, M // min_rows) blocks, block i multiplied by the
    rows from its own first row on (one GEMM of [M/b, K] × [K, M − i·M/b] each, wide
    enough to run at a GEMM's rate, unlike the small tiles of :func:`symmetric_gram`), the
    rest mirrored. b = 1 is one product, its upper triangle mirrored."""
    m = a.shape[-2]
    b = max(1, min(blocks, m // min_rows))
    bounds = [m * i // b for i in range(b + 1)]
    out = a.new_empty((*a.shape[:-2], m, m))
    for i in range(b):
        r0, r1 = bounds[i], bounds[i + 1]
        block = torch.matmul(a[..., r0:r1, :], a[..., r0:, :].transpose(-1, -2))
        upper = torch.triu(block[..., :, :r1 - r0])
        out[..., r0:r1, r0:r1] = upper.add_(torch.triu(block[..., :, :r1 - r0], 1)
                                            .transpose(-1, -2))
        if r1 < m:
            out[..., r0:r1, r1:] = block[..., :, r1 - r0:]
            out[..., r1:, r0:r1] = block[..., :, r1 - r0:].transpose(-1, -2)
    return out


def contract(j1, j2, mode: str) -> Tensor:
    """Σ_p J1[i, k, p] J2[j, k′, p] in ``mode`` ("trace": the mean over k = k′); J [n, n_L, p],
    or a list of such parts (concatenated along p: their contractions add).

    j2 None means j2 = j1: the result is then exactly symmetric and about half the
    products are computed (:func:`triangle_gram`).
    """
    if isinstance(j1, (list, tuple)):
        parts = [contract(a, None if j2 is None else b, mode)
                 for a, b in zip(j1, j1 if j2 is None else j2)]
        total = parts[0]
        for part in parts[1:]:
            total = total + part
        return total
    n1, nl, p = j1.shape
    if j2 is None:
        if mode == "trace":
            return triangle_gram(j1.reshape(n1, nl * p)).div_(nl)
        if mode == "diagonal":
            return triangle_gram(j1.transpose(0, 1)).permute(1, 2, 0)
        return triangle_gram(j1.reshape(n1 * nl, p)).view(n1, nl, n1, nl).permute(0, 2, 1, 3)
    n2 = j2.shape[0]
    if mode == "trace":
        return torch.mm(j1.reshape(n1, nl * p), j2.reshape(n2, nl * p).t()).div_(nl)
    if mode == "diagonal":
        return torch.bmm(j1.transpose(0, 1), j2.transpose(0, 1).transpose(1, 2)).permute(1, 2, 0)
    full = torch.mm(j1.reshape(n1 * nl, p), j2.reshape(n2 * nl, p).t())
    return full.view(n1, nl, n2, nl).permute(0, 2, 1, 3)



@dataclass
class Outer:
    """J_k = Σ_t d_kgt ⊗ a_gt per group: a [N, G, T, A], d [N, n_L, G, T, D]."""

    a: Tensor
    d: Tensor

    def gradient(self) -> Tensor:
        """J [N, n_L, G·D·A]."""
        n, nl = self.d.shape[:2]
        return torch.einsum("nkgtd,ngta->nkgda", self.d, self.a).reshape(n, nl, -1)

    def gram_a(self, other: "Outer", r0: int, r1: int) -> Tensor:
        """⟨a_gt, a′_gs⟩ [G, r, T, N2, S] for rows r0:r1 (one batched GEMM)."""
        a1, a2 = self.a[r0:r1], other.a
        (r, g, t, _), (n2, s) = a1.shape, a2.shape[::2]
        left = a1.transpose(0, 1).reshape(g, r * t, -1)
        right = a2.transpose(0, 1).reshape(g, n2 * s, -1)
        return torch.bmm(left, right.transpose(1, 2)).view(g, r, t, n2, s)

    def sizes(self) -> tuple[int, int, int, int]:
        """(G, T, A, D)."""
        return self.a.shape[1], self.a.shape[2], self.a.shape[3], self.d.shape[-1]


@dataclass
class Tokens:
    """An embedding's J_k = Σ_t d_kt ⊗ one-hot(id_t): ids [N, T] (int64), d [N, n_L, T, D]."""

    ids: Tensor
    d: Tensor
    vocab: int

    def gradient(self) -> Tensor:
        """J [N, n_L, V·D] by a scatter-add of the cotangents into their tokens' rows."""
        n, nl, t, dd = self.d.shape
        j = self.d.new_zeros((n, nl, self.vocab, dd))
        index = self.ids.view(n, 1, t, 1).expand(n, nl, t, dd)
        return j.scatter_add_(2, index, self.d).reshape(n, nl, -1)

    def gram_a(self, other: "Tokens", r0: int, r1: int) -> Tensor:
        """[id_t = id′_s] [1, r, T, N2, S]."""
        eq = self.ids[r0:r1, :, None, None] == other.ids[None, None, :, :]
        return eq.to(self.d.dtype).unsqueeze(0)

    def sizes(self) -> tuple[int, int, int, int]:
        return 1, self.ids.shape[1], self.vocab, self.d.shape[-1]


@dataclass
class Direct:
    """The per-sample Jacobian itself: j [N, n_L, p]."""

    j: Tensor

    def gradient(self) -> Tensor:
        return self.j


Part = Union[Outer, Tokens, Direct]


def part_flops(part: Part, order: str, n1: int, n2: int, n_out: int, mode: str) -> float:
    """Floating-point operations of one part's contraction for an n1 × n2 block.

    Direct: 2·n1·n2·c·p (c = n_L² in "full", else n_L). Outer (G, T, A, D), p = G·D·A:
    "gradients" 2·(n1 + n2)·n_L·G·T·D·A + 2·n1·n2·c·p; "grams" by the cotangent Gram
    2·n1·n2·G·T²·(A + c·D) plus n1·n2·c·G·T² for the products, or projected ("full",
    :func:`grams_path`) 2·n1·n2·G·T²·A + 2·n1·n2·G·T·n_L·D·(T + n_L) (Tokens: the Gram of
    ids is T² comparisons, the scatter-add n_L·T·D per sample). For x′ = x every order
    computes about half of it (the triangle: :func:`triangle_gram`, ``_ghost``); the model
    counts the square, the same factor for every order.
    """
    c = n_out * n_out if mode == "full" else n_out
    if isinstance(part, Direct):
        return 2.0 * n1 * n2 * c * part.j.shape[-1]
    g, t, a, d = part.sizes()
    if order == "gradients":
        form = (n1 + n2) * n_out * t * d * (1 if isinstance(part, Tokens) else 2 * g * a)
        return form + 2.0 * n1 * n2 * c * g * d * a
    gram_a = n1 * n2 * t * t * (1 if isinstance(part, Tokens) else 2 * g * a)
    if grams_path(part, mode) == "projected":
        return gram_a + 2.0 * n1 * n2 * g * t * n_out * d * (t + n_out)
    return gram_a + n1 * n2 * g * t * t * c * (2 * d + 1)


def part_bytes(part: Part, order: str, itemsize: int, n_out: Optional[int] = None) -> int:
    """Bytes of one sample's factors of a part in ``order`` (for ``n_out`` outputs: by
    default those it holds)."""
    if isinstance(part, Direct):
        return part.j[0, 0].numel() * (n_out or part.j.shape[1]) * itemsize
    g, t, a, d = part.sizes()
    n_out = n_out or part.d.shape[1]
    if order == "gradients":
        return n_out * g * d * a * itemsize
    return (g * t * (1 if isinstance(part, Tokens) else a) + n_out * g * t * d) * itemsize


class ModuleFactors:
    """One module's factors for a batch: its parts and the order they are contracted in.

    ``order`` "grams": Outer/Tokens parts by :func:`_ghost`; "gradients": every part's
    per-sample Jacobian, formed when contracted (in slices of the output features that fit
    the workspace) unless it is held as a :class:`Direct` part already (:meth:`stored`
    keeps whichever layout is smaller). ``ntk(other, mode)`` is the module's Θ in
    :func:`torch_ntk.empirical_ntk`'s mode shapes (other None: x′ = x).
    """

    def __init__(self, parts: list, order: str = "grams"):
        if order not in ORDERS:
            raise ValueError(f"ModuleFactors: order must be one of {ORDERS}; got {order!r}")
        self.parts, self.order = list(parts), order

    def __iter__(self):
        """Its tensors (for memory accounting)."""
        for p in self.parts:
            yield from ((p.j,) if isinstance(p, Direct) else
                        (p.ids, p.d) if isinstance(p, Tokens) else (p.a, p.d))

    def in_order(self, order: str) -> "ModuleFactors":
        """These factors in ``order`` ("gradients": every part materialized)."""
        if order not in ORDERS:
            raise ValueError(f"ModuleFactors: order must be one of {ORDERS}; got {order!r}")
        if order == self.order and (order == "grams" or all(
                isinstance(p, Direct) for p in self.parts)):
            return self
        if order == "grams":
            if any(isinstance(p, Direct) for p in self.parts) and self.order == "gradients":
                raise ValueError("ModuleFactors: per-sample gradients cannot go back to the "
                                 "grams layout")
            return ModuleFactors(self.parts, "grams")
        return ModuleFactors([Direct(p.gradient()) for p in self.parts], "gradients")

    def stored(self, order: str, itemsize: int, n_out: Optional[int] = None
               ) -> "ModuleFactors":
        """For contraction in ``order``: "gradients" materializes a part's Jacobian now only
        where it is smaller than its factors (it is formed slice by slice when contracted
        otherwise), judged for ``n_out`` outputs (default: those held; the same choice
        for every group of outputs of a call)."""
        if order == "grams":
            return self.in_order("grams")
        parts = [Direct(p.gradient()) if not isinstance(p, Direct) and
                 part_bytes(p, "gradients", itemsize, n_out)
                 <= part_bytes(p, "grams", itemsize, n_out)
                 else p for p in self.parts]
        return ModuleFactors(parts, "gradients")

    def allocated(self, n_out: int) -> "ModuleFactors":
        """Empty factors like these for all ``n_out`` outputs (the input side, a and ids,
        shared), for :meth:`write` to fill group by group."""
        def grown(t: Tensor) -> Tensor:
            return t.new_empty((t.shape[0], n_out, *t.shape[2:]))

        parts = [Direct(grown(p.j)) if isinstance(p, Direct) else
                 Tokens(p.ids, grown(p.d), p.vocab) if isinstance(p, Tokens) else
                 Outer(p.a, grown(p.d)) for p in self.parts]
        return ModuleFactors(parts, self.order)

    def write(self, group: "ModuleFactors", k0: int, k1: int) -> "ModuleFactors":
        """Copy the factors of outputs k0:k1 (``group``, the same call's) into these."""
        for p, q in zip(self.parts, group.parts):
            (p.j if isinstance(p, Direct) else p.d)[:, k0:k1].copy_(
                q.j if isinstance(q, Direct) else q.d)
        return self

    @staticmethod
    def summed(calls: list["ModuleFactors"]) -> "ModuleFactors":
        """The factors of a module called several times in one forward (weight sharing):
        its per-sample Jacobian is the sum over calls, J = Σ_c J_c, so Θ has every cross
        term Σ_{c,c′} J_c J′_c′ᵀ; the parts are materialized and added."""
        grads = [f.in_order("gradients").parts for f in calls]
        return ModuleFactors([Direct(sum(p[i].j for p in grads)) for i in range(len(grads[0]))],
                             "gradients")

    def flops(self, order: str, n1: int, n2: int, mode: str) -> float:
        return sum(part_flops(p, order, n1, n2, _n_out(p), mode) for p in self.parts)

    def bytes_per_sample(self, order: str, itemsize: int) -> int:
        """Bytes per sample of the factors as :meth:`stored` keeps them for ``order``."""
        if order == "grams":
            return sum(part_bytes(p, "grams", itemsize) for p in self.parts)
        return sum(min(part_bytes(p, "gradients", itemsize), part_bytes(p, "grams", itemsize))
                   for p in self.parts)

    def cost(self, order: str, n1: int, n2: int, mode: str) -> float:
        """:meth:`flops`, the projected path's weighted by :data:`PROJECTED_SLOWDOWN`."""
        return sum(part_flops(p, order, n1, n2, _n_out(p), mode) * (
            PROJECTED_SLOWDOWN if order == "grams" and not isinstance(p, Direct)
            and grams_path(p, mode) == "projected" else 1.0) for p in self.parts)

    def choose(self, n1: int, n2: int, mode: str) -> str:
        """The cheaper order (by :meth:`cost`) for an n1 × n2 block."""
        fg, fd = (self.cost(o, n1, n2, mode) for o in ORDERS)
        return "gradients" if fg <= fd else "grams"

    def sample_norms(self) -> Tensor:
        """Θ_kk(x_i, x_i) of this module [N, n_L]: Σ_parts ‖J_ik‖² (per-sample squared
        gradient norms, ``mode="sample_diagonal"``), each part by :func:`_sample_norm`."""
        total = None
        for p in self.parts:
            part = _sample_norm(p)
            total = part if total is None else total.add_(part)
        return total

    def ntk(self, other: Optional["ModuleFactors"], mode: str,
            workspace_bytes: int = 1 << 28) -> Tensor:
        """Σ_parts J(x) J(x′)ᵀ in ``mode``; both sides in the same order."""
        total = None
        others = self.parts if other is None else other.parts
        for p1, p2 in zip(self.parts, others):
            q2 = None if other is None else p2
            if isinstance(p1, Direct) and (q2 is None or isinstance(q2, Direct)):
                part = contract(p1.j, None if q2 is None else q2.j, mode)
            elif self.order == "grams":
                part = _ghost(p1, q2, mode, workspace_bytes)
            else:
                part = _sliced_gradients(p1, q2, mode, workspace_bytes)
            total = part if total is None else total.add_(part)
        return total


def _sample_norm(part: Part, order: Optional[str] = None) -> Tensor:
    """‖J_ik‖² [N, n_L] of one part: Direct Σ_p J²; Outer/Tokens by the per-sample Grams
    Σ_g Σ_{t,s} ⟨a_gt, a_gs⟩ ⟨d_kgt, d_kgs⟩ ("grams", 2·n_L·G·T²·D + 2·G·T²·A FLOPs per
    sample) or by the gradient J_k = Σ_t d_kt ⊗ a_t squared ("gradients",
    2·n_L·G·T·D·A), ``order`` or else whichever is fewer."""
    if isinstance(part, Direct):
        return part.j.square().sum(-1)
    g, t, a, d = part.sizes()
    nl = _n_out(part)
    tokens = isinstance(part, Tokens)
    if order is None:
        grams = 2 * nl * g * t * t * d + (t * t if tokens else 2 * g * t * t * a)
        gradients = nl * t * d + nl * a * d if tokens else 2 * nl * g * t * d * a
        order = "gradients" if gradients <= grams else "grams"
    if order == "gradients":
        return part.gradient().square().sum(-1)
    dd = _grouped(part)  # [N, n_L, G, T, D]
    h = torch.matmul(dd, dd.transpose(-1, -2))  # [N, n_L, G, T, T]
    if tokens:
        ga = (part.ids[:, :, None] == part.ids[:, None, :]).to(dd.dtype).unsqueeze(1)
    else:
        ga = torch.matmul(part.a, part.a.transpose(-1, -2))  # [N, G, T, T]
    return (h * ga.unsqueeze(1)).sum((2, 3, 4))


def _sliced_gradients(p1: Part, p2: Optional[Part], mode: str, workspace_bytes: int) -> Tensor:
    """J(x) J(x′)ᵀ of a part whose Jacobian is formed here: over slices of its output
    features D (Θ is a sum over parameters, so the slices' Grams add) that keep both sides'
    J within ``workspace_bytes``; p2 None: x′ = x."""
    if isinstance(p1, Direct) or (p2 is not None and isinstance(p2, Direct)):
        j1 = p1.gradient()
        return contract(j1, None if p2 is None else p2.gradient(), mode)
    n = p1.d.shape[0] + (0 if p2 is None else p2.d.shape[0])
    g, _, a, d = p1.sizes()
    per_feature = n * _n_out(p1) * g * a * p1.d.element_size()
    step = max(1, min(d, workspace_bytes // max(1, per_feature)))
    total = None
    for d0 in range(0, d, step):
        j1 = _feature_slice(p1, d0, d0 + step).gradient()
        j2 = None if p2 is None else _feature_slice(p2, d0, d0 + step).gradient()
        part = contract(j1, j2, mode)
        total = part if total is None else total.add_(part)
    return total


def _feature_slice(part: Part, d0: int, d1: int) -> Part:
    """The part restricted to output features d0:d1 (its parameters' rows d0:d1)."""
    if isinstance(part, Tokens):
        return Tokens(part.ids, part.d[..., d0:d1], part.vocab)
    return Outer(part.a, part.d[..., d0:d1])


def _n_out(part: Part) -> int:
    return (part.j if isinstance(part, Direct) else part.d).shape[1]


def _grouped(part: Part) -> Tensor:
    """The cotangents as [N, n_L, G, T, D]."""
    return part.d.unsqueeze(2) if isinstance(part, Tokens) else part.d


def grams_path(part: Part, mode: str) -> str:
    """How the "grams" order contracts an Outer/Tokens part: "cotangent" (the cotangent Gram
    over position pairs, [N·n_L·T]² entries in "full") or "projected" (the cotangents
    weighted by the input Gram first, E = Σ_s ⟨a_t, a′_s⟩ d′_k′s, then ⟨d_kt, E⟩: about
    T·n_L·D·(T + n_L) products per pair instead of T²·n_L²·D), whichever
    :func:`part_flops` counts fewer; "projected" only in "full" (with one output per pair
    of samples the cotangent Gram is the cheaper)."""
    t, nl = part.sizes()[1], _n_out(part)
    return "projected" if mode == "full" and t + nl < t * nl else "cotangent"


def _rows(part: Part, c0: int) -> Part:
    """The part's samples c0: (the columns a symmetric row slice still needs)."""
    if isinstance(part, Tokens):
        return Tokens(part.ids[c0:], part.d[c0:], part.vocab)
    return Outer(part.a[c0:], part.d[c0:])


def _mirror(block: Tensor, mode: str) -> Tensor:
    """Θ(x′, x) from Θ(x, x′): the sample axes swapped (and k, k′ in "full")."""
    t = block.transpose(0, 1)
    return t.transpose(2, 3) if mode == "full" else t


def _ghost(p1: Part, p2: Optional[Part], mode: str, workspace_bytes: int) -> Tensor:
    """Σ_g Σ_{t,s} ⟨a_gt, a′_gs⟩ ⟨d_kgt, d′_k′gs⟩ in ``mode`` by the path of
    :func:`grams_path`, rows of x1 in slices whose transients fit ``workspace_bytes``;
    every product a batched GEMM (torch.einsum chose a path 7× slower on these shapes).

    p2 None (x′ = x): each row slice r0:r1 is contracted against the samples r0: only and
    its block beyond its own rows mirrored (Θ(x_j, x_i) = Θ(x_i, x_j)ᵀ in k, k′): about half
    the products of the full square."""
    symmetric = p2 is None
    q2 = p1 if symmetric else p2
    d1, d2 = _grouped(p1), _grouped(q2)
    n1, nl, g, t, dd = d1.shape
    n2, s = d2.shape[0], d2.shape[3]
    path = grams_path(p1, mode)
    if path == "projected":  # the Gram [G, T, N2, S] and the block [N2, n_L, n_L]
        per_row = n2 * (g * t * s + 2 * nl * nl) * d1.element_size()
    else:
        per_row = n2 * g * t * s * (2 + 2 * channels(mode, nl)) * d1.element_size()
    rows = max(1, min(n1, workspace_bytes // max(1, per_row)))
    out = d1.new_empty({"full": (n1, n2, nl, nl), "trace": (n1, n2),
                        "diagonal": (n1, n2, nl)}[mode])
    for r0 in range(0, n1, rows):
        r1 = min(n1, r0 + rows)
        c0 = r0 if symmetric else 0
        other = _rows(q2, c0) if c0 else q2
        ga = p1.gram_a(other, r0, r1)  # [G, r, T, M, S], M = N2 − c0
        x, y = d1[r0:r1], d2[c0:]
        part = (_projected(x, y, ga, symmetric) if path == "projected"
                else _cotangent_gram(x, y, ga, mode))
        out[r0:r1, c0:] = part
        if symmetric and r1 < n2:
            out[r1:, r0:r1] = _mirror(part[:, r1 - r0:], mode)
    return out


def _cotangent_gram(x: Tensor, y: Tensor, ga: Tensor, mode: str) -> Tensor:
    """Rows x [r, n_L, G, T, D] against y [M, n_L, G, S, D] with the input Gram ga
    [G, r, T, M, S]: the cotangent Gram over position pairs, times ga, summed."""
    r, nl, g, t, dd = x.shape
    m, s = y.shape[0], y.shape[3]
    if mode == "trace":  # Σ_k folded into the GEMM: [G, M·S, n_L·D]
        right = y.permute(2, 0, 3, 1, 4).reshape(g, m * s, nl * dd).transpose(1, 2)
        gd = torch.bmm(x.permute(2, 0, 3, 1, 4).reshape(g, r * t, nl * dd), right)
        return (gd.view(g, r, t, m, s) * ga).sum((0, 2, 4)).div_(nl)
    if mode == "diagonal":  # batched over (g, k): [G·n_L, M·S, D]
        right = y.permute(2, 1, 0, 3, 4).reshape(g * nl, m * s, dd).transpose(1, 2)
        gd = torch.bmm(x.permute(2, 1, 0, 3, 4).reshape(g * nl, r * t, dd), right)
        part = (gd.view(g, nl, r, t, m, s) * ga.unsqueeze(1)).sum((0, 3, 5))
        return part.permute(1, 2, 0)
    right = y.permute(2, 0, 1, 3, 4).reshape(g, m * nl * s, dd).transpose(1, 2)
    gd = torch.bmm(x.permute(2, 0, 1, 3, 4).reshape(g, r * nl * t, dd), right)
    gd = gd.view(g, r, nl, t, m, nl, s) * ga.view(g, r, 1, t, m, 1, s)
    return gd.sum((0, 3, 6)).permute(0, 2, 1, 3)


def _projected(x: Tensor, y: Tensor, ga: Tensor, diagonal: bool = False,
               tile: int = 1 << 20) -> Tensor:
    """"full" [r, M, n_L, n_L] of rows x [r, n_L, G, T, D] against y [M, n_L, G, S, D],
    per group g and square tile of rows i and columns j: F[i, k, j, s] = Σ_t ga[g, i, t, j, s]
    x[i, k, g, t] (GEMMs of [M·S, T] × [T, D] written in the layout the next one reads),
    then Θ[i, j, k, k′] = Σ_s ⟨F[i, k, j, s], y[j, k′, g, s]⟩ (a GEMM per j of
    [r·n_L, S·D] × [S·D, n_L]). The tiles keep F within ``tile`` numbers, so that it stays
    in cache: both GEMMs are thin (K = T, N = n_L) and run below the rate of a square one,
    which :data:`PROJECTED_SLOWDOWN` states to the order choice.

    diagonal: y's first r samples are x's (a symmetric block): the tiles left of the
    diagonal are not computed but mirrored from those right of it."""
    r, nl, g, t, dd = x.shape
    m, s = y.shape[0], y.shape[3]
    out = x.new_zeros((r, m, nl, nl))
    b = max(1, int(math.sqrt(tile / (nl * s * dd))))  # F has b²·n_L·S·D numbers
    for h in range(g):
        gram = ga[h].reshape(r, t, m, s)
        right = y[:, :, h].reshape(m, nl, s * dd).transpose(1, 2)  # [M, S·D, n_L]
        for i0 in range(0, r, b):
            i1 = min(r, i0 + b)
            xi = x[i0:i1, :, h]  # [bi, n_L, T, D]
            for j0 in range(i0 if diagonal else 0, m, b):
                j1 = min(m, j0 + b)
                lhs = gram[i0:i1, :, j0:j1].reshape(i1 - i0, t, -1).transpose(1, 2)
                f = torch.matmul(lhs.unsqueeze(1), xi)  # [bi, n_L, bj·S, D]
                left = f.view((i1 - i0) * nl, j1 - j0, s * dd).transpose(0, 1)
                block = torch.bmm(left, right[j0:j1]).view(j1 - j0, i1 - i0, nl, nl)
                out[i0:i1, j0:j1] += block.transpose(0, 1)
    if diagonal:  # Θ(x_j, x_i) = Θ(x_i, x_j)ᵀ for the tiles skipped (j-tile before i-tile)
        for i0 in range(b, r, b):
            i1 = min(r, i0 + b)
            out[i0:i1, :i0] = _mirror(out[:i0, i0:i1], "full")
    return out
