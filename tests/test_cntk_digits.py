"""``torch-ntk reproduce cntk-digits`` on a handful of digits (seconds).

Oracles: accuracies are fractions of the test set (multiples of 1/test in [0, 1]); every
kernel method is well above chance (10 classes) already with 30 training images; one
kernel-regression accuracy per convolutional kernel recomputed independently from
analytic_kernels and a plain linear solve; the kernels of the residual network (the
user's class, lifted as a graph) and of Myrtle-5 against the numpy recursion of
tests/graph_reference.py (the graph tests' independent reference; the stride-2 taps of the
residual network's second block written here) at 1e-10 in float64; the JSON holds every
method, size and draw and is reproducible from the seed; a missing scikit-learn names the
extra.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch

import graph_reference as ref

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
    methods = ["cntk-gap", "cntk-flatten", "cntk-resnet", "myrtle-5", "mlp-ntk", "mlp-nngp",
               "cnn-4"]
    assert list(summary["methods"]) == methods == list(acc)
    assert summary["sizes"] == [10, 30] and summary["test"] == 40
    for m in methods:
        runs = torch.tensor(acc[m], dtype=torch.float64)
        assert runs.shape == (2, 2)  # sizes × draws
        assert ((runs >= 0) & (runs <= 1)).all()
        assert torch.allclose(runs * 40, (runs * 40).round(), atol=1e-9)
        assert summary["methods"][m]["mean"] == pytest.approx(runs.mean(1).tolist())
        assert summary["methods"][m]["std"] == pytest.approx(runs.std(1).tolist())
    for m in methods[:6]:
        assert min(acc[m][1]) > 3 * summary["chance"], m  # 30 images: far above 10%
    trained = saved["results"]["trained"]["cnn-4"][1][0]
    assert 0 <= trained["train_accuracy"] <= 1 and trained["train_loss"] > 0
    assert len(saved["results"]["test_indices"]) == 40
    assert not set(saved["results"]["test_indices"]) & {
        i for draw in saved["results"]["train_indices"] for i in draw}
    assert saved["seconds"]["kernel cntk-gap"] > 0 and saved["environment"]["torch"]
    assert saved["seconds"]["kernel cntk-resnet"] > 0 and saved["seconds"]["kernel myrtle-5"] > 0
    assert len(summary["load_average"]) == 2 and min(summary["load_average"]) >= 0
    assert 0 < summary["cpu_seconds"]
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
    models = {"cntk-gap": cntk_digits.cnn(config, 1, "gap"),
              "cntk-resnet": cntk_digits.resnet(config, 1),
              "myrtle-5": cntk_digits.myrtle(config, 1)}
    for name, model in models.items():
        k = analytic_kernels(model, images[train], get="ntk").ntk
        k_test = analytic_kernels(model, images[test], images[train], get="ntk").ntk
        y = torch.nn.functional.one_hot(labels[train], 10).double()
        a = k + config.ridge * k.diagonal().mean() * torch.eye(len(train), dtype=k.dtype)
        predicted = (k_test @ torch.linalg.solve(a, y)).argmax(1)
        expected = float((predicted == labels[test]).double().mean())
        assert payload["results"]["accuracy"][name][0][0] == pytest.approx(expected, abs=1e-12)
        assert expected > 0.3, name


def strided_conv(state: dict, size: tuple, k: int, pad: int, stride: int, ws: float,
                 bs: float) -> dict:
    """The conv map of graph_reference.conv with stride: tap q of output (i, j) reads input
    (stride·i + q_h − pad, stride·j + q_w − pad), zero outside the image."""
    h, w = size
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    taps = []
    for qh in range(k):
        for qw in range(k):
            s = np.zeros((ho * wo, h * w))
            for i in range(ho):
                for j in range(wo):
                    r, c = stride * i + qh - pad, stride * j + qw - pad
                    if 0 <= r < h and 0 <= c < w:
                        s[i * wo + j, r * w + c] = 1.0
            taps.append(s)

    def a(m):
        return sum(s @ m @ s.T for s in taps) / len(taps)

    def one(_, kk, tt):
        ak = a(kk)
        return ws ** 2 * ak + bs ** 2, ws ** 2 * ak + bs ** 2 + ws ** 2 * a(tt)
    return {p: one(p, *state[p]) for p in ref.PAIRS}


def resnet_reference(config, shortcut: float = 1.0):
    """The ResNet class's kernel written from NTK_MATH §6/§8: stem conv; block 1:
    x + conv(relu(conv(relu x))); block 2: conv1x1/2(relu x) + conv(relu(conv/2(relu x)));
    relu; global mean; dense (σ_w 1). ``shortcut``: the coefficient of block 1's identity
    (1 is the network; anything else a deliberately wrong kernel)."""
    ws, bs = config.weight_std, config.bias_std

    def forward(s):
        s = ref.conv(s, (8, 8), 3, 1, ws, bs)
        b = ref.conv(ref.activation(ref.conv(ref.activation(s, "relu"), (8, 8), 3, 1, ws, bs),
                                    "relu"), (8, 8), 3, 1, ws, bs)
        s = ref.add([s, b], [shortcut, 1.0])
        o = ref.activation(s, "relu")
        b = ref.conv(ref.activation(strided_conv(o, (8, 8), 3, 1, 2, ws, bs), "relu"),
                     (4, 4), 3, 1, ws, bs)
        s = ref.add([strided_conv(o, (8, 8), 1, 0, 2, ws, bs), b], [1.0, 1.0])
        return ref.dense(ref.global_mean(ref.activation(s, "relu")), 1.0, bs)
    return forward


def myrtle_reference(config):
    """Myrtle-5 on 8×8 from NTK_MATH §6: conv relu conv relu pool2 conv relu pool2 conv
    relu pool2 (to 1×1), flatten, dense (σ_w 1)."""
    ws, bs = config.weight_std, config.bias_std

    def forward(s):
        size = 8
        for stage, convs in enumerate((2, 1, 1)):
            for _ in range(convs):
                s = ref.activation(ref.conv(s, (size, size), 3, 1, ws, bs), "relu")
            s = ref.pool(s, ref.pool_matrix((size, size), 2, 2, 0, True))
            size //= 2
        return ref.dense(ref.flatten(s), 1.0, bs)
    return forward


@pytest.mark.parametrize("name", ["cntk-resnet", "myrtle-5"])
def test_residual_and_myrtle_kernels_against_the_reference_recursion(name):
    config = cntk_digits.Config()
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    x2 = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    if name == "cntk-resnet":
        model, forward = cntk_digits.resnet(config, 1), resnet_reference(config)
    else:
        model, forward = cntk_digits.myrtle(config, 1), myrtle_reference(config)
    for a, b in ((x1, None), (x1, x2)):
        got = analytic_kernels(model, a, b)
        nngp, ntk = ref.kernels(forward, a.numpy(), (a if b is None else b).numpy())
        for value, expected in ((got.nngp, nngp), (got.ntk, ntk)):
            assert value.dtype == torch.float64
            np.testing.assert_allclose(value.numpy(), expected, rtol=1e-10, atol=1e-12)
    if name == "cntk-resnet":  # the test can fail: without block 1's shortcut it does
        _, right = ref.kernels(forward, x1.numpy(), x1.numpy())
        _, wrong = ref.kernels(resnet_reference(config, shortcut=0.0), x1.numpy(), x1.numpy())
        assert np.abs(wrong - right).max() > 1e-2 * np.abs(right).max()


def test_the_residual_network_is_the_users_class_and_runs_as_written():
    """cntk-resnet's network is an nn.Module whose forward adds branches; as a trainable
    network it maps [N, 1, 8, 8] → [N, 10] (4×4 after the stride-2 block)."""
    config = cntk_digits.Config()
    net = cntk_digits.resnet(config, 8, dtype=torch.float64)
    assert isinstance(net, torch.nn.Module) and not isinstance(net, torch.nn.Sequential)
    assert net.block1.proj is None and net.block2.proj is not None
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    assert net(x).shape == (5, 10)
    h = net.block1(net.stem(x))
    o = torch.relu(h)
    expected = net.block2.proj(o) + net.block2.conv2(torch.relu(net.block2.conv1(o)))
    torch.testing.assert_close(net.block2(h), expected, rtol=0, atol=0)
    assert net.block2(h).shape == (5, 16, 4, 4)


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
