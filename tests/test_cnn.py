"""CNN layers, their lifting and the infinite-width CNN kernels, against independent references:
explicit sums of a linear CNN (float64, 1e-12), Conv1d = Conv2d on height-1 images (exact),
Monte Carlo of wide random CNNs (z-scores and relative errors), and nn.Conv equivalents."""

import itertools
import math
import warnings

import pytest
import torch
from torch import nn

import torch_ntk as tn
from torch_ntk.analytic import analytic_kernels_into, compiled_op_args
from torch_ntk.layers import AvgPool, Conv, Dense, Flatten, GlobalAvgPool
from torch_ntk.lifting import LayerSpec, lift
from torch_ntk.activations import Activation
from torch_ntk.analytic.cnn import cnn_kernels, cnn_op_args
from torch_ntk.nn import NTKConv1d, NTKConv2d, NTKLinear
from torch_ntk.empirical.mlp_plan import StructuredPlan

D = torch.float64


def images(n, c=2, h=5, w=5, seed=0):
    return torch.randn(n, c, h, w, dtype=D, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------
# layers


@pytest.mark.parametrize("dims", [1, 2])
@pytest.mark.parametrize("padding, mode, stride, dilation", [
    (0, "zeros", 2, 1), ("same", "zeros", 1, 2), ("valid", "zeros", 1, 1), (1, "circular", 2, 1),
    ((2,), "zeros", (3,), 1)])
@pytest.mark.parametrize("parametrization", ["ntk", "standard"])
def test_ntk_conv_equals_torch_conv_with_scaled_weights(dims, padding, mode, stride, dilation,
                                                        parametrization):
    if isinstance(padding, tuple):
        padding, stride = padding * dims, stride * dims
    layer_cls, torch_cls = (NTKConv1d, nn.Conv1d) if dims == 1 else (NTKConv2d, nn.Conv2d)
    torch.manual_seed(0)
    m = layer_cls(3, 4, 3, stride=stride, padding=padding, dilation=dilation, padding_mode=mode,
                  weight_std=1.3, bias_std=0.4, parametrization=parametrization, dtype=D)
    ref = torch_cls(3, 4, 3, stride=stride, padding=padding, dilation=dilation,
                    padding_mode=mode, dtype=D)
    with torch.no_grad():
        ref.weight.copy_(m.weight * m.weight_scale)
        ref.bias.copy_(m.bias * m.bias_scale)
    x = torch.randn(2, 3, *([8] * dims), dtype=D)
    torch.testing.assert_close(m(x), ref(x), rtol=0, atol=1e-13)
    assert m.fan_in == 3 * 3**dims


def test_ntk_conv_initialization_law():
    torch.manual_seed(0)
    ntk = NTKConv2d(16, 32, 3, weight_std=2.0, bias_std=0.5)
    std = NTKConv2d(16, 32, 3, weight_std=2.0, bias_std=0.5, parametrization="standard")
    assert abs(ntk.weight.var().item() - 1) < 0.05 and ntk.weight_scale == 2 / 12
    assert abs(std.weight.var().item() * 144 / 4 - 1) < 0.05 and std.weight_scale == 1.0
    assert std.bias_scale == 1.0 and ntk.bias_scale == 0.5
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        NTKConv2d(1, 1, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding_mode must be"):
        NTKConv1d(1, 1, 3, padding_mode="reflect")


# ---------------------------------------------------------------------------------
# by hand: one linear conv, flatten, dense


@pytest.mark.parametrize("mode", ["zeros", "circular"])
def test_linear_cnn_kernels_are_explicit_sums(mode):
    """f = Σ_{o,p} v_{o,p}·(σ₂/√(C₁P))·z_{o,p} + σ_b₂·b, z = (σ₁/√(C₀|Q|)) W ⋆ x + σ_b₁·b₁, all
    parameters N(0, 1). Then E[f f′] = σ₂²·S + σ_b₂² and, the NTK being quadratic in x, its
    expectation is 2σ₂²·S + σ_b₂² with S = (1/P) Σ_p [σ₁²/(C₀|Q|) Σ_{c,q} x_{c,i(p,q)} x′_{c,i(p,q)}
    + σ_b₁²], i(p, q) = s·p + d·q − pad (0 outside with zeros, wrapped with circular)."""
    c0, (h, w), (kh, kw), (sh, sw), (dh, dw), (ph, pw) = 2, (4, 5), (2, 3), (1, 2), (2, 1), (1, 1)
    s1, sb1, s2, sb2 = 1.3, 0.4, 0.9, 0.3
    conv = NTKConv2d(c0, 3, (kh, kw), (sh, sw), (ph, pw), (dh, dw), mode, weight_std=s1,
                     bias_std=sb1, dtype=D)
    x = images(3, c0, h, w)
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    model = nn.Sequential(conv, nn.Flatten(), NTKLinear(3 * ho * wo, 1, weight_std=s2,
                                                        bias_std=sb2, dtype=D))

    def value(img, c, i, j):
        if mode == "circular":
            return float(img[c, i % h, j % w])
        return float(img[c, i, j]) if 0 <= i < h and 0 <= j < w else 0.0

    def s_term(a, b):
        total = 0.0
        for pi, pj in itertools.product(range(ho), range(wo)):
            inner = sum(value(a, c, sh * pi + dh * qi - ph, sw * pj + dw * qj - pw)
                        * value(b, c, sh * pi + dh * qi - ph, sw * pj + dw * qj - pw)
                        for c in range(c0) for qi in range(kh) for qj in range(kw))
            total += s1**2 * inner / (c0 * kh * kw) + sb1**2
        return total / (ho * wo)

    s = torch.tensor([[s_term(a, b) for b in x] for a in x], dtype=D)
    k = tn.analytic_kernels(model, x)
    torch.testing.assert_close(k.nngp, s2**2 * s + sb2**2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k.ntk, 2 * s2**2 * s + sb2**2, rtol=1e-12, atol=1e-12)
    # the NTK of a linear network is quadratic in its parameters: its mean over draws is the
    # limit exactly (a check of the sums themselves)
    mc = tn.monte_carlo_kernels(lambda seed: model.apply(_reset), x, n_samples=48,
                                method="jacobian", progress=False)
    assert ((mc.ntk - k.ntk) / mc.ntk_stderr).abs().max() < 5


def _reset(module):
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()


# ---------------------------------------------------------------------------------
# Conv1d = Conv2d on height-1 images


@pytest.mark.parametrize("readout", ["flatten", "gap"])
def test_conv1d_equals_conv2d_with_height_one(readout):
    x = torch.randn(4, 2, 9, dtype=D, generator=torch.Generator().manual_seed(1))

    def model(dims):
        conv, pool = (NTKConv1d, nn.AvgPool1d) if dims == 1 else (NTKConv2d, nn.AvgPool2d)
        one = (lambda v: v) if dims == 1 else (lambda v: (1, v))
        pad = 1 if dims == 1 else (0, 1)
        layers = [conv(2, 3, one(3), stride=one(2), padding=pad, padding_mode="circular"),
                  nn.ReLU(), conv(3, 3, one(2), dilation=one(2), padding="same"), tn.nn.Erf(),
                  pool(one(2))]
        if readout == "flatten":
            return nn.Sequential(*layers, nn.Flatten(), NTKLinear(3 * 2, 2))
        return nn.Sequential(*layers, (nn.AdaptiveAvgPool1d if dims == 1 else
                                       nn.AdaptiveAvgPool2d)(1), nn.Flatten(), NTKLinear(3, 2))

    k1 = tn.analytic_kernels(model(1), x, x[:3] * 0.5)
    k2 = tn.analytic_kernels(model(2), x.unsqueeze(2), x[:3].unsqueeze(2) * 0.5)
    assert torch.equal(k1.nngp, k2.nngp) and torch.equal(k1.ntk, k2.ntk)
    assert cnn_op_args(lift(model(1))) == cnn_op_args(lift(model(2)))


# ---------------------------------------------------------------------------------
# Monte Carlo of wide CNNs

MC_CASES = {
    # name: (layers before the readout as a function of the width n, readout, inputs [C, H, W])
    "flatten-relu-stride2-zeros": (lambda n: [NTKConv2d(2, n, 3, stride=2, padding=1), nn.ReLU(),
                                              NTKConv2d(n, n, 2), nn.ReLU()], "flatten"),
    "gap-erf-same": (lambda n: [NTKConv2d(2, n, 3, padding="same"), tn.nn.Erf(),
                                NTKConv2d(n, n, 3, padding="same", bias_std=0.3), tn.nn.Erf()],
                     "gap"),
    "avgpool-flatten-relu-circular": (lambda n: [
        NTKConv2d(2, n, 3, padding=1, padding_mode="circular"), nn.ReLU(), nn.AvgPool2d(2),
        NTKConv2d(n, n, 2, padding=1, padding_mode="circular"), nn.ReLU()], "flatten"),
    "gap-tanh-quadrature-stride2": (lambda n: [
        NTKConv2d(2, n, 3, stride=2, padding=1, weight_std=1.5), nn.Tanh(),
        nn.AvgPool2d(2, stride=1),  # on 3×3 maps: 2×2 out (1×1 were the stride its kernel)
        NTKConv2d(n, n, 1, parametrization="standard", weight_std=1.2)], "gap"),
}


def mc_model(name, width, n_out=8):
    layers = [layer.double() for layer in MC_CASES[name][0](width)]
    body = nn.Sequential(*layers)
    with torch.no_grad():
        out = body(torch.zeros(1, 2, 5, 5, dtype=D))
    if MC_CASES[name][1] == "gap":
        head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), NTKLinear(width, width, dtype=D),
                nn.ReLU(), NTKLinear(width, n_out, dtype=D)]
    else:
        head = [nn.Flatten(), NTKLinear(out[0].numel(), n_out, dtype=D)]
    return nn.Sequential(*layers, *head)


