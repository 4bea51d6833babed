"""Issue 32 (items 1, 2, 3, 5, 8), from the user's side: ``torch-ntk kernel`` never reports a
kernel it did not write, SIGTERM/SIGHUP leave nothing hidden behind, one overwrite rule,
pandas CSVs are not read with their index as a feature, and file errors name the argument,
the file and what was expected.

The command lines are the issue's (through ``torch_ntk.cli.main`` as tests/test_cli.py does,
or a real subprocess where a signal must arrive mid-run). Oracles: ``empirical_ntk`` and
``analytic_kernels`` called directly on the network the flags describe.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import torch_ntk as tn
import torch_ntk._utils.version
from torch_ntk.cli import main
from torch_ntk.cli.main import signals_as_interrupts
from torch_ntk.distributed import tiles as tiles_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F64 = torch.float64

pytestmark = pytest.mark.usefixtures("one_thread")


def empirical_reference(x: np.ndarray, widths=(8, 64, 1), seed=0) -> np.ndarray:
    """The kernel ``--widths ... --kind empirical --seed seed`` describes, computed directly."""
    torch.manual_seed(seed)
    model = tn.ntk_mlp(list(widths), "relu", bias_std=0.1, dtype=F64)
    return tn.empirical_ntk(model, torch.from_numpy(x), mode="trace").numpy()


def run(argv, capsys) -> tuple[int, str, str]:
    """main(argv) as the shell sees it: (exit status, stdout, stderr)."""
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exit_info:
        status = exit_info.code
    out, err = capsys.readouterr()
    return status, out, err


def leftovers(folder) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.endswith(".tmp"))


@pytest.fixture
def ab(tmp_path, monkeypatch):
    """The issue's files: a.npy [300, 8] and b.npy [50, 8]; the working folder is tmp_path."""
    g = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", g.standard_normal((300, 8)))
    np.save(tmp_path / "b.npy", g.standard_normal((50, 8)))
    monkeypatch.chdir(tmp_path)
    return np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")


A_TILED = ["kernel", "a.npy", "--widths", "8", "64", "1", "--kind", "empirical", "--distributed",
           "-o", "K.npy"]
B_PLAIN = ["kernel", "b.npy", "--widths", "8", "64", "1", "-o", "K.npy"]
B_TILED = ["kernel", "b.npy", "--widths", "8", "64", "1", "--kind", "empirical", "--distributed",
           "-o", "K.npy"]


# ------------------------------------------------- 1. a resume is this job's result or nothing


def test_the_issues_command_sequence(ab, capsys):
    """a tiled → b plain to the same -o → a tiled again: the plain run no longer replaces
    the file silently, so the third run's "already done" is true."""
    a, _ = ab
    status, out, _ = run(A_TILED, capsys)
    assert status == 0 and "wrote K.npy" in out
    before = open("K.npy", "rb").read()

    status, _, err = run(B_PLAIN, capsys)
    assert status == 2 and "argument -o/--output" in err and "--overwrite" in err, err
    assert open("K.npy", "rb").read() == before and not leftovers(".")

    status, out, err = run(A_TILED, capsys)
    assert status == 0 and "already this kernel" in out, out + err
    k = np.load("K.npy")
    assert k.shape == (300, 300)
    np.testing.assert_allclose(k, empirical_reference(a), rtol=1e-10, atol=1e-12)


def test_a_result_replaced_by_a_plain_run_is_not_reported_as_resumed(ab, capsys):
    """The issue's sequence with --overwrite on the plain run: the third run must not call
    b's 50×50 kernel a's; it refuses, and --overwrite recomputes a's."""
    a, b = ab
    assert run(A_TILED, capsys)[0] == 0
    assert run(B_PLAIN + ["--overwrite"], capsys)[0] == 0
    assert np.load("K.npy").shape == (50, 50)

    status, out, err = run(A_TILED, capsys)
    assert status == 2 and "argument -o/--output" in err and "--overwrite" in err, out + err
    assert "resumed" not in out and np.load("K.npy").shape == (50, 50)

    status, out, err = run(A_TILED + ["--overwrite"], capsys)
    assert status == 0 and "resumed" in out
    np.testing.assert_allclose(np.load("K.npy"), empirical_reference(a), rtol=1e-10, atol=1e-12)


def _replace_same_size(path):
    k = np.load(path)
    np.save(path, k + 1.0)  # the same header and size, other numbers


