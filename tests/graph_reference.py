"""An independent numpy recursion of the infinite-width kernels of graphs (the tests'
reference; none of torch_ntk is imported).

A state is the (K, T) of the three pairs of one input pair (a, b): ``ab`` (the kernel
entry), ``aa`` and ``bb`` (the self pairs, whose diagonals are the variances an activation
or a normalization reads), each a pair of position matrices [P, P] (P = H·W; an MLP, or
after a readout, has P = 1). Every map is written from its formula:

- conv (stride 1, zero padding, NTK parametrization σ_w, σ_b): the same tap q on both sides,
  A(M) = (1/|Q|) Σ_q S_q M S_qᵀ with S_q [P_out, P_in] the shift of tap q (zero outside the
  image); K ← σ_w²·A(K) + σ_b², T ← σ_w²·A(K) + σ_b² + σ_w²·A(T);
- dense: the conv of a 1×1 image; relu, erf: the arc-cosine / arcsine closed forms;
- pools: a matrix B [P_out, P_in] of the window weights (1/|B| or 1/n_valid), K ← B K Bᵀ
  (built from the definition, and checked against F.avg_pool2d by the tests);
- global average / sum: the mean / sum of all entries; flatten: the mean of the diagonal;
- add: Σ c_i²·(K_i, T_i); concat: Σ (w_i/Σw)·(K_i, T_i);
- layer norm: K/√((q_a + ε)(q_b + ε)), T likewise, + K_LN + 1 with affine; q the
  variance at each position ("channels"), or its mean over positions ("positions"); a relu
  right after an affine one: T ← E[φ′φ′]·(T − K) + E[φφ] (the gain's term u·v per feature).
"""

from __future__ import annotations

import math

import numpy as np

PAIRS = ("ab", "aa", "bb")


def inputs(xa: np.ndarray, xb: np.ndarray) -> dict:
    """The input state of images [C, H, W] (or vectors [n]: P = 1)."""
    def gram(u, v):
        u, v = u.reshape(u.shape[0], -1), v.reshape(v.shape[0], -1)
        k = u.T @ v / u.shape[0]
        return k, np.zeros_like(k)
    xa = xa if xa.ndim > 1 else xa[:, None]
    xb = xb if xb.ndim > 1 else xb[:, None]
    return {"ab": gram(xa, xb), "aa": gram(xa, xa), "bb": gram(xb, xb)}


def _each(state: dict, fn) -> dict:
    return {p: fn(p, *state[p]) for p in PAIRS}


def shifts(size: tuple, k: int, pad: int) -> list:
    """S_q [P_out, P_in] for each tap q of a k×k window, stride 1, zero padding ``pad``."""
    h, w = size
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    out = []
    for qh in range(k):
        for qw in range(k):
            s = np.zeros((ho * wo, h * w))
            for i in range(ho):
                for j in range(wo):
                    r, c = i + qh - pad, j + qw - pad
                    if 0 <= r < h and 0 <= c < w:
                        s[i * wo + j, r * w + c] = 1.0
            out.append(s)
    return out


def conv(state: dict, size: tuple, k: int, pad: int, ws: float, bs: float) -> dict:
    taps = shifts(size, k, pad)

    def a(m):
        return sum(s @ m @ s.T for s in taps) / len(taps)

    def one(_, kk, tt):
        ak = a(kk)
        return ws ** 2 * ak + bs ** 2, ws ** 2 * ak + bs ** 2 + ws ** 2 * a(tt)
    return _each(state, one)


def dense(state: dict, ws: float, bs: float) -> dict:
    return _each(state, lambda _, kk, tt: (ws ** 2 * kk + bs ** 2,
                                           ws ** 2 * kk + bs ** 2 + ws ** 2 * tt))


def _variances(state: dict, pair: str):
    qa, qb = np.diag(state["aa"][0]), np.diag(state["bb"][0])
    return {"ab": (qa, qb), "aa": (qa, qa), "bb": (qb, qb)}[pair]


