"""The compiled cnn_kernels op against an independent float64 reference written here.

The reference keeps full position-position matrices for the three pairs (x, x), (x', x'),
(x, x') and writes every linear layer as matrices: a convolution tap q is a selection
matrix S_q [P_out, P_in] (a row of zeros where the tap reads padding, the wrapped
column with circular padding), so A(K) = (1/|Q|) sum_q S_q K S_q^T; an average pool is
B K B^T with a block-average matrix B.
"""

import math

import numpy as np
import pytest
import torch

from torch_ntk import ops

from conftest import CUDA, rel_err

CONV, ACT, POOL, GAP, FLAT, DENSE = range(6)
ACT_IDS = {"identity": 0, "relu": 1, "leaky_relu": 2, "abs": 3, "erf": 4, "tanh": 6}
GH_DEGREE = 24


# ----------------------------------------------------------------------------- programs
# A network: a list of layer dicts. conv: c_out, k, s, d, pad ((top, bottom), (left, right)),
# circular, wv, bv; act: name, param; pool: k, s; gap; flatten; dense: width, wv, bv.

def conv(c_out, k, s=(1, 1), d=(1, 1), pad=((0, 0), (0, 0)), circular=False, wv=1.7, bv=0.2):
    return dict(kind="conv", c_out=c_out, k=k, s=s, d=d, pad=pad, circular=circular, wv=wv, bv=bv)


def act(name, param=0.0):
    return dict(kind="act", name=name, param=param)


def pool(k, s):
    return dict(kind="pool", k=k, s=s)


def dense(width=1, wv=1.3, bv=0.1):
    return dict(kind="dense", width=width, wv=wv, bv=bv)


GAP_ = dict(kind="gap")
FLAT_ = dict(kind="flatten")


def coefficients(layer, fan_in, parametrization):
    """(tw, tb) of a CONV/DENSE: (σ_w², σ_b²) in NTK parametrization, (fan_in, 1) standard."""
    if parametrization == "ntk":
        return layer["wv"], layer["bv"]
    return float(fan_in), 1.0 if layer["bv"] > 0 else 0.0


def encode(net, c0, h, w, parametrization):
    """(codes, ints, floats, layers with tw/tb added) of the op's program for `net`."""
    codes, ints, floats, out = [], [], [], []
    channels, positions, features = c0, h * w, None
    for layer in net:
        layer = dict(layer)
        if layer["kind"] == "conv":
            (kh, kw), (sh, sw), (dh, dw) = layer["k"], layer["s"], layer["d"]
            (pt, pb), (pl, pr) = layer["pad"]
            layer["tw"], layer["tb"] = coefficients(layer, channels * kh * kw, parametrization)
            codes.append(CONV)
            ints += [kh, kw, sh, sw, dh, dw, pt, pb, pl, pr, int(layer["circular"])]
            floats += [layer["wv"], layer["bv"], layer["tw"], layer["tb"]]
            h = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
            w = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
            channels, positions = layer["c_out"], h * w
        elif layer["kind"] == "act":
            codes.append(ACT)
            ints.append(ACT_IDS[layer["name"]])
            floats.append(layer["param"])
        elif layer["kind"] == "pool":
            codes.append(POOL)
            ints += [*layer["k"], *layer["s"]]
            h = (h - layer["k"][0]) // layer["s"][0] + 1
            w = (w - layer["k"][1]) // layer["s"][1] + 1
            positions = h * w
        elif layer["kind"] == "gap":
            codes.append(GAP)
            features = channels
        elif layer["kind"] == "flatten":
            codes.append(FLAT)
            features = channels * positions
        else:
            layer["tw"], layer["tb"] = coefficients(layer, features, parametrization)
            codes.append(DENSE)
            floats += [layer["wv"], layer["bv"], layer["tw"], layer["tb"]]
            features = layer["width"]
        out.append(layer)
    return codes, ints, floats, out


# ---------------------------------------------------------------------------- reference

def tap_matrices(layer, h, w):
    """The selection matrices S_q [P_out, P_in] of a conv layer, and (h_out, w_out)."""
    (kh, kw), (sh, sw), (dh, dw) = layer["k"], layer["s"], layer["d"]
    (pt, pb), (pl, pr) = layer["pad"]
    ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
    mats = []
    for qh in range(kh):
        for qw in range(kw):
            S = torch.zeros(ho * wo, h * w, dtype=torch.float64)
            for a in range(ho):
                for b in range(wo):
                    r, c = a * sh + qh * dh - pt, b * sw + qw * dw - pl
                    if layer["circular"]:
                        r, c = r % h, c % w
                    elif not (0 <= r < h and 0 <= c < w):
                        continue
                    S[a * wo + b, r * w + c] = 1.0
            mats.append(S)
    return mats, ho, wo


