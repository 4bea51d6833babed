"""Infinite width: the NNGP kernel Σ and the limiting NTK Θ∞ of a lifted architecture.

- ``kernels``: ``analytic_kernels`` (the entry; fused ops, row blocks), ``Kernels``;
- ``fused``: a spec compiled to the fused ops' arguments (each layer kind's op encoding),
  or None when a kind has none;
- ``graph``: the walker of the layer kinds' registered rules (requirements folded);
- ``cnn``: ``cnn_kernels``, the recursion in plain torch over that walker (the reference
  of the fused ops, and the path of kinds without an op encoding);
- ``reference``: the MLP recursion as an eager torch composite (the baseline);
- ``autograd``: the differentiable torch path taken when inputs or variances require grad;
- ``activation_params``: the activation layers' parameters as overrides (tensors: gradients);
- ``fit``: ``fit_kernel_hyperparameters`` (σ_w², σ_b², ridge by the GP marginal likelihood).
"""

from .fit import FittedHyperparameters, fit_kernel_hyperparameters
from .kernels import (KERNEL_NAMES, Kernels, analytic_kernels, analytic_kernels_into, as_spec,
                      compiled_op_args, default_quadrature_degree)

__all__ = ["FittedHyperparameters", "fit_kernel_hyperparameters", "KERNEL_NAMES", "Kernels", "analytic_kernels", "analytic_kernels_into", "as_spec",
           "compiled_op_args", "default_quadrature_degree"]