def perturbed_specs(spec):
    """The spec with one deliberate mistake each (as tests/test_independent.py perturbs its
    oracle): σ_w² × 1.2 in every layer; every bias variance + 0.1; an AvgPool's stride read
    as its kernel (where that changes the geometry).

    Not among them, because these Monte-Carlo checks cannot see it: σ_w² × 1.5 in the first
    conv alone moves the NTK of "gap-erf-same" by 2.7% (max|z| 2.9 at 128 networks of width
    64); first-layer coefficients are checked exactly by the explicit sums and the
    selection-matrix reference (test_linear_cnn_kernels_are_explicit_sums,
    tests/test_cnn_op.py)."""
    import dataclasses
    layers = list(spec.layers)
    weighted = (Conv, Dense)
    out = {}
    out["sigma_w_all_x1.2"] = LayerSpec(tuple(
        dataclasses.replace(l, weight_var=1.2 * l.weight_var) if isinstance(l, weighted) else l
        for l in layers))
    out["bias_plus_0.1"] = LayerSpec(tuple(
        dataclasses.replace(l, bias_var=l.bias_var + 0.1) if isinstance(l, weighted)
        and l.has_bias else l for l in layers))
    if any(isinstance(l, AvgPool) and l.stride != l.kernel_size for l in layers):
        out["pool_stride_as_kernel"] = LayerSpec(tuple(
            AvgPool(l.kernel_size, l.kernel_size) if isinstance(l, AvgPool) else l
            for l in layers))
    return out


