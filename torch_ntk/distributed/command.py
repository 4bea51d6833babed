"""``python -m torch_ntk.distributed {kernel,solve} ...`` — also under ``torchrun``.

``kernel`` is an alias of ``torch-ntk kernel --distributed`` (the same flags; see
:mod:`torch_ntk.cli.kernel`); ``solve`` runs conjugate-gradient kernel regression on
a kernel .npy. Under torchrun (WORLD_SIZE set) the process group is initialized from the
environment (:func:`process_group`): NCCL when computing on CUDA (device cuda:LOCAL_RANK),
gloo on CPU. Without torchrun it runs in one process. Every rank must see the same files
(a shared filesystem).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .._utils.files import atomic_write, write_json
from .solver import PRECONDITIONERS, conjugate_gradient

__all__ = ["main", "process_group"]


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[int]:
    """Join the torchrun process group for the duration (yields this process's rank).

    Under torchrun (WORLD_SIZE in the environment) and without an initialized group:
    ``init_process_group`` from the environment — "nccl" when ``device`` is CUDA (after
    ``torch.cuda.set_device``), else "gloo" — and ``destroy_process_group`` on exit.
    Otherwise nothing is started and the rank is that of the existing group, or 0.
    """
    started = False
    if "WORLD_SIZE" in os.environ and dist.is_available() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        started = True
    try:
        yield dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    finally:
        if started:
            dist.destroy_process_group()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m torch_ntk.distributed",
        description="CG kernel regression on a kernel .npy over torch.distributed. "
                    "'kernel ...' is 'torch-ntk kernel --distributed ...' (same flags).",
    )
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("kernel", help="alias of 'torch-ntk kernel --distributed' (same flags)",
                   add_help=False)
    s = sub.add_parser("solve", help="kernel regression (K + ridge I) alpha = y by CG")
    s.add_argument("--kernel", required=True, help="K [N, N] .npy (memory-mapped)")
    s.add_argument("--targets", required=True, help="y [N] or [N, m] (.npy or .pt)")
    s.add_argument("--out", required=True, help="alpha .npy (rank 0)")
    s.add_argument("--ridge", type=float, default=0.0)
    s.add_argument("--tol", type=float, default=1e-8, help="relative residual to reach")
    s.add_argument("--max-iter", type=int)
    s.add_argument("--preconditioner", choices=PRECONDITIONERS, default="jacobi")
    s.add_argument("--block-size", type=int, default=512)
    s.add_argument("--row-block", type=int)
    s.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available), cpu, "
                                                     "cuda")
    s.add_argument("--report", help="write the iteration report here (JSON, rank 0)")
    s.add_argument("--progress", action="store_true")
    return p


def _load(path: str) -> torch.Tensor:
    if path.endswith(".npy"):
        return torch.from_numpy(np.load(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, torch.Tensor):
        raise ValueError(f"{path} must hold a tensor; got {type(obj).__name__}")
    return obj


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def _solve(args, rank: int, device: torch.device) -> int:
    y = np.load(args.targets) if args.targets.endswith(".npy") else _load(args.targets)
    result = conjugate_gradient(args.kernel, y, args.ridge, tol=args.tol, max_iter=args.max_iter,
                                preconditioner=args.preconditioner, block_size=args.block_size,
                                row_block=args.row_block, device=device, progress=args.progress)
    if rank == 0:
        solution = result.solution.cpu().numpy()
        atomic_write(args.out, lambda f: np.save(f, solution), binary=True)
        if args.report:
            write_json(args.report, result.report(), indent=None)
        state = "converged" if result.converged else "NOT converged"
        print(f"torch_ntk.distributed: CG {state} in {result.iterations} iterations, relative "
              f"residual {result.final_residual:.3e} (tol {result.tol:g}), {result.seconds:.2f} s",
              flush=True)
    return 0 if result.converged else 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``solve ...`` (default: sys.argv[1:]); returns the exit status. ``kernel ...``
    is handled by ``python -m torch_ntk.distributed`` (torch_ntk/distributed/__main__.py),
    which passes it to ``torch-ntk kernel --distributed``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["kernel"]:
        print("torch_ntk.distributed.main: 'kernel' is 'torch-ntk kernel --distributed' "
              "(torch_ntk.cli.main(['kernel', '--distributed', ...]))", file=sys.stderr)
        return 2
    args = _parser().parse_args(argv)
    device = _device(args.device)
    with process_group(device) as rank:
        try:
            return _solve(args, rank, device)
        except (ValueError, TypeError, FileNotFoundError) as error:
            print(f"torch_ntk.distributed (rank {rank}): error: {error}", file=sys.stderr,
                  flush=True)
            return 2
