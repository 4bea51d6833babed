"""Run by tests/test_tracker_ddp.py under ``torchrun --nproc_per_node=2`` (gloo, CPU).

    python tests/ddp_tracker_worker.py DIR

Each rank trains ``DistributedDataParallel(model)`` on its half of every batch (the
gradients DDP averages are then those of the full batch's mean loss) with two trackers
attached: one default (records on rank 0 only) and one with rank_zero_only=False.
Rank r writes DIR/rank<r>.json: {"rank", "active", "steps", "history", "history_all"}.
:func:`train` with world=1 is the single-process reference.
"""

from __future__ import annotations

import gc
import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

import torch_ntk as tn

N_IN, N_PROBE, BATCH, STEPS, EVERY = 3, 10, 8, 6, 2


def train(rank: int, world: int):
    """(default tracker, rank_zero_only=False tracker) after STEPS steps."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH * STEPS, N_IN, generator=g, dtype=torch.float64)
    y = torch.sin(x.sum(1, keepdim=True))
    probe = torch.randn(N_PROBE, N_IN, generator=g, dtype=torch.float64)
    torch.manual_seed(0)
    model = tn.ntk_mlp([N_IN, 32, 32, 1], "tanh", dtype=torch.float64)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    tracker = tn.KernelDriftTracker(net, probe, torch.cos(probe.sum(1)), every=EVERY)
    everywhere = tn.KernelDriftTracker(net, probe, every=EVERY, rank_zero_only=False)
    tracker.attach(opt)
    everywhere.attach(opt)
    for step in range(STEPS):
        xb, yb = (t[step * BATCH:(step + 1) * BATCH][rank::world] for t in (x, y))
        opt.zero_grad()
        nn.functional.mse_loss(net(xb), yb).backward()
        opt.step()
    return tracker, everywhere


def main(directory: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    tracker, everywhere = train(rank, world)
    result = {"rank": rank, "active": tracker.active, "steps": tracker.steps,
              "history": [r.as_dict() for r in tracker.history],
              "history_all": [r.as_dict() for r in everywhere.history]}
    with open(os.path.join(directory, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    # The trackers hold the DDP model: release it (and its reducer's hold on the process
    # group) before the group goes, or gloo may abort at exit ("terminate called without
    # an active exception", seen once in a full run).
    del tracker, everywhere
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
