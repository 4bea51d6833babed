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

from . import activations, analytic, empirical, layers, lifting, monte_carlo, nn, ops, predict, \
    tracking
from .analytic import FittedHyperparameters, Kernels, analytic_kernels, fit_kernel_hyperparameters
from .empirical import (MemoryBudgetWarning, MethodFallbackWarning, NTKInfo, NTKOperator,
                        empirical_ntk)
from .io import load_kernels, save_kernels
from .layers import Dense
from .lifting import LayerSpec, lift, mlp_spec
from .monte_carlo import (MonteCarloKernels, convergence_study, iter_monte_carlo_kernels,
                          monte_carlo_kernels, random_features, random_network)
from .nn import NTKLinear, ntk_mlp
from .tracking import KernelDriftTracker
from .wrapper import NTK


def __getattr__(name: str):
    """The deprecated modules ``arch`` and ``cnn_analytic`` (shims that warn) on first use."""
    if name in ("arch", "cnn_analytic"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'torch_ntk' has no attribute {name!r}")


from ._utils.version import VERSION as __version__  # noqa: E402

__all__ = [
    "Dense",
    "FittedHyperparameters",
    "KernelDriftTracker",
    "Kernels",
    "LayerSpec",
    "MemoryBudgetWarning",
    "MethodFallbackWarning",
    "MonteCarloKernels",
    "NTK",
    "NTKInfo",
    "NTKOperator",
    "NTKLinear",
    "activations",
    "analytic",
    "analytic_kernels",
    "convergence_study",
    "empirical",
    "empirical_ntk",
    "fit_kernel_hyperparameters",
    "iter_monte_carlo_kernels",
    "layers",
    "lift",
    "load_kernels",
    "lifting",
    "mlp_spec",
    "monte_carlo",
    "monte_carlo_kernels",
    "nn",
    "ntk_mlp",
    "ops",
    "predict",
    "tracking",
    "random_features",
    "random_network",
    "save_kernels",
]
