"""Argument checks shared by the kernel functions (one wording for every entry point)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["check_batch"]


def check_batch(
    op: str,
    name: str,
    x: Tensor,
    like: Optional[Tensor] = None,
    features: Optional[int] = None,
    flatten: bool = False,
) -> Tensor:
    """Validate a batch of inputs x [N, ...] for ``op`` and return it.

    Checks: a floating tensor (TypeError otherwise), N ≥ 1, finite values, and — when
    ``like`` is given — the dtype, device and per-sample shape of ``like``. With
    ``features`` the batch must be (or, with ``flatten``, flatten to) [N, features].
    Raises ValueError naming ``op`` and ``name`` for everything else.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor; got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"{op}: {name} must be float32 or float64; got {x.dtype}. Convert it with "
            ".float() or .double()."
        )
    if flatten and x.dim() >= 2:
        x = x.flatten(1)
    if features is not None and x.dim() != 2:
        raise ValueError(f"{op}: {name} must have shape [N, {features}]; got {list(x.shape)}")
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(
            f"{op}: {name} must hold at least one sample (a batch [N, ...] with N >= 1); got "
            f"shape {list(x.shape)}"
        )
    if features is not None and x.shape[1] != features:
        raise ValueError(
            f"{op}: {name} must have {features} features (the model's input width); got shape "
            f"{list(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{op}: {name} contains NaN or Inf; kernels of non-finite inputs are "
                         "undefined")
    if like is not None:
        if x.dtype != like.dtype:
            raise ValueError(f"{op}: {name} must have the dtype of x1 ({like.dtype}); got {x.dtype}")
        if x.device != like.device:
            raise ValueError(
                f"{op}: {name} must be on the device of x1 ({like.device}); got {x.device}"
            )
        if x.shape[1:] != like.shape[1:]:
            raise ValueError(
                f"{op}: {name} must have the per-sample shape of x1 {list(like.shape[1:])}; got "
                f"shape {list(x.shape)}"
            )
    return x
