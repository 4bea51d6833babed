"""The kernels' layer kinds: one file per kind, each registering what the layer is.

- ``base``: the registries and their decorators (``@lifts``, ``@lifts_functional``,
  ``@kernel_rule``, ``@op_encoding``), LiftOptions, the weight law shared by Dense and Conv;
- ``state``: :class:`KernelState`, the infinite-width state a kernel rule maps to the next;
- one file per kind — ``dense``, ``conv``, ``pool`` (AvgPool, GlobalAvgPool, Flatten),
  ``activation`` (activations and no-ops), … —
  holding its descriptor, lifting, kernel rule and fused-op encoding.

Importing this package imports every kind file of this folder (so their decorators fill
the registries) and re-exports the descriptor classes each lists in ``__all__``: a new
kind is one new file (``docs/architecture.md, "Adding a layer kind"``), nothing else edited.
"""

import importlib as _importlib
import inspect as _inspect
import pkgutil as _pkgutil

from .base import FUNCTIONALS, KERNEL_RULES, LIFTERS, OP_ENCODINGS, LiftOptions
from .conv import Conv
from .dense import Dense
from .pool import AvgPool, Flatten, GlobalAvgPool
from .state import KernelState

__all__ = ["AvgPool", "Conv", "Dense", "FUNCTIONALS", "Flatten", "GlobalAvgPool",
           "KERNEL_RULES", "KernelState", "LIFTERS", "LiftOptions", "OP_ENCODINGS"]

KIND_MODULES = []  # the kind files, imported in name order
for _info in sorted(_pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name in ("base", "state") or _info.name.startswith("_"):
        continue
    _module = _importlib.import_module(f"{__name__}.{_info.name}")
    KIND_MODULES.append(_module)
    for _name in getattr(_module, "__all__", ()):
        _value = getattr(_module, _name)
        if _inspect.isclass(_value) and _name not in globals():
            globals()[_name] = _value
            __all__.append(_name)
