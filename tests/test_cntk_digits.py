"""``torch-ntk reproduce cntk-digits`` on a handful of digits (seconds).

Oracles: accuracies are fractions of the test set (multiples of 1/test in [0, 1]); every
kernel method is well above chance (10 classes) already with 30 training images; one
kernel-regression accuracy recomputed independently from analytic_kernels and a plain
linear solve; the JSON holds every method, size and draw and is reproducible from the
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
from torch_ntk.experiments import cntk_digits, figure3, load

pytestmark = pytest.mark.usefixtures("one_thread")

needs_sklearn = pytest.mark.skipif(
    not figure3.digits_available(),
    reason="cntk-digits needs scikit-learn's bundled digits: pip install 'torch-ntk[digits]'")

TINY = ["--set", "sizes=10,30", "--set", "test=40", "--set", "draws=2", "--set", "depth=2",
        "--set", "widths=4", "--set", "epochs=5"]


def read_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


@needs_sklearn
def test_cntk_digits_tiny_run(tmp_path, capsys):
    assert main(["reproduce", "cntk-digits", "--out", str(tmp_path), "--no-progress"] + TINY) == 0
    printed = capsys.readouterr().out
    assert "cntk-gap" in printed and "cnn-4" in printed
    saved = read_json(tmp_path / "cntk-digits.json")
    assert "cntk-digits.json" in saved["files"]
    summary, acc = saved["summary"], saved["results"]["accuracy"]
    methods = ["cntk-gap", "cntk-flatten", "mlp-ntk", "mlp-nngp", "cnn-4"]
    assert list(summary["methods"]) == methods == list(acc)
    assert summary["sizes"] == [10, 30] and summary["test"] == 40
    for m in methods:
        runs = torch.tensor(acc[m], dtype=torch.float64)
        assert runs.shape == (2, 2)  # sizes × draws
        assert ((runs >= 0) & (runs <= 1)).all()
        assert torch.allclose(runs * 40, (runs * 40).round(), atol=1e-9)
        assert summary["methods"][m]["mean"] == pytest.approx(runs.mean(1).tolist())
        assert summary["methods"][m]["std"] == pytest.approx(runs.std(1).tolist())
    for m in methods[:4]:
        assert min(acc[m][1]) > 3 * summary["chance"], m  # 30 images: far above 10%
    trained = saved["results"]["trained"]["cnn-4"][1][0]
    assert 0 <= trained["train_accuracy"] <= 1 and trained["train_loss"] > 0
    assert len(saved["results"]["test_indices"]) == 40
    assert not set(saved["results"]["test_indices"]) & {
        i for draw in saved["results"]["train_indices"] for i in draw}
    assert saved["seconds"]["kernel cntk-gap"] > 0 and saved["environment"]["torch"]
    png = tmp_path / "cntk-digits.png"
    if importlib.util.find_spec("matplotlib") is not None:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "cntk-digits.png" in saved["files"]
    else:
        assert not png.exists()


@needs_sklearn
def test_kernel_regression_accuracy_by_a_plain_solve():
    config = cntk_digits.Config(sizes=(25,), test=30, draws=1, depth=2, widths=(2,), epochs=1,
                                kernel_dtype="float64")
    payload = cntk_digits.run(config)
    images, labels, test, draws = cntk_digits.data(config)
    train = draws[0]
    model = cntk_digits.cnn(config, 1, "gap")
    k = analytic_kernels(model, images[train], get="ntk").ntk
    k_test = analytic_kernels(model, images[test], images[train], get="ntk").ntk
    y = torch.nn.functional.one_hot(labels[train], 10).double()
    a = k + config.ridge * k.diagonal().mean() * torch.eye(len(train), dtype=k.dtype)
    predicted = (k_test @ torch.linalg.solve(a, y)).argmax(1)
    expected = float((predicted == labels[test]).double().mean())
    assert payload["results"]["accuracy"]["cntk-gap"][0][0] == pytest.approx(expected, abs=1e-12)
    assert expected > 0.3


@needs_sklearn
def test_cntk_digits_is_deterministic_given_the_seed():
    config = cntk_digits.Config(sizes=(10,), test=20, draws=1, depth=1, widths=(2,), epochs=2)
    first, second = cntk_digits.run(config), cntk_digits.run(config)
    assert first["results"] == second["results"]


def test_cntk_digits_is_registered_and_checks_its_config(capsys):
    assert load("cntk-digits") is cntk_digits
    assert main(["reproduce", "cntk-digits", "--quick", "--print-config"]) == 0
    assert "cntk-digits: Config(sizes=(20, 60, 180)" in capsys.readouterr().out
    for bad in ({"sizes": (50, 20)}, {"test": 1000, "sizes": (1000,)}, {"kernel_size": 2},
                {"dtype": "float16"}, {"lr": 0.0}, {"widths": ()}):
        with pytest.raises(ValueError):
            cntk_digits.Config(**bad)


def test_cntk_digits_without_scikit_learn_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn → ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert "torch-ntk[digits]" in cntk_digits.missing_requirements()
    assert main(["reproduce", "cntk-digits", "--quick", "--out", str(tmp_path)]) == 1
    assert "torch-ntk[digits]" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
