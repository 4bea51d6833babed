"""KernelDriftTracker: never perturbs training, metrics equal direct computations,
resumes exactly, and measures the drift falling with width (Jacot et al., Thm 2).

Oracles: training without the tracker (bit-identical parameters and optimizer state);
the trace NTK by torch.func Jacobian contraction and the formulas computed with numpy
in float64 (rtol 1e-9); an uninterrupted run for resume (exact equality); the
power law of the drift against width (fitted log-log slope in [-1.2, -0.4]).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import math
import os
import sys

import numpy as np
import pytest
import torch
from torch import nn

import torch_ntk
from torch_ntk import KernelDriftTracker, NTK, analytic_kernels, empirical_ntk, ntk_mlp
from torch_ntk.tracking import DriftRecord

F64 = torch.float64

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.usefixtures("one_thread"),
]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def dropout_mlp(seed: int = 0, dtype=torch.float32, device="cpu") -> nn.Sequential:
    """Lifts (Dropout is the identity in eval mode): the structured path."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Dropout(0.3), nn.Linear(32, 16), nn.ReLU(),
                         nn.Dropout(0.2), nn.Linear(16, 2)).to(dtype=dtype, device=device)


class GatedNet(nn.Module):
    """Does not lift (not a Sequential; batch norm, dropout): the torch.func path."""

    def __init__(self, seed: int = 0, dtype=torch.float32):
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Linear(4, 16)
        self.b = nn.Linear(4, 16)
        self.norm = nn.BatchNorm1d(16)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(16, 2)
        self.to(dtype)

    def forward(self, x):
        return self.head(self.drop(self.norm(torch.tanh(self.a(x)) * torch.sigmoid(self.b(x)))))


def batches(steps: int, n: int = 16, seed: int = 7, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 4, generator=g, dtype=dtype).to(device),
             torch.randn(n, 2, generator=g, dtype=dtype).to(device)) for _ in range(steps)]


def make_optimizer(kind: str, params):
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9)
    return torch.optim.Adam(params, lr=1e-2)


def train(model, opt, data, tracker=None, manual=False):
    model.train()
    for x, y in data:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if manual:
            tracker.step()


# ---------------------------------------------------------------------------------
# not perturbing training