def _replace_same_size_and_mtime(path):
    stat = os.stat(path)
    _replace_same_size(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def _other_kernel(path):
    np.save(path, np.eye(50))


@pytest.mark.parametrize("change", [_other_kernel, _replace_same_size,
                                    _replace_same_size_and_mtime, _truncate])
def test_a_finished_file_changed_since_is_refused(ab, capsys, change):
    a, _ = ab
    assert run(A_TILED, capsys)[0] == 0
    change("K.npy")
    changed = open("K.npy", "rb").read()
    status, out, err = run(A_TILED, capsys)
    assert status == 2 and "not known to be this kernel" in err and "--overwrite" in err, err
    assert "wrote" not in out and "already" not in out
    assert open("K.npy", "rb").read() == changed  # nothing lost
    assert run(A_TILED + ["--overwrite"], capsys)[0] == 0
    np.testing.assert_allclose(np.load("K.npy"), empirical_reference(a), rtol=1e-10, atol=1e-12)


def test_a_deleted_result_is_computed_again_with_a_note(ab, capsys):
    a, _ = ab
    assert run(A_TILED, capsys)[0] == 0
    os.remove("K.npy")
    status, out, err = run(A_TILED, capsys)
    assert status == 0 and "is gone: computing it again" in err
    assert "0 resumed" in out
    np.testing.assert_allclose(np.load("K.npy"), empirical_reference(a), rtol=1e-10, atol=1e-12)


def test_a_recorded_result_that_was_not_yet_renamed_is_finished(ab, capsys):
    """A stop between recording the result and renaming K.npy.partial: the next run
    renames the recorded file (same size and checksum) instead of computing again."""
    a, _ = ab
    assert run(A_TILED, capsys)[0] == 0
    os.replace("K.npy", "K.npy.partial")
    status, out, _ = run(A_TILED, capsys)
    assert status == 0 and "already this kernel" in out
    assert not os.path.exists("K.npy.partial")
    np.testing.assert_allclose(np.load("K.npy"), empirical_reference(a), rtol=1e-10, atol=1e-12)


def test_another_package_version_is_another_computation(ab, capsys, monkeypatch):
    assert run(A_TILED, capsys)[0] == 0
    monkeypatch.setattr(torch_ntk._utils.version, "VERSION", "99.0")
    status, _, err = run(A_TILED, capsys)
    assert status == 2 and "the torch_ntk version" in err and "99.0" in err, err


def _interrupt_after(monkeypatch, tiles: int):
    """Ctrl-C in the middle of the tile after ``tiles`` finished ones."""
    real, count = tiles_module.TileSource.tile, [0]

    def tile(self, *args, **kwargs):
        if count[0] == tiles:
            raise KeyboardInterrupt
        count[0] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(tiles_module.TileSource, "tile", tile)


def test_a_partial_run_of_another_job_is_refused_and_the_own_one_resumes(ab, capsys):
    """a is interrupted after 2 of 6 tiles (a checkpoint interval far longer than the run:
    the interrupt itself records them); b to the same -o refuses a's partial run, naming
    what differs; a's rerun resumes the 2 tiles."""
    a, b = ab
    with pytest.MonkeyPatch.context() as mp:
        _interrupt_after(mp, 2)
        status, _, err = run(A_TILED + ["--tile-size", "100", "--checkpoint-s", "1000"], capsys)
    assert status == 130
    assert "K.npy.partial and its manifests" in err and "2 of 6 tiles" in err, err
    assert "torch-ntk kernel a.npy" in err and "no partial output was written" not in err

    status, out, err = run(B_TILED + ["--tile-size", "100"], capsys)
    assert status == 2 and "partial run of a different computation" in err, err
    assert "the inputs x1" in err and "--overwrite" in err and not os.path.exists("K.npy")

    status, out, err = run(A_TILED + ["--tile-size", "100"], capsys)
    assert status == 0 and "4 tiles computed, 2 resumed" in out, out + err
    np.testing.assert_allclose(np.load("K.npy"), empirical_reference(a), rtol=1e-10, atol=1e-12)

    # and b, told to, discards such a partial run and writes its own kernel
    with pytest.MonkeyPatch.context() as mp:
        _interrupt_after(mp, 1)
        assert run(A_TILED + ["--tile-size", "100", "-o", "K2.npy"], capsys)[0] == 130
    status, out, err = run(B_TILED + ["--tile-size", "100", "-o", "K2.npy", "--overwrite"],
                           capsys)
    assert status == 0 and "discarded (overwrite)" in err, err
    np.testing.assert_allclose(np.load("K2.npy"), empirical_reference(b), rtol=1e-10,
                               atol=1e-12)


def test_a_partial_file_without_manifest_starts_over(ab, capsys):
    a, _ = ab
    with open("K.npy.partial", "wb") as f:  # a [300, 300] float64 .npy, as a run makes it
        np.save(f, np.full((300, 300), 7.0))
    status, out, err = run(A_TILED, capsys)
    assert status == 0 and "has no manifest" in err and "0 resumed" in out, out + err
    np.testing.assert_allclose(np.load("K.npy"), empirical_reference(a), rtol=1e-10, atol=1e-12)


# ------------------------------------------------- 2. SIGTERM and SIGHUP like Ctrl-C


def _default_signals() -> None:
    """In the child: SIGHUP/SIGTERM at their default action even when the tests run under
    nohup (an ignored SIGHUP is, rightly, left ignored by the command)."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def _signal_when(proc, appeared, signum, timeout=120.0):
    """Send ``signum`` to ``proc`` once ``appeared()`` is true (it must still run then)."""
    deadline = time.monotonic() + timeout
    while not appeared():
        assert proc.poll() is None, f"ended before the signal: {proc.communicate()}"
        assert time.monotonic() < deadline, "the run never got there"
        time.sleep(0.01)
    proc.send_signal(signum)
    return proc.communicate(timeout=timeout)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_mid_run_leaves_no_hidden_temporary_file(tmp_path, signum):
    """The issue's run (a wide network, --mode full, the plain path writing through a
    hidden temporary .npy), stopped once that file exists: it is removed, nothing else
    is left, the message says so and the status is 128 + the signal's number."""
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((300, 64)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch_ntk", "kernel", "x.npy", "--widths", "64", "1024", "1024",
         "10", "--kind", "empirical", "--mode", "full", "--chunk-size", "4", "-o", "K.npy",
         "--no-progress"], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)
    _, err = _signal_when(proc, lambda: glob.glob(str(tmp_path / ".K.npy.*.tmp")), signum)
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, err
    assert f"stopped by {name}; no partial output was written" in err
    assert os.listdir(tmp_path) == ["x.npy"]


