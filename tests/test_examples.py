"""Every script in examples/ runs on tiny sizes (--quick) and prints what it promises.

Each example is loaded from its file and its ``main(["--quick", ...])`` called in this
process (a subprocess per example would pay torch's import each time); the command line
``python examples/NAME.py --quick`` runs the same function.
"""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(f for f in os.listdir(os.path.join(ROOT, "examples")) if f.endswith(".py"))
EXPECTED = {
    "cnn_limit.py": "CNTK-GAP of 4 images",
    "kernel_regression_digits.py": "test accuracy",
    "limit_vs_finite_width.py": "log-log slope",
    "track_drift_during_training.py": "NTK drift",
}


def load(name):
    spec = importlib.util.spec_from_file_location(f"example_{name[:-3]}",
                                                  os.path.join(ROOT, "examples", name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_example_is_listed_here():
    assert sorted(EXPECTED) == EXAMPLES


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_quick(name, tmp_path, monkeypatch, capsys):
    if name == "kernel_regression_digits.py":
        pytest.importorskip("sklearn")
    monkeypatch.chdir(tmp_path)
    load(name).main(["--quick"])
    assert EXPECTED[name] in capsys.readouterr().out
    if name == "track_drift_during_training.py":  # outputs land in --out's default folder
        assert sorted(os.listdir(tmp_path / "torch_ntk_examples")) == [
            "drift_width128.csv", "drift_width16.csv"]


def test_examples_accept_the_environment_variable(monkeypatch, capsys):
    monkeypatch.setenv("TORCH_NTK_EXAMPLES_QUICK", "1")
    errors = load("limit_vs_finite_width.py").main([])
    assert len(errors) == 2  # the quick widths
