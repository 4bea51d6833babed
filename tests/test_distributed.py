"""torch_ntk.distributed: tiled kernels over torchrun ranks, resume, and the CG solver.

Multi-process cases launch ``torchrun --nproc_per_node=2`` (gloo, CPU, loopback) as a
subprocess running tests/distributed_worker.py or ``-m torch_ntk.distributed``. Tiles
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


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch_ntk.distributed", *args], env=_env(),
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


@pytest.mark.parametrize("name", ["ntk_sym", "nngp_rect", "emp_sym", "emp_rect"])
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
    args = ["-m", "torch_ntk.distributed", "kernel", "--x1", os.path.join(d, "x1.npy"),
            "--x2", os.path.join(d, "x2.npy"), "--kind", "ntk", "--widths", "5,64,64,1",
            "--tile-size", "40", "--out", out, "--stats", os.path.join(d, "stats.json")]
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
    """Without torchrun: the CLI dies after 3 tiles; tiled_kernel here finishes the rest.
    Tiles count as done only once checkpointed: with a long checkpoint interval none was
    recorded, so all are computed again (never trusted half-synced)."""
    d = str(tmp_path)
    worker.make_inputs(d)
    out = os.path.join(d, "k.npy")
    killed = cli("kernel", "--x1", os.path.join(d, "x1.npy"), "--kind", "nngp", "--widths",
                 "5,64,64,1", "--tile-size", "64", "--out", out, "--_stop-after-tiles", "3",
                 "--checkpoint-s", str(checkpoint_s))
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
