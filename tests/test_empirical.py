"""Finite-width NTK: structured op, torch.func Jacobian contraction and NTK-vector products,
each against tests/oracles.py's explicit per-sample Jacobians (torch.func only, no code
shared with the package).

Oracle tiers: every method agrees with the oracle in float64 to a relative error of 1e-10
(the same sums, another algorithm); chunked and unchunked runs agree to
rounding (1e-13); x2 = None is exactly symmetric; the wide-network limit (Jacot
Thm 1) is checked statistically (width, seeds and the tolerance are in the test).
"""

from __future__ import annotations


import pytest
import torch
from torch import nn

import torch_ntk
from torch_ntk import NTKLinear, empirical_ntk, ntk_mlp, ops
from torch_ntk.nn import Erf

from oracles import func_ntk_modes

F64 = torch.float64
MODES = ("full", "trace", "diagonal")
METHODS = ("structured", "jacobian", "ntk_vp")
TOL = 1e-10

# torch.func's jvp imports decompositions that still call torch.jit.script.
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script` is deprecated:DeprecationWarning"
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def transpose(k: torch.Tensor, mode: str) -> torch.Tensor:
    t = k.transpose(0, 1)
    return t.transpose(2, 3) if mode == "full" else t


ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "erf": Erf,
}


def make_model(kind: str, act: str, depth: int, n_out: int, bias: bool = True, n0: int = 5,
               width: int = 11, seed: int = 0) -> nn.Sequential:
    """kind: "ntk"/"standard" (NTKLinear) or "linear" (nn.Linear, PyTorch's default init)."""
    torch.manual_seed(seed)
    widths = [n0] + [width] * (depth - 1) + [n_out]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        if i > 0:
            layers.append(ACTIVATIONS[act]())
        if kind == "linear":
            layers.append(nn.Linear(a, b, bias=bias, dtype=F64))
        else:
            layers.append(NTKLinear(a, b, bias=bias, bias_std=0.3, parametrization=kind, dtype=F64))
    return nn.Sequential(*layers)


# (parametrization, activation, depth, n_L, bias)
CASES = [
    ("ntk", "relu", 1, 1, True),
    ("ntk", "relu", 2, 3, True),
    ("ntk", "leaky_relu", 3, 1, True),
    ("ntk", "tanh", 4, 3, True),
    ("ntk", "gelu", 2, 1, True),
    ("ntk", "erf", 3, 3, True),
    ("ntk", "relu", 3, 3, False),
    ("standard", "relu", 3, 3, True),
    ("standard", "tanh", 2, 1, True),
    ("standard", "gelu", 4, 1, True),
    ("standard", "erf", 1, 3, True),
    ("linear", "relu", 2, 3, True),
    ("linear", "leaky_relu", 4, 1, True),
    ("linear", "tanh", 3, 3, True),
    ("linear", "erf", 2, 1, False),
    ("linear", "gelu", 1, 1, False),
]


def assert_matches_oracle(model, x1, x2, modes=MODES, methods=METHODS, tol=TOL, **kw):
    """Every method in every mode within ``tol`` of the torch.func oracle."""
    oracle = func_ntk_modes(model, x1, x2)
    for mode in modes:
        for method in methods:
            k = empirical_ntk(model, x1, x2, mode=mode, method=method, **kw)
            assert k.shape == oracle[mode].shape, (method, mode)
            assert rel_err(k, oracle[mode]) <= tol, (method, mode, x2 is None)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_methods_match_the_torch_func_oracle(case):
    kind, act, depth, n_out, bias = case
    model = make_model(kind, act, depth, n_out, bias)
    x1 = torch.randn(6, 5, dtype=F64)
    x2 = torch.randn(4, 5, dtype=F64)
    for second in (x2, None):
        assert_matches_oracle(model, x1, second)


def test_modes_are_consistent():
    model = make_model("ntk", "tanh", 3, 3)
    x1, x2 = torch.randn(5, 5, dtype=F64), torch.randn(3, 5, dtype=F64)
    full = empirical_ntk(model, x1, x2, mode="full")
    diag = empirical_ntk(model, x1, x2, mode="diagonal")
    trace = empirical_ntk(model, x1, x2, mode="trace")
    assert rel_err(diag, full.diagonal(dim1=2, dim2=3)) <= 1e-13
    assert rel_err(trace, full.diagonal(dim1=2, dim2=3).mean(-1)) <= 1e-13  # a mean over k


def test_frozen_parameters_drop_out():
    model = make_model("ntk", "relu", 4, 3)
    model[0].weight.requires_grad_(False)  # first layer's weight frozen, its bias trains
    model[4].bias.requires_grad_(False)
    for p in model[2].parameters():  # a whole layer frozen
        p.requires_grad_(False)
    x1, x2 = torch.randn(6, 5, dtype=F64), torch.randn(3, 5, dtype=F64)
    assert_matches_oracle(model, x1, x2)
    frozen = empirical_ntk(model, x1, x2, mode="trace")
    for p in model.parameters():
        p.requires_grad_(True)
    assert not torch.allclose(frozen, empirical_ntk(model, x1, x2, mode="trace"))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", MODES)
def test_chunked_equals_unchunked(method, mode):
    model = make_model("ntk", "gelu", 3, 3)
    x1, x2 = torch.randn(9, 5, dtype=F64), torch.randn(7, 5, dtype=F64)
    for second in (None, x2):
        whole = empirical_ntk(model, x1, second, mode=mode, method=method)
        for chunk in (2, 4):
            part, info = empirical_ntk(model, x1, second, mode=mode, method=method,
                                       chunk_size=chunk, return_info=True)
            assert info.blocks > 1 and info.row_chunk == chunk
            assert rel_err(part, whole) <= 1e-13


def test_memory_budget_forces_chunks():
    model = make_model("ntk", "relu", 3, 3)
    x = torch.randn(12, 5, dtype=F64)
    whole = empirical_ntk(model, x)
    for method in METHODS:
        k, info = empirical_ntk(model, x, method=method, memory_budget=60_000, return_info=True)
        assert info.blocks > 1, method
        assert info.memory_budget == 60_000
        assert rel_err(k, whole) <= 1e-12


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", MODES)
def test_symmetric_when_x2_is_none(method, mode):
    model = make_model("standard", "tanh", 3, 3)
    x = torch.randn(11, 5, dtype=F64)
    for chunk in (None, 4):
        k = empirical_ntk(model, x, mode=mode, method=method, chunk_size=chunk)
        assert torch.equal(k, transpose(k, mode))
    assert torch.equal(empirical_ntk(model, x, x, mode=mode, method=method, chunk_size=4), k)
    same = empirical_ntk(model, x, x.clone(), mode=mode, method=method)
    assert rel_err(k, same) <= 1e-13


def test_structured_float32_symmetric_and_accurate():
    model = make_model("ntk", "relu", 3, 3, width=300)
    x = torch.randn(300, 5, dtype=F64)  # several CPU tiles in full mode
    reference = func_ntk_modes(model, x)["trace"]
    model32, x32 = model.float(), x.float()
    for mode in MODES:
        k = empirical_ntk(model32, x32, mode=mode)
        assert k.dtype == torch.float32
        assert torch.equal(k, transpose(k, mode))
    k = empirical_ntk(model32, x32, mode="trace")
    assert rel_err(k.double(), reference) <= 1e-5


def test_flatten_dropout_identity_and_dense_pairs_lift():
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Flatten(), NTKLinear(12, 9, dtype=F64), nn.Dropout(0.5), nn.Tanh(), nn.Identity(),
        NTKLinear(9, 7, dtype=F64), NTKLinear(7, 2, dtype=F64),  # two dense layers in a row
    ).eval()
    x1, x2 = torch.randn(5, 3, 4, dtype=F64), torch.randn(3, 3, 4, dtype=F64)
    k, info = empirical_ntk(model, x1, x2, return_info=True)
    assert info.method == "structured"
    assert_matches_oracle(model, x1, x2)
    assert_matches_oracle(model, x1, None, methods=("structured",))


def test_auto_reports_its_choice():
    model = make_model("ntk", "relu", 2, 1)
    x = torch.randn(4, 5, dtype=F64)
    _, info = empirical_ntk(model, x, return_info=True)
    assert info.method == "structured" and "lifts" in info.reason

    torch.manual_seed(0)
    other = nn.Sequential(nn.Linear(5, 8, dtype=F64), nn.LayerNorm(8, dtype=F64), nn.Tanh(),
                          nn.Linear(8, 2, dtype=F64))
    k, info = empirical_ntk(other, x, return_info=True)
    assert info.method == "hooks" and "LayerNorm" in info.reason
    assert rel_err(k, empirical_ntk(other, x, method="ntk_vp")) <= TOL


def test_any_model_and_scalar_outputs():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 6, dtype=F64)
            self.b = nn.Linear(6, 1, dtype=F64)

        def forward(self, x):
            return self.b(torch.sin(self.a(x))).squeeze(-1)  # [N]: n_L = 1

    torch.manual_seed(0)
    net = Net()
    x1, x2 = torch.randn(5, 4, dtype=F64), torch.randn(3, 4, dtype=F64)
    k = empirical_ntk(net, x1, x2)
    assert k.shape == (5, 3, 1, 1)
    # Reference: explicit per-sample gradients.
    def grads(x):
        rows = []
        for xi in x:
            net.zero_grad()
            net(xi[None]).sum().backward()
            rows.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
        return torch.stack(rows)

    expected = grads(x1) @ grads(x2).T
    assert rel_err(k[..., 0, 0], expected) <= TOL
    assert rel_err(empirical_ntk(net, x1, x2, method="ntk_vp")[..., 0, 0], expected) <= TOL


def test_out_argument_and_memory_map(tmp_path):
    model = make_model("ntk", "relu", 3, 3)
    x1, x2 = torch.randn(10, 5, dtype=F64), torch.randn(6, 5, dtype=F64)
    expected = empirical_ntk(model, x1, x2, mode="diagonal")
    out = torch.empty(10, 6, 3, dtype=F64)
    result = empirical_ntk(model, x1, x2, mode="diagonal", out=out)
    assert result is out and rel_err(out, expected) <= 1e-13
    path = tmp_path / "ntk.bin"
    mapped = torch.from_file(str(path), shared=True, size=10 * 10, dtype=F64).view(10, 10)
    k = empirical_ntk(model, x1, mode="trace", out=mapped, chunk_size=3)
    assert k is mapped
    del k, mapped
    back = torch.from_file(str(path), shared=False, size=100, dtype=F64).view(10, 10)
    assert rel_err(back, empirical_ntk(model, x1, mode="trace")) <= 1e-13
    with pytest.raises(ValueError, match="out must have shape"):
        empirical_ntk(model, x1, x2, mode="full", out=torch.empty(10, 6, dtype=F64))


def test_progress_bar(capsys):
    model = make_model("ntk", "relu", 2, 1)
    x = torch.randn(8, 5, dtype=F64)
    empirical_ntk(model, x, chunk_size=2, progress=True)
    assert "empirical_ntk (structured)" in capsys.readouterr().err
    empirical_ntk(model, x, chunk_size=2)  # short: no bar within the 2 s delay
    assert "empirical_ntk" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------
# bad input


def test_bad_inputs_give_clear_errors():
    model = make_model("ntk", "relu", 2, 1)
    x = torch.randn(4, 5, dtype=F64)
    with pytest.raises(ValueError, match="5 features"):
        empirical_ntk(model, torch.randn(4, 6, dtype=F64))
    with pytest.raises(ValueError, match="x2 must have the per-sample shape"):
        empirical_ntk(model, x, torch.randn(3, 6, dtype=F64))
    with pytest.raises(ValueError, match="cannot be applied"):
        empirical_ntk(model, torch.randn(4, 6, dtype=F64), method="jacobian")
    bad = x.clone()
    bad[1, 2] = float("nan")
    for method in METHODS:
        with pytest.raises(ValueError, match="NaN or Inf"):
            empirical_ntk(model, bad, method=method)
    with pytest.raises(TypeError, match="float32 or float64"):
        empirical_ntk(model, torch.ones(4, 5, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        empirical_ntk(model, [[1.0] * 5])
    with pytest.raises(ValueError, match="N >= 1"):
        empirical_ntk(model, torch.empty(0, 5, dtype=F64))
    with pytest.raises(ValueError, match="dtype of x1"):
        empirical_ntk(model, x, x.float())
    with pytest.raises(ValueError, match=r"model.to\(torch.float32\)"):
        empirical_ntk(model, x.float())
    with pytest.raises(ValueError, match="mode must be one of"):
        empirical_ntk(model, x, mode="sum")
    with pytest.raises(ValueError, match="method must be one of"):
        empirical_ntk(model, x, method="fast")
    with pytest.raises(ValueError, match="chunk_size"):
        empirical_ntk(model, x, chunk_size=0)
    with pytest.raises(ValueError, match="memory_budget"):
        empirical_ntk(model, x, memory_budget=-1)


def test_unliftable_model_with_structured_is_rejected():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8, dtype=F64), nn.Softmax(dim=1), nn.Linear(8, 1, dtype=F64))
    x = torch.randn(4, 5, dtype=F64)
    with pytest.raises(ValueError, match=r"method='structured' is not available.*Softmax"):
        empirical_ntk(model, x, method="structured")
    got = empirical_ntk(model, x)  # auto falls back
    want = func_ntk_modes(model, x)["full"]  # per-sample Jacobians by torch.func
    assert got.shape == want.shape == (4, 4, 1, 1)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)


def test_parameter_problems():
    model = make_model("ntk", "relu", 2, 1)
    x = torch.randn(4, 5, dtype=F64)
    with torch.no_grad():
        model[0].weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="parameter 0.weight contains NaN or Inf"):
        empirical_ntk(model, x)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter with requires_grad=True"):
        empirical_ntk(model, x)


def test_training_dropout_is_evaluated_in_eval_mode():
    # Since 0.2 every entry point computes the kernel of the model in eval mode (the
    # random network of training-mode dropout has no NTK) and restores the modes.
    model = nn.Sequential(NTKLinear(5, 8, dtype=F64), nn.ReLU(), nn.Dropout(0.1),
                          NTKLinear(8, 1, dtype=F64))
    x = torch.randn(4, 5, dtype=F64)
    k, info = empirical_ntk(model, x, mode="trace", return_info=True)
    assert info.method == "structured" and model.training and model[2].training
    assert rel_err(k, func_ntk_modes(model, x)["trace"]) <= TOL  # the oracle evaluates in eval()
    model.eval()
    assert torch.equal(k, empirical_ntk(model, x, mode="trace"))


def test_subclassed_linear_with_its_own_forward_does_not_lift():
    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    torch.manual_seed(0)
    model = nn.Sequential(Scaled(5, 7, dtype=F64), nn.Tanh(), nn.Linear(7, 1, dtype=F64))
    x = torch.randn(4, 5, dtype=F64)
    k, info = empirical_ntk(model, x, return_info=True)
    assert info.method == "hooks" and "overrides forward" in info.reason
    assert rel_err(k, empirical_ntk(model, x, method="ntk_vp")) <= TOL


# ---------------------------------------------------------------------------------
# the compiled op


def composite(a1, d1, a2, d2, cw, cb, mode, product=torch.einsum):
    """Plain-torch Σ_l (c_w A1 A2ᵀ + c_b) ⊙ (D1 D2ᵀ); ``product(equation, X, Y)`` forms
    the Gram products (default: einsum in the operands' dtype)."""
    total = 0
    for A1, D1, A2, D2, w, b in zip(a1, d1, a2, d2, cw, cb):
        ga = w * product("im,jm->ij", A1, A2) + b
        gd = product("ikm,jlm->ijkl", D1, D2)
        if mode == "full":
            total = total + ga[:, :, None, None] * gd
        elif mode == "trace":
            total = total + ga * gd.diagonal(dim1=2, dim2=3).mean(-1)
        else:
            total = total + ga[:, :, None] * gd.diagonal(dim1=2, dim2=3)
    return total


def op_inputs(n1, n2, n_out, dtype, device="cpu", widths=(5, 7, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    dims = list(widths) + [n_out]

    def side(n):
        a = [torch.randn(n, w, generator=g, dtype=dtype).to(device) for w in dims[:-1]]
        d = [torch.randn(n, n_out, w, generator=g, dtype=dtype).to(device) for w in dims[1:]]
        return a, d

    a1, d1 = side(n1)
    a2, d2 = side(n2) if n2 is not None else (None, None)
    cw = [0.3, 1.0, 0.0][: len(dims) - 1]
    cb = [0.1, 0.0, 0.5][: len(dims) - 1]
    return a1, d1, a2, d2, cw, cb


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n_out", [1, 3])
def test_op_matches_composite(mode, n_out):
    # 300 samples: several CPU tiles, ragged edges, mirrored off-diagonal tiles.
    for n2 in (None, 170):
        a1, d1, a2, d2, cw, cb = op_inputs(300, n2, n_out, F64)
        k = ops.structured_ntk(a1, d1, a2, d2, cw, cb, mode)
        ref = composite(a1, d1, a2 or a1, d2 or d1, cw, cb, mode)
        assert rel_err(k, ref) <= 1e-13
        if n2 is None:
            assert torch.equal(k, transpose(k, mode))


def test_op_non_contiguous_inputs():
    a1, d1, a2, d2, cw, cb = op_inputs(9, 6, 3, F64)
    nc = lambda ts: [t.transpose(0, -1).contiguous().transpose(0, -1) for t in ts]  # noqa: E731
    assert not nc(a1)[0].is_contiguous()
    k = ops.structured_ntk(nc(a1), nc(d1), nc(a2), nc(d2), cw, cb, "full")
    assert rel_err(k, ops.structured_ntk(a1, d1, a2, d2, cw, cb, "full")) <= 1e-15


def test_op_deep_model():
    a1, d1, _, _, _, _ = op_inputs(20, None, 2, F64, widths=[3] + [4] * 19)
    cw, cb = [0.5] * 20, [0.1] * 20
    k = ops.structured_ntk(a1, d1, None, None, cw, cb, "full")
    assert rel_err(k, composite(a1, d1, a1, d1, cw, cb, "full")) <= 1e-13


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("mode", MODES)
def test_opcheck(dtype, mode):
    for n2 in (None, 4):
        a1, d1, a2, d2, cw, cb = op_inputs(6, n2, 3, dtype)
        torch.library.opcheck(
            torch.ops.torch_ntk.structured_ntk.default,
            (a1, d1, a2 or [], d2 or [], cw, cb, mode),
        )


def test_op_bad_arguments():
    a1, d1, a2, d2, cw, cb = op_inputs(6, 4, 3, F64)
    op = torch.ops.torch_ntk.structured_ntk.default
    with pytest.raises(ValueError, match="mode must be 'full', 'trace' or 'diagonal'"):
        op(a1, d1, [], [], cw, cb, "sum")
    with pytest.raises(ValueError, match="one entry per dense layer"):
        op(a1, d1[:2], [], [], cw, cb, "full")
    with pytest.raises(ValueError, match=r"d1\[1\] must have shape \[6, 3, m_l\]"):
        op(a1, [d1[0], d1[1][:, :2], d1[2]], [], [], cw, cb, "full")
    with pytest.raises(ValueError, match=r"a2\[0\] must have 5 columns"):
        op(a1, d1, [a2[0][:, :4]] + a2[1:], d2, cw, cb, "trace")
    with pytest.raises(ValueError, match="a2 and d2 must both be empty"):
        op(a1, d1, a2, [], cw, cb, "trace")
    with pytest.raises(TypeError, match=r"d1\[0\] must have the dtype of a1\[0\]"):
        op(a1, [d1[0].float()] + d1[1:], [], [], cw, cb, "full")
    with pytest.raises(ValueError, match="must be finite"):
        op(a1, d1, [], [], [float("nan"), 1.0, 1.0], cb, "full")


# ---------------------------------------------------------------------------------
# reduced precisions: bfloat16 operands, float32 accumulation


def rounded_product(precision):
    """Gram products in float64 of the operands as precision ``precision`` rounds them:
    the bfloat16 rounding (bf16), or its high and low parts without the low×low term
    (bf16x3). Independent of the op: torch's own bfloat16 conversion does the rounding."""

    def split(t):
        hi = t.float().bfloat16()
        return hi.double(), (t.float() - hi.float()).bfloat16().double()

    def product(eq, x, y):
        (xh, xl), (yh, yl) = split(x), split(y)
        out = torch.einsum(eq, xh, yh)
        if precision == "bf16x3":
            out = out + torch.einsum(eq, xh, yl) + torch.einsum(eq, xl, yh)
        return out

    return product


@pytest.mark.parametrize("precision", ["bf16", "bf16x3"])
@pytest.mark.parametrize("mode", MODES)
def test_op_precision_is_the_rounded_formula(precision, mode):
    # The op computes exactly the formula on rounded operands, accumulated in float32;
    # its error against float64 is that of the rounding, bounded as the docs state.
    for n2 in (None, 170):
        a1, d1, a2, d2, cw, cb = op_inputs(300, n2, 3, F64, widths=(40, 64, 64))
        a2, d2 = a2 or a1, d2 or d1
        exact = composite(a1, d1, a2, d2, cw, cb, mode)
        rounded = composite(a1, d1, a2, d2, cw, cb, mode, product=rounded_product(precision))
        f32 = lambda ts: None if ts is None or n2 is None else [t.float() for t in ts]  # noqa: E731
        k = ops.structured_ntk([t.float() for t in a1], [t.float() for t in d1], f32(a2), f32(d2),
                               cw, cb, mode, precision)
        assert k.dtype == torch.float32
        assert rel_err(k.double(), rounded) <= 2e-6
        err = rel_err(k.double(), exact)
        if precision == "bf16":
            assert 1e-4 <= err <= 3e-2  # it really rounds to 8 significant bits
        else:
            assert err <= 2e-5
        if n2 is None:
            assert torch.equal(k, transpose(k, mode))


def test_empirical_ntk_precision():
    model = make_model("ntk", "relu", 3, 2, width=64)
    x1, x2 = torch.randn(40, 5, dtype=F64), torch.randn(25, 5, dtype=F64)
    exact = func_ntk_modes(model, x1, x2)["full"]
    model32 = model.float()
    errors = {}
    for precision in ("highest", "bf16x3", "bf16"):
        k = empirical_ntk(model32, x1.float(), x2.float(), precision=precision)
        errors[precision] = rel_err(k.double(), exact)
    assert errors["highest"] <= 1e-6 and errors["bf16x3"] <= 2e-5 <= errors["bf16"] <= 3e-2
    with pytest.raises(ValueError, match="precision must be one of"):
        empirical_ntk(model32, x1.float(), precision="tf32")
    with pytest.raises(ValueError, match="needs the structured method"):
        empirical_ntk(model32, x1.float(), method="jacobian", precision="bf16")
    with pytest.raises(ValueError, match="needs float32 inputs"):
        empirical_ntk(model.double(), x1, precision="bf16x3")


def test_op_precision_bad_arguments():
    a1, d1, a2, d2, cw, cb = op_inputs(6, 4, 3, F64)
    op = torch.ops.torch_ntk.structured_ntk.default
    with pytest.raises(ValueError, match="precision must be 'highest', 'bf16' or 'bf16x3'"):
        op([t.float() for t in a1], [t.float() for t in d1], [], [], cw, cb, "full", "tf32")
    with pytest.raises(TypeError, match="precision 'bf16' needs float32 inputs"):
        op(a1, d1, [], [], cw, cb, "full", "bf16")


@pytest.mark.parametrize("precision", ["bf16", "bf16x3"])
def test_opcheck_precision(precision):
    a1, d1, a2, d2, cw, cb = op_inputs(6, 4, 3, torch.float32)
    torch.library.opcheck(torch.ops.torch_ntk.structured_ntk.default,
                          (a1, d1, a2, d2, cw, cb, "full", precision))


# ---------------------------------------------------------------------------------
# Jacot et al. 2018, Theorem 1: the empirical NTK of an NTK-parametrized network
# converges to the analytic Θ∞ as the hidden widths grow.


def test_converges_to_analytic_ntk_with_width():
    torch.manual_seed(0)
    x = torch.randn(8, 6, dtype=F64)
    widths, seeds = (256, 1024, 4096), 3
    errors = []
    for width in widths:
        err = 0.0
        for seed in range(seeds):
            torch.manual_seed(100 + seed)
            model = ntk_mlp([6, width, width, 1], "relu", dtype=F64)
            theta = empirical_ntk(model, x, mode="trace")
            limit = torch_ntk.analytic_kernels(model, x, get="ntk").ntk
            err += float(torch.linalg.norm(theta - limit) / torch.linalg.norm(limit)) / seeds
            del model
        errors.append(err)
    # Fluctuations shrink like width^-1/2: a factor 4 from 256 to 4096.
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.5 * errors[0], errors
    assert errors[2] < 0.1, errors


# ---------------------------------------------------------------------------------
# CUDA (skipped without a GPU)


@cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n_out", [1, 3])
def test_cuda_op_matches_cpu(mode, n_out):
    for n2 in (None, 70):
        a1, d1, a2, d2, cw, cb = op_inputs(150, n2, n_out, F64)
        cpu = ops.structured_ntk(a1, d1, a2, d2, cw, cb, mode)
        mv = lambda ts: None if ts is None else [t.cuda() for t in ts]  # noqa: E731
        gpu = ops.structured_ntk(mv(a1), mv(d1), mv(a2), mv(d2), cw, cb, mode)
        assert gpu.is_cuda and rel_err(gpu.cpu(), cpu) <= 1e-12
        if n2 is None:
            assert torch.equal(gpu, transpose(gpu, mode))


@cuda
def test_cuda_deep_model():
    a1, d1, _, _, _, _ = op_inputs(70, None, 2, F64, widths=[3] + [4] * 19, device="cuda")
    cw, cb = [0.5] * 20, [0.1] * 20
    k = ops.structured_ntk(a1, d1, None, None, cw, cb, "full")
    ref = composite([t.cpu() for t in a1], [t.cpu() for t in d1], [t.cpu() for t in a1],
                    [t.cpu() for t in d1], cw, cb, "full")
    assert rel_err(k.cpu(), ref) <= 1e-12
    assert torch.equal(k, transpose(k, "full"))


@cuda
@pytest.mark.parametrize("mode", MODES)
def test_cuda_empirical_ntk(mode, tmp_path):
    model = make_model("ntk", "gelu", 3, 3, width=40)
    x1, x2 = torch.randn(90, 5, dtype=F64), torch.randn(33, 5, dtype=F64)
    cpu = func_ntk_modes(model, x1, x2)[mode]
    model_gpu = model.cuda()
    k, info = empirical_ntk(model_gpu, x1.cuda(), x2.cuda(), mode=mode, return_info=True)
    assert info.method == "structured" and k.is_cuda
    assert rel_err(k.cpu(), cpu) <= 1e-12
    jac = empirical_ntk(model_gpu, x1.cuda(), x2.cuda(), mode=mode, method="jacobian")
    assert rel_err(jac.cpu(), cpu) <= 1e-10
    out = torch.empty(cpu.shape, dtype=F64)  # a host tensor receives a device computation
    empirical_ntk(model_gpu, x1.cuda(), x2.cuda(), mode=mode, out=out, chunk_size=32)
    assert rel_err(out, cpu) <= 1e-12


@cuda
def test_cuda_float32_error_is_bounded():
    # flash-attn's rule: float32 error vs float64 at most twice that of plain torch float32.
    a1, d1, _, _, cw, cb = op_inputs(200, None, 3, F64, widths=(64, 256, 256))
    exact = composite(a1, d1, a1, d1, cw, cb, "full")
    f32 = lambda ts: [t.float().cuda() for t in ts]  # noqa: E731
    fused = ops.structured_ntk(f32(a1), f32(d1), None, None, cw, cb, "full").cpu().double()
    plain = composite(f32(a1), f32(d1), f32(a1), f32(d1), cw, cb, "full").cpu().double()
    assert rel_err(fused, exact) <= 2 * max(rel_err(plain, exact), 5e-6)


@cuda
@pytest.mark.parametrize("mode,n", [("full", 2500), ("trace", 4500), ("diagonal", 4500)])
def test_cuda_symmetric_row_blocks(mode, n):
    # From 2048 samples the symmetric CUDA path cuts rows into blocks that skip the
    # lower-left Gram products; the mirror pass then fills the lower triangle.
    a1, d1, _, _, cw, cb = op_inputs(n, None, 2, F64, widths=(6, 9, 5))
    cpu = ops.structured_ntk(a1, d1, None, None, cw, cb, mode)
    gpu = ops.structured_ntk([t.cuda() for t in a1], [t.cuda() for t in d1], None, None, cw, cb,
                             mode)
    assert rel_err(gpu.cpu(), cpu) <= 1e-12
    assert torch.equal(gpu, transpose(gpu, mode))


@cuda
@pytest.mark.parametrize("precision", ["bf16", "bf16x3"])
@pytest.mark.parametrize("mode", MODES)
def test_cuda_precision_matches_cpu_emulation(precision, mode):
    # Tensor-core products of bfloat16 operands equal the CPU's emulation (exact
    # products of the same rounded operands) up to float32 accumulation order.
    for n2 in (None, 170):
        a1, d1, a2, d2, cw, cb = op_inputs(300, n2, 3, torch.float32, widths=(40, 64, 64))
        cpu = ops.structured_ntk(a1, d1, a2, d2, cw, cb, mode, precision)
        mv = lambda ts: None if ts is None else [t.cuda() for t in ts]  # noqa: E731
        gpu = ops.structured_ntk(mv(a1), mv(d1), mv(a2), mv(d2), cw, cb, mode, precision)
        assert gpu.dtype == torch.float32 and rel_err(gpu.cpu(), cpu) <= 1e-5
        exact = composite(*[None if ts is None else [t.double() for t in ts]
                            for ts in (a1, d1, a2 or a1, d2 or d1)], cw, cb, mode)
        err = rel_err(gpu.cpu().double(), exact)
        assert (1e-4 <= err <= 3e-2) if precision == "bf16" else err <= 2e-5
        if n2 is None:
            assert torch.equal(gpu, transpose(gpu, mode))


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_cuda_opcheck(dtype):
    for n2 in (None, 4):
        a1, d1, a2, d2, cw, cb = op_inputs(6, n2, 3, dtype, device="cuda")
        torch.library.opcheck(
            torch.ops.torch_ntk.structured_ntk.default, (a1, d1, a2 or [], d2 or [], cw, cb, "full")
        )


# ---------------------------------------------------------------------------------
# random architectures (hypothesis): the structured method against the oracle

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402


@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["ntk", "standard", "linear"]),
       act=st.sampled_from(sorted(ACTIVATIONS)), depth=st.integers(1, 4),
       n_out=st.integers(1, 3), bias=st.booleans(), n0=st.integers(1, 6),
       width=st.integers(1, 9), n1=st.integers(1, 5), n2=st.one_of(st.none(), st.integers(1, 4)),
       mode=st.sampled_from(MODES), seed=st.integers(0, 2**16))
def test_random_architectures_match_the_oracle(kind, act, depth, n_out, bias, n0, width, n1, n2,
                                               mode, seed):
    model = make_model(kind, act, depth, n_out, bias, n0=n0, width=width, seed=seed)
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n1, n0, generator=g, dtype=F64)
    x2 = None if n2 is None else torch.randn(n2, n0, generator=g, dtype=F64)
    k, info = empirical_ntk(model, x1, x2, mode=mode, return_info=True)
    assert info.method == "structured"
    assert rel_err(k, func_ntk_modes(model, x1, x2)[mode]) <= TOL
