"""The hook engine (``method="hooks"``, torch_ntk.empirical.hooks) against independent
references, in float64.

Oracle: ``tests/oracles.func_ntk_modes``, the per-sample Jacobians of every trainable
parameter by ``torch.func.vmap(jacrev)`` contracted by einsum (written in the test suite,
sharing no code with the engine), plus per-rule hand formulas in numpy for a Linear on
sequences, a grouped convolution and an Embedding.

Tolerance: 1e-10 relative to the kernel's largest entry (float64 sums of at most a few
thousand products round at ~1e-14; a missing term, a dropped cross term of a shared
module or a wrong position pairing is off by O(1)). The mutation checks at the end show
that deliberately wrong rules fail these comparisons.
"""

import numpy as np
import pytest
import torch
from torch import nn

import torch_ntk as tn
from torch_ntk.bench.models import Encoder, ResNet, TokenLM
from torch_ntk.empirical.rules import NTK_RULES
from torch_ntk.empirical.rules import parts as parts_module

from oracles import func_ntk_modes
from test_empirical_rules import CALLS, CASES

D = torch.float64
MODES = ("full", "trace", "diagonal")
REL = 1e-10


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-300)


class Probe(nn.Module):
    """f(x) = R·vec(m(x)) with a fixed readout R (a buffer); ids: x holds int64 token ids
    (passed to empirical_ntk as they are)."""

    def __init__(self, module: nn.Module, readout: torch.Tensor, ids: bool):
        super().__init__()
        self.module, self.ids = module, ids
        self.register_buffer("readout", readout)

    def forward(self, x):
        call = CALLS.get(type(self.module), lambda m, a: m(a))
        return call(self.module, x).flatten(1) @ self.readout.T


def probe_case(make, shape, seed=0, n_out=3):
    torch.manual_seed(seed)
    module = make().to(D)
    ids = callable(shape)
    x1 = shape(4) if ids else torch.randn(4, *shape, dtype=D)
    x2 = shape(3) if ids else torch.randn(3, *shape, dtype=D)
    with torch.no_grad():
        call = CALLS.get(type(module), lambda m, a: m(a))
        size = call(module, x1[:1]).numel()
    return Probe(module, torch.randn(n_out, size, dtype=D), ids), x1, x2


def check_all_ways(model, x1, x2, modes=MODES, chunks=(None, 2), expect_method="hooks"):
    """Every mode, x2 given and None, chunked and not, against the torch.func oracle."""
    oracle, oracle_sym = func_ntk_modes(model, x1, x2), func_ntk_modes(model, x1)
    for mode in modes:
        for chunk in chunks:
            k, info = tn.empirical_ntk(model, x1, x2, mode=mode, method="hooks",
                                       chunk_size=chunk, return_info=True)
            assert info.method == expect_method
            assert rel_err(k, oracle[mode]) <= REL, (mode, chunk, rel_err(k, oracle[mode]))
            ks = tn.empirical_ntk(model, x1, mode=mode, method="hooks", chunk_size=chunk)
            assert rel_err(ks, oracle_sym[mode]) <= REL, (mode, chunk, "x2=None")
            assert torch.equal(ks, ks.transpose(0, 1).transpose(2, 3) if mode == "full"
                               else ks.transpose(0, 1))
    return info


HOOK_TABLE = [pytest.param(make, shape, id=name)
              for t, cases in CASES.items() for name, make, shape in cases]


@pytest.mark.parametrize("make, shape", HOOK_TABLE)
def test_every_rule_through_the_engine(make, shape):
    """Each registered module type, inside a model, by its rule (not torch.func)."""
    model, x1, x2 = probe_case(make, shape)
    info = check_all_ways(model, x1, x2)
    assert not any("torch.func" in c for c in info.contractions), info.contractions


