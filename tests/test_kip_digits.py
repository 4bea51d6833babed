"""``torch-ntk reproduce kip-digits`` (Kernel Inducing Points) on a handful of digits.

Oracles: the KIP loss's gradient w.r.t. the support pixels against central differences of
the fused op's kernels (float64, step 1e-5, relative 1e-6; no autograd in the reference);
the reported accuracies recomputed by a plain linear solve of analytic_kernels (1e-12);
accuracies are multiples of 1/test; learned support sets beat their own random starting
images on a tiny run (10 images, 30 steps: a gain of > 10 points, seen ≈ 20–27 at 100
steps); the JSON holds every kernel, support size and seed and is reproducible from the
seed; a missing scikit-learn names the extra.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest
import torch

from torch_ntk import analytic_kernels
from torch_ntk.cli import main
from torch_ntk.experiments import figure3, kip_digits, load

pytestmark = pytest.mark.usefixtures("one_thread")

needs_sklearn = pytest.mark.skipif(
    not figure3.digits_available(),
    reason="kip-digits needs scikit-learn's bundled digits: pip install 'torch-ntk[digits]'")

TINY = ["--set", "supports=10", "--set", "seeds=2", "--set", "steps=30", "--set",
        "target_batch=60", "--set", "test=100", "--set", "depth=2"]


@needs_sklearn
def test_kip_digits_tiny_run(tmp_path, capsys):
    assert main(["reproduce", "kip-digits", "--out", str(tmp_path), "--no-progress"] + TINY) == 0
    printed = capsys.readouterr().out
    assert "mlp-ntk" in printed and "cntk" in printed and "learned" in printed
    with open(tmp_path / "kip-digits.json") as f:
        saved = json.load(f)
    summary, results = saved["summary"], saved["results"]["kernels"]
    assert list(summary["kernels"]) == ["mlp-ntk", "cntk"] == list(results)
    assert summary["test"] == 100 and summary["train"] == 1697
    for kernel, k in summary["kernels"].items():
        assert 0.9 < k["full"] <= 1  # all 1697 training digits
        cell, runs = k["supports"]["10"], results[kernel]["supports"]["10"]
        for key in ("learned", "random"):
            acc = torch.tensor(runs[key], dtype=torch.float64)
            assert acc.shape == (2,)
            assert torch.allclose(acc * 100, (acc * 100).round(), atol=1e-9)
            assert cell[key]["mean"] == pytest.approx(float(acc.mean()))
            assert cell[key]["std"] == pytest.approx(float(acc.std()))
        assert cell["gain"] > 0.10, kernel  # 30 steps of KIP: far better than random images
        assert len(runs["losses"]) == 2 and len(runs["losses"][0]) == 30
        assert runs["losses"][0][-1] < runs["losses"][0][0]
        assert torch.tensor(runs["images"]["images"]).shape == (10, 8, 8)
    png = tmp_path / "kip-digits.png"
    if importlib.util.find_spec("matplotlib") is not None:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "kip-digits.png" in saved["files"]


@needs_sklearn
def test_reported_accuracy_by_a_plain_solve():
    config = kip_digits.Config(kernels=("cntk",), supports=(10,), seeds=1, steps=3,
                               target_batch=20, test=50, depth=1, learn_labels=True)
    payload = kip_digits.run(config)
    images, labels, test, pool = kip_digits.data(config)
    spec = kip_digits.architecture(config, "cntk")
    got = kip_digits.distill(config, spec, images[pool], labels[pool], 10,
                             kip_digits.derive_seed(config.seed, kip_digits.NAME, "cntk", 10, 0))
    xs, ys = got["images"], got["labels"]
    assert not torch.equal(ys, got["initial_labels"])  # learn_labels moved them
    k = analytic_kernels(spec, xs, get="ntk").ntk
    a = k + config.ridge * k.diagonal().mean() * torch.eye(10, dtype=k.dtype)
    pred = analytic_kernels(spec, images[test], xs, get="ntk").ntk @ torch.linalg.solve(a, ys)
    expected = float((pred.argmax(1) == labels[test]).double().mean())
    runs = payload["results"]["kernels"]["cntk"]["supports"]["10"]
    assert runs["learned"][0] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("kernel", ["mlp-ntk", "cntk"])
def test_kip_loss_gradient_against_differences_of_the_fused_op(kernel):
    config = kip_digits.Config(depth=2)
    spec = kip_digits.architecture(config, kernel)
    shape = (64,) if kernel == "mlp-ntk" else (1, 8, 8)
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(4, *shape, dtype=torch.float64, generator=g)
    x = torch.randn(6, *shape, dtype=torch.float64, generator=g)
    ys = torch.randn(4, 10, dtype=torch.float64, generator=g)
    y = torch.randn(6, 10, dtype=torch.float64, generator=g)

    def loss(support):
        return 0.5 * (kip_digits.regression(spec, support, ys, x, 1e-2) - y).square().sum()

    leaf = xs.clone().requires_grad_(True)
    loss(leaf).backward()
    direction = torch.randn(xs.shape, dtype=torch.float64, generator=g)
    h = 1e-5
    with torch.no_grad():  # the fused op, no autograd
        numeric = (loss(xs + h * direction) - loss(xs - h * direction)) / (2 * h)
    assert float((leaf.grad * direction).sum()) == pytest.approx(float(numeric), rel=1e-6)


@needs_sklearn
def test_kip_digits_is_deterministic_given_the_seed():
    config = kip_digits.Config(kernels=("mlp-ntk",), supports=(10,), seeds=1, steps=3,
                               target_batch=20, test=30)
    first, second = kip_digits.run(config), kip_digits.run(config)
    assert first["results"] == second["results"]


def test_kip_digits_is_registered_and_checks_its_config(capsys):
    assert load("kip-digits") is kip_digits
    assert main(["reproduce", "kip-digits", "--quick", "--print-config"]) == 0
    assert "kip-digits: Config(kernels=('mlp-ntk', 'cntk'), supports=(10,)" in (
        capsys.readouterr().out)
    for bad in ({"supports": (15,)}, {"kernels": ("rbf",)}, {"kernels": ()},
                {"cntk_readout": "max"}, {"lr": 0.0}, {"ridge": 0.0}, {"steps": -1},
                {"test": 1700}, {"dtype": "float16"}, {"seeds": 0}):
        with pytest.raises(ValueError):
            kip_digits.Config(**bad)


def test_kip_digits_without_scikit_learn_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn → ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert "torch-ntk[digits]" in kip_digits.missing_requirements()
    assert main(["reproduce", "kip-digits", "--quick", "--out", str(tmp_path)]) == 1
    assert "torch-ntk[digits]" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