@pytest.mark.parametrize("net", ["lifting", "torch.func"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_is_bit_identical_with_the_tracker(net, optimizer):
    make = dropout_mlp if net == "lifting" else GatedNet
    probe = torch.randn(12, 4, generator=torch.Generator().manual_seed(1))
    data = batches(8)

    results = []
    for track in (False, True):
        model = make(0)
        opt = make_optimizer(optimizer, model.parameters())
        tracker = None
        if track:
            tracker = KernelDriftTracker(model, probe, torch.randn(12, 2), every=1)
            tracker.attach(opt)
        torch.manual_seed(123)  # the dropout masks come from here
        train(model, opt, data)
        results.append((model, opt, tracker, torch.get_rng_state()))

    (bare, opt_a, _, rng_a), (tracked, opt_b, tracker, rng_b) = results
    assert tracker.steps == 8 and [r.step for r in tracker.history] == list(range(9))
    assert tracker.history[-1].drift > 0
    for (name, a), b in zip(bare.state_dict().items(), tracked.state_dict().values()):
        assert torch.equal(a, b), name
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    assert torch.equal(rng_a, rng_b)


def test_a_record_leaves_no_trace():
    model = GatedNet(dtype=F64)
    model.train()
    model.drop.eval()  # mixed modes must survive
    probe = torch.randn(10, 4, dtype=F64)
    tracker = KernelDriftTracker(model, probe, every=1)
    x, y = batches(1, dtype=F64)[0]
    nn.functional.mse_loss(model(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    grad_ids = {n: id(p.grad) for n, p in model.named_parameters()}
    modes = [m.training for m in model.modules()]
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    rng = torch.get_rng_state()

    record = tracker.record()

    assert isinstance(record, DriftRecord)
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())  # BN stats untouched
    for n, p in model.named_parameters():
        assert id(p.grad) == grad_ids[n] and torch.equal(p.grad, grads[n])

    # No autograd graph, and no copies beyond Θ_ref, the last kernel, n_L·Θ∞, θ_0, probe.
    state = tracker.state_dict()
    tensors = [state["reference"], state["last_kernel"], state["probe_x"], *state["theta0"].values()]
    assert all(not t.requires_grad and t.grad_fn is None for t in tensors)
    n_params = sum(p.numel() for p in model.parameters())
    held = {id(t): t.numel() for t in _tensors_in(tracker)}
    assert sum(held.values()) <= n_params + 3 * 10 * 10 + probe.numel()


def _tensors_in(obj, seen=None):
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, nn.Module):
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors_in(v, seen)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors_in(v, seen)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        yield from _tensors_in(vars(obj), seen)


@cuda
def test_cuda_training_is_bit_identical_and_rng_untouched():
    probe = torch.randn(32, 4, device="cuda")
    data = batches(6, device="cuda")
    params = []
    for track in (False, True):
        model = dropout_mlp(0, device="cuda")
        opt = make_optimizer("adam", model.parameters())
        if track:
            tracker = KernelDriftTracker(model, probe, every=2)
            tracker.attach(opt)
        torch.manual_seed(5)
        train(model, opt, data)
        params.append([p.detach().clone() for p in model.parameters()] + [torch.cuda.get_rng_state()])
    assert all(torch.equal(a, b) for a, b in zip(*params))
    rng = torch.cuda.get_rng_state()
    tracker.record()
    assert torch.equal(torch.cuda.get_rng_state(), rng)
    assert tracker.history[-1].limit_distance is not None


# ---------------------------------------------------------------------------------
# metrics


def _jacobian_kernel(model, probe):
    """The trace NTK by torch.func Jacobian contraction (the tracker takes the structured path)."""
    return empirical_ntk(model, probe, mode="trace", method="jacobian").numpy()


def _direct_metrics(model, probe, y, k_ref, k_prev, prev_step, step, theta0, limit, top_k):
    """Each metric from its definition, in numpy float64."""
    k = _jacobian_kernel(model, probe)
    fro = np.linalg.norm
    out = {
        "drift": fro(k - k_ref) / fro(k_ref),
        "kernel_distance": 1 - np.sum(k * k_ref) / (fro(k) * fro(k_ref)),
        "velocity": None if k_prev is None else fro(k - k_prev) / fro(k_ref) / (step - prev_step),
        "limit_distance": fro(k - limit) / fro(limit),
        "label_alignment": np.trace(y.T @ k @ y) / (fro(k) * fro(y @ y.T)),
        "trace": np.trace(k),
    }
    eig = np.linalg.eigvalsh(k)
    out["eigenvalues"] = eig[::-1][:top_k]
    out["condition_number"] = eig[-1] / eig[0]
    params = dict(model.named_parameters())
    num = sum(float(((params[n].detach() - p0) ** 2).sum()) for n, p0 in theta0.items())
    den = sum(float((p0 ** 2).sum()) for p0 in theta0.values())
    out["param_movement"] = math.sqrt(num / den)
    return out, k


def test_records_match_direct_computations():
    torch.manual_seed(0)
    model = ntk_mlp([4, 24, 24, 3], "tanh", bias_std=0.3, dtype=F64)
    probe = torch.randn(9, 4, dtype=F64)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])  # integer labels → one-hot
    y = nn.functional.one_hot(labels).double().numpy()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    limit = analytic_kernels(model, probe, get="ntk").ntk.numpy()  # the trace kernel is per output
    tracker = KernelDriftTracker(model, probe, labels, every=3, top_k=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    tracker.attach(opt)

    k_ref = _jacobian_kernel(model, probe)
    m0, k_prev = _direct_metrics(model, probe, y, k_ref, None, 0, 0, theta0, limit, 4)
    expected, prev_step = [m0], 0
    for step, (x, target) in enumerate(batches(7, dtype=F64), start=1):
        opt.zero_grad()
        nn.functional.mse_loss(model(x), torch.cat([target, target[:, :1]], 1)).backward()
        opt.step()
        if step % 3 == 0:
            m, k = _direct_metrics(model, probe, y, k_ref, k_prev, prev_step, step, theta0, limit, 4)
            expected.append(m)
            k_prev, prev_step = k, step

    history = tracker.history
    assert [r.step for r in history] == [0, 3, 6]
    assert history[0].drift == 0 and history[0].kernel_distance == 0 and history[0].velocity is None
    for record, want in zip(history, expected):
        for field, value in want.items():
            got = getattr(record, field)
            if value is None:
                assert got is None, field
            elif field == "kernel_distance" or (field == "drift" and record.step == 0):
                assert got == pytest.approx(value, abs=1e-13), field
            else:
                np.testing.assert_allclose(got, value, rtol=1e-9, err_msg=field)
    assert 0 < history[-1].drift < 1 and history[-1].param_movement > 0
    assert history[-1].velocity > 0 and history[-1].label_alignment > 0


def test_vector_targets_alignment_is_y_theta_y():
    torch.manual_seed(3)
    model = ntk_mlp([4, 16, 1], "relu", dtype=F64)
    probe = torch.randn(8, 4, dtype=F64)
    y = torch.randn(8, dtype=F64)
    tracker = KernelDriftTracker(model, probe, y)
    k = tracker.last_kernel
    want = float(y @ k @ y / (torch.linalg.matrix_norm(k) * y.dot(y)))
    assert tracker.history[0].label_alignment == pytest.approx(want, rel=1e-12)


def test_limit_and_reference_options():
    torch.manual_seed(4)
    model = ntk_mlp([4, 32, 2], "erf", dtype=F64)
    probe = torch.randn(6, 4, dtype=F64)
    limit = analytic_kernels(model, probe, get="ntk").ntk  # the trace kernel is per output
    tracker = KernelDriftTracker(model, probe, reference="limit")
    assert torch.allclose(tracker.reference, limit, rtol=1e-14, atol=0)
    record = tracker.history[0]
    assert record.drift == pytest.approx(record.limit_distance, rel=1e-14)

    given = torch_ntk.NTK(model).empirical(probe, mode="trace") * 2
    tracker = KernelDriftTracker(model, probe, reference=given, infinite_width=False)
    assert tracker.history[0].drift == pytest.approx(0.5, rel=1e-12)
    assert tracker.history[0].kernel_distance == pytest.approx(0, abs=1e-15)

    tracker = KernelDriftTracker(model, probe, infinite_width=False)
    assert tracker.limit_kernel is None and tracker.history[0].limit_distance is None

    # A model that does not lift: no limit distance, and the reason is kept.
    net = GatedNet(dtype=F64)
    tracker = KernelDriftTracker(net, probe)
    assert tracker.history[0].limit_distance is None
    assert "nn.Sequential" in tracker.limit_unavailable
    with pytest.raises(ValueError, match="infinite-width kernel is not available: lift: the model must be"):
        KernelDriftTracker(net, probe, reference="limit")
    with pytest.raises(ValueError, match="not available"):
        KernelDriftTracker(net, probe, infinite_width=True)


# ---------------------------------------------------------------------------------
# counting, hooks, history


def test_counting_attach_and_detach():
    model = dropout_mlp()
    probe = torch.randn(6, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    tracker = KernelDriftTracker(model, probe, every=3)
    handle = tracker.attach(opt)
    assert tracker.attached
    with pytest.raises(ValueError, match="already attached"):
        tracker.attach(opt)
    train(model, opt, batches(7))
    assert tracker.steps == 7 and [r.step for r in tracker.history] == [0, 3, 6]
    handle.remove()  # removing the handle directly also detaches
    assert not tracker.attached
    train(model, opt, batches(3))
    assert tracker.steps == 7
    tracker.attach(opt)
    tracker.detach()
    tracker.detach()  # idempotent
    with pytest.raises(ValueError, match="updates none of the tracked model's parameters"):
        tracker.attach(torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))

    # step() in a hand-written loop equals the hook.
    a, b = dropout_mlp(1), dropout_mlp(1)
    ta, tb = KernelDriftTracker(a, probe, every=2), KernelDriftTracker(b, probe, every=2)
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    ta.attach(opt_a)
    torch.manual_seed(0)
    train(a, opt_a, batches(5))
    torch.manual_seed(0)
    train(b, opt_b, batches(5), tb, manual=True)
    assert ta.history == tb.history
    assert "steps=5" in repr(tb) and "records=3" in repr(tb)


def _run(steps, tracker_state=None, model_state=None, opt_state=None, start=0):
    model = dropout_mlp(seed=0 if model_state is None else 99)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    if model_state is not None:
        model.load_state_dict(model_state)
        opt.load_state_dict(opt_state)
    probe = torch.randn(10, 4, generator=torch.Generator().manual_seed(2))
    tracker = KernelDriftTracker(model, probe, torch.randn(10, generator=torch.Generator().manual_seed(3)),
                                 every=3)
    if tracker_state is not None:
        tracker.load_state_dict(tracker_state)
    tracker.attach(opt)
    data = batches(12)[start:start + steps]
    torch.manual_seed(start)
    model.eval()  # deterministic steps, so a split run can equal an unsplit one exactly
    for x, y in data:
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return model, opt, tracker


def test_resume_from_state_dict_continues_the_same_history():
    _, _, whole = _run(12)

    model, opt, first = _run(7)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "tracker": first.state_dict()}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)  # plain data: loads with weights_only
    _, _, resumed = _run(5, ckpt["tracker"], ckpt["model"], ckpt["opt"], start=7)

    assert resumed.steps == whole.steps == 12
    assert [r.step for r in resumed.history] == [0, 3, 6, 9, 12]
    assert resumed.history == whole.history  # exact, velocity at step 9 included
    assert torch.equal(resumed.reference, whole.reference)

    other_probe = KernelDriftTracker(dropout_mlp(), torch.randn(10, 4))
    with pytest.raises(ValueError, match="different probe set"):
        other_probe.load_state_dict(ckpt["tracker"])
    frozen = dropout_mlp()
    frozen[0].bias.requires_grad_(False)
    with pytest.raises(ValueError, match="differ from the model's trainable ones"):
        KernelDriftTracker(frozen, ckpt["tracker"]["probe_x"]).load_state_dict(ckpt["tracker"])
    with pytest.raises(ValueError, match="version"):
        resumed.load_state_dict({"version": 0})


