"""``python -m torch_ntk.distributed {kernel,solve} ...`` — also under ``torchrun``.

Under torchrun (WORLD_SIZE set) the process group is initialized from the environment:
NCCL when computing on CUDA (device cuda:LOCAL_RANK), gloo on CPU. Without torchrun it
runs in one process. Every rank must see the same files (a shared filesystem).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from ..files import atomic_write, write_json
from .kernel import tiled_kernel
from .tiles import KINDS
from .solver import PRECONDITIONERS, conjugate_gradient

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m torch_ntk.distributed",
        description="Tiled NTK/NNGP kernels over torch.distributed, written to a memory-mapped "
                    ".npy that resumes after interruption; CG kernel regression on it.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    k = sub.add_parser("kernel", help="compute K(X1, X2) tile by tile into a .npy")
    k.add_argument("--x1", required=True, help="inputs [N1, n0] (.npy or a tensor saved with "
                                               "torch.save as .pt)")
    k.add_argument("--x2", help="inputs [N2, n0]; omit for the symmetric K(X1, X1)")
    k.add_argument("--out", required=True, help="the result .npy (shared by all ranks)")
    k.add_argument("--kind", choices=KINDS, default="ntk",
                   help="nngp/ntk: infinite width; empirical: finite-width trace NTK (the mean "
                        "over the outputs)")
    k.add_argument("--widths", help="MLP widths n0,n1,...,nL (ntk_mlp/mlp_spec)")
    k.add_argument("--activation", default="relu")
    k.add_argument("--weight-std", type=float, default=1.0)
    k.add_argument("--bias-std", type=float, default=0.1)
    k.add_argument("--parametrization", default="ntk", choices=("ntk", "standard"))
    k.add_argument("--seed", type=int, default=0,
                   help="initialization seed of the --widths model (empirical)")
    k.add_argument("--model", help="an nn.Module saved with torch.save (instead of --widths)")
    k.add_argument("--tile-size", type=int, default=1024)
    k.add_argument("--dtype", choices=tuple(DTYPES), help="cast inputs (and model) to this")
    k.add_argument("--device", default="auto", help="auto (cuda:LOCAL_RANK if available), cpu, "
                                                     "cuda")
    k.add_argument("--method", default="auto", help="empirical_ntk method")
    k.add_argument("--overwrite", action="store_true",
                   help="replace an existing result/partial run of another computation")
    k.add_argument("--checkpoint-s", type=float, default=10.0,
                   help="seconds between checkpoints (flush + manifest); 0: after every tile")
    k.add_argument("--no-progress", action="store_true")
    k.add_argument("--stats", help="write the run's statistics here (JSON, rank 0)")
    k.add_argument("--_stop-after-tiles", dest="stop_after_tiles", type=int,
                   help=argparse.SUPPRESS)

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


def _model(args, dtype, device):
    from .. import mlp_spec, ntk_mlp

    if args.model:
        model = torch.load(args.model, map_location=device, weights_only=False)
        return model.to(dtype=dtype) if dtype is not None else model
    if not args.widths:
        raise ValueError("kernel: give --widths n0,...,nL or --model FILE")
    widths = [int(w) for w in args.widths.split(",")]
    common = dict(weight_std=args.weight_std, bias_std=args.bias_std,
                  parametrization=args.parametrization)
    if args.kind != "empirical":
        return mlp_spec(widths, args.activation, **common)
    torch.manual_seed(args.seed)
    return ntk_mlp(widths, args.activation, **common, device=device, dtype=dtype).eval()


def _kernel(args, rank: int, device: torch.device) -> int:
    x1 = _load(args.x1)
    x2 = _load(args.x2) if args.x2 else None
    dtype = DTYPES[args.dtype] if args.dtype else x1.dtype
    x1 = x1.to(device=device, dtype=dtype)
    x2 = x2.to(device=device, dtype=dtype) if x2 is not None else None
    model = _model(args, dtype, device)
    stats = tiled_kernel(model, x1, x2, kind=args.kind, out=args.out, tile_size=args.tile_size,
                         method=args.method, overwrite=args.overwrite,
                         checkpoint_s=args.checkpoint_s,
                         progress=False if args.no_progress else None,
                         _stop_after_tiles=args.stop_after_tiles)
    if rank == 0:
        if args.stats:
            write_json(args.stats, stats.to_dict(), indent=None)
        print(f"torch_ntk.distributed: {args.out} {stats.shape[0]}x{stats.shape[1]} complete; "
              f"{stats.tiles_computed} tiles computed, {stats.tiles_skipped} resumed, "
              f"{stats.world_size} rank(s), {stats.seconds:.2f} s", flush=True)
    return 0


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
    """Run the command line ``argv`` (default: sys.argv[1:]); returns the exit status."""
    args = _parser().parse_args(argv)
    device = _device(getattr(args, "device", "auto"))
    started = False
    if "WORLD_SIZE" in os.environ and dist.is_available() and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        started = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    try:
        return _kernel(args, rank, device) if args.command == "kernel" else \
            _solve(args, rank, device)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"torch_ntk.distributed (rank {rank}): error: {error}", file=sys.stderr, flush=True)
        return 2
    finally:
        if started:
            dist.destroy_process_group()
