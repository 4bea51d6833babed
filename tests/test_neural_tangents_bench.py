"""benchmarks/neural_tangents.py away from its venv: it imports without JAX, refuses to run
without it, and its own reference (the ReLU diagonal) and tolerances are right.

The comparison itself needs jax 0.4.23 and neural-tangents 0.6.5 (scripts/setup_nt_venv.sh)
and is run by hand; here only what any venv can check."""

import importlib.util
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import torch_ntk as tn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "neural_tangents.py")
HAS_JAX = importlib.util.find_spec("jax") is not None


def _module():
    spec = importlib.util.spec_from_file_location("nt_bench_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_importing_the_suite_does_not_import_jax():
    code = (f"import sys; sys.path.insert(0, {ROOT!r}); import benchmarks.neural_tangents as b; "
            "assert callable(b.render_neural_tangents); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'neural_tangents')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


@pytest.mark.skipif(HAS_JAX, reason="jax is installed here: the suite would run")
def test_without_jax_the_suite_exits_2_naming_the_setup_script(tmp_path):
    out = tmp_path / "nt.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 2, proc.stdout[-1000:] + proc.stderr[-2000:]
    assert "needs jax and neural-tangents" in proc.stderr
    assert "scripts/setup_nt_venv.sh" in proc.stderr
    assert not out.exists()


def test_bad_thread_count_is_refused():
    allowed = len(os.sched_getaffinity(0))
    proc = subprocess.run([sys.executable, SCRIPT, "--threads", str(allowed + 1)],
                          capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode != 0
    assert "--threads must be in 1.." in proc.stderr


@pytest.mark.parametrize("depth", [2, 5])
def test_relu_diagonal_closed_form_matches_the_op(depth):
    """The suite's reference for the ReLU diagonal (correlation 1, angle 0) against the
    op's float64 kernels of the same torch model, 1e-12 relative; a recursion with the
    NTK's derivative factor 1/2 replaced by 1/π (a plausible slip) misses by far more."""
    bench = _module()
    x = torch.randn(7, bench.N0, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    k = tn.analytic_kernels(bench.torch_model("mlp", "relu", depth), x, progress=False)
    sigma, theta = bench.relu_diagonal(x.numpy(), depth)
    assert bench.diagonal_error((k.nngp, k.ntk), (sigma, theta)) < 1e-12

    s = bench.W_STD**2 * (x.numpy() ** 2).sum(1) / bench.N0 + bench.B_STD**2
    wrong = s.copy()
    for _ in range(depth - 1):
        s = bench.W_STD**2 * s / 2 + bench.B_STD**2
        wrong = s + bench.W_STD**2 * wrong / math.pi
    assert bench.diagonal_error((k.nngp, k.ntk), (sigma, wrong)) > 1e-2


def test_tolerances_loosen_only_the_relu_diagonal():
    bench = _module()
    eps32 = np.finfo(np.float32).eps
    assert bench.tolerances("mlp", "relu", 5, "float32") == (1e-5, float(f"{4 * eps32**0.5:.2g}"))
    assert bench.tolerances("cnn", "relu", 3, "float64")[1] == pytest.approx(
        3 * np.finfo(np.float64).eps ** 0.5, rel=0.05)
    assert bench.tolerances("mlp", "erf", 3, "float64") == (1e-10, 1e-10)
    assert bench.tolerances("mlp", "mish", 3, "float32") == (bench.MISH_TOL, bench.MISH_TOL)


def test_rel_diffs_split_the_diagonal():
    bench = _module()
    ref = np.full((3, 3), 2.0)
    ours = ref.copy()
    ours[1, 1] += 0.2   # diagonal: 0.1 of max |ref|
    ours[0, 2] -= 0.02  # off the diagonal: 0.01
    diag, off = bench.rel_diffs((ours, ref), (ref, ref))
    assert diag == pytest.approx(0.1) and off == pytest.approx(0.01)


def test_render_names_the_rows_that_disagree():
    bench = _module()
    row = {"case": "relu MLP, depth 5", "activation": "relu", "N": 10, "dtype": "float32",
           "agree": True, "ratio": 2.0}
    payload = {
        "rows": [row, {**row, "case": "mish MLP, depth 3", "activation": "mish", "agree": False,
                       "ratio": 60.0}],
        "versions": {"jax": "0.4.23", "jaxlib": "0.4.23", "neural_tangents": "0.6.5",
                     "numpy": "1.26.4"},
        "threads": {"threads": 2, "cpus": [0, 1], "xla_flags": "--x"},
        "machine": {"cpu_model": "CPU", "cpu_flags": {}, "cpu_count": 2, "torch_threads": 2,
                    "torch": "2.13", "date": "2026-12-08T00:00:00"},
        "load_before": 0.5, "load_after": 0.6, "wall_s": 3.0, "quick": True}
    text = bench.render_neural_tangents(payload)
    assert "1 of 2 rows agree" in text and "mish MLP, depth 3 float32 N = 10 do not" in text
    assert "target ≥ 50: not judged on a quick run" in text and "smoke run" in text
    assert "target ≥ 50: met" in bench.render_neural_tangents({**payload, "quick": False})
    slow = {**payload, "quick": False, "rows": [{**payload["rows"][1], "ratio": 49.0}]}
    assert "target ≥ 50: missed" in bench.render_neural_tangents(slow)