@pytest.mark.parametrize("name", list(MC_CASES))
def test_monte_carlo_of_wide_cnns_matches_the_limit(name):
    """128 networks of width 64, n_L = 8 outputs, 4 images 2×5×5 against x2 of 3 images:
    |z| < 5 for every entry of both kernels (standard errors of the Monte-Carlo mean), and
    relative Frobenius error ‖MC − limit‖/‖limit‖ < 0.03 + 3·‖stderr‖/‖limit‖ (a 3% allowance
    for the O(1/width) bias plus three times the Monte-Carlo noise).
    Anti-check: the NTK of each perturbed spec (perturbed_specs) misses the same Monte-Carlo
    estimate by more than twice an allowance (max|z| > 10 or relative error > 2·(0.03 +
    3·noise)), so a package with that mistake could not pass."""
    x1, x2 = images(4, seed=2), images(3, seed=3)
    model = mc_model(name, 64)
    limit = tn.analytic_kernels(model, x1, x2)  # standard layers: width matters
    mc = tn.monte_carlo_kernels(lambda seed: mc_model(name, 64), x1, x2, n_samples=128,
                                method="jacobian", progress=False)

    def stats(kind, ref):
        est, err = getattr(mc, kind), getattr(mc, f"{kind}_stderr")
        z = ((est - ref) / err).abs().max().item()
        rel = ((est - ref).norm() / ref.norm()).item()
        noise = (err.norm() / ref.norm()).item()
        return z, rel, noise

    for kind in ("ntk", "nngp"):
        z, rel, noise = stats(kind, getattr(limit, kind))
        print(f"{name} {kind}: max|z| {z:.2f}, relative error {rel:.4f}, noise {noise:.4f}")
        assert z < 5 and rel < 0.03 + 3 * noise, (kind, z, rel, noise)
    caught = {}
    for what, spec in perturbed_specs(lift(model)).items():
        z, rel, noise = stats("ntk", tn.analytic_kernels(spec, x1, x2).ntk)
        print(f"{name} perturbed {what}: max|z| {z:.2f}, relative error {rel:.4f}, "
              f"noise {noise:.4f}")
        caught[what] = z > 2 * 5 or rel > 2 * (0.03 + 3 * noise)
    assert all(caught.values()), caught