def pool_matrix(layer, h, w):
    (kh, kw), (sh, sw) = layer["k"], layer["s"]
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    B = torch.zeros(ho * wo, h * w, dtype=torch.float64)
    for a in range(ho):
        for b in range(wo):
            for i in range(kh):
                for j in range(kw):
                    B[a * wo + b, (a * sh + i) * w + (b * sw + j)] = 1.0 / (kh * kw)
    return B, ho, wo


def expectations(name, param, q11, q22, q12):
    """(E[φ(u)φ(v)], E[φ′(u)φ′(v)]) elementwise, float64 tensors."""
    if name in ("identity", "relu", "leaky_relu", "abs"):
        a = {"identity": 1.0, "relu": 0.0, "leaky_relu": param, "abs": -1.0}[name]
        norm = torch.sqrt(q11 * q22)
        s = torch.sqrt(torch.clamp(q11 * q22 - q12 ** 2, min=0.0))
        theta = torch.atan2(s, q12)
        # E[max(u,0)max(v,0)] = (s + (π − θ) q12) / 2π; φ = a·min + max mixes it with
        # E[min(u,0)min(v,0)] (the same) and E[min(u,0)max(v,0)] = (θ q12 − s) / 2π.
        pp = (s + (math.pi - theta) * q12) / (2 * math.pi)
        pm = (theta * q12 - s) / (2 * math.pi)
        e = (1 + a * a) * pp + 2 * a * pm
        ed = ((1 + a * a) * (math.pi - theta) + 2 * a * theta) / (2 * math.pi)
        del norm
        return e, ed
    if name == "erf":
        d = (1 + 2 * q11) * (1 + 2 * q22)
        return (2 / math.pi) * torch.asin(2 * q12 / torch.sqrt(d)), (4 / math.pi) / torch.sqrt(
            d - 4 * q12 ** 2)
    assert name == "tanh"
    t, wt = np.polynomial.hermite.hermgauss(GH_DEGREE)
    t, wt = torch.as_tensor(t), torch.as_tensor(wt)
    # Cholesky of [[q11, q12], [q12, q22]]: u = √2·a·t_i, v = √2·(b·t_i + c·t_j).
    a = torch.sqrt(q11)
    b = torch.where(a > 0, q12 / torch.where(a > 0, a, 1.0), 0.0)
    c = torch.sqrt(torch.clamp(q22 - b * b, min=0.0))
    u = math.sqrt(2) * a[..., None, None] * t[:, None]
    v = math.sqrt(2) * (b[..., None, None] * t[:, None] + c[..., None, None] * t[None, :])
    W = wt[:, None] * wt[None, :] / math.pi
    e = (W * torch.tanh(u) * torch.tanh(v)).sum((-2, -1))
    ed = (W * (1 - torch.tanh(u) ** 2) * (1 - torch.tanh(v) ** 2)).sum((-2, -1))
    return e, ed