@pytest.mark.parametrize("order", ["gradients", "grams"])
def test_both_orders_and_a_small_budget(order, monkeypatch):
    """Both contraction orders forced on every module, and blocks from a tiny budget."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, groups=2), nn.Tanh(),
                          nn.Conv2d(4, 3, 2, stride=2), nn.Flatten(), nn.LayerNorm(12),
                          nn.Linear(12, 3)).to(D)
    x1, x2 = torch.randn(5, 2, 4, 4, dtype=D), torch.randn(3, 2, 4, 4, dtype=D)
    monkeypatch.setattr(parts_module.ModuleFactors, "choose", lambda self, *a: order)
    check_all_ways(model, x1, x2)
    for mode in MODES:
        k, info = tn.empirical_ntk(model, x1, mode=mode, method="hooks", memory_budget=60_000,
                                   return_info=True)
        assert info.blocks > 1 and rel_err(k, func_ntk_modes(model, x1)[mode]) <= REL
        assert all(c.endswith(order) for c in info.contractions), info.contractions


@pytest.mark.parametrize("outputs_per_backward", [1, 2])
def test_backward_by_groups_of_outputs(outputs_per_backward, monkeypatch):
    """The cotangents by groups of outputs (one pass per output, or vmap over two), the
    factors joined along the outputs: the same kernel."""
    from torch_ntk.empirical.hooks import HookBlocks

    sized = HookBlocks.size_blocks

    def small_groups(self, *args):
        c = sized(self, *args)
        self.out_group = outputs_per_backward
        return c

    monkeypatch.setattr(HookBlocks, "size_blocks", small_groups)
    torch.manual_seed(16)
    model = Encoder(3, 8, 2, 16, layers=1, n_out=5).to(D)
    check_all_ways(model, torch.randn(3, 4, 3, dtype=D), torch.randn(2, 4, 3, dtype=D),
                   chunks=(None,))


def test_linear_on_sequences_hand_formula():
    """Θ_kk′ = Σ_{t,s} ⟨a_t, a′_s⟩⟨R_kt, R_k′s⟩ + ⟨Σ_t R_kt, Σ_s R_k′s⟩ for f = R·vec(W a + b)
    on [T, n_in] inputs (numpy)."""
    torch.manual_seed(2)
    t, n_in, n_mid, n_out = 3, 4, 5, 2
    model = Probe(nn.Linear(n_in, n_mid).to(D), torch.randn(n_out, t * n_mid, dtype=D), False)
    x1, x2 = torch.randn(4, t, n_in, dtype=D), torch.randn(2, t, n_in, dtype=D)
    r = model.readout.numpy().reshape(n_out, t, n_mid)
    a1, a2 = x1.numpy(), x2.numpy()
    expected = np.zeros((4, 2, n_out, n_out))
    for i in range(4):
        for j in range(2):
            for k in range(n_out):
                for m in range(n_out):
                    w = sum(a1[i, p] @ a2[j, q] * (r[k, p] @ r[m, q])
                            for p in range(t) for q in range(t))
                    expected[i, j, k, m] = w + r[k].sum(0) @ r[m].sum(0)
    k = tn.empirical_ntk(model, x1, x2, method="hooks")
    assert rel_err(k, torch.from_numpy(expected)) <= REL


def test_grouped_conv_hand_formula():
    """A grouped Conv1d's weight Jacobian by explicit loops in numpy:
    J_k[o, c, q] = Σ_p R_k[o, p] · x_pad[g(o)·C_g + c, p·s + q] (g(o) the group of o)."""
    torch.manual_seed(3)
    c_in, c_out, groups, k_size, stride, pad, length = 4, 6, 2, 3, 2, 1, 7
    conv = nn.Conv1d(c_in, c_out, k_size, stride, pad, groups=groups, bias=False).to(D)
    p_out = (length + 2 * pad - k_size) // stride + 1
    model = Probe(conv, torch.randn(2, c_out * p_out, dtype=D), False)
    x1, x2 = torch.randn(3, c_in, length, dtype=D), torch.randn(2, c_in, length, dtype=D)
    r = model.readout.numpy().reshape(2, c_out, p_out)
    cg, og = c_in // groups, c_out // groups

    def jac(x):
        xp = np.pad(x.numpy(), ((0, 0), (0, 0), (pad, pad)))
        j = np.zeros((x.shape[0], 2, c_out, cg, k_size))
        for n in range(x.shape[0]):
            for k in range(2):
                for o in range(c_out):
                    g = o // og
                    for c in range(cg):
                        for q in range(k_size):
                            j[n, k, o, c, q] = sum(r[k, o, p] * xp[n, g * cg + c, p * stride + q]
                                                   for p in range(p_out))
        return j.reshape(x.shape[0], 2, -1)

    j1, j2 = jac(x1), jac(x2)
    expected = np.einsum("ikp,jlp->ijkl", j1, j2)
    k = tn.empirical_ntk(model, x1, x2, method="hooks")
    assert rel_err(k, torch.from_numpy(expected)) <= REL


def test_embedding_hand_formula():
    """Θ_kk′ = Σ_{t,s} [id_t = id′_s]·⟨R_kt, R_k′s⟩ for f = R·vec(E[ids]) (numpy)."""
    torch.manual_seed(4)
    vocab, dim, t = 5, 3, 4
    model = Probe(nn.Embedding(vocab, dim).to(D), torch.randn(2, t * dim, dtype=D), True)
    x1 = torch.randint(0, vocab, (4, t))
    x2 = torch.randint(0, vocab, (3, t))
    r = model.readout.numpy().reshape(2, t, dim)
    i1, i2 = x1.long().numpy(), x2.long().numpy()
    expected = np.zeros((4, 3, 2, 2))
    for i in range(4):
        for j in range(3):
            for p in range(t):
                for q in range(t):
                    if i1[i, p] == i2[j, q]:
                        expected[i, j] += r[:, p] @ r[:, q].T  # [k, k′]
    k = tn.empirical_ntk(model, x1, x2, method="hooks")
    assert rel_err(k, torch.from_numpy(expected)) <= REL


class Odd(nn.Module):
    """A module with no rule, using its parameter in an odd way."""

    def __init__(self, n: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(n))

    def forward(self, x):
        return x * torch.sin(self.w) + self.w.pow(2).sum()


class WithOdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin1, self.odd, self.lin2 = nn.Linear(4, 6), Odd(6), nn.Linear(6, 3)
        self.free = nn.Parameter(torch.randn(6))

    def forward(self, x):
        return self.lin2(torch.tanh(self.odd(self.lin1(x))) * self.free)


def test_unruled_module_and_free_parameter_go_to_torch_func():
    torch.manual_seed(5)
    model = WithOdd().to(D)
    x1, x2 = torch.randn(5, 4, dtype=D), torch.randn(3, 4, dtype=D)
    info = check_all_ways(model, x1, x2)
    last = info.contractions[-1]
    assert "torch.func on 2 parameter tensors (free, odd.w)" in last and "no rule for Odd" in last
    assert info.contractions[0].startswith("lin1 (Linear): ")


class Shared(nn.Module):
    """One Linear called twice (weight sharing), one conv applied to two branches, and a
    weight tied between an embedding-like Linear and the readout."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 5)
        self.conv = nn.Conv1d(1, 2, 3, padding=1)
        self.inp = nn.Linear(5, 4)
        self.out = nn.Linear(4, 5, bias=False)
        self.out.weight = nn.Parameter(self.inp.weight.detach().t().clone())
        self.tied = nn.Linear(4, 5, bias=False)
        self.tied.weight = self.out.weight

    def forward(self, x):
        h = torch.tanh(self.lin(torch.tanh(self.lin(x))))
        c = self.conv(h.unsqueeze(1)) + self.conv(x.unsqueeze(1))
        h = h + c.sum(1)
        return self.out(torch.tanh(self.inp(h))) + self.tied(torch.sin(self.inp(h)))


