"""Infinite width: the NNGP kernel Σ and the limiting NTK Θ∞ of a lifted architecture.

- ``kernels``: ``analytic_kernels`` (the entry; fused ops, row blocks), ``Kernels``;
- ``cnn``: the CNN recursion over position–position covariances in plain torch and the
  CNN op's program;
- ``reference``: the MLP recursion as an eager torch composite (the baseline).
"""

from .kernels import (KERNEL_NAMES, Kernels, analytic_kernels, analytic_kernels_into, as_spec,
                      compiled_op_args, default_quadrature_degree)

__all__ = ["KERNEL_NAMES", "Kernels", "analytic_kernels", "analytic_kernels_into", "as_spec",
           "compiled_op_args", "default_quadrature_degree"]
