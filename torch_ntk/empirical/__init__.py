"""Finite width: the empirical NTK Θ(x, x′) = Σ_p ∂f(x)/∂θ_p ∂f(x′)/∂θ_p of a model.

- ``ntk``: ``empirical_ntk`` / ``compute_empirical_ntk`` (validation, the block loop),
  ``NTKInfo``;
- ``engines``: the block engines (fused structured op, CNN structured, ``vmap(jacrev)``,
  NTK-vector products), their sizing within the memory budget, and ``make_engine``: the
  one method choice (also used by ``torch_ntk.distributed``), ``MethodFallbackWarning``;
- ``budget``: the Jacobian method's memory and work models, ``MemoryBudgetWarning``;
- ``inputs``: inputs as people pass them (tensors of any dtype, tuples, dicts), calling the
  model and ``output_fn``;
- ``operator``: ``NTKOperator``, Θ·v by a vjp/jvp pair (CG, eigensolvers);
- ``mlp_plan`` / ``cnn_plan``: the forward and batched backward passes of a lifted MLP / CNN;
- ``rules``: what each torch module type contributes to Θ, one file per type
  (``@ntk_rule``: ``rules.linear``, ``rules.conv``), looked up by the plans.
"""

from .ntk import (METHODS, MODES, MemoryBudgetWarning, MethodFallbackWarning, NTKInfo,
                  compute_empirical_ntk, default_memory_budget, empirical_ntk)
from .operator import NTKOperator

__all__ = ["METHODS", "MODES", "MemoryBudgetWarning", "MethodFallbackWarning", "NTKInfo",
           "NTKOperator",
           "compute_empirical_ntk", "default_memory_budget", "empirical_ntk"]