# ---------------------------------------------------------------------------------
# the recursion's own consistency


# Models for the fused-vs-torch comparison only (not Monte Carlo): every parameter that the
# MC cases leave coinciding with another takes a distinct value here — AvgPool stride ≠
# kernel on maps ≥ 3×3 (kernel 2 stride 1; kernel 3 stride 2; a non-square (3, 2) / (2, 1)),
# kernel, stride and dilation with height ≠ width, C_in ≠ C_out, images with H ≠ W.
POOL_CASES = {
    "avgpool-k2-s1-on-5x5": lambda: [
        NTKConv2d(2, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2, stride=1),
        NTKConv2d(3, 4, 2, stride=(1, 2), dilation=(2, 1), padding="valid"), tn.nn.Erf()],
    "avgpool-k3-s2-on-6x7": lambda: [
        NTKConv2d(2, 3, (2, 3), padding="same", padding_mode="circular"), nn.Tanh(),
        nn.AvgPool2d(3, stride=2), NTKConv2d(3, 5, 1, parametrization="standard")],
    "avgpool-3x2-s2x1-on-6x7": lambda: [
        NTKConv2d(2, 4, 2, padding=(1, 0)), nn.GELU(), nn.AvgPool2d((3, 2), stride=(2, 1)),
        NTKConv2d(4, 3, (2, 1), dilation=(1, 2), padding=(0, 1))],
}
POOL_SHAPES = {"avgpool-k2-s1-on-5x5": (5, 5), "avgpool-k3-s2-on-6x7": (6, 7),
               "avgpool-3x2-s2x1-on-6x7": (6, 7)}


def pool_model(name, n_out=3):
    """A POOL_CASES body with a Flatten readout, float64."""
    body = nn.Sequential(*POOL_CASES[name]()).double()
    with torch.no_grad():
        out = body(torch.zeros(1, 2, *POOL_SHAPES[name], dtype=D))
    assert min(out.shape[2:]) >= 2, out.shape  # the pool's stride shows in its output size
    return nn.Sequential(*body, nn.Flatten(), NTKLinear(out[0].numel(), n_out, dtype=D))


