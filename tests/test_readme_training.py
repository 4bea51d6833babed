"""The README's "In your training loop" examples, run as they are written.

Each ```python block of that section is executed in a fresh namespace in a temporary
directory; then what it claims is checked against what it did: the records' steps, the
CSV and Lightning's metrics.csv columns, the TensorBoard event file's ntk/drift steps.
"""

from __future__ import annotations

import csv
import glob
import os
import re
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTION = "## In your training loop"


def examples() -> list[str]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    assert text.count(SECTION) == 1, f"README.md lacks the section {SECTION!r}"
    body = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def run(code: str) -> dict:
    namespace: dict = {"__name__": "__readme__"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and log intervals
        exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def test_the_section_has_the_three_examples():
    blocks = examples()
    assert len(blocks) == 3
    assert "attach(opt)" in blocks[0]
    assert "KernelDriftCallback" in blocks[1]
    assert "SummaryWriter" in blocks[2]


def test_plain_loop_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ns = run(examples()[0])
    assert [r.step for r in ns["tracker"].history] == [0, 10, 20, 30, 40]
    assert ns["tracker"].history[-1].drift > 0
    with open("drift.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [0, 10, 20, 30, 40]


def test_lightning_example(tmp_path, monkeypatch):
    pytest.importorskip("lightning")
    monkeypatch.chdir(tmp_path)
    ns = run(examples()[1])
    history = ns["callback"].tracker.history
    assert [r.step for r in history] == [0, 10, 20, 30, 40]
    assert history[-1].limit_distance is not None  # submodule="net" lifts
    [path] = glob.glob("logs/lightning_logs/version_0/metrics.csv")
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if r.get("ntk/drift")]
    assert [int(r["step"]) for r in rows] == [0, 10, 20, 30, 40]
    assert float(rows[-1]["ntk/drift"]) == pytest.approx(history[-1].drift, rel=1e-12)


def test_tensorboard_example(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    ns = run(examples()[2])
    events = EventAccumulator("runs/drift")
    events.Reload()
    drift = events.Scalars("ntk/drift")
    assert [e.step for e in drift] == [r.step for r in ns["tracker"].history] == [0, 10, 20, 30, 40]
    assert drift[-1].value == pytest.approx(ns["tracker"].history[-1].drift, rel=1e-6)
