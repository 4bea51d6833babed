"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2`` (gloo, CPU).

    python tests/distributed_worker.py DIR {cases,mismatch}

``cases`` computes every case of CASES into DIR/<name>.npy with tiled_kernel (counting,
with a forward hook on the first layer, the samples each rank's empirical model saw) and
solves kernel regression on DIR/ntk_sym.npy by distributed CG; ``mismatch`` gives rank 1
a different x1 (then a different spec) and records each rank's error in DIR/error_<r>.txt.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import torch
import torch.distributed as dist

import torch_ntk as tn
from torch_ntk.distributed import conjugate_gradient, tiled_kernel

N1, N2, N0, TILE = 250, 130, 5, 64  # N not a multiple of the tile size
RIDGE, TOL = 1e-2, 1e-10


def inputs(directory: str):
    x1 = torch.from_numpy(np.load(os.path.join(directory, "x1.npy")))
    x2 = torch.from_numpy(np.load(os.path.join(directory, "x2.npy")))
    return x1, x2


def make_inputs(directory: str) -> None:
    g = np.random.default_rng(0)
    np.save(os.path.join(directory, "x1.npy"), g.standard_normal((N1, N0)))
    np.save(os.path.join(directory, "x2.npy"), g.standard_normal((N2, N0)))
    np.save(os.path.join(directory, "y.npy"), g.standard_normal((N1, 2)))


def spec():
    return tn.mlp_spec([N0, 64, 64, 1], "relu")


def model():
    torch.manual_seed(0)
    return tn.ntk_mlp([N0, 32, 32, 2], "tanh", dtype=torch.float64).eval()


def cnn():
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(tn.nn.NTKConv1d(1, 8, 3, padding="same", dtype=torch.float64),
                         nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
                         tn.NTKLinear(8, 1, dtype=torch.float64))


def images(x):
    """x [N, n0] as 1-channel signals [N, 1, n0]."""
    return x.unsqueeze(1)


def cases(x1, x2):
    """name → (model or spec, kind, x1, x2)."""
    return {
        "ntk_sym": (spec(), "ntk", x1, None),
        "nngp_rect": (spec(), "nngp", x1, x2),
        "emp_sym": (model(), "empirical", x1, None),
        "emp_rect": (model(), "empirical", x1, x2),
        "cntk_sym": (cnn(), "ntk", images(x1), None),
        "cnn_emp_rect": (cnn(), "empirical", images(x1), images(x2)),
    }


def run_cases(directory: str) -> None:
    rank = dist.get_rank()
    x1, x2 = inputs(directory)
    stats = {}
    for name, (m, kind, a, b) in cases(x1, x2).items():
        seen = [0]  # samples through the model's first layer on this rank
        hook = (m[0].register_forward_hook(lambda mod, i, o: seen.__setitem__(0, seen[0] + len(o)))
                if isinstance(m, torch.nn.Module) else None)
        s = tiled_kernel(m, a, b, kind=kind, out=os.path.join(directory, f"{name}.npy"),
                         tile_size=TILE, progress=False)
        if hook is not None:
            hook.remove()
        stats[name] = s.to_dict()
        forwarded = [None] * dist.get_world_size()
        dist.all_gather_object(forwarded, seen[0])
        stats[name]["forwarded"] = forwarded
    y = np.load(os.path.join(directory, "y.npy"))
    for pre in ("jacobi", "block"):
        res = conjugate_gradient(os.path.join(directory, "ntk_sym.npy"), y, RIDGE, tol=TOL,
                                 preconditioner=pre, block_size=50, row_block=48)
        stats[f"cg_{pre}"] = res.report()
        if rank == 0:
            np.save(os.path.join(directory, f"alpha_{pre}.npy"), res.solution.numpy())
    if rank == 0:
        with open(os.path.join(directory, "stats.json"), "w") as f:
            json.dump(stats, f)


def run_mismatch(directory: str) -> None:
    rank = dist.get_rank()
    x1, _ = inputs(directory)
    errors = []
    perturbed = x1.clone()
    perturbed[0, 0] += 1e-3
    other = tn.mlp_spec([N0, 64, 64, 1], "erf")
    for a, m in ((perturbed if rank == 1 else x1, spec()), (x1, other if rank == 1 else spec())):
        try:
            tiled_kernel(m, a, kind="ntk", out=os.path.join(directory, "mismatch.npy"),
                         tile_size=TILE, progress=False)
            errors.append("no error")
        except ValueError as error:
            errors.append(str(error))
    with open(os.path.join(directory, f"error_{rank}.txt"), "w") as f:
        f.write("\n".join(errors))


if __name__ == "__main__":
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        {"cases": run_cases, "mismatch": run_mismatch}[sys.argv[2]](sys.argv[1])
    finally:
        dist.destroy_process_group()
