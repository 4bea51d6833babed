"""The GP marginal likelihood (log evidence) of targets under a kernel prior, differentiable."""

from __future__ import annotations

import math
import numbers
from typing import Union

import torch
from torch import Tensor

from .checks import check_number, check_targets, check_tensor, check_train_kernel
from .spectrum import noisy_cholesky

__all__ = ["gp_marginal_likelihood"]


def gp_marginal_likelihood(
    k: Tensor, y: Tensor, diag_reg: Union[float, Tensor] = 0.0
) -> Tensor:
    """Log evidence of y under the prior f ~ GP(0, k) with noise variance ``diag_reg``.

    With A = k + diag_reg·I = L Lᵀ (Cholesky) and each column y_c of y [N, C]
    (independent outputs sharing the kernel, as in :func:`gp_inference`):

        log p(Y) = Σ_c [ −½ y_cᵀ A⁻¹ y_c − ½ log det A − (N/2) log 2π ]
                 = −½ ‖L⁻¹ Y‖²_F − C Σ_i log L_ii − (N C / 2) log 2π

    Differentiable (autograd) w.r.t. k, y and a tensor ``diag_reg``: maximize it to fit
    a kernel's hyperparameters (``torch_ntk.analytic.fit.fit_kernel_hyperparameters`` does it
    for σ_w², σ_b² and the ridge of an architecture's NNGP or NTK). O(N³/3) time. k is
    symmetrized ((k + kᵀ)/2) before use, so its gradient is symmetric; a k that is not
    symmetric to rounding is an error.

    Args:
        k: [N, N] k(X, X), symmetric PSD (NNGP Σ or NTK Θ∞; float64 recommended).
        y: [N] (one output) or [N, C] targets, k's dtype and device.
        diag_reg: noise variance ≥ 0 added to the diagonal: a number, or a 0-dim tensor
            of k's dtype and device (it may require grad).

    Returns:
        The log evidence, summed over the C columns (a 0-dim tensor of k's dtype).

    Raises:
        TypeError / ValueError: as :func:`gp_inference` (shapes, dtypes, devices, NaN/Inf,
        a negative ``diag_reg``); A not positive definite at working precision (the
        message names the diag_reg that fixes it).

    Warns:
        KernelConditioningWarning: A is nearly singular (a Cholesky pivot below the
        rounding level), so the log determinant is dominated by rounding.

    Example::

        >>> k = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> y = torch.tensor([1.0, -1.0], dtype=torch.float64)
        >>> float(gp_marginal_likelihood(k, y, diag_reg=0.5))  # N([0, 0], [[2.5, 1], [1, 2.5]])
        -3.3336...
    """
    k, n, _ = check_train_kernel("k", k, allow_full=False)
    y = check_targets("y", y, k, n, None)
    diag_reg = _check_noise(diag_reg, k)
    chol = noisy_cholesky("k", k, diag_reg, "the log evidence", stacklevel=3)
    y_flat = y.reshape(n, -1)
    columns = y_flat.shape[1]
    v = torch.linalg.solve_triangular(chol, y_flat, upper=False)  # L⁻¹ Y, [N, C]
    log_det = 2.0 * torch.log(torch.diagonal(chol)).sum()
    return -0.5 * v.square().sum() - 0.5 * columns * log_det - 0.5 * n * columns * math.log(
        2.0 * math.pi)


def _check_noise(diag_reg: object, k: Tensor) -> Union[float, Tensor]:
    """diag_reg as a float ≥ 0, or a finite 0-dim tensor ≥ 0 of k's dtype and device."""
    if isinstance(diag_reg, Tensor):
        check_tensor("diag_reg", diag_reg, k, like_name="k")
        if diag_reg.dim() != 0:
            raise ValueError(
                f"diag_reg must be a number or a 0-dim tensor (one noise variance); got shape "
                f"{list(diag_reg.shape)}")
        if not bool(diag_reg >= 0):
            raise ValueError(f"diag_reg must be >= 0 (a noise variance); got {float(diag_reg)!r}")
        return diag_reg
    if isinstance(diag_reg, numbers.Real) and not isinstance(diag_reg, bool):
        return check_number("diag_reg", diag_reg, 0.0, strict=False)
    raise TypeError(f"diag_reg must be a number or a 0-dim tensor; got {type(diag_reg).__name__}")
