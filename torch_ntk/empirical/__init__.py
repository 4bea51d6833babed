"""Finite width: the empirical NTK Θ(x, x′) = Σ_p ∂f(x)/∂θ_p ∂f(x′)/∂θ_p of a model.

- ``ntk``: ``empirical_ntk`` / ``compute_empirical_ntk`` (validation, method choice, the
  block loop), ``NTKInfo``, ``MethodFallbackWarning``;
- ``engines``: the block engines (fused structured op, CNN structured, ``vmap(jacrev)``,
  NTK-vector products) and their sizing within the memory budget;
- ``budget``: the Jacobian method's memory and work models, ``MemoryBudgetWarning``;
- ``mlp_plan`` / ``cnn_plan``: the forward and batched backward passes of a lifted MLP / CNN.
"""

from .ntk import (METHODS, MODES, MemoryBudgetWarning, MethodFallbackWarning, NTKInfo,
                  compute_empirical_ntk, default_memory_budget, empirical_ntk)

__all__ = ["METHODS", "MODES", "MemoryBudgetWarning", "MethodFallbackWarning", "NTKInfo",
           "compute_empirical_ntk", "default_memory_budget", "empirical_ntk"]
