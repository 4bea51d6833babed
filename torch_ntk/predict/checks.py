"""Argument checks of torch_ntk.predict: Gram matrices, targets, test tensors, numbers, times."""

from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = [
    "Times",
    "as_times",
    "check_cross_kernel",
    "check_like",
    "check_number",
    "check_targets",
    "check_tensor",
    "check_train_kernel",
]

Times = Union[float, int, Tensor, Sequence[float]]


def check_tensor(
    name: str, x: object, like: Optional[Tensor] = None, like_name: str = "k_train_train"
) -> Tensor:
    """A finite float32/float64 tensor on like's dtype and device, else a clear error."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"{name} must be float32 or float64 (float64 recommended); got {x.dtype}. "
            "Convert it with .double()."
        )
    if like is not None:
        if x.dtype != like.dtype:
            raise ValueError(
                f"{name} must have the dtype of {like_name} ({like.dtype}); got {x.dtype}. "
                f"Convert it with .to({like.dtype})."
            )
        if x.device != like.device:
            raise ValueError(
                f"{name} must be on the device of {like_name} ({like.device}); got {x.device}"
            )
    if x.numel():
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            first = [int(i) for i in bad.nonzero()[0]]
            raise ValueError(
                f"{name} contains NaN or Inf ({int(bad.sum())} of {x.numel()} entries, the "
                f"first at {first}); a kernel with NaN usually comes from NaN/Inf inputs or "
                "parameters, or an overflow in float32: check them, or recompute in float64"
            )
    return x


def check_number(name: str, value: object, minimum: float, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    value = float(value)
    ok = math.isfinite(value) and (value > minimum if strict else value >= minimum)
    if not ok:
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be finite and {relation} {minimum:g}; got {value!r}")
    return value


def check_train_kernel(
    name: str, k: object, allow_full: bool
) -> tuple[Tensor, int, Optional[int]]:
    """Validate a train-train Gram matrix; return it flat [R, R], N and n_L (or None)."""
    k = check_tensor(name, k)
    if k.dim() == 4 and allow_full:
        n, n2, o1, o2 = k.shape
        if n != n2 or o1 != o2:
            raise ValueError(
                f"{name} must be a full kernel [N, N, n_L, n_L]; got {list(k.shape)}"
            )
        flat = k.permute(0, 2, 1, 3).reshape(n * o1, n * o1)
        outputs: Optional[int] = o1
    elif k.dim() == 2:
        n, n2 = k.shape
        if n != n2:
            raise ValueError(f"{name} must be square [N, N]; got {list(k.shape)}")
        flat, outputs = k, None
    else:
        expected = "[N, N] or a full kernel [N, N, n_L, n_L]" if allow_full else "[N, N]"
        raise ValueError(f"{name} must have shape {expected}; got {list(k.shape)}")
    if flat.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one training sample; got {list(k.shape)}")
    scale = float(flat.detach().abs().max())
    eps = torch.finfo(flat.dtype).eps
    asym = float((flat.detach() - flat.detach().mT).abs().max())
    if asym > 1000 * eps * max(scale, torch.finfo(flat.dtype).tiny):
        raise ValueError(
            f"{name} must be symmetric (a Gram matrix Θ(X, X) of the training inputs with "
            f"themselves); max |K - Kᵀ| = {asym:.3g} against max |K| = {scale:.3g}"
        )
    return 0.5 * (flat + flat.mT), n, outputs


def check_targets(name: str, y: object, like: Tensor, n: int, outputs: Optional[int]) -> Tensor:
    y = check_tensor(name, y, like)
    if outputs is not None:
        if tuple(y.shape) != (n, outputs):
            raise ValueError(
                f"{name} must have shape [N, n_L] = [{n}, {outputs}] to match the full kernel "
                f"k_train_train; got {list(y.shape)}"
            )
    elif y.dim() not in (1, 2) or y.shape[0] != n:
        raise ValueError(
            f"{name} must have shape [N] or [N, n_L] with N = {n} training samples "
            f"(k_train_train is [{n}, {n}]); got {list(y.shape)}"
        )
    return y


def check_like(name: str, x: Optional[object], like: Tensor, shape: tuple) -> Optional[Tensor]:
    if x is None:
        return None
    x = check_tensor(name, x, like)
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}; got {list(x.shape)}")
    return x


def check_cross_kernel(
    name: str, k: object, like: Tensor, n: int, outputs: Optional[int]
) -> tuple[Tensor, int]:
    """Validate a test-train kernel; return it flat [M·(n_L or 1), R] and M."""
    k = check_tensor(name, k, like)
    if outputs is not None:
        if k.dim() != 4 or k.shape[1] != n or k.shape[2] != outputs or k.shape[3] != outputs:
            raise ValueError(
                f"{name} must be a full kernel [M, N, n_L, n_L] = [M, {n}, {outputs}, "
                f"{outputs}] like k_train_train; got {list(k.shape)}"
            )
        m = k.shape[0]
        return k.permute(0, 2, 1, 3).reshape(m * outputs, n * outputs), m
    if k.dim() != 2 or k.shape[1] != n:
        raise ValueError(
            f"{name} must have shape [M, N] with N = {n} training samples (the second axis "
            f"runs over the training inputs); got {list(k.shape)}"
        )
    return k, k.shape[0]


def as_times(t: Times, like: Tensor) -> tuple[Tensor, bool]:
    """Times as a 1-d tensor on like's dtype/device, and whether t was a scalar."""
    if isinstance(t, bool) or t is None:
        raise TypeError(
            f"t must be a number, math.inf, or a 1-d tensor/sequence of times; got {t!r}"
        )
    if isinstance(t, numbers.Real):
        times, scalar = torch.tensor([float(t)], dtype=like.dtype, device=like.device), True
    elif isinstance(t, Tensor):
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"t must hold real times; got a {t.dtype} tensor")
        if t.dim() > 1:
            raise ValueError(f"t must be a scalar or a 1-d tensor of times; got {list(t.shape)}")
        scalar = t.dim() == 0
        times = t.reshape(-1).to(dtype=like.dtype, device=like.device)
    elif isinstance(t, (list, tuple)):
        try:
            times = torch.tensor([float(v) for v in t], dtype=like.dtype, device=like.device)
        except (TypeError, ValueError) as error:
            raise TypeError(f"t must be a sequence of real times; got {t!r}") from error
        scalar = False
    else:
        raise TypeError(
            f"t must be a number, math.inf, or a 1-d tensor/sequence of times; "
            f"got {type(t).__name__}"
        )
    if times.numel():
        if bool(torch.isnan(times).any()):
            raise ValueError("t contains NaN")
        if bool((times < 0).any()):
            raise ValueError(
                f"t must be non-negative (gradient flow runs forward from t = 0); got "
                f"min t = {float(times.min()):g}"
            )
    return times, scalar
