"""Kernels on disk: :func:`save_kernels` and :func:`load_kernels`.

The file is an ordinary ``torch.save`` of plain data — a dict with a format tag, the
result's type name and its fields (tensors, ints, strings, None) — so that
``torch.load(path, weights_only=True)`` reads it, and nothing in it is unpickled as code.
:class:`~torch_ntk.Kernels` (``analytic_kernels``, ``NTK.limit``) and
:class:`~torch_ntk.MonteCarloKernels` round-trip with their type; a plain dict of
tensors is saved as given and read back as a dict.

Example::

    >>> k = torch_ntk.analytic_kernels(torch_ntk.ntk_mlp([3, 64, 1]), torch.randn(5, 3))
    >>> torch_ntk.save_kernels("kernels.pt", k)
    >>> torch_ntk.load_kernels("kernels.pt").ntk.shape
    torch.Size([5, 5])
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Union

import torch
from torch import Tensor

from ._utils.files import atomic_write
from .analytic.kernels import Kernels
from .monte_carlo.samples import MonteCarloKernels

__all__ = ["FORMAT", "load_kernels", "save_kernels"]

FORMAT = "torch_ntk.kernels"
VERSION = 1
_TYPES = {"Kernels": Kernels, "MonteCarloKernels": MonteCarloKernels}
_PLAIN = (Tensor, int, float, str, bool, type(None))

PathLike = Union[str, os.PathLike]


def save_kernels(path: PathLike, kernels: Union[Kernels, MonteCarloKernels, Mapping[str, Any]]
                 ) -> None:
    """Write ``kernels`` to ``path`` (atomically: never a partial file).

    Args:
        path: the file to write, conventionally ``*.pt``.
        kernels: a :class:`~torch_ntk.Kernels`, a :class:`~torch_ntk.MonteCarloKernels`,
            or a dict from names to tensors (or None, numbers, strings).

    Tensors are stored detached, on the CPU, contiguous; read the file back with
    :func:`load_kernels` (or ``torch.load(path, weights_only=True)`` for the raw dict).
    """
    if isinstance(kernels, tuple) and type(kernels).__name__ in _TYPES \
            and isinstance(kernels, _TYPES[type(kernels).__name__]):
        kind, fields = type(kernels).__name__, kernels._asdict()
    elif isinstance(kernels, Mapping):
        kind, fields = "dict", dict(kernels)
    else:
        raise TypeError("save_kernels: kernels must be a torch_ntk.Kernels, a "
                        f"MonteCarloKernels or a dict of tensors; got {type(kernels).__name__}")
    stored = {}
    for name, value in fields.items():
        if not isinstance(name, str) or not isinstance(value, _PLAIN):
            raise TypeError(f"save_kernels: field {name!r} is a {type(value).__name__}; "
                            "only tensors, numbers, strings and None are stored")
        stored[name] = value.detach().cpu().contiguous() if isinstance(value, Tensor) else value
    payload = {"format": FORMAT, "version": VERSION, "type": kind, "fields": stored}
    atomic_write(path, lambda f: torch.save(payload, f), binary=True)


def load_kernels(path: PathLike, map_location: Any = None
                 ) -> Union[Kernels, MonteCarloKernels, dict]:
    """Read a file written by :func:`save_kernels` (with ``weights_only=True``).

    Args:
        path: the file.
        map_location: as for ``torch.load``, e.g. ``"cuda"``.

    Returns:
        the saved :class:`~torch_ntk.Kernels` or :class:`~torch_ntk.MonteCarloKernels`,
        or a dict when a dict was saved.

    Raises:
        ValueError: the file is not a kernel file of this format (another torch file, a
            file that is not torch's at all, or a newer format version).
    """
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # pickle/zip errors differ between torch versions
        raise ValueError(f"load_kernels: {os.fspath(path)} is not a kernel file written by "
                         f"torch_ntk.save_kernels (torch.load refused it: {error})") from None
    if not (isinstance(payload, dict) and payload.get("format") == FORMAT):
        what = f"a {type(payload).__name__}" if not isinstance(payload, dict) else \
            f"a dict with keys {sorted(map(str, payload))[:6]}"
        raise ValueError(f"load_kernels: {os.fspath(path)} holds {what}, not a kernel file "
                         "written by torch_ntk.save_kernels (no format tag "
                         f"{FORMAT!r})")
    if not isinstance(payload.get("version"), int) or payload["version"] > VERSION:
        raise ValueError(f"load_kernels: {os.fspath(path)} has format version "
                         f"{payload.get('version')!r}; this torch_ntk reads up to {VERSION} "
                         "(upgrade torch_ntk)")
    kind, fields = payload.get("type"), payload.get("fields")
    if not isinstance(fields, dict):
        raise ValueError(f"load_kernels: {os.fspath(path)} has no fields")
    if kind == "dict":
        return dict(fields)
    if kind not in _TYPES:
        raise ValueError(f"load_kernels: {os.fspath(path)} holds an unknown kernel type "
                         f"{kind!r} (known: {', '.join(_TYPES)}, dict)")
    cls = _TYPES[kind]
    missing = [f for f in cls._fields if f not in fields]
    if missing:
        raise ValueError(f"load_kernels: {os.fspath(path)} lacks the {kind} fields {missing}")
    return cls(**{f: fields[f] for f in cls._fields})
