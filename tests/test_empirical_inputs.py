"""Inputs as people pass them (issue 27a) and memory by parameter blocks (27c), through
every engine that takes them: "hooks" (what "auto" runs on them), "jacobian", "ntk_vp".

Reference for every kernel: the torch.func contraction written below (per-sample
Jacobians by ``vmap(jacrev)`` of a function that calls the model itself, then
Σ_p J1 J2ᵀ), in float64; tolerance 1e-10 relative to the largest entry (conftest's
EXACT_F64).
"""

from __future__ import annotations

import dataclasses
import re
import warnings

import pytest
import torch
from torch import nn

import torch_ntk as tn
from torch_ntk.empirical import engines, hooks, inputs
from torch_ntk.empirical.engines import JacobianBlocks
from torch_ntk.empirical.hooks import HookBlocks

from conftest import EXACT_F64, rel_err

F64 = torch.float64
METHODS = ("auto", "hooks", "jacobian", "ntk_vp")


# ---------------------------------------------------------------------------------
# the independent reference


def _unsqueeze(x):
    if isinstance(x, torch.Tensor):
        return x.unsqueeze(0)
    if isinstance(x, dict):
        return {k: v.unsqueeze(0) for k, v in x.items()}
    return tuple(v.unsqueeze(0) for v in x)


def reference_full(model, x1, x2=None, output_fn=None):
    """Θ [N1, N2, n_L, n_L] = Σ_p J1[i, k, p] J2[j, k′, p] with per-sample Jacobians of
    f(θ, x) = output_fn(model(x)) (called by hand: model(x), model(*x) or model(**x))."""
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    buffers = dict(model.named_buffers())

    def f(p, x):
        xb = _unsqueeze(x)
        if isinstance(xb, torch.Tensor):
            out = torch.func.functional_call(model, (p, buffers), (xb,))
        elif isinstance(xb, dict):
            out = torch.func.functional_call(model, (p, buffers), (), xb)
        else:
            out = torch.func.functional_call(model, (p, buffers), xb)
        y = out if output_fn is None else output_fn(out)
        return y.reshape(-1)

    def jac(x):
        j = torch.func.vmap(torch.func.jacrev(f), in_dims=(None, 0))(params, x)
        return torch.cat([v.flatten(2) for v in j.values()], dim=2)  # [N, n_L, P]

    j1 = jac(x1)
    j2 = j1 if x2 is None else jac(x2)
    return torch.einsum("ikp,jlp->ijkl", j1, j2)


def modes_of(full):
    diag = full.diagonal(dim1=2, dim2=3)
    return {"full": full, "diagonal": diag, "trace": diag.mean(-1)}


# ---------------------------------------------------------------------------------
# the models


class TupleModel(nn.Module):
    """model(u, v): two inputs of different shapes."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 8, dtype=F64), nn.Linear(2, 8, dtype=F64)
        self.c = nn.Linear(8, 2, dtype=F64)

    def forward(self, u, v):
        return self.c(torch.tanh(self.a(u) + self.b(v.sum(1))))


class DictModel(nn.Module):
    """model(image=..., mask=...): a float image and an integer (0/1) mask."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, dtype=F64)
        self.head = nn.Linear(3 + 4, 3, dtype=F64)

    def forward(self, image, mask):
        h = torch.tanh(self.conv(image)).mean((2, 3))
        return self.head(torch.cat([h, mask.to(h.dtype)], 1))


class TokenModel(nn.Module):
    """Token ids [N, T] → logits [N, T, V]: Embedding, one encoder layer, a vocabulary head."""

    def __init__(self, vocab=13, d=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, d, dtype=F64)
        self.encoder = nn.TransformerEncoderLayer(d, 2, 16, dropout=0.1, batch_first=True,
                                                  dtype=F64)
        self.head = nn.Linear(d, vocab, dtype=F64)

    def forward(self, ids):
        return self.head(self.encoder(self.embed(ids)))


@dataclasses.dataclass
class Output:
    """A HuggingFace-style output object."""

    logits: torch.Tensor
    hidden: torch.Tensor


class ObjectModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6, dtype=F64), nn.Linear(6, 3, dtype=F64)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return Output(logits=self.b(h), hidden=h)


def last_logits(out):
    return out[:, -1]


