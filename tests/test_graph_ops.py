"""The cnn_kernels op on graph programs (skip registers, LayerNorm, padded and global sum
pools) against an independent float64 reference written here.

The reference holds one joint matrix over every (sample, position) of x1 and x2 stacked,
K [N P, N P] and Θ likewise (the three pair kinds (x, x), (x′, x′), (x, x′) are its
blocks), and writes each step as matrix algebra: a convolution tap q is a block-diagonal
selection matrix S_q, A(K) = (1/|Q|) Σ_q S_q K S_qᵀ; a pool is B K Bᵀ with B holding the
window weights (1/n_p at the valid positions of window p); LayerNorm divides K by
√((q_i + ε)(q_j + ε)) with q the diagonal of K (or its per-sample mean over positions);
ReLU is the arc-cosine closed form on (diag K_i, diag K_j, K_ij) (right after an affine
LayerNorm its gain's term u·u′ makes Θ ← E[φ′φ′]·(Θ − K) + E[φφ], φ′(u)·u = φ(u) for ReLU);
a join is the weighted sum of the stored matrices. The op's result is the [N1, N2] block of the last state.
"""

import math

import numpy as np
import pytest
import torch

from torch_ntk import ops

from conftest import CUDA, rel_err

CONV, ACT, POOL, GAP, FLAT, DENSE, PUSH, LOAD, JOIN, LN, POOL_PAD, GSUM = range(12)
RELU = 1
TOL64 = 1e-10
TOL32 = 2e-5


# ----------------------------------------------------------------------------- steps
# A network is a list of tuples: ("conv", k, pad, wv, bv), ("relu",), ("dense", wv, bv),
# ("flatten",), ("gap",), ("gsum",), ("pool_pad", k, s, pad, include), ("ln", over, affine,
# eps), ("push", slot), ("load", slot), ("join", slot, a, b). NTK parametrization:
# tw = wv, tb = bv.

def encode(net):
    """(codes, ints, floats) of the op's program."""
    codes, ints, floats = [], [], []
    for step in net:
        kind = step[0]
        if kind == "conv":
            _, k, pad, wv, bv = step
            codes.append(CONV)
            ints += [k, k, 1, 1, 1, 1, pad, pad, pad, pad, 0]
            floats += [wv, bv, wv, bv]
        elif kind in ("relu", "tanh"):
            codes.append(ACT)
            ints.append(RELU if kind == "relu" else 6)
            floats.append(0.0)
        elif kind == "dense":
            codes.append(DENSE)
            floats += [step[1], step[2], step[1], step[2]]
        elif kind == "flatten":
            codes.append(FLAT)
        elif kind == "gap":
            codes.append(GAP)
        elif kind == "gsum":
            codes.append(GSUM)
        elif kind == "pool_pad":
            _, k, s, pad, include = step
            codes.append(POOL_PAD)
            ints += [k, k, s, s, pad, pad, int(include)]
        elif kind == "ln":
            _, over, affine, eps = step
            codes.append(LN)
            ints += [over, int(affine)]
            floats.append(eps)
        elif kind in ("push", "load"):
            codes.append(PUSH if kind == "push" else LOAD)
            ints.append(step[1])
        elif kind == "join":
            codes.append(JOIN)
            ints.append(step[1])
            floats += [step[2], step[3]]
        else:
            raise AssertionError(kind)
    return codes, ints, floats


def tap_matrix(h, w, k, pad, qh, qw):
    """S_q [P_out, P_in] of a stride-1 k x k convolution with zero padding `pad`."""
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    S = np.zeros((ho * wo, h * w))
    for a in range(ho):
        for b in range(wo):
            r, c = a + qh - pad, b + qw - pad
            if 0 <= r < h and 0 <= c < w:
                S[a * wo + b, r * w + c] = 1.0
    return S, ho, wo


