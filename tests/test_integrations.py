"""KernelDriftTracker where people train: PyTorch Lightning, TensorBoard, torch.autocast,
torch.compile and the NTK wrapper (DDP under torchrun: tests/test_tracker_ddp.py).

The reference in each case is the same training written as a plain loop with a plain
tracker (or the kernel computed directly by empirical_ntk); histories must agree to
float rounding: float64 models 1e-10 relative, float32 1e-5.
"""

from __future__ import annotations

import csv
import glob
import math
import os
import warnings

import pytest
import torch
from torch import nn

import torch_ntk as tn


def no_cpp_compiler() -> str:
    """The one known reason torch.compile (inductor) cannot run on the CPU: no C++ compiler
    on PATH ($CXX, c++, g++, clang++). "" when one is there (then compiling must work)."""
    import shutil
    names = [os.environ.get("CXX", "")] + ["c++", "g++", "clang++"]
    return "" if any(n and shutil.which(n) for n in names) else "no C++ compiler on PATH"

N_IN, N_PROBE, N_TRAIN, BATCH = 3, 12, 32, 8  # 4 optimizer steps per epoch


def data(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN, N_IN, generator=g, dtype=dtype)
    y = torch.sin(x.sum(1, keepdim=True))
    probe = torch.randn(N_PROBE, N_IN, generator=g, dtype=dtype)
    return x, y, probe, torch.sin(probe.sum(1))


def mlp(dtype=torch.float64):
    torch.manual_seed(0)
    return tn.ntk_mlp([N_IN, 32, 32, 1], "tanh", dtype=dtype)


def plain_run(epochs: int, every: int, model=None, **options):
    """The reference: the same training as a hand-written loop with a plain tracker."""
    x, y, probe, probe_y = data()
    model = mlp() if model is None else model
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = tn.KernelDriftTracker(model, probe, probe_y, every=every, **options)
    tracker.attach(opt)
    for _ in range(epochs):
        for i in range(0, N_TRAIN, BATCH):
            opt.zero_grad()
            nn.functional.mse_loss(model(x[i:i + BATCH]), y[i:i + BATCH]).backward()
            opt.step()
    return tracker


def assert_same_history(history, reference, rtol):
    assert [r.step for r in history] == [r.step for r in reference]
    for got, want in zip(history, reference):
        for field in ("drift", "kernel_distance", "velocity", "limit_distance",
                      "label_alignment", "trace", "param_movement", "condition_number"):
            a, b = getattr(got, field), getattr(want, field)
            if b is None:
                assert a is None, field
            elif b == 0:
                assert abs(a) <= rtol, (field, a)
            else:
                assert a == pytest.approx(b, rel=rtol), (got.step, field, a, b)


class _Recorder:
    """A writer that keeps (tag, value, global_step) calls."""

    def __init__(self):
        self.calls = []

    def add_scalar(self, tag, value, global_step=None):
        self.calls.append((tag, value, global_step))


# -- TensorBoard ---------------------------------------------------------------------

def test_tensorboard_event_file_holds_the_records(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    tracker = plain_run(epochs=2, every=3, writer=writer)  # 8 steps: records at 0, 3, 6
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"ntk/drift", "ntk/alignment_distance", "ntk/velocity", "ntk/param_movement",
            "ntk/trace", "ntk/condition_number", "ntk/label_alignment",
            "ntk/limit_distance", "ntk/eigenvalue_1"} <= tags
    drift = events.Scalars("ntk/drift")
    history = tracker.history
    assert [e.step for e in drift] == [r.step for r in history] == [0, 3, 6]
    # TensorBoard stores float32.
    assert [e.value for e in drift] == pytest.approx([r.drift for r in history], rel=1e-6, abs=1e-30)
    velocity = events.Scalars("ntk/velocity")  # None at step 0: not written
    assert [e.step for e in velocity] == [3, 6]


def test_writer_without_add_scalar_is_refused():
    _, _, probe, _ = data()
    with pytest.raises(TypeError, match="writer must have an add_scalar"):
        tn.KernelDriftTracker(mlp(), probe, writer=object())


# -- Lightning -----------------------------------------------------------------------

def _lightning():
    try:
        import lightning.pytorch as pl
    except ImportError:
        pl = pytest.importorskip("pytorch_lightning")
    return pl


