"""Deprecated: ``torch_ntk.arch`` moved to ``torch_ntk.lifting`` (lifting, ``LayerSpec``) and
``torch_ntk.layers`` (the layer descriptors). This shim stays for one release."""

import warnings as _warnings

from .layers import AvgPool, Conv, Dense, Flatten, GlobalAvgPool
from .lifting.lift import (EMPIRICAL_HINT, LIFTERS, LayerSpec, LiftOptions, chain_modules,
                           flat_modules, lift, lift_module, mlp_spec)

_warnings.warn("torch_ntk.arch is deprecated: import LayerSpec, lift, lift_module, mlp_spec, "
               "chain_modules from torch_ntk.lifting and Dense, Conv, AvgPool, GlobalAvgPool, "
               "Flatten from torch_ntk.layers", DeprecationWarning, stacklevel=2)

__all__ = ["AvgPool", "Conv", "Dense", "EMPIRICAL_HINT", "Flatten", "GlobalAvgPool", "LIFTERS",
           "LayerSpec", "LiftOptions", "chain_modules", "flat_modules", "lift", "lift_module",
           "mlp_spec"]