def cases():
    torch.manual_seed(3)
    u1, v1 = torch.randn(5, 3, dtype=F64), torch.randn(5, 4, 2, dtype=F64)
    u2, v2 = torch.randn(3, 3, dtype=F64), torch.randn(3, 4, 2, dtype=F64)
    img1, img2 = torch.randn(5, 1, 5, 5, dtype=F64), torch.randn(3, 1, 5, 5, dtype=F64)
    m1, m2 = torch.randint(0, 2, (5, 4)), torch.randint(0, 2, (3, 4))
    ids1, ids2 = torch.randint(0, 13, (5, 6)), torch.randint(0, 13, (3, 6))
    o1, o2 = torch.randn(5, 4, dtype=F64), torch.randn(3, 4, dtype=F64)
    return {
        "tuple": (TupleModel(), (u1, v1), (u2, v2), None),
        "dict": (DictModel(), {"image": img1, "mask": m1}, {"image": img2, "mask": m2}, None),
        "tokens": (TokenModel(), ids1, ids2, last_logits),
        "object": (ObjectModel(), o1, o2, lambda out: out.logits),
    }


@pytest.mark.parametrize("case", ["tuple", "dict", "tokens", "object"])
@pytest.mark.parametrize("method", METHODS)
def test_inputs_as_people_pass_them_match_the_jacobian_contraction(case, method):
    model, x1, x2, output_fn = cases()[case]
    for second in (None, x2):
        want = modes_of(reference_full(model, x1, second, output_fn))
        for mode, ref in want.items():
            for chunk in (None, 2):
                got, info = tn.empirical_ntk(model, x1, second, mode=mode, method=method,
                                             chunk_size=chunk, output_fn=output_fn,
                                             return_info=True)
                assert info.method == ("hooks" if method == "auto" else method)
                assert got.dtype == F64 and got.shape == ref.shape
                assert rel_err(got, ref) <= EXACT_F64, (case, method, mode, chunk, second)
                if info.method == "hooks":  # every module by its rule, none left to torch.func
                    assert info.contractions and not any(
                        "torch.func" in c for c in info.contractions), info.contractions
                if chunk is not None:
                    assert info.blocks > 1


def test_the_reference_tells_the_positions_apart():
    """The token case would catch an output_fn applied to the wrong position."""
    model, x1, _, _ = cases()["tokens"]
    right = reference_full(model, x1, None, last_logits)
    wrong = tn.empirical_ntk(model, x1, output_fn=lambda out: out[:, 0])
    assert rel_err(wrong, right) > 1e-3


def test_chunking_that_forgets_the_offset_is_caught(monkeypatch):
    """A deliberately wrong chunking (every chunk starts at row 0) fails the check above."""
    model, x1, _, _ = cases()["tuple"]
    right = reference_full(model, x1)
    wrong_take = lambda x, start, stop: inputs.take(x, 0, stop - start)  # noqa: E731
    monkeypatch.setattr(engines, "take", wrong_take)
    got = tn.empirical_ntk(model, x1, method="jacobian", chunk_size=2)
    assert rel_err(got, right) > 1e-3


def test_the_hook_engine_chunking_that_forgets_the_offset_is_caught(monkeypatch):
    """The same wrong chunking, in the hook engine, fails the check above."""
    model, x1, _, _ = cases()["dict"]
    right = reference_full(model, x1)
    wrong_take = lambda x, start, stop: inputs.take(x, 0, stop - start)  # noqa: E731
    monkeypatch.setattr(hooks, "take", wrong_take)
    got = tn.empirical_ntk(model, x1, method="hooks", chunk_size=2)
    assert rel_err(got, right) > 1e-3