def _fit(pl, root, epochs, callback, ckpt_path=None, **trainer_options):
    from torch.utils.data import DataLoader, TensorDataset

    class Regression(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x, y, _, _ = data()
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, callbacks=[callback],
        logger=pl.loggers.CSVLogger(str(root), name="run"), enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
        **trainer_options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and log intervals
        trainer.fit(Regression().double(), loader, ckpt_path=ckpt_path)
    return trainer


def _logged(root) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(root, "run", "version_*", "metrics.csv"))):
        with open(path) as f:
            rows += list(csv.DictReader(f))
    return rows


def test_lightning_callback_records_logs_and_resumes(tmp_path):
    pl = _lightning()
    from torch_ntk.integrations.lightning import KernelDriftCallback

    _, _, probe, probe_y = data()
    reference = plain_run(epochs=3, every=2).history  # 12 steps: records at 0, 2, …, 12

    callback = KernelDriftCallback(probe, probe_y, every=2, submodule="net")
    _fit(pl, tmp_path / "full", 3, callback)
    assert len(callback.tracker.history) == 7
    assert_same_history(callback.tracker.history, reference, rtol=1e-10)

    rows = _logged(tmp_path / "full")
    assert rows and {"ntk/drift", "ntk/alignment_distance", "ntk/velocity", "ntk/param_movement",
                     "ntk/trace", "ntk/condition_number", "ntk/label_alignment",
                     "ntk/limit_distance"} <= set(rows[0])
    logged = {int(r["step"]): float(r["ntk/drift"]) for r in rows if r.get("ntk/drift")}
    assert sorted(logged) == [0, 2, 4, 6, 8, 10, 12]
    for r in reference:
        assert logged[r.step] == pytest.approx(r.drift, rel=1e-12, abs=1e-300)

    # Interrupted after 2 epochs (8 steps), checkpointed, resumed by a new callback.
    first = KernelDriftCallback(probe, probe_y, every=2, submodule="net")
    trainer = _fit(pl, tmp_path / "part", 2, first)
    checkpoint = str(tmp_path / "part.ckpt")
    trainer.save_checkpoint(checkpoint)
    assert [r.step for r in first.tracker.history] == [0, 2, 4, 6, 8]
    writer = _Recorder()
    resumed = KernelDriftCallback(probe, probe_y, every=2, submodule="net", writer=writer)
    _fit(pl, tmp_path / "part", 3, resumed, ckpt_path=checkpoint)
    assert_same_history(resumed.tracker.history, reference, rtol=1e-10)
    # The writer gets the new records only: no second step 0 on resume.
    assert [step for tag, _, step in writer.calls if tag == "ntk/drift"] == [10, 12]