def test_weight_sharing_keeps_every_cross_term():
    torch.manual_seed(6)
    model = Shared().to(D)
    x1, x2 = torch.randn(4, 5, dtype=D), torch.randn(3, 5, dtype=D)
    info = check_all_ways(model, x1, x2)
    text = " | ".join(info.contractions)
    assert "lin (Linear, 2 calls): gradients, summed over calls" in text
    assert "conv (Conv1d, 2 calls)" in text and "inp (Linear, 2 calls)" in text
    assert "out.weight" in text and "shared with another module" in text


class TiedHead(nn.Module):
    """An embedding whose table is also the output layer through a functional call."""

    def __init__(self):
        super().__init__()
        self.embed, self.mix = nn.Embedding(6, 4), nn.Linear(4, 4)

    def forward(self, ids):
        h = torch.tanh(self.mix(self.embed(ids))).mean(1)
        return h @ self.embed.weight.T


def test_a_parameter_used_outside_its_module_goes_to_torch_func():
    torch.manual_seed(17)
    model = TiedHead().to(D)
    x1, x2 = torch.randint(0, 6, (4, 3)), torch.randint(0, 6, (3, 3))
    info = check_all_ways(model, x1, x2, modes=("full", "trace"))
    assert "embed.weight" in info.contractions[-1] and "outside its forward" in info.contractions[-1]
    assert info.contractions[0].startswith("mix (Linear): ")


