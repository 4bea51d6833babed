"""Deprecated: ``torch_ntk.cnn_analytic`` moved to ``torch_ntk.analytic.cnn``. This shim stays
for one release."""

import warnings as _warnings

from .analytic.cnn import CNNKernels, check_images, cnn_kernels, cnn_op_args, output_size, pair_floats

_warnings.warn("torch_ntk.cnn_analytic is deprecated: import its names from torch_ntk.analytic.cnn",
               DeprecationWarning, stacklevel=2)

__all__ = ["CNNKernels", "check_images", "cnn_kernels", "cnn_op_args", "output_size",
           "pair_floats"]