def test_optional_dependencies_stay_optional(monkeypatch):
    import importlib
    import subprocess
    import sys

    code = ("import sys, torch_ntk, torch_ntk.integrations; print(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'tensorboard')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__)))))
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    monkeypatch.delitem(sys.modules, "torch_ntk.integrations.lightning", raising=False)
    with pytest.raises(ImportError, match="pip install lightning"):
        importlib.import_module("torch_ntk.integrations.lightning")
    monkeypatch.undo()
    sys.modules.pop("torch_ntk.integrations.lightning", None)


def test_callback_is_a_callback_of_each_installed_lightning():
    _lightning()
    from torch_ntk.integrations.lightning import KernelDriftCallback

    callback = KernelDriftCallback(data()[2])
    for package in ("lightning.pytorch", "pytorch_lightning"):
        try:
            module = __import__(package, fromlist=["Callback"])
        except ImportError:
            continue
        assert isinstance(callback, module.Callback), package


def test_lightning_gradient_accumulation_counts_optimizer_steps(tmp_path):
    pl = _lightning()
    from torch_ntk.integrations.lightning import KernelDriftCallback

    x, y, probe, probe_y = data()
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = tn.KernelDriftTracker(model, probe, probe_y, every=2)
    tracker.attach(opt)
    for _ in range(2):  # 2 epochs of 4 batches, 2 batches per optimizer step: 4 steps
        for i in range(0, N_TRAIN, 2 * BATCH):
            opt.zero_grad()
            for j in (i, i + BATCH):  # Lightning scales each batch's loss by 1/2
                (nn.functional.mse_loss(model(x[j:j + BATCH]), y[j:j + BATCH]) / 2).backward()
            opt.step()

    callback = KernelDriftCallback(probe, probe_y, every=2, submodule="net")
    _fit(pl, tmp_path, 2, callback, accumulate_grad_batches=2)
    assert [r.step for r in callback.tracker.history] == [0, 2, 4]
    assert_same_history(callback.tracker.history, tracker.history, rtol=1e-10)


def test_lightning_callback_rejects_bad_arguments():
    _lightning()
    from torch_ntk.integrations.lightning import KernelDriftCallback

    _, _, probe, _ = data()
    with pytest.raises(ValueError, match="every must be a positive integer"):
        KernelDriftCallback(probe, every=0)
    with pytest.raises(TypeError, match="probe_x must be a torch.Tensor"):
        KernelDriftCallback(probe.numpy())


# -- autocast, torch.compile, the NTK wrapper ----------------------------------------

def test_autocast_bf16_training_records_in_float32():
    x, y, probe, probe_y = (t.float() for t in data())
    model = mlp(torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    tracker = tn.KernelDriftTracker(model, probe, probe_y, every=2)
    tracker.attach(opt)
    for i in range(0, N_TRAIN, BATCH):
        with torch.autocast("cpu", dtype=torch.bfloat16):  # opt.step() inside: so is the record
            loss = nn.functional.mse_loss(model(x[i:i + BATCH]).float(), y[i:i + BATCH])
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert [r.step for r in tracker.history] == [0, 2, 4]
    kernel = tracker.last_kernel
    assert kernel.dtype == torch.float32
    expected = tn.empirical_ntk(model, probe, mode="trace", progress=False)  # no autocast
    torch.testing.assert_close(kernel, expected, rtol=1e-5, atol=1e-7)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        low = tn.empirical_ntk(model, probe, mode="trace", method="jacobian", progress=False)
    # What the record would be without switching autocast off: bf16 rounding, far off.
    assert (low.float() - expected).abs().max() > 100 * (kernel - expected).abs().max()


def test_grad_scaler_float16_training_counts_only_the_steps_taken():
    if not hasattr(torch.amp, "GradScaler"):
        pytest.skip("torch.amp.GradScaler('cpu') needs torch >= 2.3")
    x, y, probe, _ = (t.float() for t in data())
    model = mlp(torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    tracker = tn.KernelDriftTracker(model, probe, every=2)
    tracker.attach(opt)

    def step(xb, yb, scale=1.0):
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.mse_loss(model(xb).float(), yb) * scale
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)  # skips opt.step() when the gradients are not finite
        scaler.update()

    for i in range(0, N_TRAIN, BATCH):
        step(x[i:i + BATCH], y[i:i + BATCH])
    step(x[:BATCH], y[:BATCH], scale=math.inf)  # skipped by the scaler: not counted
    assert tracker.steps == 4 and [r.step for r in tracker.history] == [0, 2, 4]
    expected = tn.empirical_ntk(model, probe, mode="trace", progress=False)
    torch.testing.assert_close(tracker.last_kernel, expected, rtol=1e-5, atol=1e-7)


def test_ntk_wrapper_is_looked_through():
    wrapped = plain_run(epochs=1, every=2, model=tn.NTK(mlp())).history
    assert_same_history(wrapped, plain_run(epochs=1, every=2).history, rtol=1e-12)


def test_compiled_model_gives_the_eager_history():
    model = mlp()
    if no_cpp_compiler():  # the known unavailability; any other compile failure fails here
        pytest.skip(f"torch.compile (inductor) is unavailable here: {no_cpp_compiler()}")
    compiled = torch.compile(model)
    compiled(data()[0][:BATCH])  # compile now
    tracker = plain_run(epochs=1, every=2, model=compiled)
    assert tracker.model is model
    assert_same_history(tracker.history, plain_run(epochs=1, every=2).history, rtol=1e-9)


# -- bad probe data (issue 16): the tracker's argument is named, nothing is written ---



@pytest.mark.parametrize("case", ["nan_x", "overflow_x", "nan_y", "inf_y"])
def test_non_finite_probe_names_the_argument(case):
    _, _, probe, probe_y = data()
    model = mlp(torch.float32)
    probe = probe.clone()
    name = "probe_x" if case.endswith("_x") else "probe_y"
    if case == "nan_x":
        probe[3, 1] = math.nan
    elif case == "overflow_x":
        probe[3, 1] = 1e300  # finite in float64, Inf in the model's float32
    elif case == "nan_y":
        probe_y = probe_y.clone()
        probe_y[2] = math.nan
    else:
        probe_y = probe_y.clone()
        probe_y[2] = math.inf
    writer = _Recorder()
    with pytest.raises(ValueError, match=f"^KernelDriftTracker: {name} "):
        tn.KernelDriftTracker(model, probe, probe_y, writer=writer)
    assert writer.calls == []