def pool_matrix(h, w, k, s, pad, include):
    """B [P_out, P_in] of a padded k x k average pool (torch.nn.AvgPool2d's windows)."""
    ho, wo = (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1
    B = np.zeros((ho * wo, h * w))
    for a in range(ho):
        for b in range(wo):
            rows = [r for r in range(a * s - pad, a * s - pad + k) if 0 <= r < h]
            cols = [c for c in range(b * s - pad, b * s - pad + k) if 0 <= c < w]
            n = k * k if include else len(rows) * len(cols)
            for r in rows:
                for c in cols:
                    B[a * wo + b, r * w + c] = 1.0 / n
    return B, ho, wo


def relu_maps(K):
    """E[φ(u)φ(v)] and E[φ′(u)φ′(v)] of ReLU entrywise, (u, v) ~ N(0, [[d_i, K_ij], [., d_j]])."""
    d = np.diag(K)
    norm = np.sqrt(np.outer(d, d))
    cos = np.clip(np.divide(K, norm, out=np.zeros_like(K), where=norm > 0), -1.0, 1.0)
    theta = np.arccos(cos)
    e_phi = norm / (2 * math.pi) * (np.sin(theta) + (math.pi - theta) * cos)
    e_dphi = (math.pi - theta) / (2 * math.pi)
    return e_phi, e_dphi


def reference(net, x1, x2=None):
    """(NNGP [N1, N2], NTK [N1, N2]) of `net` by the joint-matrix reference, float64."""
    x1 = np.asarray(x1, dtype=np.float64)
    xs = x1 if x2 is None else np.concatenate([x1, np.asarray(x2, dtype=np.float64)])
    n, c0, h, w = xs.shape
    feats = xs.reshape(n, c0, h * w).transpose(0, 2, 1).reshape(n * h * w, c0)
    K = feats @ feats.T / c0
    T = np.zeros_like(K)
    slots = {}
    eye = np.eye(n)
    gain = False  # right after an affine LayerNorm (kept in a slot by push/load)
    for step in net:
        kind = step[0]
        P = h * w
        gain_in, gain = gain, False
        if kind == "conv":
            _, k, pad, wv, bv = step
            AK, AT = 0.0, 0.0
            for qh in range(k):
                for qw in range(k):
                    S, ho, wo = tap_matrix(h, w, k, pad, qh, qw)
                    S = np.kron(eye, S)
                    AK = AK + S @ K @ S.T
                    AT = AT + S @ T @ S.T
            AK, AT = AK / (k * k), AT / (k * k)
            K, T = wv * AK + bv, wv * AK + bv + wv * AT
            h, w = ho, wo
        elif kind == "dense":
            _, wv, bv = step
            K, T = wv * K + bv, wv * K + bv + wv * T
        elif kind == "relu":
            e_phi, e_dphi = relu_maps(K)
            K, T = e_phi, (e_dphi * (T - K) + e_phi if gain_in else e_dphi * T)
        elif kind in ("gap", "gsum", "pool_pad", "flatten"):
            if kind == "flatten":
                idx = np.arange(n)[:, None] * P + np.arange(P)[None, :]
                K = np.array([[K[idx[i], idx[j]].sum() / P for j in range(n)] for i in range(n)])
                T = np.array([[T[idx[i], idx[j]].sum() / P for j in range(n)] for i in range(n)])
                h = w = 1
                continue
            if kind == "pool_pad":
                B, h, w = pool_matrix(h, w, *step[1:])
            else:
                B = np.ones((1, P)) / (P if kind == "gap" else 1.0)
                h = w = 1
            B = np.kron(eye, B)
            K, T = B @ K @ B.T, B @ T @ B.T
        elif kind == "ln":
            _, over, affine, eps = step
            d = np.diag(K).copy()
            if over == 1:
                d = np.repeat(d.reshape(n, P).mean(1), P)
            s = 1.0 / np.sqrt(np.outer(d + eps, d + eps))
            K, T = K * s, T * s
            if affine:
                T = T + K + 1.0
                gain = True
        elif kind == "push":
            slots[step[1]] = (K.copy(), T.copy(), h, w, gain_in)
            gain = gain_in
        elif kind == "load":
            K, T, h, w, gain = (a.copy() if isinstance(a, np.ndarray) else a
                                for a in slots[step[1]])
        elif kind == "join":
            Ks, Ts, hs, ws, _ = slots[step[1]]
            assert (hs, ws) == (h, w)
            K, T = step[2] * K + step[3] * Ks, step[2] * T + step[3] * Ts
        else:
            raise AssertionError(kind)
    n1 = x1.shape[0]
    if x2 is None:
        return K, T
    return K[:n1, n1:], T[:n1, n1:]


def run_op(net, x1, x2=None, **kw):
    codes, ints, floats = encode(net)
    empty = torch.zeros(0, dtype=x1.dtype, device=x1.device)
    return ops.cnn_kernels(x1, x2, codes, ints, floats, empty, empty, **kw)


# ----------------------------------------------------------------------------- networks

def residual_mlp(shortcut, alpha=1.0, beta=1.0):
    """x → dense → [α·h + β·f(h)] x 2 → relu → dense, f = dense(relu(dense(relu(.))));
    shortcut "identity" or "projection" (a dense on h)."""
    net = [("flatten",), ("dense", 1.6, 0.1)]
    for _ in range(2):
        net += [("push", 0), ("relu",), ("dense", 1.9, 0.05), ("relu",), ("dense", 1.4, 0.2)]
        if shortcut == "identity":
            net += [("join", 0, beta ** 2, alpha ** 2)]
        else:
            net += [("push", 1), ("load", 0), ("dense", 0.8, 0.3), ("join", 1, alpha ** 2,
                                                                     beta ** 2)]
    return net + [("relu",), ("dense", 1.2, 0.1)]


def residual_cnn(ln=None, pool=None):
    """conv → two residual blocks (h + conv(relu(conv(relu(h))))) → GAP → dense."""
    net = [("conv", 3, 1, 1.7, 0.1)]
    for _ in range(2):
        net += [("push", 0), ("relu",), ("conv", 3, 1, 1.9, 0.05), ("relu",),
                ("conv", 3, 1, 1.5, 0.2), ("join", 0, 1.0, 1.0)]
        if ln is not None:
            net += [ln]
    if pool is not None:
        net += [pool]
    return net + [("relu",), ("gap",), ("dense", 1.3, 0.1)]


def concat_mlp():
    """[dense_a(x) (width 3), relu→dense_b(relu(dense(x))) (width 5)] concatenated → relu → dense."""
    return [("flatten",), ("dense", 1.5, 0.1), ("push", 0), ("dense", 2.0, 0.0), ("push", 1),
            ("load", 0), ("relu",), ("dense", 1.7, 0.3), ("join", 1, 5 / 8, 3 / 8), ("relu",),
            ("dense", 1.1, 0.2)]


def ln_mlp(affine):
    return [("flatten",), ("dense", 2.5, 0.1), ("ln", 0, affine, 1e-5), ("relu",),
            ("dense", 1.4, 0.2), ("ln", 0, affine, 0.3), ("relu",), ("dense", 1.3, 0.1)]


def ln_cnn(over, affine):
    return [("conv", 3, 1, 2.0, 0.1), ("ln", over, affine, 1e-3), ("relu",),
            ("conv", 3, 0, 1.5, 0.2), ("ln", over, affine, 0.0), ("relu",), ("gap",),
            ("dense", 1.3, 0.1)]


def pooled_cnn(k, s, pad, include, tail="gap"):
    return [("conv", 3, 1, 1.8, 0.1), ("relu",), ("pool_pad", k, s, pad, include),
            ("conv", 2, 0, 1.5, 0.2), ("relu",), (tail,), ("dense", 1.3, 0.1)]


MLP_NETS = {
    "residual identity": residual_mlp("identity"),
    "residual identity alpha beta": residual_mlp("identity", alpha=0.7, beta=1.3),
    "residual projection": residual_mlp("projection"),
    "residual projection alpha beta": residual_mlp("projection", alpha=1.2, beta=0.5),
    "concat": concat_mlp(),
    "layernorm": ln_mlp(False),
    "layernorm affine": ln_mlp(True),
}
CNN_NETS = {
    "two-block residual gap": residual_cnn(),
    "residual + layernorm channels": residual_cnn(ln=("ln", 0, False, 1e-5)),
    "layernorm channels": ln_cnn(0, False),
    "layernorm channels affine": ln_cnn(0, True),
    "layernorm channels_positions": ln_cnn(1, False),
    "layernorm channels_positions affine": ln_cnn(1, True),
    "avgpool pad include": pooled_cnn(3, 2, 1, True),
    "avgpool pad exclude": pooled_cnn(3, 2, 1, False),
    "avgpool pad exclude stride 1": pooled_cnn(3, 1, 1, False),
    "global sum pool": pooled_cnn(2, 2, 0, True, tail="gsum"),
    "residual + padded pool": residual_cnn(pool=("pool_pad", 3, 2, 1, False)),
}


def inputs(kind, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "mlp":
        x1, x2 = torch.randn(5, 7, 1, 1, generator=g), torch.randn(4, 7, 1, 1, generator=g)
    else:
        x1, x2 = torch.randn(3, 2, 5, 5, generator=g), torch.randn(2, 2, 5, 5, generator=g)
    return x1.to(dtype=dtype, device=device), x2.to(dtype=dtype, device=device)


CASES = [("mlp", k, v) for k, v in MLP_NETS.items()] + [("cnn", k, v) for k, v in CNN_NETS.items()]


@pytest.mark.parametrize("kind,name,net", CASES, ids=[c[1] for c in CASES])
@pytest.mark.parametrize("symmetric", [False, True], ids=["x2", "x2=None"])
def test_graph_program_float64(kind, name, net, symmetric):
    x1, x2 = inputs(kind)
    nngp, ntk = run_op(net, x1, None if symmetric else x2)
    ref_nngp, ref_ntk = reference(net, x1.numpy(), None if symmetric else x2.numpy())
    assert rel_err(nngp, torch.from_numpy(ref_nngp)) < TOL64
    assert rel_err(ntk, torch.from_numpy(ref_ntk)) < TOL64
    if symmetric:
        assert torch.equal(nngp, nngp.T) and torch.equal(ntk, ntk.T)


@pytest.mark.parametrize("kind,name,net", CASES[::3], ids=[c[1] for c in CASES[::3]])
def test_graph_program_float32(kind, name, net):
    """float32 within 2e-5 relative (max error / max |reference|) of the float64 reference."""
    x1, x2 = inputs(kind, dtype=torch.float32)
    for b in (None, x2):
        nngp, ntk = run_op(net, x1, b)
        ref_nngp, ref_ntk = reference(net, x1.double().numpy(),
                                      None if b is None else b.double().numpy())
        assert rel_err(nngp.double(), torch.from_numpy(ref_nngp)) < TOL32
        assert rel_err(ntk.double(), torch.from_numpy(ref_ntk)) < TOL32


def test_the_checks_see_a_wrong_join():
    """A join with its coefficients swapped (α² ↔ β²), or a padded pool with the other
    count_include_pad, is far from the reference: the comparisons above can fail."""
    x1, x2 = inputs("mlp")
    good = residual_mlp("identity", alpha=0.7, beta=1.3)
    wrong = [("join", 0, s[3], s[2]) if s[0] == "join" else s for s in good]
    ref = torch.from_numpy(reference(good, x1.numpy(), x2.numpy())[1])
    assert rel_err(run_op(wrong, x1, x2)[1], ref) > 1e-3
    x1, x2 = inputs("cnn")
    ref = torch.from_numpy(reference(pooled_cnn(3, 2, 1, True), x1.numpy(), x2.numpy())[1])
    assert rel_err(run_op(pooled_cnn(3, 2, 1, False), x1, x2)[1], ref) > 1e-3


def test_the_checks_see_a_wrong_layernorm():
    """A LayerNorm that ignores eps, or normalizes per position where GroupNorm(1, C)
    normalizes by the positions' mean, is far from the reference."""
    x1, x2 = inputs("cnn")
    good = ln_cnn(0, False)
    ref = torch.from_numpy(reference(good, x1.numpy(), x2.numpy())[1])
    no_eps = [("ln", 0, False, 0.0) if s[0] == "ln" else s for s in good]
    ref_eps = torch.from_numpy(reference([("ln", 0, False, 0.5) if s[0] == "ln" else s
                                          for s in good], x1.numpy(), x2.numpy())[1])
    assert rel_err(run_op(no_eps, x1, x2)[1], ref_eps) > 1e-3
    assert rel_err(run_op(ln_cnn(1, False), x1, x2)[1], ref) > 1e-3


def test_layernorm_zero_features_give_zero_not_nan():
    """q = ε = 0 (a zero input through a bias-free layer): 0, the ε → 0+ limit, not NaN."""
    net = [("flatten",), ("dense", 1.0, 0.0), ("ln", 0, False, 0.0), ("dense", 1.0, 0.0)]
    x = torch.zeros(2, 3, 1, 1, dtype=torch.float64)
    nngp, ntk = run_op(net, x)
    assert torch.equal(nngp, torch.zeros(2, 2, dtype=torch.float64))
    assert torch.equal(ntk, torch.zeros(2, 2, dtype=torch.float64))


BAD = [
    ("join of an empty slot", [("flatten",), ("dense", 1.0, 0.0), ("join", 2, 1.0, 1.0),
                               ("dense", 1.0, 0.0)], "which no earlier PUSH filled"),
    ("load of an empty slot", [("flatten",), ("dense", 1.0, 0.0), ("load", 0),
                               ("dense", 1.0, 0.0)], "which no earlier PUSH filled"),
    ("slot out of range", [("flatten",), ("dense", 1.0, 0.0), ("push", 8), ("dense", 1.0, 0.0)],
     "slot = 8 is out of range"),
    ("negative slot", [("flatten",), ("dense", 1.0, 0.0), ("push", -1), ("dense", 1.0, 0.0)],
     "slot = -1 is out of range"),
    ("layernorm eps < 0", [("flatten",), ("dense", 1.0, 0.0), ("ln", 0, False, -1e-5),
                           ("dense", 1.0, 0.0)], "eps = -1e-05 in layer_floats must be >= 0"),
    ("layernorm over", [("flatten",), ("dense", 1.0, 0.0), ("ln", 2, False, 0.0),
                        ("dense", 1.0, 0.0)], "over = 2"),
    ("join of different sizes", [("conv", 3, 1, 1.0, 0.0), ("push", 0), ("conv", 3, 0, 1.0, 0.0),
                                 ("join", 0, 1.0, 1.0), ("gap",), ("dense", 1.0, 0.0)],
     "a join needs the same positions"),
    ("negative join coefficient", [("flatten",), ("dense", 1.0, 0.0), ("push", 0),
                                   ("join", 0, -1.0, 1.0), ("dense", 1.0, 0.0)],
     "must be non-negative"),
    ("activation of a sum with a non-Gaussian branch",
     [("flatten",), ("dense", 1.0, 0.0), ("relu",), ("push", 0), ("dense", 1.0, 0.0),
      ("join", 0, 1.0, 1.0), ("relu",), ("dense", 1.0, 0.0)], "must follow a CONV or DENSE"),
    ("tanh after an affine layernorm", [("flatten",), ("dense", 1.0, 0.0), ("ln", 0, True, 0.0),
                                         ("tanh",), ("dense", 1.0, 0.0)],
     "right after an affine LAYERNORM has no exact rule"),
    ("pool padding over half the window", [("conv", 3, 1, 1.0, 0.0), ("pool_pad", 2, 2, 2, True),
                                           ("gap",), ("dense", 1.0, 0.0)],
     "at most half the window"),
    ("ending on a pushed activation", [("flatten",), ("dense", 1.0, 0.0), ("push", 0), ("relu",)],
     "must end with a DENSE"),
]


@pytest.mark.parametrize("name,net,match", BAD, ids=[b[0] for b in BAD])
def test_bad_programs_raise(name, net, match):
    x1 = torch.randn(2, 2, 4, 4, dtype=torch.float64) if net[0][0] == "conv" else \
        torch.randn(2, 3, 1, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        run_op(net, x1)


@CUDA
@pytest.mark.parametrize("kind,name,net", CASES, ids=[c[1] for c in CASES])
def test_graph_program_cuda(kind, name, net):
    x1, x2 = inputs(kind, device="cuda")
    for b in (None, x2):
        nngp, ntk = run_op(net, x1, b)
        ref_nngp, ref_ntk = reference(net, x1.cpu().numpy(),
                                      None if b is None else b.cpu().numpy())
        assert rel_err(nngp.cpu(), torch.from_numpy(ref_nngp)) < TOL64
        assert rel_err(ntk.cpu(), torch.from_numpy(ref_ntk)) < TOL64