def test_sigterm_on_a_tiled_run_says_what_remains_and_the_rerun_resumes(tmp_path, capsys,
                                                                       monkeypatch):
    x = np.random.default_rng(0).standard_normal((400, 64))
    np.save(tmp_path / "x.npy", x)
    argv = ["kernel", "x.npy", "--widths", "64", "1024", "1024", "1", "--kind", "empirical",
            "--distributed", "--tile-size", "20", "-o", "K.npy", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-m", "torch_ntk", *argv, "--checkpoint-s", "0"],
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_signals)
    _, err = _signal_when(proc, lambda: os.path.exists(tmp_path / "K.npy.manifest.rank0.json"),
                          signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM; K.npy.partial and its manifests" in err, err
    assert "to resume, rerun torch-ntk kernel x.npy --widths 64 1024 1024 1" in err
    assert not leftovers(tmp_path) and not os.path.exists(tmp_path / "K.npy")
    recorded = set()
    for path in glob.glob(str(tmp_path / "K.npy.manifest*.json")):
        with open(path) as f:
            recorded.update(json.load(f)["done"])
    assert f"{len(recorded)} of 210 tiles finished and recorded" in err

    monkeypatch.chdir(tmp_path)
    status, out, _ = run(argv, capsys)
    assert status == 0 and f"{210 - len(recorded)} tiles computed, {len(recorded)} resumed" in out
    np.testing.assert_allclose(np.load(tmp_path / "K.npy"),
                               empirical_reference(x, (64, 1024, 1024, 1)), rtol=1e-10,
                               atol=1e-12)


def test_signal_handlers_are_restored_and_nohup_is_respected():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    old_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with signals_as_interrupts():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            if before[0] is signal.SIG_DFL:
                assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
        assert signal.getsignal(signal.SIGTERM) is before[0]
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old_hup)


# ------------------------------------------------- 3. one overwrite rule


@pytest.mark.parametrize("suffix", [".npy", ".pt"])
def test_the_plain_run_refuses_an_existing_output_without_overwrite(ab, capsys, suffix):
    _, b = ab
    out = "K" + suffix
    argv = ["kernel", "b.npy", "--widths", "8", "64", "1", "-o", out, "--no-progress"]
    assert run(argv, capsys)[0] == 0
    before = open(out, "rb").read()
    status, _, err = run(argv[:2] + ["--widths", "8", "1"] + argv[6:], capsys)
    assert status == 2 and "argument -o/--output" in err and "exists" in err
    assert "--overwrite" in err and open(out, "rb").read() == before and not leftovers(".")
    status, _, _ = run(argv[:2] + ["--widths", "8", "1"] + argv[6:] + ["--overwrite"], capsys)
    assert status == 0 and open(out, "rb").read() != before


