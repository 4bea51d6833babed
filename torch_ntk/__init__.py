"""torch_ntk: Neural Tangent Kernels for PyTorch.

Finite-width NTKs of ``nn.Sequential`` MLPs by fused kernels, their exact
infinite-width limits (NNGP and NTK), and the tools built on them.
"""

from __future__ import annotations

import os as _os

import torch as _torch  # noqa: F401  (loads libtorch, which _C links against)

try:
    from . import _C  # noqa: F401
except ImportError as _error:  # pragma: no cover - depends on the installation
    raise ImportError(
        "torch_ntk: the compiled extension torch_ntk/_C could not be imported from "
        f"{_os.path.dirname(__file__)} ({_error}). Build it with "
        "'pip install --no-build-isolation -e .' from the repository root (after installing "
        "torch), or run 'bash scripts/test.sh' which does everything."
    ) from _error

from . import activations, arch, cnn_analytic, nn, ops, predict
from .analytic import Kernels, analytic_kernels
from .arch import Dense, LayerSpec, lift, mlp_spec
from .empirical import MethodFallbackWarning, NTKInfo, empirical_ntk
from .monte_carlo import (MonteCarloKernels, convergence_study, iter_monte_carlo_kernels,
                          monte_carlo_kernels, random_features, random_network)
from .nn import NTKLinear, ntk_mlp
from .tracking import KernelDriftTracker
from .wrapper import NTK

__version__ = "0.2.0"

__all__ = [
    "Dense",
    "KernelDriftTracker",
    "Kernels",
    "LayerSpec",
    "MethodFallbackWarning",
    "MonteCarloKernels",
    "NTK",
    "NTKInfo",
    "NTKLinear",
    "activations",
    "analytic_kernels",
    "arch",
    "cnn_analytic",
    "convergence_study",
    "empirical_ntk",
    "iter_monte_carlo_kernels",
    "lift",
    "mlp_spec",
    "monte_carlo",
    "monte_carlo_kernels",
    "nn",
    "ntk_mlp",
    "ops",
    "predict",
    "random_features",
    "random_network",
]
