"""torch_ntk.distributed: tiled kernels over torchrun ranks, resume, and the CG solver.

Multi-process cases launch ``torchrun --nproc_per_node=2`` (gloo, CPU, loopback) as a
subprocess running tests/distributed_worker.py or ``-m torch_ntk kernel``. Tiles
are computed with one thread there, so references computed here use one thread too and
the distributed result must equal them bit for bit; against one untiled call (x2=None)
the tolerance is float64 rounding (1e-12 relative).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

import torch_ntk as tn
from torch_ntk.distributed import TileGrid, conjugate_gradient, tiled_kernel
from torch_ntk.distributed.kernel import _check_agreement, fingerprint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("distributed_worker",
                                               os.path.join(ROOT, "tests", "distributed_worker.py"))
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)

ROUNDING_F64 = 1e-12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def torchrun(*args: str, nproc: int = 2, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]
    return subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def cli(*args: str, module: str = "torch_ntk.distributed",
        timeout: float = 60) -> subprocess.CompletedProcess:
    """``python -m MODULE ARGS`` in one process (one thread)."""
    return subprocess.run([sys.executable, "-m", module, *args], env=_env(),
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def single_thread(fn, *args, **kwargs):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


def _untiled(m, kind, x1, x2):
    if kind == "empirical":
        return tn.empirical_ntk(m, x1, x2, mode="trace", progress=False)
    return getattr(tn.analytic_kernels(m, x1, x2, get=kind), kind)


def _rel(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    return float((a - b).abs().max() / b.abs().max())


# ------------------------------------------------------------------ in-process units


@pytest.mark.parametrize("n1,n2,tile,symmetric", [(250, 250, 64, True), (250, 130, 64, False),
                                                  (7, 7, 10, True), (64, 128, 64, False)])
def test_tile_grid_covers_every_entry_once(n1, n2, tile, symmetric):
    grid = TileGrid(n1, n2, tile, symmetric)
    cover = np.zeros((n1, n2), int)
    for t in range(len(grid)):
        a, b, c, d = grid.bounds(t)
        cover[a:b, c:d] += 1
        if symmetric and a != c:
            assert c > a
            cover[c:d, a:b] += 1
    assert (cover == 1).all()
    assert len(grid) == len(grid.tiles)
    shares = [TileGrid.assign(range(len(grid)), r, 3) for r in range(3)]
    assert sorted(sum(shares, [])) == list(range(len(grid)))


def test_single_process_matches_untiled_call(tmp_path):
    x = torch.randn(101, 4, dtype=torch.float64)
    spec = tn.mlp_spec([4, 16, 16, 1], "erf")
    stats = tiled_kernel(spec, x, kind="ntk", out=tmp_path / "k.npy", tile_size=32,
                         progress=False)
    k = np.load(tmp_path / "k.npy")
    assert stats.complete and stats.tiles_total == 10 and stats.tiles_computed == 10
    assert (k == k.T).all()
    assert _rel(k, tn.analytic_kernels(spec, x).ntk) < ROUNDING_F64
    # the tensor output gets the same numbers
    out = torch.empty(101, 101, dtype=torch.float64)
    tiled_kernel(spec, x, kind="ntk", out=out, tile_size=32, progress=False)
    assert (out.numpy() == k).all()
    # a finished result is recognized, nothing is recomputed
    again = tiled_kernel(spec, x, kind="ntk", out=tmp_path / "k.npy", tile_size=32,
                         progress=False)
    assert again.complete and again.tiles_computed == 0 and again.tiles_skipped == 10
    assert sorted(os.listdir(tmp_path)) == ["k.npy", "k.npy.manifest.json"]


def test_tiled_kernels_equal_independent_oracles(tmp_path):
    """Tiles (x2 = None: upper tiles mirrored; x2 given: a 3×2 grid) against references that
    share no code with torch_ntk: the finite-width trace NTK of a small CNN against
    per-sample Jacobians by torch.func (tests/oracles.py), absolute 1e-10; the analytic NTK
    of an MLP against tests/independent.py (numpy/scipy closed form), relative 1e-12."""
    from torch import nn
    from oracles import func_ntk_modes
    import independent as ind
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(2, 3, (3, 2), stride=(1, 2), padding=1), nn.Tanh(),
                        nn.AvgPool2d(2, stride=1), nn.Flatten(), nn.Linear(3 * 4 * 2, 3)).double()
    x, y = torch.randn(11, 2, 5, 4, dtype=torch.float64), torch.randn(7, 2, 5, 4,
                                                                       dtype=torch.float64)
    for other, name in ((None, "sym.npy"), (y, "cross.npy")):
        stats = tiled_kernel(cnn, x, other, kind="empirical", out=tmp_path / name, tile_size=4,
                             progress=False)
        assert stats.complete and stats.tiles_total == 6  # 3 + 2 + 1 upper tiles; 3 × 2
        want = func_ntk_modes(cnn, x, other)["trace"].numpy()
        got = np.load(tmp_path / name)
        assert np.abs(got - want).max() < 1e-10
    xm = torch.randn(9, 4, dtype=torch.float64)
    out = torch.empty(9, 9, dtype=torch.float64)
    spec = tn.mlp_spec([4, 16, 16, 1], "relu", weight_std=1.2, bias_std=0.3)
    tiled_kernel(spec, xm, kind="ntk", out=out, tile_size=4, progress=False)
    net = ind.mlp([4, 16, 16, 1], "relu", weight_std=1.2, bias_std=0.3, closed_form=True)
    assert ind.rel_err(out.numpy(), ind.kernels(net, xm.numpy())[1]) < 1e-12


def test_existing_result_of_another_computation_is_refused(tmp_path):
    x = torch.randn(40, 3, dtype=torch.float64)
    spec = tn.mlp_spec([3, 8, 1])
    tiled_kernel(spec, x, kind="ntk", out=tmp_path / "k.npy", tile_size=16, progress=False)
    with pytest.raises(ValueError, match="overwrite=True"):
        tiled_kernel(spec, x, kind="nngp", out=tmp_path / "k.npy", tile_size=16, progress=False)
    tiled_kernel(spec, x, kind="nngp", out=tmp_path / "k.npy", tile_size=16, overwrite=True,
                 progress=False)
    assert _rel(np.load(tmp_path / "k.npy"), tn.analytic_kernels(spec, x).nngp) < ROUNDING_F64


def test_unwritable_output_and_progress(tmp_path, capsys):
    x = torch.randn(30, 3, dtype=torch.float64)
    spec = tn.mlp_spec([3, 8, 1])
    with pytest.raises(ValueError, match="cannot prepare"):
        tiled_kernel(spec, x, out=tmp_path / "missing" / "k.npy", tile_size=8, progress=False)
    tiled_kernel(spec, x, out=tmp_path / "k.npy", tile_size=8, progress=True)
    err = capsys.readouterr().err
    assert "kernel tiles" in err and "10/10" in err and "tile/s" in err


def test_disagreement_message_names_what_differs():
    x = torch.randn(10, 3)
    spec = tn.mlp_spec([3, 8, 1])
    settings = {"kind": "ntk", "tile_size": 4}
    a = fingerprint("ntk", spec, x, None, settings)
    b = fingerprint("ntk", spec, x + 1, None, settings)
    _check_agreement([a, a])
    with pytest.raises(ValueError, match=r"ranks disagree.*the inputs x1 differ \(rank 0: "):
        _check_agreement([a, b])


def _kernel_and_targets(n=300, ridge=1e-2):
    x = torch.randn(n, 6, dtype=torch.float64)
    k = tn.analytic_kernels(tn.mlp_spec([6, 64, 64, 1], "relu"), x).ntk
    y = torch.randn(n, 3, dtype=torch.float64)
    return k, y, torch.linalg.solve(k + ridge * torch.eye(n, dtype=k.dtype), y), ridge


@pytest.mark.parametrize("preconditioner", ["jacobi", "block", "none"])
def test_cg_matches_direct_solve(tmp_path, preconditioner):
    k, y, direct, ridge = _kernel_and_targets()
    np.save(tmp_path / "k.npy", k.numpy())
    tol = 1e-10
    res = conjugate_gradient(str(tmp_path / "k.npy"), y, ridge, tol=tol,
                             preconditioner=preconditioner, block_size=64, row_block=70)
    assert res.converged and res.final_residual <= 2 * tol
    assert res.residuals[0] == pytest.approx(1.0) and res.residuals[-1] <= tol
    assert len(res.residuals) == res.iterations + 1 and res.matvecs == res.iterations + 1
    cond = float(torch.linalg.cond(k + ridge * torch.eye(len(k), dtype=k.dtype)))
    err = float((res.solution - direct).norm() / direct.norm())
    assert err <= cond * tol  # the bound CG's stopping rule guarantees
    assert err < 1e-7
    # one column at a time gives the same answer; a tensor kernel too
    one = conjugate_gradient(k, y[:, 0], ridge, tol=tol, preconditioner=preconditioner)
    assert one.solution.shape == (len(k),)
    assert float((one.solution - direct[:, 0]).norm() / direct[:, 0].norm()) < 1e-7


def test_cg_reports_non_convergence_and_bad_arguments():
    k, y, _, ridge = _kernel_and_targets(100)
    res = conjugate_gradient(k, y, ridge, tol=1e-14, max_iter=3)
    assert not res.converged and res.iterations == 3
    with pytest.raises(ValueError, match="preconditioner"):
        conjugate_gradient(k, y, ridge, preconditioner="ilu")
    with pytest.raises(ValueError, match=r"y must be \[100\]"):
        conjugate_gradient(k, y[:50], ridge)
    with pytest.raises(ValueError, match="square"):
        conjugate_gradient(k[:, :50], y, ridge)


# --------------------------------------------------------------- torchrun, 2 ranks


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("dist"))
    worker.make_inputs(d)
    proc = torchrun(os.path.join(ROOT, "tests", "distributed_worker.py"), d, "cases")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(os.path.join(d, "stats.json")) as f:
        return d, json.load(f)


@pytest.mark.parametrize("name", ["ntk_sym", "nngp_rect", "emp_sym", "emp_rect", "cntk_sym",
                                  "cnn_emp_rect"])
def test_two_ranks_equal_single_process(two_rank_run, tmp_path, name):
    d, stats = two_rank_run
    x1, x2 = worker.inputs(d)
    m, kind, a, b = worker.cases(x1, x2)[name]
    got = np.load(os.path.join(d, f"{name}.npy"))
    s = stats[name]
    assert s["world_size"] == 2 and s["complete"] and s["tiles_skipped"] == 0
    assert all(len(c) > 0 for c in s["computed"])  # both ranks worked
    assert sorted(sum(s["computed"], [])) == list(range(s["tiles_total"]))
    # the same tiles in one process: identical bits
    single = single_thread(tiled_kernel, m, a, b, kind=kind, out=tmp_path / "k.npy",
                           tile_size=worker.TILE, progress=False)
    assert single.world_size == 1
    assert np.array_equal(got, np.load(tmp_path / "k.npy"))
    # one untiled call: float64 rounding
    assert _rel(got, _untiled(m, kind, a, b)) < ROUNDING_F64
    if b is None:
        assert np.array_equal(got, got.T)
    assert not glob.glob(os.path.join(d, f"{name}.npy.partial*"))


@pytest.mark.parametrize("preconditioner", ["jacobi", "block"])
def test_two_rank_cg_matches_direct_solve(two_rank_run, preconditioner):
    d, stats = two_rank_run
    k = torch.from_numpy(np.load(os.path.join(d, "ntk_sym.npy")))
    y = torch.from_numpy(np.load(os.path.join(d, "y.npy")))
    ridge, tol = worker.RIDGE, worker.TOL
    a = k + ridge * torch.eye(len(k), dtype=k.dtype)
    direct = torch.linalg.solve(a, y)
    alpha = torch.from_numpy(np.load(os.path.join(d, f"alpha_{preconditioner}.npy")))
    report = stats[f"cg_{preconditioner}"]
    assert report["converged"] and report["final_residual"] <= 2 * tol
    err = float((alpha - direct).norm() / direct.norm())
    assert err <= float(torch.linalg.cond(a)) * tol and err < 1e-7


def test_killed_run_resumes_without_recomputing(tmp_path):
    """Both ranks die (os._exit, no cleanup) after two tiles each; the restarted run
    computes exactly the missing tiles and writes the same file as one process."""
    d = str(tmp_path)
    worker.make_inputs(d)
    out = os.path.join(d, "k.npy")
    args = ["-m", "torch_ntk", "kernel", os.path.join(d, "x1.npy"), "--no-progress",
            "--x2", os.path.join(d, "x2.npy"), "--kind", "ntk", "--widths", "5", "64", "64", "1",
            "--tile-size", "40", "-o", out, "--stats", os.path.join(d, "stats.json")]
    killed = torchrun(*args, "--checkpoint-s", "0", "--_stop-after-tiles", "2")
    assert killed.returncode != 0
    assert not os.path.exists(out) and os.path.exists(out + ".partial")
    done = set()
    for path in glob.glob(out + ".manifest.rank*.json"):
        with open(path) as f:
            done.update(json.load(f)["done"])
    total = len(TileGrid(250, 130, 40, False))
    assert 0 < len(done) < total

    resumed = torchrun(*args)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    with open(os.path.join(d, "stats.json")) as f:
        stats = json.load(f)
    computed = sum(stats["computed"], [])
    assert stats["tiles_skipped"] == len(done)
    assert not set(computed) & done  # no finished tile recomputed
    assert sorted(computed + sorted(done)) == list(range(total))
    assert not os.path.exists(out + ".partial")

    x1, x2 = worker.inputs(d)
    spec = tn.mlp_spec([5, 64, 64, 1], "relu")
    single = single_thread(tiled_kernel, spec, x1, x2, kind="ntk", out=tmp_path / "ref.npy",
                           tile_size=40, progress=False)
    assert single.tiles_computed == total
    assert np.array_equal(np.load(out), np.load(tmp_path / "ref.npy"))


@pytest.mark.parametrize("checkpoint_s,recorded", [(0, 3), (1000, 0)])
def test_killed_single_process_resumes_in_process(tmp_path, checkpoint_s, recorded):
    """Without torchrun: the CLI (the python -m torch_ntk.distributed alias, torch-ntk's
    flags) dies after 3 tiles; tiled_kernel here finishes the rest.
    Tiles count as done only once checkpointed: with a long checkpoint interval none was
    recorded, so all are computed again (never trusted half-synced)."""
    d = str(tmp_path)
    worker.make_inputs(d)
    out = os.path.join(d, "k.npy")
    killed = cli("kernel", os.path.join(d, "x1.npy"), "--kind", "nngp", "--widths",
                 "5,64,64,1", "--tile-size", "64", "-o", out, "--_stop-after-tiles", "3",
                 "--checkpoint-s", str(checkpoint_s), "--no-progress")
    assert killed.returncode != 0 and os.path.exists(out + ".partial")
    x1, _ = worker.inputs(d)
    stats = single_thread(tiled_kernel, tn.mlp_spec([5, 64, 64, 1], "relu"), x1, kind="nngp",
                          out=out, tile_size=64, progress=False)
    assert stats.tiles_skipped == recorded
    assert stats.tiles_computed == stats.tiles_total - recorded
    assert not set(stats.computed[0]) & set(range(recorded))
    ref = single_thread(tiled_kernel, tn.mlp_spec([5, 64, 64, 1], "relu"), x1, kind="nngp",
                        out=tmp_path / "ref.npy", tile_size=64, progress=False)
    assert ref.tiles_computed == ref.tiles_total
    assert np.array_equal(np.load(out), np.load(tmp_path / "ref.npy"))


def test_ranks_disagreeing_about_inputs_fail_clearly(tmp_path):
    d = str(tmp_path)
    worker.make_inputs(d)
    proc = torchrun(os.path.join(ROOT, "tests", "distributed_worker.py"), d, "mismatch")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for rank in (0, 1):
        with open(os.path.join(d, f"error_{rank}.txt")) as f:
            inputs_error, spec_error = f.read().split("\n")
        assert "ranks disagree" in inputs_error and "the inputs x1 differ" in inputs_error
        assert "model/spec differ" not in inputs_error
        assert "ranks disagree" in spec_error and "the model/spec differ" in spec_error
    assert not os.path.exists(os.path.join(d, "mismatch.npy.partial"))


# ------------------------------------------------------- features once per band


def _band_samples(grid: TileGrid, tiles) -> tuple[int, int]:
    """(samples in the distinct row/column bands of ``tiles``, samples a per-tile
    recomputation would forward)."""
    bands, per_tile = set(), 0
    for t in tiles:
        a, b, c, d = grid.bounds(t)
        diagonal = grid.symmetric and a == c
        bands.add((1, a, b))
        if not diagonal:
            bands.add((1 if grid.symmetric else 2, c, d))
        per_tile += (b - a) + (0 if diagonal else d - c)
    return sum(stop - start for _, start, stop in bands), per_tile


@pytest.mark.parametrize("name", ["emp_sym", "emp_rect"])
def test_two_ranks_compute_each_band_features_once(two_rank_run, name):
    """A forward hook on the first layer (in the worker) counts the samples each rank's
    network saw: exactly the rows of the distinct bands of its tiles, far fewer than a
    forward pass per tile."""
    d, stats = two_rank_run
    s = stats[name]
    n2 = worker.N1 if name == "emp_sym" else worker.N2
    grid = TileGrid(worker.N1, n2, worker.TILE, name == "emp_sym")
    for rank, tiles in enumerate(s["computed"]):
        once, per_tile = _band_samples(grid, tiles)
        assert s["forwarded"][rank] == once == s["feature_samples"][rank]
        assert once < per_tile
        assert once <= worker.N1 + (0 if grid.symmetric else n2)


def test_band_features_beyond_the_budget_are_recomputed(tmp_path):
    """With a budget too small to cache the column bands, features are recomputed (more
    samples forwarded) and the kernel is the same up to float64 rounding (the smaller
    budget also shrinks the op's Gram workspace, which reorders its sums)."""
    x1, x2 = torch.randn(250, 5, dtype=torch.float64), torch.randn(130, 5, dtype=torch.float64)
    model = worker.model()
    seen = [0]
    model[0].register_forward_hook(lambda mod, i, o: seen.__setitem__(0, seen[0] + len(o)))
    results = {}
    for budget in (2**30, 10**5):
        seen[0] = 0
        out = torch.empty(250, 130, dtype=torch.float64)
        stats = tiled_kernel(model, x1, x2, kind="empirical", out=out, tile_size=64,
                             memory_budget=budget, progress=False)
        results[budget] = (out, seen[0], stats)
    grid = TileGrid(250, 130, 64, False)
    once, per_tile = _band_samples(grid, range(len(grid)))
    assert results[2**30][1] == once == 250 + 130
    assert results[10**5][1] == results[10**5][2].feature_samples[0] > once
    assert _rel(results[10**5][0], results[2**30][0]) < ROUNDING_F64
    assert _rel(results[2**30][0], tn.empirical_ntk(model, x1, x2, mode="trace")) < ROUNDING_F64


def test_tile_order_stays_on_bands():
    grid = TileGrid(250, 250, 32, True)  # 8 bands, 36 tiles
    shares = [TileGrid.assign(range(len(grid)), r, 2) for r in range(2)]
    assert shares[0] == list(range(18)) and shares[1] == list(range(18, 36))
    order = grid.order(shares[0])
    rows = [grid.tiles[t][0] for t in order]
    assert rows == sorted(rows)  # one row band after the other
    cols = [grid.tiles[t][1] for t in order]
    assert cols[:8] == list(range(8)) and cols[8:15] == list(range(7, 0, -1))  # serpentine


# ------------------------------------------------- inputs checked before writing


def _spec5():
    return tn.mlp_spec([5, 16, 1], "relu")


def _nan(x):
    x = x.clone()
    x[7, 2] = float("nan")
    return x


BAD_INPUTS = [
    ("ntk", lambda x: _nan(x), None, ValueError, "x1 contains NaN"),
    ("ntk", lambda x: (x * 10).long(), None, TypeError, "x1 must be float32 or float64"),
    ("ntk", lambda x: x[:, :3], None, ValueError, r"5 features.*got shape \[101, 3\]"),
    ("ntk", lambda x: x[:0], None, ValueError, "at least one sample"),
    ("ntk", lambda x: x, lambda x: x[:40, :4], ValueError, r"x2 must have .*\[40, 4\]"),
    ("empirical", lambda x: _nan(x), None, ValueError, "x1 contains NaN"),
    ("empirical", lambda x: x[:, :3], None, ValueError, r"5 features.*got shape \[101, 3\]"),
    ("empirical", lambda x: x.int(), None, TypeError, "x1 must be float32 or float64"),
]


@pytest.mark.parametrize("kind,make1,make2,error,match", BAD_INPUTS)
def test_bad_inputs_fail_before_anything_is_written(tmp_path, kind, make1, make2, error, match):
    """NaN, integer, wrong-width or empty inputs: a clear error naming the whole input's
    shape (not a tile's; the tile size 16 divides none of these), and no .partial, no
    manifest — nothing in the folder."""
    x = torch.randn(101, 5, dtype=torch.float64)
    m = _spec5() if kind != "empirical" else worker.model()
    with pytest.raises(error, match=match):
        tiled_kernel(m, make1(x), None if make2 is None else make2(x), kind=kind,
                     out=tmp_path / "k.npy", tile_size=16, progress=False)
    assert os.listdir(tmp_path) == []


def test_cnn_image_of_the_wrong_shape_names_the_expected_one(tmp_path):
    x = torch.randn(30, 2, 9, dtype=torch.float64)  # the CNN takes 1 channel
    with pytest.raises(ValueError, match=r"x1 must have shape \[N, 1, L\] .*\[30, 2, 9\]"):
        tiled_kernel(worker.cnn(), x, kind="ntk", out=tmp_path / "k.npy", tile_size=8,
                     progress=False)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------- the one command under torchrun


def test_torchrun_kernel_command_equals_single_process(tmp_path):
    """``torchrun -m torch_ntk kernel`` (2 ranks) and ``torch-ntk kernel --distributed``
    (one process) write the same bits; the untiled single-process command agrees to
    float64 rounding; the stats count each band's features once per rank."""
    d = str(tmp_path)
    worker.make_inputs(d)
    flags = [os.path.join(d, "x1.npy"), "--x2", os.path.join(d, "x2.npy"), "--widths", "5",
             "32", "32", "2", "--activation", "tanh", "--kind", "empirical", "--seed", "3",
             "--tile-size", "48", "--no-progress"]
    two = torchrun("-m", "torch_ntk", "kernel", *flags, "-o", os.path.join(d, "two.npy"),
                   "--stats", os.path.join(d, "stats.json"))
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    one = cli("kernel", *flags, "--distributed", "-o", os.path.join(d, "one.npy"),
              module="torch_ntk")
    assert one.returncode == 0, one.stderr[-3000:]
    whole = cli("kernel", *flags, "-o", os.path.join(d, "whole.npy"), module="torch_ntk")
    assert whole.returncode == 0 and "tiled" not in whole.stdout, whole.stderr[-3000:]
    got = np.load(os.path.join(d, "two.npy"))
    assert np.array_equal(got, np.load(os.path.join(d, "one.npy")))
    assert _rel(got, np.load(os.path.join(d, "whole.npy"))) < ROUNDING_F64
    x1, x2 = worker.inputs(d)
    torch.manual_seed(3)
    model = tn.ntk_mlp([5, 32, 32, 2], "tanh", dtype=torch.float64)
    assert _rel(got, tn.empirical_ntk(model, x1, x2, mode="trace")) < ROUNDING_F64
    with open(os.path.join(d, "stats.json")) as f:
        stats = json.load(f)
    assert stats["world_size"] == 2 and stats["method"] == "structured"
    grid = TileGrid(worker.N1, worker.N2, 48, False)
    for rank, tiles in enumerate(stats["computed"]):
        assert stats["feature_samples"][rank] == _band_samples(grid, tiles)[0]
    assert sorted(os.listdir(d)) == sorted(
        ["x1.npy", "x2.npy", "y.npy", "two.npy", "two.npy.manifest.json", "one.npy",
         "one.npy.manifest.json", "whole.npy", "stats.json"])
