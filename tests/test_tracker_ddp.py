"""KernelDriftTracker under DistributedDataParallel: two ranks under torchrun (gloo, CPU).

Rank 0's history must equal a single-process run on the same data and seed (float64;
DDP's gradient averaging differs from the full-batch gradient by rounding only, so the
tolerance is 1e-9 relative); rank 1 records nothing by default, and with
rank_zero_only=False records the same history as rank 0. A collective inside a record
would deadlock rank 0 against rank 1 (which computes nothing) and fail by the timeout.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys

import torch

from torch_ntk.tracking import DriftRecord

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "ddp_tracker_worker", os.path.join(ROOT, "tests", "ddp_tracker_worker.py"))
worker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(worker)
_spec = importlib.util.spec_from_file_location(
    "test_integrations", os.path.join(ROOT, "tests", "test_integrations.py"))
integrations = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(integrations)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_rank0_history_equals_single_process(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           os.path.join(ROOT, "tests", "ddp_tracker_worker.py"), str(tmp_path)]
    run = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1)]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single, single_all = worker.train(rank=0, world=1)
    finally:
        torch.set_num_threads(threads)

    assert [r["active"] for r in ranks] == [True, False]
    assert [r["steps"] for r in ranks] == [worker.STEPS] * 2
    assert ranks[1]["history"] == []
    history = [DriftRecord.from_dict(d) for d in ranks[0]["history"]]
    assert [r.step for r in history] == [0, 2, 4, 6]
    integrations.assert_same_history(history, single.history, rtol=1e-9)
    for rank in ranks:  # rank_zero_only=False: every rank records, the same kernels
        everywhere = [DriftRecord.from_dict(d) for d in rank["history_all"]]
        integrations.assert_same_history(everywhere, single_all.history, rtol=1e-9)