def test_an_output_folder_is_refused(ab, capsys):
    os.mkdir("K.npy")
    status, _, err = run(B_PLAIN, capsys)
    assert status == 2 and "argument -o/--output" in err and "is a folder" in err


# ------------------------------------------------- 5. pandas CSVs


def to_csv(path, x, columns=None, index=True, header=True):
    """What pandas' DataFrame(x, columns=columns).to_csv(path, index=..., header=...)
    writes (pandas is not a dependency): a header line (over the index: an empty field) and
    the row index 0..N-1 as the first column."""
    columns = columns or [str(i) for i in range(x.shape[1])]
    with open(path, "w") as f:
        if header:
            f.write(",".join(([""] if index else []) + columns) + "\n")
        for i, row in enumerate(x):
            f.write(",".join(([str(i)] if index else []) + [repr(float(v)) for v in row]) + "\n")


def ntk_reference(x, widths=(3, 16, 1)):
    spec = tn.mlp_spec(list(widths), "relu", bias_std=0.1)
    return tn.analytic_kernels(spec, torch.from_numpy(x), get="ntk").ntk.numpy()


@pytest.mark.parametrize("index, header, columns", [(True, True, list("abc")),
                                                     (True, True, None),
                                                     (True, False, None)])
def test_a_pandas_index_column_is_refused_with_the_fix(tmp_path, capsys, index, header,
                                                       columns):
    x = np.random.default_rng(1).standard_normal((20, 3))
    to_csv(tmp_path / "x.csv", x, columns, index=index, header=header)
    argv = ["kernel", tmp_path / "x.csv", "--widths", "3", "16", "1", "-o", tmp_path / "K.npy",
            "--no-progress"]
    status, _, err = run(argv, capsys)
    assert status == 2 and "argument input" in err and "row index" in err
    assert "--csv-index-col yes" in err and "index=False" in err
    assert not os.path.exists(tmp_path / "K.npy") and not leftovers(tmp_path)
    # the n0 = 4 a user might try instead is refused the same way: never read as a feature
    assert run(argv[:2] + ["--widths", "4", "16", "1"] + argv[6:], capsys)[0] == 2
    assert run(argv + ["--csv-index-col", "yes"], capsys)[0] == 0
    np.testing.assert_allclose(np.load(tmp_path / "K.npy"), ntk_reference(x), rtol=1e-12)


def test_pandas_default_column_names_are_not_read_as_a_row(tmp_path, capsys):
    x = np.random.default_rng(2).standard_normal((20, 3))
    to_csv(tmp_path / "x.csv", x, index=False)  # header 0,1,2: numbers
    argv = ["kernel", tmp_path / "x.csv", "--widths", "3", "16", "1", "-o", tmp_path / "K.npy",
            "--no-progress"]
    status, _, err = run(argv, capsys)
    assert status == 2 and "--csv-header yes" in err and "--csv-header no" in err
    assert run(argv + ["--csv-header", "yes"], capsys)[0] == 0
    np.testing.assert_allclose(np.load(tmp_path / "K.npy"), ntk_reference(x), rtol=1e-12)


def test_a_csv_with_a_named_header_and_no_index_still_reads(tmp_path, capsys):
    x = np.random.default_rng(3).standard_normal((20, 3))
    to_csv(tmp_path / "x.csv", x, list("abc"), index=False)
    argv = ["kernel", tmp_path / "x.csv", "--widths", "3", "16", "1", "-o", tmp_path / "K.npy",
            "--no-progress"]
    assert run(argv, capsys)[0] == 0
    np.testing.assert_allclose(np.load(tmp_path / "K.npy"), ntk_reference(x), rtol=1e-12)
    # a feature that happens to count 0..N-1, kept on request
    x[:, 0] = np.arange(20)
    to_csv(tmp_path / "y.csv", x, list("abc"), index=False)
    argv[1], argv[7] = tmp_path / "y.csv", tmp_path / "Ky.npy"
    assert run(argv, capsys)[0] == 2
    assert run(argv + ["--csv-index-col", "no"], capsys)[0] == 0
    np.testing.assert_allclose(np.load(tmp_path / "Ky.npy"), ntk_reference(x), rtol=1e-12)


def test_csv_flags_without_a_csv_input_are_refused(ab, capsys):
    status, _, err = run(B_PLAIN + ["--csv-index-col", "yes"], capsys)
    assert status == 2 and "argument --csv-index-col" in err and ".csv" in err


# ------------------------------------------------- 8. file errors


