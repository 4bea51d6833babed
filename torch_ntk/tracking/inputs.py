"""What a :class:`torch_ntk.KernelDriftTracker` takes in and runs under: the probe,
target and reference checks, the output projection Q, the process rank, and autocast
switched off for a record."""

from __future__ import annotations

import contextlib
import math
import os

import torch
from torch import Tensor

from .._utils.validation import check_batch

__all__ = ["autocast_off", "check_probe", "check_reference", "check_targets", "norm",
           "process_rank", "projection_matrix"]


def check_probe(probe_x: Tensor, like: Tensor) -> Tensor:
    """probe_x [N ≥ 2, ...] checked and converted to the dtype and device of ``like``."""
    probe_x = check_batch("KernelDriftTracker", "probe_x", probe_x)
    if probe_x.shape[0] < 2:
        raise ValueError(
            f"KernelDriftTracker: probe_x must hold at least two samples [N, ...]; got shape "
            f"{list(probe_x.shape)}"
        )
    converted = probe_x.detach().to(device=like.device, dtype=like.dtype)
    if not bool(torch.isfinite(converted).all()):
        raise ValueError(
            f"KernelDriftTracker: probe_x overflows in the parameters' dtype {like.dtype} "
            "(values beyond its range become Inf); rescale the probe inputs"
        )
    return converted


def check_targets(probe_y: Tensor, n: int, device: torch.device) -> Tensor:
    """probe_y as the target matrix Y [N, c] float64 of ``label_alignment``.

    One definition, whatever the spelling:

    - integer (or bool) class labels, [N] or [N, 1]: one-hot, Y[i, y_i] = 1, with
      c = max label + 1 columns. (The alignment only sees Y Yᵀ — 1 where two samples
      share a class, 0 elsewhere — so the number of columns, e.g. the model's n_L, does
      not change it: [N] integer labels and their one-hot float matrix give the same value.)
    - floating targets: as given; [N] is one column (a regression target: y.float() of 0/1
      labels is the single target y, not two classes, and gives another value than the
      integer labels).
    - integer [N, c > 1]: refused (ambiguous); cast to float to use it as Y.
    """
    if not isinstance(probe_y, Tensor):
        raise TypeError(f"KernelDriftTracker: probe_y must be a torch.Tensor; got {type(probe_y).__name__}")
    if probe_y.shape[:1] != (n,) or probe_y.dim() > 2:
        raise ValueError(
            f"KernelDriftTracker: probe_y must have shape [{n}] or [{n}, c] like probe_x; got "
            f"{list(probe_y.shape)}"
        )
    y = probe_y.detach().to(device)
    if not (y.is_floating_point() or y.is_complex()):
        if y.dim() == 2 and y.shape[1] != 1:
            raise ValueError(
                f"KernelDriftTracker: integer probe_y of shape {list(y.shape)} is ambiguous: "
                "pass class labels as [N] (one-hot encoded) or a target matrix Y [N, c] as "
                "floats (probe_y.float())")
        y = y.reshape(n).long()
        if bool((y < 0).any()):
            raise ValueError("KernelDriftTracker: integer probe_y must be class labels >= 0; "
                             f"got min {int(y.min())}")
        y = torch.nn.functional.one_hot(y)
    elif y.is_complex():
        raise ValueError("KernelDriftTracker: probe_y must be real; got a complex tensor")
    y = y.to(torch.float64).reshape(n, -1)
    if not bool(torch.isfinite(y).all()):
        raise ValueError("KernelDriftTracker: probe_y contains NaN or Inf; label_alignment "
                         "needs finite targets")
    if not bool((y != 0).any()):
        raise ValueError("KernelDriftTracker: probe_y is all zero; label_alignment is undefined")
    return y


def check_reference(reference: Tensor, kernel: Tensor) -> Tensor:
    """A user-given Θ_ref [N, N] checked against Θ_0 and converted like it."""
    n = kernel.shape[0]
    if tuple(reference.shape) != (n, n):
        raise ValueError(
            f"KernelDriftTracker: a reference kernel must have shape [{n}, {n}] (trace-mode "
            f"NTK on the probe set); got {list(reference.shape)}"
        )
    if not bool(torch.isfinite(reference).all()):
        raise ValueError("KernelDriftTracker: the reference kernel contains NaN or Inf")
    return reference.detach().to(device=kernel.device, dtype=kernel.dtype).clone()


def projection_matrix(n_out: int, p: int, seed: int = 0) -> Tensor:
    """Q [n_out, p] float64 with orthonormal columns, drawn from the Haar measure by a
    generator seeded with ``seed`` (the global random state is untouched).

    E[Q Qᵀ] = (p/n_out)·Id_{n_out}, so the trace NTK of the outputs Qᵀf, (1/p) tr(QᵀΘQ),
    is an unbiased estimate of the trace NTK of f, (1/n_out) tr Θ (equal when p = n_out).
    """
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n_out, p, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # the sign convention that makes Q Haar-distributed
    return q


def process_rank() -> int:
    """This process's rank: torch.distributed's when initialized, else torchrun's RANK
    variable, else 0."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


@contextlib.contextmanager
def autocast_off(device: torch.device):
    """Autocast disabled on the CPU and on ``device``'s type: records in full precision."""
    with contextlib.ExitStack() as stack:
        for kind in dict.fromkeys(("cpu", device.type)):
            available = getattr(torch.amp, "is_autocast_available", None)  # torch >= 2.4
            if available(kind) if available is not None else kind in ("cpu", "cuda"):
                stack.enter_context(torch.autocast(kind, enabled=False))
        yield


def norm(tensors) -> float:
    """√(Σ ‖t‖²) accumulated in float64, one host sync per device."""
    norms: dict[torch.device, list[Tensor]] = {}
    for t in tensors:
        norms.setdefault(t.device, []).append(torch.linalg.vector_norm(t, dtype=torch.float64))
    return math.sqrt(sum(float(torch.stack(v).square().sum()) for v in norms.values()))