@pytest.mark.parametrize("name", list(MC_CASES) + list(POOL_CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_op_equals_the_plain_torch_recursion(name, dtype):
    """analytic_kernels runs the fused C++ op; cnn_kernels is the same recursion written in
    plain torch (a different implementation: einsum planes, window means, torch
    expectations, and it reads the layer spec directly, not the op's encoded program):
    1e-10 in float64, 1e-5 in float32, x2 given and x2 = None."""
    if name in POOL_CASES:
        model = pool_model(name).to(dtype)
        h, w = POOL_SHAPES[name]
        x1, x2 = images(4, h=h, w=w, seed=11).to(dtype), images(3, h=h, w=w, seed=12).to(dtype)
    else:
        model = mc_model(name, 5).to(dtype)
        x1, x2 = images(4, seed=11).to(dtype), images(3, seed=12).to(dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for second in (x2, None):
        fused = tn.analytic_kernels(model, x1, second)
        eager = cnn_kernels(lift(model), x1, second)
        for kind in ("nngp", "ntk"):
            torch.testing.assert_close(getattr(fused, kind), getattr(eager, kind), rtol=tol,
                                       atol=tol * getattr(eager, kind).abs().max().item())


def test_blocks_symmetry_and_kernels_into():
    model = mc_model("avgpool-flatten-relu-circular", 3)
    x = images(5, seed=4)
    full = tn.analytic_kernels(model, x)
    assert torch.equal(full.ntk, full.ntk.T) and torch.equal(full.nngp, full.nngp.T)
    cross = tn.analytic_kernels(model, x[:2], x[2:])
    torch.testing.assert_close(cross.ntk, full.ntk[:2, 2:], rtol=1e-13, atol=0)
    torch.testing.assert_close(cross.nngp, full.nngp[:2, 2:], rtol=1e-13, atol=0)
    out = torch.empty(5, 5, dtype=D)
    assert analytic_kernels_into(model, x, None, out, get="ntk", chunk_size=2) == 3
    torch.testing.assert_close(out, full.ntk, rtol=1e-13, atol=0)
    only = tn.analytic_kernels(model, x, get="nngp")
    assert only.ntk is None and torch.equal(only.nngp, full.nngp)
    # erf only: its quadrature converges fast (ReLU's kink does not)
    smooth = nn.Sequential(NTKConv2d(2, 3, 3, padding="same"), tn.nn.Erf(), nn.AvgPool2d(2),
                           NTKConv2d(3, 3, 2, padding=1), tn.nn.Erf(), nn.AdaptiveAvgPool2d(1),
                           nn.Flatten(), NTKLinear(3, 1)).double()
    quad = tn.analytic_kernels(smooth, x, force_quadrature=True, quadrature_degree=48)
    torch.testing.assert_close(quad.ntk, tn.analytic_kernels(smooth, x).ntk, rtol=1e-6, atol=0)


def test_diagonal_path_equals_plane_path_and_float32():
    """A Flatten readout without pooling keeps only same-position entries; a 1×1 AvgPool
    forces the full P×P planes: the same kernels (float64, 1e-13). float32 within 1e-5."""
    def model(pool):
        return nn.Sequential(NTKConv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(),
                             NTKConv2d(3, 3, 2, padding="same", padding_mode="circular"),
                             nn.GELU(), *([nn.AvgPool2d(1)] if pool else []), nn.Flatten(),
                             NTKLinear(27, 1)).double()

    x1, x2 = images(3, h=6, w=6, seed=7), images(2, h=6, w=6, seed=8)
    diag, plane = (tn.analytic_kernels(model(pool), x1, x2) for pool in (False, True))
    torch.testing.assert_close(diag.ntk, plane.ntk, rtol=1e-13, atol=0)
    torch.testing.assert_close(diag.nngp, plane.nngp, rtol=1e-13, atol=0)
    single = tn.analytic_kernels(model(False).float(), x1.float(), x2.float())
    assert single.ntk.dtype == torch.float32
    torch.testing.assert_close(single.ntk.double(), diag.ntk, rtol=1e-5, atol=1e-6)


def test_wrapper_limit_and_tracker_limit_kernel():
    model = mc_model("gap-erf-same", 6)
    x = images(4, seed=5)
    ref = tn.analytic_kernels(model, x)
    torch.testing.assert_close(tn.NTK(model).limit(x).ntk, ref.ntk, rtol=0, atol=0)
    tracker = tn.KernelDriftTracker(model, x, infinite_width=True, method="jacobian")
    assert tracker.limit_unavailable == ""


def test_op_args_by_hand():
    spec = LayerSpec((
        Conv(2, 4, (3, 3), (2, 1), (1, 2), ((1, 1), (0, 2)), "circular", 1.5, 0.2, "ntk"),
        Activation("relu"),
        AvgPool((3, 2), (2, 1)),  # stride ≠ kernel, height ≠ width: each int distinct
        Conv(4, 5, (3,) * 2, weight_var=2.0, bias_var=0.0, parametrization="standard",
             has_bias=False),
        GlobalAvgPool(),
        Dense(5, 7, 0.5, 0.1, "standard"),
        Activation("leaky_relu", 0.2),
        Dense(7, 1, 3.0, 0.25),
    ))
    codes, ints, floats = cnn_op_args(spec)
    assert codes == [0, 1, 2, 0, 3, 5, 1, 5]
    assert ints == [3, 3, 2, 1, 1, 2, 1, 1, 0, 2, 1,  # conv 1
                    1,  # relu
                    3, 2, 2, 1,  # avgpool (kh, kw, sh, sw)
                    3, 3, 1, 1, 1, 1, 0, 0, 0, 0, 0,  # conv 2
                    2]  # leaky_relu
    assert floats == pytest.approx([1.5, 0.2, 1.5, 0.2,  # conv 1 (ntk: tw = σ_w², tb = σ_b²)
                                    0.0,  # relu
                                    2.0, 0.0, 36.0, 0.0,  # conv 2 (standard: tw = fan_in)
                                    0.5, 0.1, 5.0, 1.0,  # dense (standard)
                                    0.2,  # leaky_relu
                                    3.0, 0.25, 3.0, 0.25], rel=1e-15)  # dense (ntk)
    one_d = LayerSpec((Conv(1, 2, (4,), (3,), (2,), ((1, 2),)), Flatten(), Dense(6, 1)))
    assert cnn_op_args(one_d) == ([0, 4, 5], [1, 4, 1, 3, 1, 2, 0, 0, 1, 2, 0],
                                  [1.0, 0.01, 1.0, 0.01, 1.0, 0.01, 1.0, 0.01])


# ---------------------------------------------------------------------------------
# lifting


def test_torch_conv_lifts_like_standard_ntk_conv():
    torch_model = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1), nn.ReLU(),
                                nn.Conv2d(4, 4, 2, padding="same", padding_mode="circular"),
                                nn.AvgPool2d(2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                nn.Linear(4, 3))

    def std(c_in, c_out, k, **kw):
        return NTKConv2d(c_in, c_out, k, weight_std=1 / math.sqrt(3),
                         bias_std=1 / math.sqrt(3 * c_in * k * k), parametrization="standard",
                         **kw)

    ntk_model = nn.Sequential(std(2, 4, 3, stride=2, padding=1), nn.ReLU(),
                              std(4, 4, 2, padding="same", padding_mode="circular"),
                              nn.AvgPool2d(2, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                              NTKLinear(4, 3, weight_std=1 / math.sqrt(3),
                                        bias_std=1 / math.sqrt(12), parametrization="standard"))
    a, b = lift(torch_model), lift(ntk_model)
    assert [type(l).__name__ for l in a.layers] == ["Conv", "Activation", "Conv", "AvgPool",
                                                    "GlobalAvgPool", "Dense"]
    for la, lb in zip(a.layers, b.layers):
        if isinstance(la, Conv):
            assert (la.weight_var, la.parametrization) == (1 / 3, "standard")
            assert la.bias_var == pytest.approx(lb.bias_var, rel=1e-15)
            assert la.padding == lb.padding and la.padding_mode == lb.padding_mode
    x = images(3, seed=6)
    torch.testing.assert_close(tn.analytic_kernels(torch_model, x).ntk,
                               tn.analytic_kernels(ntk_model, x).ntk, rtol=1e-14, atol=0)
    # PyTorch's default initialization has these variances (U(±1/√fan_in))
    torch.manual_seed(0)
    big = nn.Conv2d(16, 64, 3)
    assert abs(big.weight.var().item() * 3 * 144 - 1) < 0.05


@pytest.mark.parametrize("layer, match", [
    (nn.MaxPool2d(2), r"module 2 \(MaxPool2d\) does not lift"),
    (nn.BatchNorm2d(4), r"module 2 \(BatchNorm2d\) does not lift"),
    (nn.Conv2d(4, 4, 1, groups=2), r"module 2 \(Conv2d\) does not lift: groups=2"),
    (nn.AdaptiveAvgPool2d(2), r"module 2 \(AdaptiveAvgPool2d\) does not lift: output_size=2"),
    (nn.AvgPool2d(2, divisor_override=3), r"module 2 \(AvgPool2d\) does not lift: only "
     "ceil_mode=False and no divisor_override"),
    (nn.AvgPool2d(2, ceil_mode=True), r"module 2 \(AvgPool2d\) does not lift"),
    (nn.Conv2d(4, 4, 1, padding_mode="reflect"), r"module 2 \(Conv2d\) does not lift: padding_m"),
    (nn.LayerNorm(5), r"node 2 \(LayerNorm at 2\) normalizes over features; its input gives 4 "
     r"channels: a LayerNorm over the last axis of a 2-D CNN's \[N, C, H, W\] normalizes the "
     r"position axis W"),
    (nn.Linear(5, 4), r"module 2 \(Linear\) does not lift: a dense layer after convolutions"),
])
def test_unsupported_layers_are_refused_by_name(layer, match):
    model = nn.Sequential(NTKConv2d(2, 4, 3), nn.ReLU(), layer, nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), NTKLinear(4, 1))
    with pytest.raises(ValueError, match=match) as info:
        lift(model)
    assert "'jacobian'" in str(info.value) or "LayerNorm" in str(info.value)
    with pytest.raises(ValueError, match=match):
        tn.NTK(model).limit(images(2).float())


def test_spec_validation_and_mlp_only_consumers():
    with pytest.raises(ValueError, match="readout"):
        LayerSpec((Conv(1, 2, (3, 3)), Activation("relu"), Dense(2, 1)))
    with pytest.raises(ValueError, match="in_channels=3; the layer before gives 2"):
        LayerSpec((Conv(1, 2, (3, 3)), Conv(3, 2, (3, 3)), GlobalAvgPool(), Dense(2, 1)))
    with pytest.raises(ValueError, match="after GlobalAvgPool has in_features=3"):
        LayerSpec((Conv(1, 2, (3, 3)), GlobalAvgPool(), Dense(3, 1)))
    with pytest.raises(ValueError, match=r"module 1 \(Conv2d\) does not lift"):
        lift(nn.Sequential(nn.Linear(3, 4), nn.Conv2d(1, 1, 1)))
    model = mc_model("gap-erf-same", 4)
    spec = lift(model)
    assert not spec.is_mlp and spec.spatial_dims == 2 and spec.in_channels == 2
    assert tn.mlp_spec([3, 4, 1]).is_mlp
    for call in (lambda: compiled_op_args(spec), lambda: StructuredPlan(spec),
                 lambda: tn.random_features(spec, None, torch.randn(2, 3))):
        with pytest.raises(ValueError, match="CNN spec"):
            call()
    with warnings.catch_warnings():
        warnings.simplefilter("error", tn.MethodFallbackWarning)
        kernel, info = tn.empirical_ntk(model, images(2), return_info=True)
    assert info.method == "structured" and info.contractions


def test_bad_inputs():
    flat = mc_model("flatten-relu-stride2-zeros", 3)
    with pytest.raises(ValueError, match=r"per-sample shape \[2, 5, 5\].*got \[2, 8, 8\]"):
        tn.analytic_kernels(flat, images(2, h=8, w=8))
    with pytest.raises(ValueError, match=r"shape \[N, 2, H, W\] for this CNN; got \[2, 3, 5, 5\]"):
        tn.analytic_kernels(flat, images(2, c=3))
    with pytest.raises(ValueError, match=r"shape \[N, 2, H, W\]"):
        tn.NTK(flat).limit(torch.randn(2, 50, dtype=D))
    gap = mc_model("gap-erf-same", 3)
    bad = images(2)
    bad[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        tn.analytic_kernels(gap, bad)
    with pytest.raises(ValueError, match="at least one sample"):
        tn.analytic_kernels(gap, images(0))
    with pytest.raises(ValueError, match="per-sample shape of x1"):
        tn.analytic_kernels(gap, images(2), images(2, h=6, w=6))
    one_d = nn.Sequential(NTKConv1d(2, 3, 3, stride=2), nn.ReLU(), nn.Flatten(),
                          NTKLinear(3 * 4, 1)).double()
    with pytest.raises(ValueError, match=r"shape \[N, 2, L\] for this CNN; got \[3, 2, 1, 9\]"):
        tn.analytic_kernels(one_d, torch.randn(3, 2, 1, 9, dtype=D))
    with pytest.raises(ValueError, match=r"per-sample shape \[2, 9\] \(the dense layer after "
                       r"the Flatten takes 4 positions per channel; these inputs give 5\)"):
        tn.analytic_kernels(one_d, torch.randn(3, 2, 11, dtype=D))
    assert tn.analytic_kernels(one_d, torch.randn(3, 2, 10, dtype=D), get="ntk").nngp is None