def reference_pair(net, x, y):
    """(NNGP, NTK) of the pair of images x, y [C, H, W] (float64)."""
    C, h, w = x.shape
    X, Y = x.reshape(C, -1).double(), y.reshape(C, -1).double()
    sxx, syy, sxy = X.T @ X / C, Y.T @ Y / C, X.T @ Y / C
    txy = torch.zeros_like(sxy)
    for layer in net:
        kind = layer["kind"]
        if kind == "conv":
            mats, h, w = tap_matrices(layer, h, w)
            A = lambda K: sum(S @ K @ S.T for S in mats) / len(mats)  # noqa: E731
            ax, ay, axy = A(sxx), A(syy), A(sxy)
            txy = layer["tw"] * axy + layer["tb"] + layer["wv"] * A(txy)
            sxx, syy, sxy = (layer["wv"] * m + layer["bv"] for m in (ax, ay, axy))
        elif kind == "dense":
            txy = layer["tw"] * sxy + layer["tb"] + layer["wv"] * txy
            sxx, syy, sxy = (layer["wv"] * m + layer["bv"] for m in (sxx, syy, sxy))
        elif kind == "act":
            vx, vy = torch.diagonal(sxx), torch.diagonal(syy)
            f = lambda q1, q2, q12: expectations(  # noqa: E731
                layer["name"], layer["param"], q1, q2, q12)
            sxx = f(vx[:, None].expand_as(sxx), vx[None, :].expand_as(sxx), sxx)[0]
            syy = f(vy[:, None].expand_as(syy), vy[None, :].expand_as(syy), syy)[0]
            e, ed = f(vx[:, None].expand_as(sxy), vy[None, :].expand_as(sxy), sxy)
            sxy, txy = e, ed * txy
        elif kind == "pool":
            B, h, w = pool_matrix(layer, h, w)
            sxx, syy, sxy, txy = (B @ m @ B.T for m in (sxx, syy, sxy, txy))
        elif kind == "gap":
            sxx, syy, sxy, txy = (m.mean().reshape(1, 1) for m in (sxx, syy, sxy, txy))
        else:  # flatten
            sxx, syy, sxy, txy = (torch.diagonal(m).mean().reshape(1, 1)
                                  for m in (sxx, syy, sxy, txy))
    return float(sxy[0, 0]), float(txy[0, 0])


def reference(net, x1, x2):
    nngp = torch.empty(len(x1), len(x2), dtype=torch.float64)
    ntk = torch.empty_like(nngp)
    for i in range(len(x1)):
        for j in range(len(x2)):
            nngp[i, j], ntk[i, j] = reference_pair(net, x1[i], x2[j])
    return nngp, ntk


def run_op(net, x1, x2, parametrization="ntk", force_quadrature=False, degree=GH_DEGREE,
           **kwargs):
    codes, ints, floats, _ = encode(net, *x1.shape[1:], parametrization)
    nodes, weights = np.polynomial.hermite.hermgauss(degree)
    return ops.cnn_kernels(x1, x2, codes, ints, floats, torch.as_tensor(nodes),
                           torch.as_tensor(weights), force_quadrature, **kwargs)


# ---------------------------------------------------------------------------- networks

NETS = {
    # Diagonal planes: no pooling before the flatten readout.
    "flatten_relu": [conv(4, (3, 3), pad=((1, 1), (1, 1))), act("relu"),
                     conv(3, (2, 2)), act("relu"), FLAT_, dense()],
    "stride_dilation_circular": [
        conv(4, (2, 3), s=(2, 1), d=(1, 2), pad=((1, 0), (2, 1)), circular=True), act("erf"),
        conv(3, (2, 2), pad=((0, 1), (1, 0))), act("leaky_relu", 0.2), FLAT_,
        dense(5), act("relu"), dense()],
    "dilation_zeros_tanh": [conv(3, (2, 2), s=(2, 2), d=(2, 1), pad=((2, 1), (0, 1))),
                            act("tanh"), FLAT_, dense(4, bv=0.0), act("abs"), dense()],
    # Full planes: pooling before the readout.
    "pool_gap": [conv(4, (2, 2), pad=((1, 0), (0, 1)), circular=True), act("relu"),
                 pool((2, 2), (1, 1)), conv(3, (2, 2), d=(1, 1)), act("tanh"), GAP_,
                 dense(6), act("erf"), dense()],
    "pool_flatten": [conv(4, (3, 2), s=(1, 2), pad=((1, 1), (1, 0))), act("erf"),
                     pool((2, 1), (2, 1)), FLAT_, dense()],
    "linear_chain": [conv(3, (2, 2), pad=((0, 1), (1, 0))), conv(3, (2, 1), d=(2, 1)),
                     pool((1, 2), (1, 1)), FLAT_, dense(4), dense()],
    "gap_only": [conv(5, (3, 3), s=(2, 2), pad=((1, 1), (1, 1))), act("relu"), GAP_, dense()],
    # Average pooling whose stride differs from its kernel, on maps of 3×3 or more.
    "pool_k3_s2": [conv(3, (2, 2), pad=((1, 1), (1, 1))), act("relu"), pool((3, 3), (2, 2)),
                   FLAT_, dense(4), act("erf"), dense()],
    "pool_3x2_s1x2": [conv(4, (2, 3), d=(2, 1), pad=((1, 1), (1, 1)), circular=True),
                      act("abs"), pool((3, 2), (1, 2)), GAP_, dense()],
}


