"""Inputs as people pass them: a tensor, a tuple or a dict of tensors, and ``output_fn``.

The empirical NTK differentiates the model's output with respect to its **parameters**,
never its inputs, so an input may hold any dtype (integer token ids, masks, floats). An
input ``x`` is a *leaf structure*:

- a tensor [N, ...]                 → ``model(x)``
- a tuple or list of tensors        → ``model(*x)``
- a dict of str → tensor            → ``model(**x)``

(tuples, lists and dicts may nest; every leaf is a tensor). Every leaf holds the same
batch of N samples along dimension 0; chunking takes rows ``start:stop`` of every leaf.

``output_fn`` picks the output to differentiate from whatever the model returns: a
callable applied to the model's output (``lambda out: out["logits"]``,
``lambda out: out.logits[:, -1]`` for the last position's logits of a language model,
``lambda out: out.logits`` for a HuggingFace-style output object). Its result must be
[N, n_L] or [N] (n_L = 1); without it the model's output itself must be.

API (every engine of ``torch_ntk.empirical`` and the hook engine go through these):

- :func:`check_inputs`: validate x1 or x2 (structure, leaves, batch size, devices);
- :func:`batch_size`: N of a leaf structure;
- :func:`take`: rows ``start:stop`` of every leaf; :func:`leaves`: the leaf tensors;
- :func:`call_model`: ``model(x)`` / ``model(*x)`` / ``model(**x)``, and
  :func:`call_args`: the (args, kwargs) of that call (for ``torch.func.functional_call``);
- :func:`select_output`: ``output_fn`` applied and its result checked, reshaped [n, n_L];
- :func:`is_plain`: whether x is a single floating tensor (the structured engines' input).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

__all__ = ["Inputs", "OutputFn", "batch_size", "call_args", "call_model", "check_inputs",
           "FuncModel", "is_plain", "leaves", "map_leaves", "output_size", "reference",
           "select_output", "take",
           "trainable_device"]

Inputs = Union[Tensor, tuple, list, dict]
OutputFn = Optional[Callable[[Any], Tensor]]


def is_plain(x: Inputs) -> bool:
    """Whether ``x`` is one floating-point tensor (what the structured engines take)."""
    return isinstance(x, Tensor) and x.is_floating_point()


def leaves(x: Inputs) -> list[Tensor]:
    """The leaves of ``x`` in order (depth first; dicts in their key order)."""
    if isinstance(x, Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in leaves(v)]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in leaves(v)]
    raise TypeError(f"expected a tensor, tuple, list or dict of tensors; got {type(x).__name__}")


def _map(fn: Callable[[Tensor], Tensor], x: Inputs) -> Inputs:
    """``fn`` applied to every leaf of ``x``, in its structure (named tuples kept)."""
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, dict):
        return {k: _map(fn, v) for k, v in x.items()}
    mapped = [_map(fn, v) for v in x]
    if isinstance(x, list):
        return mapped
    return type(x)(*mapped) if hasattr(x, "_fields") else tuple(mapped)


def map_leaves(fn: Callable[[Tensor], Tensor], x: Inputs) -> Inputs:
    """``fn`` applied to every leaf of ``x`` (e.g. ``lambda t: t.unsqueeze(0)``)."""
    return _map(fn, x)


def reference(x: Inputs, trainable: dict) -> tuple[torch.dtype, torch.device]:
    """(dtype, device) of the kernel: those of x for a floating tensor; else those of the
    trainable parameters (token ids and other structured inputs carry no float dtype)."""
    if is_plain(x):
        return x.dtype, x.device
    floating = [p for p in trainable.values() if p.is_floating_point()]
    first = floating[0] if floating else next(iter(trainable.values()))
    return first.dtype, first.device


def batch_size(x: Inputs) -> int:
    """N, the size of dimension 0 of every leaf (of the first leaf: :func:`check_inputs`
    has checked that they agree)."""
    return leaves(x)[0].shape[0]


def take(x: Inputs, start: int, stop: int) -> Inputs:
    """Rows ``start:stop`` of every leaf (views), in the structure of ``x``."""
    return _map(lambda t: t[start:stop], x)


def call_args(x: Inputs) -> tuple[tuple, dict]:
    """(args, kwargs) of the model call for ``x``: ((x,), {}), (tuple(x), {}) or ((), x)."""
    if isinstance(x, Tensor):
        return (x,), {}
    if isinstance(x, dict):
        return (), dict(x)
    return tuple(x), {}


def call_model(model: Callable, x: Inputs):
    """``model(x)`` for a tensor, ``model(*x)`` for a tuple or list, ``model(**x)`` for a
    dict; returns whatever the model returns."""
    args, kwargs = call_args(x)
    return model(*args, **kwargs)


def select_output(function: str, output, output_fn: OutputFn, n: int) -> Tensor:
    """The output to differentiate, [n, n_L]: ``output_fn(output)`` (or ``output``) checked
    to be a tensor [n, n_L] or [n] for a batch of n samples.

    Raises:
        ValueError naming ``output_fn`` when its result (or, without it, the model's
        output) is not a tensor of that shape.
    """
    y = output if output_fn is None else output_fn(output)
    shape = list(y.shape) if isinstance(y, Tensor) else None
    if not isinstance(y, Tensor) or y.dim() not in (1, 2) or y.shape[0] != n:
        got = f"{type(y).__name__} of shape {shape}" if shape is not None else type(y).__name__
        if output_fn is None:
            raise ValueError(
                f"{function}: the model's output must be a tensor [N, n_L] or [N] (N = {n}); "
                f"got {got}. Pass output_fn to pick it, e.g. output_fn=lambda out: "
                "out.logits[:, -1] or output_fn=lambda out: out['logits']")
        raise ValueError(
            f"{function}: output_fn must return a tensor [N, n_L] or [N] (N = {n}) for the "
            f"model's output; got {got}. Select one output per sample, e.g. "
            "lambda out: out.logits[:, -1] (the last position's logits)")
    if not y.is_floating_point():
        raise ValueError(
            f"{function}: the output to differentiate must be floating point; got {y.dtype}"
            + ("" if output_fn is None else " from output_fn"))
    return y.reshape(n, -1)


def check_inputs(function: str, name: str, x: Inputs, *, like: Optional[Inputs] = None,
                 device: Optional[torch.device] = None) -> Inputs:
    """Validate a leaf structure ``x`` (x1, or x2 with ``like`` = x1) and return it.

    Checks: ``x`` is a tensor, tuple/list or dict of tensors (TypeError otherwise); every
    leaf has a batch dimension 0 of the same size N ≥ 1; floating leaves are finite; every
    leaf is on ``device`` (the trainable parameters' device) when given; with ``like``,
    the same structure (type, length, dict keys) and the same dtype per leaf.

    Raises:
        TypeError / ValueError naming ``function`` and ``name`` (and the leaf).
    """
    if isinstance(x, Tensor):
        paths = [(name, x)]
    elif isinstance(x, (tuple, list, dict)):
        paths = list(_paths(function, name, x))
        if not paths:
            raise ValueError(f"{function}: {name} holds no tensor; pass a tensor [N, ...], a "
                             "tuple or a dict of tensors sharing the batch dimension 0")
    else:
        raise TypeError(
            f"{function}: {name} must be a torch.Tensor, a tuple or a dict of tensors (a "
            f"tuple calls model(*{name}), a dict model(**{name})); got {type(x).__name__}"
            + (f" (for a numpy array: torch.from_numpy({name}))"
               if type(x).__module__.startswith("numpy") else ""))
    for path, t in paths:
        if t.dim() == 0:
            raise ValueError(
                f"{function}: {path} has no batch dimension (a scalar); every leaf of {name} "
                "must be [N, ...] with the samples along dimension 0 (unsqueeze(0) a single "
                "sample; pass a constant as a model attribute instead)")
    sizes = {path: t.shape[0] for path, t in paths}
    n = next(iter(sizes.values()))
    if any(s != n for s in sizes.values()):
        listed = ", ".join(f"{p}: {s}" for p, s in sizes.items())
        raise ValueError(
            f"{function}: every leaf of {name} must have the same batch size along dimension "
            f"0; got {listed}")
    if n == 0:
        raise ValueError(f"{function}: {name} must hold at least one sample; got batch size 0")
    for path, t in paths:
        if device is not None and t.device != device:
            raise ValueError(
                f"{function}: {path} is on {t.device} but the model's trainable parameters "
                f"are on {device}; move the inputs (or the model) to one device")
        if t.is_floating_point() or t.is_complex():
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"{function}: {path} contains NaN or Inf; kernels of "
                                 "non-finite inputs are undefined")
    if like is not None:
        _check_like(function, name, x, like)
    return x


def _paths(function: str, name: str, x, root: Optional[str] = None):
    root = root or name
    items = x.items() if isinstance(x, dict) else enumerate(x)
    for key, v in items:
        if isinstance(x, dict) and not isinstance(key, str):
            raise TypeError(f"{function}: the keys of {name} must be strings (model(**{name})); "
                            f"got {key!r}")
        path = f"{name}[{key!r}]"
        if isinstance(v, Tensor):
            yield path, v
        elif isinstance(v, (tuple, list, dict)):
            yield from _paths(function, path, v, root)
        else:
            raise TypeError(f"{function}: {path} must be a torch.Tensor (every leaf of {root} "
                            f"is a batch [N, ...]); got {type(v).__name__}")


def _structure(x) -> Any:
    if isinstance(x, Tensor):
        return "tensor"
    if isinstance(x, dict):
        return ("dict", tuple((k, _structure(v)) for k, v in x.items()))
    return (type(x).__name__, tuple(_structure(v) for v in x))


def _check_like(function: str, name: str, x: Inputs, like: Inputs) -> None:
    if _structure(x) != _structure(like):
        raise ValueError(
            f"{function}: {name} must have the structure of x1 (the same tuple length or dict "
            f"keys, tensors at the same places); got {_describe(x)} against x1's "
            f"{_describe(like)}")
    for i, (a, b) in enumerate(zip(leaves(x), leaves(like))):
        if a.dtype != b.dtype:
            raise ValueError(f"{function}: leaf {i} of {name} must have the dtype of x1's "
                             f"({b.dtype}); got {a.dtype}")


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return "a tensor"
    if isinstance(x, dict):
        return f"a dict with keys {list(x)}"
    return f"a {type(x).__name__} of {len(x)}"


def trainable_device(function: str, model: nn.Module) -> Optional[torch.device]:
    """The one device of the parameters with requires_grad (None when there is none).

    Raises:
        ValueError naming the parameter on another device.
    """
    device, first = None, None
    for pname, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if device is None:
            device, first = p.device, pname
        elif p.device != device:
            raise ValueError(
                f"{function}: parameter {pname} is on {p.device} but parameter {first} is on "
                f"{device}; the trainable parameters (requires_grad=True) must share one "
                "device (model.to(device), or freeze the others with requires_grad_(False))")
    return device


class FuncModel:
    """The model as a function of its trainable parameters (torch.func); its inputs are leaf
    structures (a tensor, tuple or dict: :mod:`.inputs`) and ``output_fn`` picks the output
    to differentiate (checked once by :func:`output_size`)."""

    def __init__(self, model: nn.Module, trainable: dict[str, Tensor],
                 output_fn: OutputFn = None):
        self.model, self.output_fn = model, output_fn
        self.params = {k: v.detach() for k, v in trainable.items()}
        self.fixed = {k: v.detach() for k, v in model.named_parameters() if k not in trainable}
        self.fixed.update(dict(model.named_buffers()))

    def batch(self, params: dict[str, Tensor], x) -> Tensor:
        """f(x) [n, n_L] for a batch x [n, ...] (every leaf)."""
        args, kwargs = call_args(x)
        y = torch.func.functional_call(self.model, (params, self.fixed), args, kwargs)
        if self.output_fn is not None:
            y = self.output_fn(y)
        return y.reshape(batch_size(x), -1)

    def single(self, params: dict[str, Tensor], x) -> Tensor:
        """f(x) [n_L] for one sample x [...] (every leaf without its batch dimension)."""
        return self.batch(params, map_leaves(lambda t: t.unsqueeze(0), x))[0]


def output_size(function: str, model: nn.Module, x1, output_fn: OutputFn = None) -> int:
    """n_L, from one forward pass on the first two samples (also a clear error for bad
    inputs, and for an ``output_fn`` whose result is not [N, n_L] or [N])."""
    first = take(x1, 0, 2)
    try:
        with torch.no_grad():
            y = call_model(model, first)
    except Exception as error:  # the model's own error names what is wrong
        shape = list(x1.shape) if isinstance(x1, Tensor) else type(x1).__name__
        raise ValueError(
            f"{function}: the model cannot be applied to x1 ({shape}) "
            f"({type(error).__name__}: {error})"
        ) from error
    n = batch_size(first)
    if output_fn is None and isinstance(y, Tensor):
        if y.dim() < 1 or y.shape[0] != n:
            raise ValueError(
                f"{function}: the model must map a batch [N, ...] to a tensor [N, n_L] (or "
                f"[N]); got {type(y).__name__} {list(y.shape)} for {n} sample(s)")
        return max(1, y[0].numel())
    return select_output(function, y, output_fn, n).shape[1]
