"""Argument checks shared by every public function (one wording for every entry point)."""

from __future__ import annotations

import numbers
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = ["check_batch", "check_choices", "check_int", "check_increasing_ints",
           "check_parameters_match"]


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
        raise TypeError(
            f"{op}: {name} must be a torch.Tensor; got {type(x).__name__} (for a numpy array: "
            f"torch.from_numpy({name}), then .float() or .double() to match the model)")
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
            f"{op}: {name} must be a batch [N, ...] with N >= 1 ({name} must hold at least one "
            f"sample); got shape {list(x.shape)}"
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


def check_choices(function: str, name: str, value: Union[str, Sequence[str]],
                  choices: Sequence[str]) -> tuple[str, ...]:
    """One name or a sequence of names from ``choices``, as a tuple in ``choices``' order.

    E.g. ``check_choices("analytic_kernels", "get", "ntk", ("nngp", "ntk")) == ("ntk",)``.
    """
    wanted = (value,) if isinstance(value, str) else (
        tuple(value) if isinstance(value, Sequence) else None)
    if not wanted or any(v not in choices for v in wanted):
        raise ValueError(f"{function}: {name} must name some of {tuple(choices)}; got {value!r}")
    return tuple(c for c in choices if c in wanted)


def check_int(function: str, name: str, value, minimum: Optional[int] = None) -> int:
    """``value`` as an int (bool refused), at least ``minimum`` when given."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(
            f"{function}: {name} must be an integer; got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{function}: {name} must be at least {minimum}; got {value}")
    return int(value)


def check_increasing_ints(function: str, name: str, values, minimum: int = 1) -> list[int]:
    """A non-empty, strictly increasing sequence of integers ≥ ``minimum``."""
    if not isinstance(values, Sequence) or isinstance(values, str) or not values:
        raise ValueError(
            f"{function}: {name} must be a non-empty sequence of integers; got {values!r}")
    out = [check_int(function, name, v, minimum) for v in values]
    if any(b <= a for a, b in zip(out[:-1], out[1:])):
        raise ValueError(f"{function}: {name} must be strictly increasing; got {list(values)!r}")
    return out


def check_parameters_match(function: str, model: torch.nn.Module, x: Tensor) -> None:
    """ValueError when a floating parameter of ``model`` has another dtype or device than
    the inputs ``x`` (named x1): the model and its inputs must agree."""
    for name, p in model.named_parameters():
        if p.is_floating_point() and p.dtype != x.dtype:
            raise ValueError(
                f"{function}: parameter {name} is {p.dtype} but x1 is {x.dtype}; convert the "
                f"model (model.to({x.dtype})) or the inputs"
            )
        if p.device != x.device:
            raise ValueError(
                f"{function}: parameter {name} is on {p.device} but x1 is on {x.device}; move "
                "them to the same device"
            )