class DoubledLinear(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x)


class Merged(nn.Module):
    """Modules whose samples are not one dim: a Linear on [N·T, d], a per-sample loop."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = DoubledLinear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        n, t, d = x.shape
        h = self.b(self.a(x).reshape(n * t, d)).reshape(n, t, d).mean(1)
        return torch.cat([self.c(h[i:i + 1]) for i in range(n)])


def test_overridden_forward_merged_samples_and_per_sample_loops_fall_back():
    torch.manual_seed(7)
    model = Merged().to(D)
    x1, x2 = torch.randn(4, 2, 3, dtype=D), torch.randn(3, 2, 3, dtype=D)
    info = check_all_ways(model, x1, x2, chunks=(None, 3))
    last = info.contractions[-1]
    assert "overrides Linear.forward" in last and "not one tensor with one dim" in last
    assert "different number of calls" in last


def test_rule_refusing_a_configuration_falls_back():
    torch.manual_seed(8)
    emb = nn.Embedding(6, 3, scale_grad_by_freq=True).to(D)
    model = Probe(emb, torch.randn(2, 9, dtype=D), True)
    x1 = torch.randint(0, 6, (4, 3))
    info = check_all_ways(model, x1, torch.randint(0, 6, (2, 3)), modes=("full",))
    assert "scale_grad_by_freq have no rule" in info.contractions[-1]


class InPlace(nn.Module):
    """A module's input changed in place after the module read it."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x) * 1.0
        y = self.b(h)
        h.mul_(2)
        return y + h.sum(1, keepdim=True)


def test_input_modified_in_place_is_refused_not_miscomputed():
    """b's stored input would be stale: autograd's saved-tensor check refuses the graph,
    as it does for torch.func (never a kernel computed from the modified input)."""
    torch.manual_seed(9)
    model, x = InPlace().to(D), torch.randn(4, 3, dtype=D)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        tn.empirical_ntk(model, x, method="hooks")
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        func_ntk_modes(model, x)