def _files(d):
    x = np.random.default_rng(4).standard_normal((6, 3))
    np.savetxt(d / "text.npy", x, delimiter=",")
    np.savez(d / "arch.npz", x=x)
    os.replace(d / "arch.npz", d / "renamed.npy")
    np.savez(d / "two.npz", x=x, y=x)
    with open(d / "npy.csv", "wb") as f:
        np.save(f, x)
    with open(d / "npy.pt", "wb") as f:
        np.save(f, x)
    np.savetxt(d / "text.pt", x, delimiter=",")
    torch.save(torch.from_numpy(x), d / "tensor.pt")
    os.replace(d / "tensor.pt", d / "torch.npy")
    torch.save({"x": torch.from_numpy(x)}, d / "dict.pt")
    np.save(d / "objects.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    open(d / "empty.npy", "wb").close()
    open(d / "empty.csv", "w").close()
    os.mkdir(d / "folder.npy")
    with open(d / "ragged.csv", "w") as f:
        f.write("1,2,3\n4,5\n")
    return x


FILE_ERRORS = [
    ("text.npy", ["is not a .npy array file", "text", "numpy.save", "name it .csv"]),
    ("renamed.npy", ["is not a .npy array file", "an .npz archive", "name it .npz"]),
    ("torch.npy", ["is not a .npy array file", "a torch.save file", "name it .pt"]),
    ("objects.npy", ["Python objects"]),
    ("empty.npy", ["is empty (0 bytes)", "2-D array"]),
    ("folder.npy", ["is a folder"]),
    ("missing.npy", ["no such file"]),
    ("two.npz", ["holds 2 arrays (x, y)", "expected one"]),
    ("npy.csv", ["is not a comma-separated text file", "a .npy array file", "name it .npy"]),
    ("empty.csv", ["is empty"]),
    ("ragged.csv", ["number of columns changed"]),
    ("npy.pt", ["is not a torch.save file", "a .npy array file", "name it .npy"]),
    ("text.pt", ["is not a torch.save file", "text"]),
    ("dict.pt", ["holds a dict (keys 'x'), not a tensor", "torch.save(x, path)"]),
    ("x.txt", ["expected a .npy, .npz, .csv, .pt file"]),
]


@pytest.mark.parametrize("argument", ["input", "--x2"])
@pytest.mark.parametrize("name, phrases", FILE_ERRORS, ids=[f[0] for f in FILE_ERRORS])
def test_file_errors_name_the_argument_the_file_and_what_was_expected(tmp_path, capsys, name,
                                                                     phrases, argument):
    _files(tmp_path)
    good = tmp_path / "good.npy"
    np.save(good, np.ones((4, 3)))
    bad = tmp_path / name
    files = [bad] if argument == "input" else [good, "--x2", bad]
    status, _, err = run(["kernel", *files, "--widths", "3", "1", "-o", tmp_path / "K.npy",
                          "--no-progress"], capsys)
    assert status == 2, err
    assert f"argument {argument}: " in err and repr(str(bad)) in err, err
    for phrase in phrases:
        assert phrase in err, (phrase, err)
    assert "allow_pickle" not in err and "NpzFile" not in err
    assert not os.path.exists(tmp_path / "K.npy") and not leftovers(tmp_path)


def test_an_npz_with_one_array_is_read(tmp_path, capsys):
    x = _files(tmp_path)
    np.savez(tmp_path / "one.npz", inputs=x)
    assert run(["kernel", tmp_path / "one.npz", "--widths", "3", "16", "1", "-o",
                tmp_path / "K.npy", "--no-progress"], capsys)[0] == 0
    np.testing.assert_allclose(np.load(tmp_path / "K.npy"), ntk_reference(x), rtol=1e-12)


def test_an_r_style_csv_with_quoted_row_names_is_refused_then_read(tmp_path, capsys):
    """R's write.csv: a header "" over quoted row names "1".."N"."""
    x = np.random.default_rng(5).standard_normal((12, 3))
    with open(tmp_path / "x.csv", "w") as f:
        f.write('"","a","b","c"\n')
        for i, row in enumerate(x, 1):
            f.write(",".join([f'"{i}"'] + [repr(float(v)) for v in row]) + "\n")
    argv = ["kernel", tmp_path / "x.csv", "--widths", "3", "16", "1", "-o", tmp_path / "K.npy",
            "--no-progress"]
    status, _, err = run(argv, capsys)
    assert status == 2 and "row index" in err and "--csv-index-col yes" in err
    assert run(argv + ["--csv-index-col", "yes"], capsys)[0] == 0
    np.testing.assert_allclose(np.load(tmp_path / "K.npy"), ntk_reference(x), rtol=1e-12)
