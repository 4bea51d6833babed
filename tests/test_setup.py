"""scripts/setup_env.sh skips what is up to date (issue 32, item 9), from the user's side.

The script runs for real in a temporary copy of the repository's layout whose .venv's
``python`` is a wrapper: ``python -m pip ...`` is recorded (and can be made to fail), the final
``import torch_ntk`` check answers a fixed line, any other call goes to this interpreter. No package is installed and nothing is compiled.
"""

import os
import shutil
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

import setup_stamp  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

FAKE_PYTHON = """#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "$*" >> "$FAKE_PIP_LOG"
  echo "pip output line"
  if [ -n "$FAKE_PIP_FAIL" ]; then echo "error: the compiler said no"; exit 1; fi
  exit 0
fi
case "$2" in  # the final import check: torch's import costs seconds, not needed here
  "import torch_ntk, torch"*) echo "torch_ntk 0.fake on torch fake (CPU ops)"; exit 0;;
esac
exec {python} "$@"
"""


@pytest.fixture
def repo(tmp_path):
    """A copy of the layout setup_env.sh reads, with a fake .venv."""
    (tmp_path / "scripts").mkdir()
    for name in ("setup_env.sh", "setup_stamp.py"):
        shutil.copy(os.path.join(ROOT, "scripts", name), tmp_path / "scripts" / name)
    (tmp_path / "csrc" / "cpu").mkdir(parents=True)
    (tmp_path / "csrc" / "cpu" / "op.cpp").write_text("int f() { return 1; }\n")
    (tmp_path / "setup.py").write_text("# setup\n")
    (tmp_path / "pyproject.toml").write_text("# pyproject\n")
    os.symlink(os.path.join(ROOT, "torch_ntk"), tmp_path / "torch_ntk")  # holds _C*.so
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    fake = bin_dir / "python"
    fake.write_text(FAKE_PYTHON.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    site = tmp_path / ".venv" / "lib" / "python3" / "site-packages" / "torch"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("")
    return tmp_path


def run_setup(repo, **env):
    full = {k: v for k, v in os.environ.items() if k not in ("FORCE_CUDA", "TORCH_SPEC")}
    full.update(FAKE_PIP_LOG=str(repo / "pip.log"), PYTHONPATH="", **env)
    return subprocess.run(["bash", str(repo / "scripts" / "setup_env.sh")], capture_output=True,
                          text=True, env=full, timeout=120)


def pip_calls(repo):
    path = repo / "pip.log"
    return path.read_text().splitlines() if path.exists() else []


def test_second_call_skips_pip_and_the_build_and_a_change_rebuilds(repo):
    first = run_setup(repo)
    assert first.returncode == 0, first.stderr
    assert "building the C++ extension (first run): about" in first.stdout
    assert "(log: .venv/build.log)" in first.stdout
    calls = pip_calls(repo)
    assert len(calls) == 3 and "-e ." in calls[-1]  # 2 installs, then the build
    assert "pip output line" in (repo / ".venv" / "build.log").read_text()  # pip's output kept
    assert "torch_ntk 0.fake" in first.stdout  # the final import check ran

    second = run_setup(repo)
    assert second.returncode == 0, second.stderr
    assert "pip skipped" in second.stdout and "build skipped" in second.stdout
    assert len(pip_calls(repo)) == 3  # no pip call at all

    (repo / "csrc" / "cpu" / "op.cpp").write_text("int f() { return 2; }\n")
    third = run_setup(repo)
    assert third.returncode == 0, third.stderr
    assert "pip skipped" in third.stdout
    assert "building the C++ extension (changed: csrc/cpu/op.cpp)" in third.stdout
    assert len(pip_calls(repo)) == 4 and "-e ." in pip_calls(repo)[-1]

    other = run_setup(repo, TORCH_SPEC="torch>=2.4")  # another torch: reinstall, rebuild
    assert "installing packages into .venv (changed: torch_spec" in other.stdout
    assert "building the C++ extension (changed: torch_spec)" in other.stdout


def test_a_failed_build_shows_the_log_tail_and_path_and_leaves_no_stamp(repo):
    assert run_setup(repo).returncode == 0
    (repo / "setup.py").write_text("# changed\n")
    failed = run_setup(repo, FAKE_PIP_FAIL="1")
    assert failed.returncode == 1
    assert "error: the compiler said no" in failed.stderr
    assert f"full log: {repo}/.venv/build.log" in failed.stderr
    retry = run_setup(repo)  # the stamp was not written: the next call builds again
    assert "building the C++ extension (changed: setup.py)" in retry.stdout


def test_stamp_decisions(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.cpp").write_text("a")
    (tmp_path / "lib.so").write_text("")
    args = ["--files", "src", "--values", "spec=torch", "--require", "lib.so"]
    assert setup_stamp.main(["check", "s.json"] + args) == 1  # no stamp yet
    assert setup_stamp.main(["write", "s.json"] + args) == 0
    assert setup_stamp.main(["check", "s.json"] + args) == 0
    (tmp_path / "src" / "b.h").write_text("b")  # a new header counts
    assert setup_stamp.stale_reason("s.json", setup_stamp.digest(["src"], ["spec=torch"]),
                                    ["lib.so"]) == "changed: src/b.h"
    (tmp_path / "src" / "b.h").unlink()
    (tmp_path / "src" / "x.o").write_text("object")  # build products do not count
    assert setup_stamp.main(["check", "s.json"] + args) == 0
    (tmp_path / "lib.so").unlink()
    assert setup_stamp.stale_reason("s.json", setup_stamp.digest(["src"], ["spec=torch"]),
                                    ["lib.so"]) == "lib.so is missing"