@pytest.mark.parametrize("name", list(NETS))
@pytest.mark.parametrize("hw", [(4, 4), (5, 3)])
@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
def test_matches_reference(name, hw, parametrization, one_thread):
    net = NETS[name]
    x1 = torch.randn(3, 2, *hw, dtype=torch.float64)
    x2 = torch.randn(2, 2, *hw, dtype=torch.float64)
    layers = encode(net, *x1.shape[1:], parametrization)[3]
    ref_nngp, ref_ntk = reference(layers, x1, x2)
    nngp, ntk = run_op(net, x1, x2, parametrization)
    assert rel_err(nngp, ref_nngp) < 1e-10
    assert rel_err(ntk, ref_ntk) < 1e-10
    # x2 = None: the pairs j >= i, mirrored, exactly symmetric, equal to x2 = x1. (Quadrature
    # is not exactly symmetric in (x, x'): compare with the reference's upper triangle.)
    ref_nngp, ref_ntk = (r.triu() + r.triu(1).T for r in reference(layers, x1, x1))
    nngp_s, ntk_s = run_op(net, x1, None, parametrization)
    assert torch.equal(nngp_s, nngp_s.T) and torch.equal(ntk_s, ntk_s.T)
    assert rel_err(nngp_s, ref_nngp) < 1e-10 and rel_err(ntk_s, ref_ntk) < 1e-10
    nngp_g, ntk_g = run_op(net, x1, x1.clone(), parametrization)
    upper = torch.ones(3, 3, dtype=torch.bool).triu()
    assert torch.equal(nngp_g[upper], nngp_s[upper]) and torch.equal(ntk_g[upper], ntk_s[upper])


# ---------------------------------------------------------------- torch modules, lifted
# The tests above feed the op programs from this file's encode(). These feed it torch
# modules through torch_ntk's lift and cnn_op_args (the user's path), against the same
# selection-matrix reference: an error in the package's encoding (an AvgPool stride read as
# its kernel, a swapped height/width, a padding side) shows here. Every parameter takes a
# value distinct from its partners: stride ≠ kernel, kh ≠ kw, sh ≠ sw, dh ≠ dw, padding ≠ 0,
# C_in ≠ C_out, H ≠ W, N1 ≠ N2.

MODULE_NETS = {
    "pool_k2_s1": [conv(3, (3, 2), pad=((1, 1), (0, 0))), act("relu"), pool((2, 2), (1, 1)),
                   conv(4, (2, 2), s=(2, 1)), act("erf"), FLAT_, dense(5),
                   act("leaky_relu", 0.2), dense(2)],
    "pool_k3_s2": [conv(4, (2, 3), d=(2, 1), pad=((1, 1), (1, 1)), circular=True), act("abs"),
                   pool((3, 3), (2, 2)), FLAT_, dense()],
    "pool_3x2_s2x1_gap": [conv(3, (3, 3), s=(1, 2), pad=((1, 1), (1, 1))), act("relu"),
                          pool((3, 2), (2, 1)), conv(2, (1, 2)), act("erf"), GAP_, dense(3)],
}


def to_modules(net, c0, parametrization):
    """torch modules (torch_ntk.nn layers, torch activations) computing `net`."""
    from torch import nn
    import torch_ntk as tn
    from torch_ntk.nn import NTKConv2d, NTKLinear
    acts = {"relu": lambda p: nn.ReLU(), "leaky_relu": lambda p: nn.LeakyReLU(p),
            "abs": lambda p: tn.nn.Abs(), "erf": lambda p: tn.nn.Erf()}
    out, channels, features = [], c0, None
    for layer in net:
        kind = layer["kind"]
        if kind == "conv":
            (pt, pb), (pl, pr) = layer["pad"]
            assert pt == pb and pl == pr  # nn.Conv's padding is symmetric
            out.append(NTKConv2d(channels, layer["c_out"], layer["k"], layer["s"], (pt, pl),
                                 layer["d"], "circular" if layer["circular"] else "zeros",
                                 weight_std=math.sqrt(layer["wv"]),
                                 bias_std=math.sqrt(layer["bv"]),
                                 parametrization=parametrization, dtype=torch.float64))
            channels = layer["c_out"]
        elif kind == "act":
            out.append(acts[layer["name"]](layer["param"]))
        elif kind == "pool":
            out.append(nn.AvgPool2d(layer["k"], layer["s"]))
        elif kind == "gap":
            out += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
            features = channels
        elif kind == "flatten":
            out.append(nn.Flatten())
            features = None  # set from a forward pass below
        else:
            if features is None:
                with torch.no_grad():
                    features = nn.Sequential(*out)(torch.zeros(1, c0, *HW_MODULES,
                                                           dtype=torch.float64)).shape[1]
            out.append(NTKLinear(features, layer["width"], weight_std=math.sqrt(layer["wv"]),
                                 bias_std=math.sqrt(layer["bv"]),
                                 parametrization=parametrization, dtype=torch.float64))
            features = layer["width"]
    return nn.Sequential(*out).double()