def _randomize_batch_norms(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_()
                m.bias.normal_()
    return model


def test_small_resnet_with_batchnorm_and_downsample():
    torch.manual_seed(10)
    model = _randomize_batch_norms(ResNet(4, (1, 1), n_out=3)).to(D).train()
    x1, x2 = torch.randn(3, 3, 6, 6, dtype=D), torch.randn(2, 3, 6, 6, dtype=D)
    k, info = tn.empirical_ntk(model, x1, x2, return_info=True)  # auto: does not lift
    assert info.method == "hooks" and "hook engine" in info.reason
    assert model.training and model.bn1.training  # eval inside, restored after
    model.eval()
    assert rel_err(k, func_ntk_modes(model, x1, x2)["full"]) <= REL
    info = check_all_ways(model, x1, x2, chunks=(None,))
    assert not any("torch.func" in c for c in info.contractions)
    assert any("downsample.0 (Conv2d)" in c for c in info.contractions)


@pytest.mark.parametrize("batch_first", [True, False])
def test_small_transformer_encoder(batch_first):
    """Linear, LayerNorm and MultiheadAttention by rules (samples on dim 1 when
    batch_first=False); dropout off (eval)."""
    torch.manual_seed(11)
    model = Encoder(3, 8, 2, 16, layers=2, n_out=2, batch_first=batch_first).to(D)
    x1, x2 = torch.randn(3, 4, 3, dtype=D), torch.randn(2, 4, 3, dtype=D)
    info = check_all_ways(model, x1, x2, chunks=(None, 2))
    text = " | ".join(info.contractions)
    assert "encoder.layers.1.linear2 (Linear)" in text and "norm1 (LayerNorm)" in text
    assert "encoder.layers.0.self_attn (MultiheadAttention)" in text
    assert "torch.func" not in text


class CrossAttention(nn.Module):
    """Queries from one sequence, keys and values from another, a causal mask, a key
    padding mask from the data, samples on dim 1 (batch_first=False)."""

    def __init__(self, **options):
        super().__init__()
        self.q, self.kv = nn.Linear(3, 4), nn.Linear(3, 4)
        self.mha = nn.MultiheadAttention(4, 2, **options)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        q = self.q(x[:, :3]).transpose(0, 1)
        kv = torch.tanh(self.kv(x)).transpose(0, 1)
        mask = torch.ones(3, 5, dtype=torch.bool).triu(3)
        pad = x[:, :, 0] > 1.5  # padding where the first feature is large
        pad[:, 0] = False
        out, _ = self.mha(q, kv, kv * 2, attn_mask=mask, key_padding_mask=pad,
                          need_weights=False)
        return self.head(out.mean(0))


@pytest.mark.parametrize("options, ruled", [({}, True), ({"add_bias_kv": True}, False),
                                            ({"add_zero_attn": True}, False)])
def test_attention_with_masks_and_options_it_does_not_model(options, ruled):
    torch.manual_seed(15)
    model = CrossAttention(**options).to(D)
    x1, x2 = torch.randn(4, 5, 3, dtype=D), torch.randn(3, 5, 3, dtype=D)
    info = check_all_ways(model, x1, x2, chunks=(None, 3))
    text = " | ".join(info.contractions)
    assert ("mha (MultiheadAttention): " in text) == ruled
    assert ("bias_k/bias_v/add_zero_attn" in text) == (not ruled)


def test_token_language_model():
    torch.manual_seed(12)
    model = TokenLM(vocab=7, tokens=3, d=8, heads=2, ff=8, layers=1).to(D)
    x1 = torch.randint(0, 7, (3, 3))
    x2 = torch.randint(0, 7, (2, 3))
    assert x1.dtype == torch.int64  # real token ids, as a user passes them
    info = check_all_ways(model, x1, x2, chunks=(None, 2))
    text = " | ".join(info.contractions)
    assert "embed (Embedding)" in text and "position (Embedding)" in text
    assert "torch.func" not in text
    k, info = tn.empirical_ntk(model, x1, x2, mode="trace", return_info=True)
    assert info.method == "hooks" and "not one floating-point tensor" in info.reason
    assert rel_err(k, func_ntk_modes(model, x1, x2)["trace"]) <= REL


def test_auto_keeps_the_structured_path_for_chains():
    model = tn.ntk_mlp([3, 8, 2], "relu", dtype=D)
    _, info = tn.empirical_ntk(model, torch.randn(3, 3, dtype=D), return_info=True)
    assert info.method == "structured"


def test_bad_input_names_the_argument():
    model = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)).to(D)
    with pytest.raises(ValueError, match=r"empirical_ntk: the model cannot be applied to x1"):
        tn.empirical_ntk(model, torch.randn(2, 5, dtype=D), method="hooks")
    with pytest.raises(ValueError, match=r"method must be one of .*'hooks'"):
        tn.empirical_ntk(model, torch.randn(2, 4, dtype=D), method="hook")
    scalar = Probe(nn.Linear(4, 3).to(D), torch.randn(1, 3, dtype=D), False)

    class Scalar(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = scalar

        def forward(self, x):
            return self.p(x).sum()  # no batch dimension

    with pytest.raises(ValueError, match=r"must map a batch \[N, \.\.\.\] to a tensor"):
        tn.empirical_ntk(Scalar(), torch.randn(2, 4, dtype=D), method="hooks")


# --- mutation checks: deliberately wrong rules fail the comparisons above -----------------


def _broken(monkeypatch, module_type, wrong):
    rule = NTK_RULES[module_type]
    monkeypatch.setitem(NTK_RULES, module_type, type(rule)(
        rule.name, wrong, rule.coefficients, rule.input_vjp, None, rule.positionwise, module_type))


def test_a_wrong_rule_is_caught(monkeypatch):
    """Linear's rule without the off-diagonal position pairs (t ≠ s), and an Embedding
    rule ignoring padding: both fail the oracle comparison."""
    torch.manual_seed(13)
    good = NTK_RULES[nn.Linear].module_factors

    def diagonal_positions_only(module, inputs, cotangents):
        f = good(module, inputs, cotangents)
        outer = f.parts[0]
        n, _, t, _ = outer.a.shape
        eye = torch.eye(t, dtype=outer.a.dtype).view(1, 1, t, 1, t)  # [G, r, T, N2, S]

        class Diag(parts_module.Outer):
            def gram_a(self, other, r0, r1):
                return super().gram_a(other, r0, r1) * eye

        return parts_module.ModuleFactors([Diag(outer.a, outer.d)] + f.parts[1:], "grams")

    _broken(monkeypatch, nn.Linear, diagonal_positions_only)
    monkeypatch.setattr(parts_module.ModuleFactors, "choose", lambda self, *a: "grams")
    model = Probe(nn.Linear(3, 2).to(D), torch.randn(2, 8, dtype=D), False)
    x = torch.randn(3, 4, 3, dtype=D)
    k = tn.empirical_ntk(model, x, method="hooks")
    assert rel_err(k, func_ntk_modes(model, x)["full"]) > 1e-2


def test_dropping_a_shared_modules_cross_terms_is_caught(monkeypatch):
    """Summing per-call kernels instead of per-call Jacobians (no cross terms) fails."""
    torch.manual_seed(14)

    def no_cross(calls):
        return _SumOfKernels(calls)

    monkeypatch.setattr(parts_module.ModuleFactors, "summed", staticmethod(no_cross))
    model = Shared().to(D)
    x = torch.randn(3, 5, dtype=D)
    k = tn.empirical_ntk(model, x, method="hooks")
    assert rel_err(k, func_ntk_modes(model, x)["full"]) > 1e-2


class _SumOfKernels(parts_module.ModuleFactors):
    def __init__(self, calls):
        super().__init__([], "gradients")
        self.calls = calls
        self.parts = [p for c in calls for p in c.in_order("gradients").parts]

    def ntk(self, other, mode, workspace_bytes=1 << 28):
        total = None
        for i, c in enumerate(self.calls):
            o = None if other is None else other.calls[i]
            part = c.in_order("gradients").ntk(None if o is None else o.in_order("gradients"),
                                               mode)
            total = part if total is None else total + part
        return total


def test_missing_the_outside_use_is_caught(monkeypatch):
    """Without the probe's check for parameters used outside their module's forward, the
    tied embedding's head term is lost: off by percents."""
    from torch_ntk.empirical import hooks

    monkeypatch.setattr(hooks._OutsideUse, "__torch_function__",
                        lambda self, func, types, args=(), kwargs=None: func(*args,
                                                                             **(kwargs or {})))
    torch.manual_seed(17)
    model, x = TiedHead().to(D), torch.randint(0, 6, (4, 3))
    k = tn.empirical_ntk(model, x, method="hooks")
    assert rel_err(k, func_ntk_modes(model, x)["full"]) > 1e-2