def activation(state: dict, name: str) -> dict:
    """E[φφ], E[φ′φ′]·T; right after an affine layer norm (``state["gain"]``) the gain's
    per-feature term u·v gives E[φ′(u)φ′(v)uv] = E[φφ] (relu: φ′(u)u = φ(u)) in place of
    E[φ′φ′]·K."""
    def one(pair, kk, tt):
        qa, qb = _variances(state, pair)
        q1, q2 = qa[:, None], qb[None, :]
        if name == "relu":
            n = np.sqrt(q1 * q2)
            cos = np.clip(kk / n, -1.0, 1.0)
            theta = np.arccos(cos)
            e = n * (np.sin(theta) + (math.pi - theta) * cos) / (2 * math.pi)
            d = (math.pi - theta) / (2 * math.pi)
        elif name == "erf":
            den = (1 + 2 * q1) * (1 + 2 * q2)
            e = 2 / math.pi * np.arcsin(2 * kk / np.sqrt(den))
            d = 4 / math.pi / np.sqrt(den - 4 * kk ** 2)
        else:
            raise ValueError(name)
        if state.get("gain"):
            assert name == "relu"
            return e, d * (tt - kk) + e
        return e, d * tt
    return _each(state, one)


def pool_matrix(size: tuple, k: int, stride: int, pad: int, include_pad: bool) -> np.ndarray:
    """B [P_out, P_in] of F.avg_pool2d(k, stride, pad, count_include_pad=include_pad)."""
    h, w = size
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    b = np.zeros((ho * wo, h * w))
    for i in range(ho):
        for j in range(wo):
            inside = [(r, c) for r in range(i * stride - pad, i * stride - pad + k)
                      for c in range(j * stride - pad, j * stride - pad + k)
                      if 0 <= r < h and 0 <= c < w]
            divisor = k * k if include_pad else len(inside)
            for r, c in inside:
                b[i * wo + j, r * w + c] = 1.0 / divisor
    return b


def pool(state: dict, matrix: np.ndarray) -> dict:
    return _each(state, lambda _, kk, tt: (matrix @ kk @ matrix.T, matrix @ tt @ matrix.T))


def global_mean(state: dict) -> dict:
    return _each(state, lambda _, kk, tt: (np.full((1, 1), kk.mean()), np.full((1, 1), tt.mean())))


def global_sum(state: dict) -> dict:
    return _each(state, lambda _, kk, tt: (np.full((1, 1), kk.sum()), np.full((1, 1), tt.sum())))


def flatten(state: dict) -> dict:
    return _each(state, lambda _, kk, tt: (np.full((1, 1), np.diag(kk).mean()),
                                           np.full((1, 1), np.diag(tt).mean())))


def add(states: list, coefficients: list) -> dict:
    return {p: (sum(c * c * s[p][0] for c, s in zip(coefficients, states)),
                sum(c * c * s[p][1] for c, s in zip(coefficients, states))) for p in PAIRS}


def concat(states: list, widths: list) -> dict:
    total = float(sum(widths))
    return {p: (sum(w / total * s[p][0] for w, s in zip(widths, states)),
                sum(w / total * s[p][1] for w, s in zip(widths, states))) for p in PAIRS}


def layer_norm(state: dict, eps: float, affine: bool, over: str = "channels") -> dict:
    def one(pair, kk, tt):
        qa, qb = _variances(state, pair)
        if over == "positions":
            qa, qb = np.full_like(qa, qa.mean()), np.full_like(qb, qb.mean())
        scale = 1.0 / np.sqrt((qa[:, None] + eps) * (qb[None, :] + eps))
        kn, tn_ = kk * scale, tt * scale
        return kn, (tn_ + kn + 1.0 if affine else tn_)
    return {**_each(state, one), "gain": affine}


def kernels(forward, x1: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(NNGP, NTK) [N1, N2]: ``forward(state) -> state`` run on every pair, its (1×1) ``ab``."""
    nngp, ntk = np.zeros((len(x1), len(x2))), np.zeros((len(x1), len(x2)))
    for i, a in enumerate(x1):
        for j, b in enumerate(x2):
            k, t = forward(inputs(a, b))["ab"]
            nngp[i, j], ntk[i, j] = float(k.item()), float(t.item())
    return nngp, ntk