HW_MODULES = (6, 7)


def pool_sizes(net, h, w):
    """[(output size with the pool's stride, output size were the stride its kernel)]."""
    sizes = []
    for layer in net:
        if layer["kind"] == "conv":
            (kh, kw), (sh, sw), (dh, dw) = layer["k"], layer["s"], layer["d"]
            (pt, pb), (pl, pr) = layer["pad"]
            h = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
            w = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
        elif layer["kind"] == "pool":
            (kh, kw), (sh, sw) = layer["k"], layer["s"]
            sizes.append((((h - kh) // sh + 1, (w - kw) // sw + 1),
                          ((h - kh) // kh + 1, (w - kw) // kw + 1)))
            h, w = sizes[-1][0]
    return sizes


@pytest.mark.parametrize("name", list(MODULE_NETS))
@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
def test_lifted_modules_match_reference(name, parametrization, one_thread):
    """tn.analytic_kernels(torch modules) against the selection-matrix reference: 1e-10
    relative, x2 given (N2 ≠ N1) and x2 = None (the reference's upper triangle mirrored)."""
    import torch_ntk as tn
    net = MODULE_NETS[name]
    for (h, w), (hk, wk) in pool_sizes(net, *HW_MODULES):  # the stride changes the geometry
        assert min(h, w) >= 2 and (h, w) != (hk, wk)
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(3, 2, *HW_MODULES, dtype=torch.float64, generator=g)
    x2 = torch.randn(2, 2, *HW_MODULES, dtype=torch.float64, generator=g)
    model = to_modules(net, 2, parametrization)
    layers = encode(net, 2, *HW_MODULES, parametrization)[3]
    ref_nngp, ref_ntk = reference(layers, x1, x2)
    got = tn.analytic_kernels(model, x1, x2)
    assert rel_err(got.nngp, ref_nngp) < 1e-10 and rel_err(got.ntk, ref_ntk) < 1e-10
    ref_nngp, ref_ntk = (r.triu() + r.triu(1).T for r in reference(layers, x1, x1))
    got = tn.analytic_kernels(model, x1)
    assert rel_err(got.nngp, ref_nngp) < 1e-10 and rel_err(got.ntk, ref_ntk) < 1e-10


@pytest.mark.parametrize("name", ["stride_dilation_circular", "pool_gap"])
def test_float32(name):
    net = NETS[name]
    x1, x2 = torch.randn(3, 3, 5, 3, dtype=torch.float64), torch.randn(2, 3, 5, 3,
                                                                         dtype=torch.float64)
    layers = encode(net, *x1.shape[1:], "ntk")[3]
    ref_nngp, ref_ntk = reference(layers, x1, x2)
    nngp, ntk = run_op(net, x1.float(), x2.float())
    assert nngp.dtype == ntk.dtype == torch.float32
    assert rel_err(nngp, ref_nngp) < 1e-5 and rel_err(ntk, ref_ntk) < 1e-5
    nngp_s, ntk_s = run_op(net, x1.float(), None)
    assert torch.equal(nngp_s, nngp_s.T) and torch.equal(ntk_s, ntk_s.T)


def test_one_dimensional_input():
    """A 1-D input [N, C, L] is passed as [N, C, 1, L] with kh = 1."""
    net = [conv(4, (1, 3), pad=((0, 0), (2, 0)), circular=True), act("relu"),
           conv(3, (1, 2), s=(1, 2)), act("erf"), FLAT_, dense()]
    x1, x2 = torch.randn(3, 2, 1, 7, dtype=torch.float64), torch.randn(2, 2, 1, 7,
                                                                         dtype=torch.float64)
    layers = encode(net, *x1.shape[1:], "ntk")[3]
    ref = reference(layers, x1, x2)
    out = run_op(net, x1, x2)
    assert rel_err(out[0], ref[0]) < 1e-10 and rel_err(out[1], ref[1]) < 1e-10


def test_linear_conv_flatten_dense_by_hand():
    """One linear conv (3 x 2 kernel, zero padding) + flatten + dense, written out as sums."""
    C, H, W, kh, kw = 2, 4, 5, 3, 2
    (pt, pb), (pl, pr) = (1, 0), (0, 1)
    wv1, bv1, wv2, bv2 = 1.7, 0.3, 0.9, 0.2
    net = [conv(3, (kh, kw), pad=((pt, pb), (pl, pr)), wv=wv1, bv=bv1), FLAT_,
           dense(wv=wv2, bv=bv2)]
    x, y = torch.randn(C, H, W, dtype=torch.float64), torch.randn(C, H, W, dtype=torch.float64)
    ho, wo = H + pt + pb - kh + 1, W + pl + pr - kw + 1

    def pix(z, c, r, s):
        return float(z[c, r, s]) if 0 <= r < H and 0 <= s < W else 0.0

    # Σ¹_pp = σ_w²/(|Q| C) Σ_q Σ_c x_{c,p+q} y_{c,p+q} + σ_b²;  Θ¹ = Σ¹ (NTK parametrization).
    sigma1 = []
    for a in range(ho):
        for b in range(wo):
            acc = 0.0
            for qh in range(kh):
                for qw in range(kw):
                    for c in range(C):
                        acc += pix(x, c, a + qh - pt, b + qw - pl) * pix(y, c, a + qh - pt,
                                                                           b + qw - pl)
            sigma1.append(wv1 * acc / (kh * kw * C) + bv1)
    mean1 = sum(sigma1) / len(sigma1)
    nngp = wv2 * mean1 + bv2
    ntk = nngp + wv2 * mean1  # Θ = Σ^out + σ_w²·mean_p Θ¹_pp, Θ¹ = Σ¹
    out = run_op(net, torch.stack([x]), torch.stack([y]))
    assert abs(float(out[0]) - nngp) < 1e-12 * abs(nngp)
    assert abs(float(out[1]) - ntk) < 1e-12 * abs(ntk)


@pytest.mark.parametrize("circular", [False, True])
@pytest.mark.parametrize("readout", ["flatten", "gap"])
def test_conv_geometry_matches_torch_padding(circular, readout):
    """Stride, dilation and asymmetric (zero or circular) padding as torch pads and unfolds:
    Σ¹_{p,p'} = σ_w²/(C|Q|)·⟨patch_p(x), patch_p'(x')⟩ + σ_b² with the patches of F.unfold
    on F.pad(x) (torch's padding order: left, right, top, bottom)."""
    (kh, kw), (sh, sw), (dh, dw) = (2, 3), (2, 1), (1, 2)
    (pt, pb), (pl, pr) = (1, 2), (2, 0)
    wv, bv = 1.7, 0.3
    layer = conv(3, (kh, kw), s=(sh, sw), d=(dh, dw), pad=((pt, pb), (pl, pr)),
                 circular=circular, wv=wv, bv=bv)
    net = [layer, FLAT_ if readout == "flatten" else GAP_, dense(wv=1.0, bv=0.0)]
    x1, x2 = torch.randn(3, 2, 5, 4, dtype=torch.float64), torch.randn(2, 2, 5, 4,
                                                                         dtype=torch.float64)
    mode = "circular" if circular else "constant"

    def patches(x):  # [N, C·|Q|, P_out]
        padded = torch.nn.functional.pad(x, (pl, pr, pt, pb), mode=mode)
        return torch.nn.functional.unfold(padded, (kh, kw), dilation=(dh, dw), stride=(sh, sw))

    p1, p2 = patches(x1), patches(x2)
    gram = torch.einsum("iqp,jqr->ijpr", p1, p2) / p1.shape[1]  # A(K⁰) [N1, N2, P, P]
    sigma = wv * gram + bv
    if readout == "flatten":
        expected = torch.diagonal(sigma, dim1=2, dim2=3).mean(-1)
    else:
        expected = sigma.mean((2, 3))
    nngp, _ = run_op(net, x1, x2)
    assert rel_err(nngp, expected) < 1e-12


def test_force_quadrature_agrees_with_closed_form():
    net = NETS["pool_flatten"]  # erf
    x = 0.5 * torch.randn(3, 2, 4, 4, dtype=torch.float64)
    closed = run_op(net, x, None)
    quad = run_op(net, x, None, force_quadrature=True, degree=100)
    assert rel_err(quad[0], closed[0]) < 1e-10 and rel_err(quad[1], closed[1]) < 1e-10


def test_want_flags():
    """One kernel asked for: the other is empty, the one returned is the reference's (1e-10)."""
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    layers = encode(NETS["gap_only"], 2, 4, 4, "ntk")[3]
    ref_nngp, _ = (r.triu() + r.triu(1).T for r in reference(layers, x, x))
    nngp, ntk = run_op(NETS["gap_only"], x, None, want_ntk=False)
    assert nngp.shape == (3, 3) and ntk.shape == (0,)
    assert rel_err(nngp, ref_nngp) < 1e-10
    nngp, ntk = run_op(NETS["gap_only"], x, x[:2], want_nngp=False)
    assert nngp.shape == (0,) and ntk.shape == (3, 2)
    assert rel_err(ntk, reference(layers, x, x[:2])[1]) < 1e-10


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["flatten_relu", "pool_gap"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_opcheck(dtype, name, symmetric):
    x1 = torch.randn(3, 2, 4, 4, dtype=dtype)
    x2 = None if symmetric else torch.randn(2, 2, 4, 4, dtype=dtype)
    codes, ints, floats, _ = encode(NETS[name], 2, 4, 4, "ntk")
    nodes, weights = np.polynomial.hermite.hermgauss(8)
    torch.library.opcheck(torch.ops.torch_ntk.cnn_kernels.default,
                          (x1, x2, codes, ints, floats, torch.as_tensor(nodes),
                           torch.as_tensor(weights), False, True, True))


# ---------------------------------------------------------------------------- validation

CONV_INTS = [2, 2, 1, 1, 1, 1, 0, 0, 0, 0, 0]
FL4 = [1.0, 0.1, 1.0, 0.1]
GOOD = ([CONV, ACT, FLAT, DENSE], CONV_INTS + [1], FL4 + [0.0] + FL4)
X = torch.randn(2, 2, 4, 4, dtype=torch.float64)
NODES = torch.as_tensor(np.polynomial.hermite.hermgauss(8)[0])
WEIGHTS = torch.as_tensor(np.polynomial.hermite.hermgauss(8)[1])


def _call(x1=X, x2=None, program=GOOD, nodes=NODES, weights=WEIGHTS, nngp=True, ntk=True):
    return ops.cnn_kernels(x1, x2, *program, nodes, weights, False, nngp, ntk)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(x1=X[0]), ValueError, "x1 must have 4 dimensions"),
        (dict(x1=X[:0]), ValueError, "x1 must hold at least one sample"),
        (dict(x1=X.int()), TypeError, "x1 must be float32 or float64"),
        (dict(x1=torch.where(X > 1, float("nan"), X)),
         ValueError, "x1 contains NaN or Inf"),
        (dict(x2=torch.randn(2, 3, 4, 4, dtype=torch.float64)), ValueError, "C, H, W"),
        (dict(x2=X.float()), TypeError, "x2 must have the dtype of x1"),
        (dict(nngp=False, ntk=False), ValueError, "at least one of want_nngp"),
        (dict(program=([CONV, ACT, FLAT], CONV_INTS + [1], FL4 + [0.0])), ValueError,
         "must end with a DENSE"),
        (dict(program=([CONV, 12, DENSE], CONV_INTS, FL4 * 2)), ValueError,
         r"layer_codes\[1\] = 12"),
        (dict(program=([CONV, ACT, DENSE], CONV_INTS + [1], FL4 + [0.0] + FL4)), ValueError,
         "DENSE on images"),
        (dict(program=([CONV, FLAT, CONV, FLAT, DENSE], CONV_INTS * 2, FL4 * 3)), ValueError,
         "CONV after"),
        (dict(program=([CONV, GAP, POOL, FLAT, DENSE], CONV_INTS + [1, 1, 1, 1], FL4 * 2)),
         ValueError, "AVGPOOL after"),
        (dict(program=([CONV, FLAT, DENSE], [5, 2, 1, 1, 1, 1, 0, 0, 0, 0, 0], FL4 * 2)),
         ValueError, "larger than the padded input"),
        (dict(program=([CONV, FLAT, DENSE], [2, 2, 1, 1, 4, 1, 0, 0, 0, 0, 0], FL4 * 2)),
         ValueError, "larger than the padded input"),
        (dict(program=([POOL, FLAT, DENSE], [5, 1, 1, 1], FL4)), ValueError,
         "larger than its input"),
        (dict(program=([CONV, FLAT, DENSE], CONV_INTS[:5], FL4 * 2)), ValueError,
         "needs 11 entries of layer_ints"),
        (dict(program=([CONV, FLAT, DENSE], CONV_INTS, FL4)), ValueError,
         "needs 4 entries of layer_floats"),
        (dict(program=([CONV, FLAT, DENSE], CONV_INTS + [1], FL4 * 2)), ValueError,
         "consumes 11 layer_ints"),
        (dict(program=([CONV, FLAT, DENSE], CONV_INTS, [float("nan")] + FL4[1:] + FL4)),
         ValueError, "must be finite"),
        (dict(program=([CONV, FLAT, DENSE], CONV_INTS, [-1.0] + FL4[1:] + FL4)), ValueError,
         "non-negative"),
        (dict(program=([ACT, CONV, FLAT, DENSE], [1] + CONV_INTS, [0.0] + FL4 * 2)), ValueError,
         "must follow a CONV or DENSE"),
        (dict(program=([CONV, ACT, ACT, FLAT, DENSE], CONV_INTS + [1, 1], FL4 + [0.0, 0.0]
                       + FL4)), ValueError, "must follow a CONV or DENSE"),
        (dict(program=([CONV, ACT, FLAT, DENSE], CONV_INTS + [99], FL4 + [0.0] + FL4)),
         ValueError, "not a registered activation id"),
        (dict(program=([CONV, FLAT, DENSE], CONV_INTS[:10] + [2], FL4 * 2)), ValueError,
         "circular must be 0"),
        (dict(program=([CONV, FLAT, DENSE], [2, 2, 0, 1, 1, 1, 0, 0, 0, 0, 0], FL4 * 2)),
         ValueError, "stride and dilation must be >= 1"),
        (dict(program=([CONV, ACT, FLAT, DENSE], CONV_INTS + [6], FL4 + [0.0] + FL4),
              nodes=torch.zeros(0, dtype=torch.float64)), ValueError, "gh_nodes and gh_weights"),
    ],
)
def test_argument_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        _call(**kwargs)


# ---------------------------------------------------------------------------- CUDA

@CUDA
@pytest.mark.parametrize("name", ["stride_dilation_circular", "pool_gap", "linear_chain"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpu(name, dtype):
    x1 = torch.randn(5, 2, 5, 3, dtype=dtype)
    x2 = torch.randn(4, 2, 5, 3, dtype=dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for a, b in ((x1, x2), (x1, None)):
        cpu = run_op(NETS[name], a, b)
        gpu = run_op(NETS[name], a.cuda(), None if b is None else b.cuda())
        assert gpu[0].is_cuda
        assert rel_err(gpu[0], cpu[0]) < tol and rel_err(gpu[1], cpu[1]) < tol
        if b is None:
            assert torch.equal(gpu[0], gpu[0].T) and torch.equal(gpu[1], gpu[1].T)


@CUDA
def test_cuda_global_scratch():
    """Planes too large for shared memory (32 x 32 image, full planes: 4 x 1024² doubles)."""
    net = [conv(2, (3, 3), pad=((1, 1), (1, 1))), act("relu"), GAP_, dense()]
    x = torch.randn(3, 1, 32, 32, dtype=torch.float64)
    cpu = run_op(net, x, None)
    gpu = run_op(net, x.cuda(), None)
    assert rel_err(gpu[0], cpu[0]) < 1e-10 and rel_err(gpu[1], cpu[1]) < 1e-10


@CUDA
@pytest.mark.parametrize("symmetric", [True, False])
def test_cuda_opcheck(symmetric):
    x1 = torch.randn(3, 2, 4, 4, device="cuda")
    x2 = None if symmetric else torch.randn(2, 2, 4, 4, device="cuda")
    codes, ints, floats, _ = encode(NETS["pool_gap"], 2, 4, 4, "ntk")
    nodes, weights = (torch.as_tensor(v, device="cuda")
                      for v in np.polynomial.hermite.hermgauss(8))
    torch.library.opcheck(torch.ops.torch_ntk.cnn_kernels.default,
                          (x1, x2, codes, ints, floats, nodes, weights, False, True, True))