class FreeScale(nn.Module):
    """model(image=..., ids=...) → an output object; a free parameter (no module's own:
    the hook engine leaves it to torch.func, vmapped over the dict's leaves) and an
    Embedding of the integer ids (its rule)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 4, dtype=F64)
        self.lin = nn.Linear(6, 4, dtype=F64)
        self.scale = nn.Parameter(torch.randn(4, dtype=F64))
        self.head = nn.Linear(4, 3, dtype=F64)

    def forward(self, image, ids):
        h = torch.tanh(self.lin(image) * self.scale + self.embed(ids).mean(1))
        return Output(logits=self.head(h), hidden=h)


def test_the_hook_engine_leaves_free_parameters_to_torch_func_on_dicts_with_output_fn():
    torch.manual_seed(8)
    model = FreeScale()
    x1 = {"image": torch.randn(5, 6, dtype=F64), "ids": torch.randint(0, 7, (5, 3))}
    x2 = {"image": torch.randn(3, 6, dtype=F64), "ids": torch.randint(0, 7, (3, 3))}
    fn = lambda out: out.logits  # noqa: E731
    for second in (None, x2):
        want = modes_of(reference_full(model, x1, second, fn))
        for mode, ref in want.items():
            for chunk in (None, 2):
                got, info = tn.empirical_ntk(model, x1, second, mode=mode, chunk_size=chunk,
                                             output_fn=fn, return_info=True)
                assert info.method == "hooks" and rel_err(got, ref) <= EXACT_F64
    text = " | ".join(info.contractions)
    assert "embed (Embedding)" in text and "torch.func on 1 parameter tensors (scale)" in text


def test_the_hook_engine_stays_within_a_small_budget_on_tuples():
    """A budget that forces chunks of samples (and backward passes by groups of outputs)
    on tuple inputs: the same kernel as the reference."""
    torch.manual_seed(5)
    model = Wide()
    x = (torch.randn(6, 40, dtype=F64), torch.rand(6, 1, dtype=F64) + 0.5)
    ref = modes_of(reference_full(model, x))
    trainable = dict(model.named_parameters())
    for budget, chunked in ((400_000, True), (1_000_000, False)):
        engine = HookBlocks(model, trainable, x, None, "full", 5)
        c = engine.size_blocks(budget, None, False)
        assert (c < 6) == chunked and engine.out_group < 5  # outputs by groups
        for mode in ("full", "trace"):
            got, info = tn.empirical_ntk(model, x, mode=mode, memory_budget=budget,
                                         return_info=True)
            assert info.method == "hooks" and (info.blocks > 1) == chunked
            assert rel_err(got, ref[mode]) <= EXACT_F64, (budget, mode)


def test_integer_and_float_tensors_and_a_plain_float_with_output_fn():
    model, x1, _, _ = cases()["object"]
    ref = reference_full(model, x1, None, lambda out: out.logits)
    got, info = tn.empirical_ntk(model, x1, output_fn=lambda out: out.logits, return_info=True)
    assert rel_err(got, ref) <= EXACT_F64 and "output_fn" in info.reason
    # a scalar output per sample ([N]) is n_L = 1
    got = tn.empirical_ntk(model, x1, output_fn=lambda out: out.logits[:, 1])
    assert got.shape == (5, 5, 1, 1)
    assert rel_err(got[..., 0, 0], ref[..., 1, 1]) <= EXACT_F64
    with pytest.raises(ValueError, match="method='structured' is not available: output_fn"):
        tn.empirical_ntk(model, x1, method="structured", output_fn=lambda out: out.logits)


# ---------------------------------------------------------------------------------
# bad input: each a ValueError naming the argument


def test_bad_inputs_name_the_argument():
    model, (u, v), _, _ = cases()["tuple"]
    with pytest.raises(ValueError, match=r"x1\[1\] has no batch dimension"):
        tn.empirical_ntk(model, (u, torch.tensor(1.0, dtype=F64)))
    with pytest.raises(ValueError, match=r"every leaf of x1 must have the same batch size.*"
                                         r"x1\[0\]: 5, x1\[1\]: 4"):
        tn.empirical_ntk(model, (u, v[:4]))
    with pytest.raises(ValueError, match=r"x2 must have the structure of x1"):
        tn.empirical_ntk(model, (u, v), (u,))
    with pytest.raises(TypeError, match=r"x1\[1\] must be a torch.Tensor"):
        tn.empirical_ntk(model, (u, 3))
    with pytest.raises(TypeError, match=r"x1 must be a torch.Tensor, a tuple or a dict"):
        tn.empirical_ntk(model, "tokens")
    with pytest.raises(ValueError, match=r"x1\[0\] contains NaN"):
        tn.empirical_ntk(model, (u.clone().fill_(float("nan")), v))
    with pytest.raises(ValueError, match="method='structured' is not available"):
        tn.empirical_ntk(model, (u, v), method="structured")
    dmodel, d1, _, _ = cases()["dict"]
    with pytest.raises(ValueError, match=r"leaf 1 of x2 must have the dtype of x1's"):
        tn.empirical_ntk(dmodel, d1, {"image": d1["image"], "mask": d1["mask"].double()})
    with pytest.raises(ValueError, match=r"x1\['mask'\] is on meta but the model's trainable "
                                         r"parameters are on cpu"):
        tn.empirical_ntk(dmodel, {"image": d1["image"], "mask": d1["mask"].to("meta")})


def test_output_fn_of_the_wrong_shape_is_named():
    model, ids, _, _ = cases()["tokens"]
    with pytest.raises(ValueError, match=r"output_fn must return a tensor \[N, n_L\] or \[N\].*"
                                         r"got Tensor of shape \[2, 6, 13\]"):
        tn.empirical_ntk(model, ids, output_fn=lambda out: out)
    with pytest.raises(ValueError, match=r"output_fn must return.*got tuple"):
        tn.empirical_ntk(model, ids, output_fn=lambda out: (out,))
    with pytest.raises(ValueError, match=r"the model's output must be a tensor \[N, n_L\].*"
                                         r"Pass output_fn"):
        tn.empirical_ntk(cases()["object"][0], torch.randn(3, 4, dtype=F64))
    with pytest.raises(TypeError, match="output_fn must be a callable"):
        tn.empirical_ntk(model, ids, output_fn="logits")


def test_trainable_parameters_on_another_device_are_named():
    model, x, _, _ = cases()["tuple"]
    model.c = nn.Linear(8, 2, dtype=F64, device="meta")
    with pytest.raises(ValueError, match=r"parameter c.weight is on meta but parameter a.weight "
                                         r"is on cpu"):
        tn.empirical_ntk(model, x)
    plain = nn.Sequential(nn.Linear(3, 4, dtype=F64), nn.Linear(4, 2, dtype=F64, device="meta"))
    with pytest.raises(ValueError, match=r"parameter 1.weight is on meta but x1 is on cpu"):
        tn.empirical_ntk(plain, torch.randn(3, 3, dtype=F64), method="jacobian")
    # a frozen parameter elsewhere is not differentiated; the leaves must be on the
    # trainable parameters' device
    model.c.requires_grad_(False)
    with pytest.raises(ValueError, match=r"x1\[0\] is on meta but the model's trainable "
                                         r"parameters are on cpu"):
        tn.empirical_ntk(model, (x[0].to("meta"), x[1].to("meta")))


# ---------------------------------------------------------------------------------
# memory: blocks of parameters, or a refusal with the bytes needed


class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(40, 60, dtype=F64), nn.Linear(60, 5, dtype=F64)

    def forward(self, x, scale):
        return self.b(torch.tanh(self.a(x) * scale))


def test_a_small_budget_splits_a_parameter_into_row_blocks():
    torch.manual_seed(5)
    model = Wide()
    x = (torch.randn(6, 40, dtype=F64), torch.rand(6, 1, dtype=F64) + 0.5)
    budget = int(2.5 * 2**20)  # the fixed part is ~2.1 MiB: a.weight's Jacobian does not fit
    engine = JacobianBlocks(model, dict(model.named_parameters()), x, None, "full", 5)
    engine.size_blocks(budget, None, False)
    pieces = [b for g in engine.groups for b in g if not isinstance(b, str)]
    assert len(pieces) > 1 and {p[0] for p in pieces} == {"a.weight"}
    assert sorted((p[1], p[2]) for p in pieces)[-1][1] == 60  # the row blocks cover all rows
    ref = reference_full(model, x)
    unblocked = tn.empirical_ntk(model, x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tn.MemoryBudgetWarning)
        for mode in ("full", "trace"):
            blocked = tn.empirical_ntk(model, x, mode=mode, method="jacobian",
                                       memory_budget=budget)
            assert rel_err(blocked, modes_of(unblocked)[mode]) <= 1e-12
        diag = tn.empirical_ntk(model, x, mode="sample_diagonal", memory_budget=budget)
    assert rel_err(unblocked, ref) <= EXACT_F64
    assert rel_err(diag, torch.stack([ref[i, i].diagonal() for i in range(6)])) <= EXACT_F64


def test_a_budget_below_one_sample_is_refused_with_the_bytes_it_needs():
    model = Wide()
    x = (torch.randn(4, 40, dtype=F64), torch.rand(4, 1, dtype=F64))
    with pytest.raises(ValueError, match=r"memory_budget=2000 bytes is below what one sample "
                                         r"needs .*pass memory_budget >= \d+") as error:
        tn.empirical_ntk(model, x, method="jacobian", memory_budget=2000)
    need = int(re.search(r"memory_budget >= (\d+)", str(error.value)).group(1))
    with warnings.catch_warnings():  # the advice holds: that budget runs
        warnings.simplefilter("ignore", tn.MemoryBudgetWarning)
        got = tn.empirical_ntk(model, x, method="jacobian", memory_budget=need)
    assert rel_err(got, reference_full(model, x)) <= EXACT_F64


def test_ntk_vp_refuses_a_budget_below_one_product_and_runs_at_the_one_it_names():
    model = Wide()
    x = (torch.randn(4, 40, dtype=F64), torch.rand(4, 1, dtype=F64))
    with pytest.raises(ValueError, match=r"memory_budget=2000 bytes is below what one "
                                         r"NTK-vector product needs .*>= \d+") as error:
        tn.empirical_ntk(model, x, method="ntk_vp", memory_budget=2000)
    need = int(re.search(r">= (\d+)", str(error.value)).group(1))
    got, info = tn.empirical_ntk(model, x, method="ntk_vp", memory_budget=need,
                                 return_info=True)
    assert info.row_chunk < 4  # the chunk shrank to fit one column's jvp
    assert rel_err(got, reference_full(model, x)) <= EXACT_F64
