"""The torch-ntk command and the experiments behind it, on tiny settings.

Oracles: the theory each figure illustrates, checked on the numbers the run writes to
its JSON (not just that files exist) — figure1: the spread of Θ_0 across
initializations and the kernel's movement in training are smaller at the larger width
(Jacot Thms 1–2); figure2: trained wide networks fall inside the limiting Gaussian's
10–90% band more often than narrow ones; figure3: the first (nearly constant) kernel
principal component carries the largest share, and wider networks stay closer to the
straight line; demo: kernel error and drift fall with width. ``torch-ntk kernel``
against analytic_kernels/empirical_ntk called directly (bitwise where the computation
is the same, 1e-12 for chunked blocks). Bad arguments exit with status 2 and a message
naming the argument; interrupted writes leave no file behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import torch_ntk
from torch_ntk import analytic_kernels, empirical_ntk, mlp_spec, ntk_mlp
from torch_ntk.cli import main
from torch_ntk.experiments import common, demo, figure1, figure2, figure3

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_MPL = importlib.util.find_spec("matplotlib") is not None
needs_sklearn = pytest.mark.skipif(
    not figure3.digits_available(),
    reason="figure3 needs scikit-learn's bundled digits: pip install 'torch-ntk[digits]'")


def read_json(path) -> dict:
    with open(path) as f:
        return json.load(f)


def is_png(path) -> bool:
    """A PNG file where matplotlib is installed; no file (JSON only) where it is not."""
    if not HAS_MPL:
        return not os.path.exists(path)
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def no_temporaries(folder) -> bool:
    return not [f for f in os.listdir(folder) if f.endswith(".tmp")]


# ------------------------------------------------------------------------- experiments


def test_figure1_wider_kernels_spread_and_move_less(tmp_path):
    config = figure1.Config(widths=(20, 400), inits=4, steps=30, points=41, train_points=16)
    payload = figure1.run(config, out=tmp_path)
    saved = read_json(tmp_path / "figure1.json")
    assert saved["summary"] == payload["summary"]
    assert is_png(tmp_path / "figure1.png")
    narrow, wide = saved["summary"]["widths"]["20"], saved["summary"]["widths"]["400"]
    assert wide["init_spread"] < 0.6 * narrow["init_spread"]
    assert wide["init_error"] < narrow["init_error"]
    assert wide["drift"] < 0.5 * narrow["drift"]
    assert wide["final_loss"] < wide["initial_loss"]
    # The numbers behind the plot: 4 inits × 41 angles at both times, and Θ∞ on the angles.
    res = saved["results"]
    assert np.array(res["widths"]["400"]["theta_init"]).shape == (4, 41)
    assert np.array(res["widths"]["400"]["theta_trained"]).shape == (4, 41)
    spec = mlp_spec([2, 1, 1, 1, 1], "relu", bias_std=0.1)
    gamma = torch.tensor(res["gamma"], dtype=torch.float64)
    limit = analytic_kernels(spec, torch.tensor([[1.0, 0.0]], dtype=torch.float64),
                             common.circle(gamma), get="ntk").ntk[0]
    np.testing.assert_allclose(res["limit"], limit.numpy(), rtol=1e-12)


def test_figure2_wide_networks_fall_inside_the_gaussian_band_more_often(tmp_path):
    config = figure2.Config(widths=(10, 300), inits=6, steps=150, points=61)
    figure2.run(config, out=tmp_path)
    saved = read_json(tmp_path / "figure2.json")
    assert is_png(tmp_path / "figure2.png")
    narrow, wide = saved["summary"]["widths"]["10"], saved["summary"]["widths"]["300"]
    assert wide["in_band"] > narrow["in_band"] + 0.1
    assert wide["mean_abs_z"] < narrow["mean_abs_z"]
    # The band against the law of gradient flow written out here (Lee et al. 2019, eq. 16;
    # scipy's expm and solve): with K = Θ(X, X), T = K⁻¹(I − e^{−ηtK/N}), mean Θ(x, X) T y,
    # cov Σ(x, x) + Θ(x, X) T Σ(X, X) Tᵀ Θ(X, x) − 2 Θ(x, X) T Σ(X, x); p10/p90 its
    # N(0, 1) 10th/90th percentiles (scipy.stats).
    from scipy import linalg, stats

    res = saved["results"]
    spec = mlp_spec([2] + [1] * (config.depth - 1) + [1], "relu", bias_std=config.bias_std)
    f64 = torch.float64
    x_train = common.circle(torch.tensor(res["train_angles"], dtype=f64))
    xs = common.circle(torch.tensor(res["gamma"], dtype=f64))
    k_tt, k_st = analytic_kernels(spec, x_train), analytic_kernels(spec, xs, x_train)
    theta, sigma = k_tt.ntk.numpy(), k_tt.nngp.numpy()
    theta_s, sigma_s = k_st.ntk.numpy(), k_st.nngp.numpy()
    sigma_ss = np.diag(analytic_kernels(spec, xs, get="nngp").nngp.numpy())
    n = len(theta)
    t_op = np.linalg.solve(theta, np.eye(n) - linalg.expm(-config.lr * config.steps * theta / n))
    a = theta_s @ t_op
    mean = a @ np.array(res["y_train"])
    var = sigma_ss + np.einsum("ij,jk,ik->i", a, sigma, a) - 2 * np.einsum("ij,ij->i", a, sigma_s)
    gp = res["gp_t"]
    np.testing.assert_allclose(gp["p50"], mean, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(gp["std"], np.sqrt(np.maximum(var, 0)), rtol=1e-6, atol=1e-7)
    for key, q in (("p10", 0.1), ("p90", 0.9)):
        np.testing.assert_allclose(gp[key], mean + stats.norm.ppf(q) * np.sqrt(np.maximum(var, 0)),
                                   rtol=1e-6, atol=1e-7)
    assert np.array(saved["results"]["widths"]["300"]["functions"]).shape == (6, 61)


@needs_sklearn
def test_figure3_first_component_captures_the_largest_share(tmp_path):
    config = figure3.Config(digits=64, kernel_width=400, train_widths=(20, 400))
    figure3.run(config, out=tmp_path)
    saved = read_json(tmp_path / "figure3.json")
    assert is_png(tmp_path / "figure3.png")
    s = saved["summary"]
    shares = s["shares"]
    assert shares[0] == max(shares) and shares[0] > 5 * shares[1]
    assert all(a >= b for a, b in zip(shares, shares[1:]))
    assert s["constant_overlap"] > 0.99  # non-centred PCA: u_1 is nearly constant
    narrow, wide = s["widths"]["20"], s["widths"]["400"]
    assert wide["max_deviation"] < 0.5 * narrow["max_deviation"]
    assert wide["along_error"] < narrow["along_error"]
    assert abs(wide["final_along"] - wide["predicted_final_along"]) < 0.1
    assert np.array(saved["results"]["coordinates"]).shape == (2, 64)


def test_figure3_without_scikit_learn_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn → ImportError
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert not figure3.digits_available()
    with pytest.raises(ImportError, match=r"torch-ntk\[digits\]"):
        figure3.load_digits()
    assert main(["reproduce", "figure3", "--quick", "--out", str(tmp_path)]) == 1
    assert "torch-ntk[digits]" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_demo_command(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--quick", "--widths", "32", "512", "--steps", "60", "--out", str(out),
            "--no-progress", "--set", "inits=3"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "width" in printed and "drift" in printed and "slopes" in printed
    saved = read_json(out / "demo.json")
    assert saved["config"]["widths"] == [32, 512] and saved["config"]["steps"] == 60
    narrow, wide = saved["summary"]["rows"]
    assert wide["kernel_error"] < narrow["kernel_error"]
    assert wide["drift"] < 0.5 * narrow["drift"]
    assert wide["gap_theta0"] < narrow["gap_theta0"]
    assert saved["summary"]["slope_drift"] < -0.3
    for name in ("demo_kernels.png", "demo_training.png", "demo_drift_widest.png"):
        assert is_png(out / name) and (name in saved["files"]) == HAS_MPL
    assert no_temporaries(out)


def test_reproduce_command_overrides_and_report(tmp_path, capsys):
    argv = ["reproduce", "figure1", "figure2", "--out", str(tmp_path), "--no-progress",
            "--seed", "3", "--set", "widths=10,100", "--set", "inits=2", "--set", "steps=5",
            "--set", "points=21", "--set", "train_points=4"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "figure1 done" in printed and "figure2 done" in printed and "inside band" in printed
    for name in ("figure1", "figure2"):
        saved = read_json(tmp_path / f"{name}.json")
        assert saved["config"]["widths"] == [10, 100] and saved["config"]["seed"] == 3
        assert saved["config"]["inits"] == 2 and saved["config"]["steps"] == 5
        assert set(saved["summary"]["widths"]) == {"10", "100"}
        assert saved["seconds"]["total"] > 0 and saved["environment"]["torch"] == torch.__version__
    assert read_json(tmp_path / "figure1.json")["config"]["train_points"] == 4
    assert no_temporaries(tmp_path)


def test_reproduce_is_deterministic_given_the_seed(tmp_path):
    config = figure1.Config(widths=(16,), inits=2, steps=3, points=11, train_points=4, seed=7)
    a, b = figure1.run(config), figure1.run(config)
    assert a["results"]["widths"] == b["results"]["widths"]
    other = figure1.run(figure1.Config(**{**vars(config), "seed": 8}))
    assert other["results"]["widths"] != a["results"]["widths"]


@pytest.mark.filterwarnings("ignore:Data has no positive values")  # a 2-step drift plot
def test_single_width_and_single_init_runs(tmp_path, capsys):
    payload = figure1.run(figure1.Config(widths=(8,), inits=1, steps=2, points=5, train_points=4),
                          out=tmp_path)
    assert payload["summary"]["widths"]["8"]["init_spread"] is None  # undefined for one init
    assert "n/a" in "\n".join(figure1.report(payload))
    assert main(["demo", "--widths", "16", "--steps", "2", "--set", "inits=1", "--set", "nets=1",
                 "--set", "points=9", "--out", str(tmp_path / "d"), "--no-progress"]) == 0
    assert read_json(tmp_path / "d" / "demo.json")["summary"]["slope_drift"] is None


def test_print_config_quick(capsys):
    assert main(["reproduce", "all", "--quick", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert "figure1: Config(depth=4, widths=(100, 1000)" in printed
    assert "figure3: Config(digits=128" in printed


def test_quickstart_command(capsys):
    assert main(["quickstart", "--points", "4", "--widths", "16", "--networks", "1",
                 "--outputs", "2"]) == 0
    assert "NTK Θ∞" in capsys.readouterr().out


def test_python_m_torch_ntk():
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "torch_ntk", "--help"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and "reproduce" in done.stdout and "kernel" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "torch_ntk", "reproduce", "figure9"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert bad.returncode == 2 and "figure9" in bad.stderr


def test_console_script_and_extras_are_declared():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert project["scripts"]["torch-ntk"] == "torch_ntk.cli:main"
    assert "scikit-learn" in project["optional-dependencies"]["digits"]


# ------------------------------------------------------------------------------ kernel


@pytest.fixture
def inputs(tmp_path):
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(37, 5, generator=g, dtype=torch.float64)
    x2 = torch.randn(11, 5, generator=g, dtype=torch.float64)
    np.save(tmp_path / "x1.npy", x1.numpy())
    np.savetxt(tmp_path / "x2.csv", x2.numpy(), delimiter=",", header="a,b,c,d,e", comments="")
    torch.save(x2, tmp_path / "x2.pt")
    return x1, x2


@pytest.mark.parametrize("kind", ["ntk", "nngp"])
def test_kernel_analytic_equals_direct_call(tmp_path, inputs, kind):
    x1, x2 = inputs
    widths = ["5", "64", "64", "3"]
    out = tmp_path / "k.npy"
    assert main(["kernel", str(tmp_path / "x1.npy"), "--widths", *widths, "--kind", kind,
                 "--activation", "erf", "-o", str(out), "--no-progress"]) == 0
    spec = mlp_spec([5, 64, 64, 3], "erf", bias_std=0.1)
    expected = getattr(analytic_kernels(spec, x1, get=kind), kind)
    got = np.load(out)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, expected.numpy())
    # x2 from a .csv with a header row, saved as .pt; rows in blocks of 8 (memory bounded).
    out_pt = tmp_path / "k.pt"
    assert main(["kernel", str(tmp_path / "x1.npy"), "--x2", str(tmp_path / "x2.csv"),
                 "--widths", *widths, "--kind", kind, "--activation", "erf", "--chunk-size", "8",
                 "-o", str(out_pt), "--no-progress"]) == 0
    expected = getattr(analytic_kernels(spec, x1, x2, get=kind), kind)
    torch.testing.assert_close(torch.load(out_pt), expected, rtol=1e-12, atol=0)


def test_kernel_empirical_equals_direct_call(tmp_path, inputs):
    x1, x2 = inputs
    out = tmp_path / "k.npy"
    argv = ["kernel", str(tmp_path / "x1.npy"), "--widths", "5", "48", "48", "2", "--kind",
            "empirical", "--seed", "4", "--no-progress"]
    assert main(argv + ["-o", str(out)]) == 0
    torch.manual_seed(4)
    model = ntk_mlp([5, 48, 48, 2], "relu", bias_std=0.1, dtype=torch.float64)
    np.testing.assert_array_equal(np.load(out), empirical_ntk(model, x1, mode="trace").numpy())
    # full mode against x2 (.pt), chunked by a small memory budget into many blocks
    out_full = tmp_path / "full.npy"
    assert main(argv + ["--x2", str(tmp_path / "x2.pt"), "--mode", "full", "--memory-budget",
                        "20kB", "-o", str(out_full)]) == 0
    expected = empirical_ntk(model, x1, x2, mode="full")
    got = np.load(out_full)
    assert got.shape == (37, 11, 2, 2)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-12, atol=1e-14)
    # a trained network's parameters from --state-dict
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    torch.save(model.state_dict(), tmp_path / "state.pt")
    out_sd = tmp_path / "sd.pt"
    assert main(argv + ["--state-dict", str(tmp_path / "state.pt"), "-o", str(out_sd)]) == 0
    torch.testing.assert_close(torch.load(out_sd), empirical_ntk(model, x1, mode="trace"),
                               rtol=0, atol=0)


def test_kernel_empirical_precision(tmp_path, inputs):
    x1, _ = inputs
    out = tmp_path / "k.npy"
    assert main(["kernel", str(tmp_path / "x1.npy"), "--widths", "5", "48", "48", "2", "--kind",
                 "empirical", "--dtype", "float32", "--precision", "bf16x3", "--no-progress",
                 "-o", str(out)]) == 0
    torch.manual_seed(0)
    model = ntk_mlp([5, 48, 48, 2], "relu", bias_std=0.1)
    expected = empirical_ntk(model, x1.float(), mode="trace", precision="bf16x3")
    np.testing.assert_array_equal(np.load(out), expected.numpy())


def test_kernel_float32_and_inputs_from_csv(tmp_path, inputs):
    _, x2 = inputs
    out = tmp_path / "k32.npy"
    assert main(["kernel", str(tmp_path / "x2.csv"), "--widths", "5", "1", "--dtype", "float32",
                 "-o", str(out), "--no-progress"]) == 0
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == (11, 11)
    expected = analytic_kernels(mlp_spec([5, 1], "relu"), x2.float()).ntk
    np.testing.assert_array_equal(got, expected.numpy())


# ------------------------------------------------------- CNN image arrays, tiles, --model


@pytest.fixture
def images(tmp_path):
    g = torch.Generator().manual_seed(1)
    x2d = torch.randn(14, 2, 6, 6, generator=g, dtype=torch.float64)
    x1d = torch.randn(13, 2, 9, generator=g, dtype=torch.float64)
    np.save(tmp_path / "img2d.npy", x2d.numpy())
    np.save(tmp_path / "img1d.npy", x1d.numpy())
    return x2d, x1d


def _cnn(layers_in, conv, widths, readout_features=None, seed=None):
    """The network `--conv ... --widths ...` describes (NTK parametrization, relu)."""
    from torch import nn

    if seed is not None:
        torch.manual_seed(seed)
    c_in, dims = layers_in
    Conv = tn_nn().NTKConv2d if dims == 2 else tn_nn().NTKConv1d
    layers, channels = [], [c_in, *conv]
    for a, b in zip(channels[:-1], channels[1:]):
        layers += [Conv(a, b, 3, padding="same", dtype=torch.float64), nn.ReLU()]
    if readout_features is None:
        pool = nn.AdaptiveAvgPool2d if dims == 2 else nn.AdaptiveAvgPool1d
        layers += [pool(1), nn.Flatten()]
        widths = [channels[-1], *widths]
    else:
        layers.append(nn.Flatten())
        widths = [readout_features, *widths]
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(torch_ntk.NTKLinear(a, b, dtype=torch.float64))
        if k < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def tn_nn():
    return torch_ntk.nn


@pytest.mark.parametrize("kind", ["ntk", "nngp"])
def test_kernel_cnn_images_analytic_equals_the_api(tmp_path, images, kind):
    """[N, C, H, W] images through --conv (CNTK-GAP) equal NTK(cnn).limit on the same
    network, in one call and tiled (--distributed); 1-D signals too."""
    x2d, x1d = images
    flags = ["--conv", "8", "8", "--widths", "3", "--kind", kind, "--no-progress"]
    out = tmp_path / "k.npy"
    assert main(["kernel", str(tmp_path / "img2d.npy"), *flags, "-o", str(out)]) == 0
    cnn = _cnn((2, 2), [8, 8], [3])
    expected = getattr(torch_ntk.NTK(cnn).limit(x2d), kind)
    torch.testing.assert_close(torch.from_numpy(np.load(out)), expected, rtol=1e-12, atol=0)
    tiled = tmp_path / "tiled.npy"
    assert main(["kernel", str(tmp_path / "img2d.npy"), *flags, "--distributed",
                 "--tile-size", "5", "-o", str(tiled)]) == 0
    assert os.path.exists(str(tiled) + ".manifest.json")
    torch.testing.assert_close(torch.from_numpy(np.load(tiled)), expected, rtol=1e-12, atol=0)
    one_d = tmp_path / "k1.npy"
    assert main(["kernel", str(tmp_path / "img1d.npy"), "--conv", "4", "--widths", "2",
                 "--kind", kind, "--no-progress", "-o", str(one_d)]) == 0
    expected = getattr(analytic_kernels(_cnn((2, 1), [4], [2]), x1d), kind)
    torch.testing.assert_close(torch.from_numpy(np.load(one_d)), expected, rtol=1e-12, atol=0)


def test_kernel_cnn_images_empirical_equals_the_api(tmp_path, images):
    """The finite-width NTK of the seeded CNN (flatten readout) equals empirical_ntk on the
    network built here with the same seed; tiled over x2 as well."""
    x2d, x1d = images
    argv = ["kernel", str(tmp_path / "img2d.npy"), "--conv", "4", "--readout", "flatten",
            "--widths", "5", "2", "--kind", "empirical", "--seed", "7", "--no-progress"]
    out = tmp_path / "k.npy"
    assert main(argv + ["-o", str(out)]) == 0
    cnn = _cnn((2, 2), [4], [5, 2], readout_features=4 * 36, seed=7)
    expected = empirical_ntk(cnn, x2d, mode="trace")
    torch.testing.assert_close(torch.from_numpy(np.load(out)), expected, rtol=1e-12, atol=0)
    tiled = tmp_path / "tiled.npy"
    assert main(argv + ["--distributed", "--tile-size", "4", "-o", str(tiled)]) == 0
    torch.testing.assert_close(torch.from_numpy(np.load(tiled)), expected, rtol=1e-12,
                               atol=1e-15)


def test_kernel_model_file_and_the_trust_warning(tmp_path, inputs, images, capsys):
    """--model (a whole saved module) gives the API's kernel; its help says it unpickles;
    images of the wrong shape name the expected [C, H, W]."""
    x1, _ = inputs
    torch.manual_seed(2)
    mlp = ntk_mlp([5, 16, 2], "tanh", dtype=torch.float64)
    torch.save(mlp, tmp_path / "mlp.pt")
    out = tmp_path / "k.npy"
    assert main(["kernel", str(tmp_path / "x1.npy"), "--model", str(tmp_path / "mlp.pt"),
                 "--kind", "empirical", "--no-progress", "-o", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), empirical_ntk(mlp, x1, mode="trace").numpy())
    with pytest.raises(SystemExit):
        main(["kernel", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "UNPICKLES" in help_text and "only files you trust" in help_text
    assert help_text.index("--state-dict") < help_text.index("--model MODEL")
    cnn = _cnn((3, 2), [4], [1])
    torch.save(cnn, tmp_path / "cnn.pt")
    with pytest.raises(SystemExit):  # 2-channel images for a 3-channel CNN
        main(["kernel", str(tmp_path / "img2d.npy"), "--model", str(tmp_path / "cnn.pt"),
              "--no-progress", "-o", str(tmp_path / "c.npy")])
    assert "[N, 3, H, W]" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # the same for its finite-width NTK
        main(["kernel", str(tmp_path / "img2d.npy"), "--model", str(tmp_path / "cnn.pt"),
              "--kind", "empirical", "--no-progress", "-o", str(tmp_path / "c.npy")])
    assert "argument input: the input must have shape [N, 3, H, W]" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "c.npy")


def test_kernel_larger_than_the_budget_is_tiled(tmp_path, inputs, capsys):
    """A 37×37 float64 output (10952 bytes) over a 10kB budget takes the tiled, resumable
    path by itself, with the same kernel."""
    x1, _ = inputs
    out = tmp_path / "k.npy"
    assert main(["kernel", str(tmp_path / "x1.npy"), "--widths", "5", "64", "1",
                 "--memory-budget", "10kB", "--tile-size", "16", "--no-progress",
                 "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "larger than the memory budget" in captured.err and "tiled" in captured.out
    assert os.path.exists(str(out) + ".manifest.json")
    expected = analytic_kernels(mlp_spec([5, 64, 1], "relu"), x1).ntk
    torch.testing.assert_close(torch.from_numpy(np.load(out)), expected, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------- bad arguments

BAD = [
    (["kernel", "{x1}", "--widths", "4", "10", "-o", "{out}.npy"], "--widths"),
    (["kernel", "{x1}", "--widths", "5", "-o", "{out}.npy"], "--widths"),
    (["kernel", "{x1}", "--widths", "5", "0", "-o", "{out}.npy"], "--widths"),
    (["kernel", "{x1}", "--widths", "5", "10", "-o", "{out}.txt"], "--output"),
    (["kernel", "{x1}", "--widths", "5", "10", "-o", "/nonexistent-dir/k.npy"], "--output"),
    (["kernel", "{missing}", "--widths", "5", "10", "-o", "{out}.npy"], "input"),
    (["kernel", "{x1}", "--x2", "{bad}", "--widths", "5", "10", "-o", "{out}.npy"], "--x2"),
    (["kernel", "{x1}", "--widths", "5", "10", "--activation", "swish", "-o", "{out}.npy"],
     "--activation"),
    (["kernel", "{x1}", "--widths", "5", "10", "--mode", "full", "-o", "{out}.npy"], "--mode"),
    (["kernel", "{x1}", "--widths", "5", "10", "--precision", "bf16", "-o", "{out}.npy"],
     "--precision"),
    (["kernel", "{x1}", "--widths", "5", "10", "--kind", "empirical", "--precision", "bf16",
      "-o", "{out}.npy"], "--precision"),
    (["kernel", "{x1}", "--widths", "5", "10", "--memory-budget", "lots", "-o", "{out}.npy"],
     "--memory-budget"),
    (["kernel", "{x1}", "--widths", "5", "10", "--kind", "svm", "-o", "{out}.npy"], "--kind"),
    (["kernel", "{x1}", "--widths", "5", "10", "--kind", "empirical", "--state-dict",
      "{missing}", "-o", "{out}.npy"], "--state-dict"),
    (["kernel", "{x1}", "--widths", "5", "10"], "--output"),
    (["kernel", "{x1}", "--widths", "5", "10", "--distributed", "-o", "{out}.pt"], "--output"),
    (["kernel", "{x1}", "--widths", "5", "10", "--kind", "empirical", "--mode", "full",
      "--distributed", "-o", "{out}.npy"], "--mode"),
    (["kernel", "{x1}", "--widths", "5", "10", "--model", "{x1}", "-o", "{out}.npy"],
     "--widths"),
    (["kernel", "{x1}", "--model", "{missing}", "-o", "{out}.npy"], "--model"),
    (["kernel", "{x1}", "--model", "{x1}", "-o", "{out}.npy"], "--model"),
    (["kernel", "{x1}", "-o", "{out}.npy"], "--widths"),
    (["kernel", "{x1}", "--conv", "4", "--widths", "1", "-o", "{out}.npy"], "input"),
    (["kernel", "{x1}", "--conv", "4", "--stride", "2", "--widths", "1", "-o", "{out}.npy"],
     "--padding"),
    (["reproduce", "figure1", "--set", "inits=many"], "--set"),
    (["reproduce", "figure1", "--set", "colour=red"], "--set"),
    (["reproduce", "figure1", "--set", "depth=1"], "--set"),
    (["reproduce", "figure1", "--set", "inits"], "--set"),
    (["reproduce", "figure1", "--seed", "-1"], "--seed"),
    (["reproduce", "figure7"], "FIGURE"),
    (["reproduce", "figure1", "--device", "tpu"], "--device"),
    (["reproduce", "figure1", "--threads", "0"], "--threads"),
    (["demo", "--widths", "64", "x"], "--widths"),
    (["demo", "--set", "nets=5"], "--set"),
    (["frobnicate"], "frobnicate"),
]
if not torch.cuda.is_available():
    BAD.append((["reproduce", "figure1", "--device", "cuda"], "--device"))


@pytest.mark.parametrize("argv, argument", BAD, ids=[" ".join(a[:3]) + f" [{n}]"
                                                     for a, n in BAD])
def test_bad_arguments_exit_2_naming_the_argument(tmp_path, inputs, capsys, argv, argument):
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    names = {"x1": tmp_path / "x1.npy", "out": tmp_path / "k", "missing": tmp_path / "nope.npy",
             "bad": tmp_path / "bad.npy"}
    argv = [a.format(**names) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and argument in err, err
    assert not [f for f in os.listdir(tmp_path) if f.startswith("k") or f.endswith(".tmp")]


# ------------------------------------------------------------------- atomic outputs


def test_interrupted_kernel_write_leaves_no_file(tmp_path, inputs, monkeypatch, capsys):
    def interrupted(model, x1, x2=None, *, out, **kwargs):
        out[: len(out) // 2].fill_(1.0)  # half the kernel is written, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(torch_ntk, "empirical_ntk", interrupted)
    out = tmp_path / "k.npy"
    status = main(["kernel", str(tmp_path / "x1.npy"), "--widths", "5", "8", "1", "--kind",
                   "empirical", "-o", str(out), "--no-progress"])
    assert status == 130 and "interrupted" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["x1.npy", "x2.csv", "x2.pt"]


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "numbers.json"
    common.write_json(path, {"a": 1})

    def half_then_fail(f):
        f.write('{"a": 2, "b"')
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        common.atomic_write(path, half_then_fail, binary=False)
    assert read_json(path) == {"a": 1}
    assert os.listdir(tmp_path) == ["numbers.json"]
    common.write_json(path, {"x": float("nan"), "t": torch.arange(3)})
    assert read_json(path) == {"x": None, "t": [0, 1, 2]}


def test_interrupted_figure_run_writes_nothing(tmp_path, monkeypatch, capsys):
    calls = []

    def train_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return [1.0, 0.5]

    monkeypatch.setattr(figure1, "train_gd", train_then_interrupt)
    status = main(["reproduce", "figure1", "--out", str(tmp_path / "f"), "--no-progress",
                   "--set", "widths=8", "--set", "inits=3", "--set", "points=5"])
    assert status == 130
    assert not os.path.exists(tmp_path / "f") or os.listdir(tmp_path / "f") == []


def test_config_validation_names_the_setting():
    with pytest.raises(ValueError, match="depth"):
        figure1.Config(depth=1)
    with pytest.raises(ValueError, match="widths"):
        figure2.Config(widths=())
    with pytest.raises(ValueError, match="nets"):
        demo.Config(inits=2, nets=3)
    with pytest.raises(ValueError, match="kernel"):
        figure3.Config(kernel="rbf")
    with pytest.raises(ValueError, match="unknown setting 'wdiths'"):
        common.config_with(figure1.Config(), {"wdiths": "1,2"})
    assert common.config_with(figure3.Config(), {"lr": "auto", "train_widths": "3, 4"}) == \
        figure3.Config(lr=None, train_widths=(3, 4))
