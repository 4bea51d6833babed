"""``torch-ntk reproduce classification`` at a tiny config (seconds).

Oracles: at t = 0 network and kernel predictions coincide (gaps exactly 0); accuracies
are multiples of 1/test; the Θ₀ gap of a 16× wider network is smaller, and larger than
the discretization floor; the summary's means and slope are recomputed from the per-init
results; the floor's Euler recursion converges to the ODE flow at first order in η
(error ratio 2 ± 0.2 when η halves); a missing torchdiffeq names the extra.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from torch_ntk.cli import main
from torch_ntk.experiments import classification, figure3, load
from torch_ntk.experiments.common import loglog_slope
from torch_ntk.predict import gradient_descent

pytestmark = pytest.mark.usefixtures("one_thread")
needs_sklearn = pytest.mark.skipif(
    not figure3.digits_available(),
    reason="classification needs scikit-learn's bundled digits: pip install 'torch-ntk[digits]'")
needs_ode = pytest.mark.skipif(importlib.util.find_spec("torchdiffeq") is None,
                               reason="needs torchdiffeq: pip install 'torch-ntk[ode]'")

TINY = ["--set", "classes=0,1,2", "--set", "train_per_class=6", "--set", "test_per_class=10",
        "--set", "widths=16,256", "--set", "inits=1", "--set", "steps=30", "--set", "records=3"]


@needs_sklearn
@needs_ode
def test_classification_tiny_run(tmp_path, capsys):
    assert main(["reproduce", "classification", "--out", str(tmp_path), "--no-progress"]
                + TINY) == 0
    assert "slope of log gap vs log width" in capsys.readouterr().out
    with open(tmp_path / "classification.json") as f:
        saved = json.load(f)
    assert saved["files"] == ["classification.json", "classification.png"]
    assert (tmp_path / "classification.png").stat().st_size > 1000
    results, summary = saved["results"], saved["summary"]
    assert results["steps"] == [0, 10, 20, 30] and summary["test"] == 30
    for w in ("16", "256"):
        (run,) = results["widths"][w]
        for k in classification.KERNELS:
            assert run[k]["logit"][0] == 0.0 and run[k]["disagreement"][0] == 0.0
            assert all(g > 0 for g in run[k]["logit"][1:])
            for a in run[k]["kernel_accuracy"]:
                assert 0 <= a <= 1 and abs(a * 30 - round(a * 30)) < 1e-9
        assert run["floor"][0] == 0.0
        assert summary["widths"][w]["theta0_logit"] == run["theta0"]["logit"][-1]
    rows = summary["widths"]
    assert rows["256"]["theta0_logit"] < rows["16"]["theta0_logit"]
    assert rows["16"]["floor"] < rows["16"]["theta0_logit"]
    assert summary["slopes"]["theta0_logit"] == pytest.approx(
        loglog_slope([16, 256], [rows["16"]["theta0_logit"], rows["256"]["theta0_logit"]]))
    table = classification.render_classification(saved)
    assert table.count("\n| 16 |") == 1 and table.count("\n| 256 |") == 1


@needs_ode
def test_discrete_kernel_gd_approaches_the_flow():
    """Euler steps of size η converge to the flow at first order as η → 0 (t fixed)."""
    g = torch.Generator().manual_seed(3)
    flat = torch.randn(24, 24, generator=g, dtype=torch.float64)   # rows (sample, logit)
    k = (flat @ flat.T / 24).reshape(8, 3, 8, 3).permute(0, 2, 1, 3).contiguous()
    b = torch.randn(5, 3, 24, generator=g, dtype=torch.float64)
    k_test = (b @ flat.T / 24).reshape(5, 3, 8, 3).permute(0, 2, 1, 3).contiguous()
    labels = torch.arange(8) % 3
    onehot = torch.nn.functional.one_hot(labels, 3).double()
    f0 = torch.randn(8, 3, generator=g, dtype=torch.float64)
    g0 = torch.randn(5, 3, generator=g, dtype=torch.float64)
    flow = gradient_descent("cross_entropy", k, labels)(4.0, f0, g0, k_test).test
    errors = []
    for steps in (40, 80):
        eta = 4.0 / steps
        # times are in units of steps: the flow with learning rate η at t = steps
        flow_eta = gradient_descent("cross_entropy", k, labels, learning_rate=eta)(
            float(steps), f0, g0, k_test).test
        assert torch.allclose(flow_eta, flow, rtol=1e-8, atol=1e-9)
        discrete = classification.discrete_kernel_gd(k, k_test, onehot, f0, g0, eta,
                                                      [0, steps])[-1]
        errors.append(float((discrete - flow).abs().max()))
    assert 1.8 < errors[0] / errors[1] < 2.2   # first order in η
    assert errors[1] < 0.05 * float((flow - g0).abs().max())


def test_missing_torchdiffeq_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchdiffeq", None)
    assert "torch-ntk[digits,ode]" in load("classification").missing_requirements()


def test_config_checks():
    with pytest.raises(ValueError, match="classes must be at least two distinct digits"):
        classification.Config(classes=(3, 3))
    with pytest.raises(ValueError, match="widths must be increasing"):
        classification.Config(widths=(256, 64))
    with pytest.raises(ValueError, match="records must be at most steps"):
        classification.Config(steps=4, records=8)