def test_to_csv_is_atomic_and_complete(tmp_path):
    model = ntk_mlp([4, 16, 1], "relu", dtype=F64)
    tracker = KernelDriftTracker(model, torch.randn(6, 4, dtype=F64), torch.randn(6, dtype=F64), every=1,
                                 top_k=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker.attach(opt)
    train(model, opt, [(x, y[:, :1]) for x, y in batches(3, dtype=F64)])
    path = tmp_path / "drift.csv"
    path.write_text("old contents")
    tracker.to_csv(path)
    assert sorted(os.listdir(tmp_path)) == ["drift.csv"]  # no temporary file left behind
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "drift", "kernel_distance", "velocity", "limit_distance",
                             "label_alignment", "trace", "condition_number", "param_movement",
                             "eig_1", "eig_2", "eig_3"]
    for row, record in zip(rows, tracker.history, strict=True):
        assert int(row["step"]) == record.step
        assert float(row["drift"]) == record.drift  # repr round-trips exactly
        assert (row["velocity"] == "") == (record.velocity is None)
        assert tuple(float(row[f"eig_{i}"]) for i in (1, 2, 3)) == record.eigenvalues


def test_plot(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    model = ntk_mlp([4, 16, 1], "relu")
    tracker = KernelDriftTracker(model, torch.randn(6, 4), torch.randn(6), every=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker.attach(opt)
    train(model, opt, [(x, y[:, :1]) for x, y in batches(3)])
    fig = tracker.plot(tmp_path / "drift.png")
    assert len(fig.axes) == 4  # drift, spectrum, conditioning (+ alignment twin axis)
    assert (tmp_path / "drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["drift.png"]
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        tracker.plot()


def test_bad_arguments():
    model = ntk_mlp([4, 8, 1], "relu")
    probe = torch.randn(5, 4)
    with pytest.raises(ValueError, match="every must be a positive integer"):
        KernelDriftTracker(model, probe, every=0)
    with pytest.raises(ValueError, match="top_k"):
        KernelDriftTracker(model, probe, top_k=0)
    with pytest.raises(ValueError, match="reference must be one of"):
        KernelDriftTracker(model, probe, reference="final")
    with pytest.raises(ValueError, match=r"reference kernel must have shape \[5, 5\]"):
        KernelDriftTracker(model, probe, reference=torch.eye(4))
    with pytest.raises(ValueError, match="at least two samples"):
        KernelDriftTracker(model, probe[:1])
    with pytest.raises(TypeError, match="probe_x must be float32 or float64"):
        KernelDriftTracker(model, probe.long())
    with pytest.raises(ValueError, match=r"probe_y must have shape \[5\] or \[5, c\]"):
        KernelDriftTracker(model, probe, torch.randn(4))
    with pytest.raises(ValueError, match="no parameter with requires_grad"):
        KernelDriftTracker(model.requires_grad_(False), probe)
    with pytest.raises(TypeError, match="Optimizer"):
        KernelDriftTracker(model.requires_grad_(True), probe).attach("sgd")
    # Wrappers (NTK, DataParallel, torch.compile) are looked through.
    assert KernelDriftTracker(NTK(model), probe).model is model
    assert KernelDriftTracker(nn.DataParallel(NTK(model)), probe).model is model


# ---------------------------------------------------------------------------------
# theory: Jacot et al. 2018, Theorem 2


def test_kernel_drift_falls_with_width_jacot_theorem_2():
    """With NTK parametrization and a fixed learning rate, the relative drift of the
    NTK after a fixed number of full-batch gradient steps falls like a power of the
    width (Jacot Thm 2: O(n^-1/2) at most; Dyer & Gur-Ari 2019: O(n^-1)).

    Setup: ReLU MLP of depth 3 (two hidden layers of width n), 16 inputs on the sphere
    of radius √8 in R^8, targets sin(Σx), loss ½·mean squared error, lr = 1 (below the
    stability bound 2/(λ_max(Θ∞)/N) ≈ 8), 30 steps; drift averaged over 3 seeds.
    Measured here: slope ≈ -0.75 (drift 0.13 at n = 64, 0.009 at n = 2048).
    """
    widths = [64, 128, 256, 512, 1024, 2048]
    n, d, steps, lr = 16, 8, 30, 1.0
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=g, dtype=F64)
    x = x / x.norm(dim=1, keepdim=True) * math.sqrt(d)
    y = torch.sin(x.sum(1, keepdim=True))
    drifts = []
    for width in widths:
        per_seed = []
        for seed in range(3):
            torch.manual_seed(seed)
            model = ntk_mlp([d, width, width, 1], "relu", dtype=F64)
            tracker = KernelDriftTracker(model, x, y, every=steps)
            opt = torch.optim.SGD(model.parameters(), lr=lr)
            tracker.attach(opt)
            for _ in range(steps):
                opt.zero_grad()
                (0.5 * (model(x) - y).square().mean()).backward()
                opt.step()
            per_seed.append(tracker.history[-1].drift)
        drifts.append(float(np.mean(per_seed)))
    slope = float(np.polyfit(np.log(widths), np.log(drifts), 1)[0])
    print(f"Jacot Thm 2: drift {[f'{v:.4f}' for v in drifts]} at widths {widths}, slope {slope:.3f}")
    assert all(a > b for a, b in zip(drifts, drifts[1:])), drifts
    assert -1.2 <= slope <= -0.4, f"fitted log-log slope {slope:.3f}; drifts {drifts}"


# ---------------------------------------------------------------------------------
# projections: p cotangents instead of n_L


def test_projection_matrix_is_orthonormal_and_unbiased():
    from torch_ntk.tracking import projection_matrix

    p = projection_matrix(6, 2, seed=3)
    assert p.shape == (6, 2) and p.dtype == F64
    torch.testing.assert_close(p.T @ p, torch.eye(2, dtype=F64), rtol=0, atol=1e-12)
    assert torch.equal(p, projection_matrix(6, 2, seed=3))
    rng = torch.get_rng_state()
    # E[Q Qᵀ] = (p/n_L)·Id (what makes the projected kernel (1/p)·tr(QᵀΘQ) an unbiased
    # estimate of (1/n_L)·tr Θ): the mean of 4000 draws is within 5 standard errors of
    # (2/6)·Id in every entry.
    draws = torch.stack([(lambda q: q @ q.T)(projection_matrix(6, 2, seed=s)) for s in range(4000)])
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert bool(((mean - torch.eye(6, dtype=F64) / 3).abs() <= 5 * se + 1e-12).all())
    assert torch.equal(rng, torch.get_rng_state())  # a generator of its own


@pytest.mark.parametrize("net", ["lifting", "torch.func"])
def test_projected_kernel_is_the_projected_trace(net):
    torch.manual_seed(0)
    if net == "lifting":
        model = ntk_mlp([4, 48, 48, 6], "tanh", dtype=F64)
    else:
        model = GatedNet(dtype=F64)
        model.head = nn.Linear(16, 6, dtype=F64)
    probe = torch.randn(9, 4, dtype=F64)
    tracker = KernelDriftTracker(model, probe, projections=2, projection_seed=5)
    from torch_ntk.tracking import projection_matrix

    P = projection_matrix(6, 2, seed=5)
    model.eval()
    full = empirical_ntk(model, probe, mode="full", method="jacobian")
    expected = torch.einsum("kq,ijkl,lq->ij", P, full, P) / 2  # the mean over p = 2
    torch.testing.assert_close(tracker.last_kernel, expected, rtol=1e-10, atol=1e-12)
    # p >= n_L: the exact trace kernel, bit for bit
    exact = KernelDriftTracker(model, probe)
    for p in (6, 9):
        torch.testing.assert_close(KernelDriftTracker(model, probe, projections=p).last_kernel,
                                   exact.last_kernel, rtol=0, atol=0)


def test_projected_tracker_trains_bit_identically_and_resumes():
    probe = torch.randn(12, 4, generator=torch.Generator().manual_seed(1))
    data = batches(6)
    finals = []
    for track in (False, True):
        model = dropout_mlp(0)
        opt = make_optimizer("sgd", model.parameters())
        if track:
            tracker = KernelDriftTracker(model, probe, every=2, projections=1)
            tracker.attach(opt)
        torch.manual_seed(123)
        train(model, opt, data)
        finals.append(model.state_dict())
    for (name, a), b in zip(finals[0].items(), finals[1].values()):
        assert torch.equal(a, b), name
    assert [r.step for r in tracker.history] == [0, 2, 4, 6]
    # the projection travels with the state: a tracker built with another seed adopts it
    other = KernelDriftTracker(model, probe, every=2, projections=1, projection_seed=99)
    other.load_state_dict(tracker.state_dict())
    torch.testing.assert_close(other.record().drift, tracker.record().drift, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_bad_projections(bad):
    with pytest.raises(ValueError, match="projections must be None or a positive integer"):
        KernelDriftTracker(dropout_mlp(), torch.randn(5, 4), projections=bad)


# ---------------------------------------------------------------------------------
# issue 17: spectrum_every, step(count), rank 0 only


def test_spectrum_every_skips_only_the_spectrum(tmp_path):
    model = ntk_mlp([4, 16, 16, 2], "tanh", dtype=F64)
    probe = torch.randn(7, 4, dtype=F64)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    full = KernelDriftTracker(model, probe, torch.randn(7, dtype=F64), every=2)
    lean = KernelDriftTracker(model, probe, full.probe_y, every=2, spectrum_every=2)
    full.attach(opt)
    lean.attach(opt)
    train(model, opt, batches(7, dtype=F64))
    pairs = list(zip(full.history, lean.history))
    assert [r.step for r in lean.history] == [0, 2, 4, 6]
    for i, (a, b) in enumerate(pairs):
        if i % 2 == 0:
            assert b == a  # the same computation: bit-identical records
        else:
            assert b.eigenvalues == () and b.condition_number is None
            assert b == dataclasses.replace(a, eigenvalues=(), condition_number=None)
    lean.to_csv(tmp_path / "lean.csv")
    with open(tmp_path / "lean.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["condition_number"] == "" for r in rows] == [False, True, False, True]
    with pytest.raises(ValueError, match="spectrum_every must be a positive integer"):
        KernelDriftTracker(model, probe, spectrum_every=0)


def test_step_count_records_once_when_a_multiple_is_passed():
    model = dropout_mlp()
    tracker = KernelDriftTracker(model, torch.randn(6, 4), every=4)
    assert tracker.step(3) is None and tracker.step(0) is None
    record = tracker.step(6)  # 3 → 9 passes 4 and 8: one record, at step 9
    assert record is not None and [r.step for r in tracker.history] == [0, 9]
    assert tracker.step(3) is not None  # 12
    with pytest.raises(ValueError, match="count must be an integer >= 0"):
        tracker.step(-1)


def test_only_rank_zero_records(monkeypatch):
    model = dropout_mlp()
    probe = torch.randn(6, 4)
    monkeypatch.setenv("RANK", "1")  # what torchrun sets before the process group exists
    quiet = KernelDriftTracker(model, probe, every=2)
    assert (quiet.rank, quiet.active) == (1, False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    quiet.attach(opt)
    train(model, opt, batches(4))
    assert quiet.steps == 4 and quiet.history == [] and quiet.record() is None
    assert quiet.last_kernel is None and quiet.reference is None
    assert quiet.state_dict() == {"version": 2, "step": 4, "active": False}
    with pytest.raises(ValueError, match="probe_x contains NaN"):  # checks run on every rank
        KernelDriftTracker(model, torch.full((6, 4), math.nan))
    assert KernelDriftTracker(model, probe, rank_zero_only=False).active
    monkeypatch.setenv("RANK", "0")
    loud = KernelDriftTracker(model, probe, every=2)
    with pytest.raises(ValueError, match="from a rank that did not record"):
        loud.load_state_dict(quiet.state_dict())
    quiet.load_state_dict(loud.state_dict())
    assert quiet.steps == 0 and quiet.history == []
