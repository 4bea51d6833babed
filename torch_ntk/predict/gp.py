"""Exact GP inference (the posterior with the NNGP or NTK as prior) and the Gaussian it returns."""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from .checks import check_cross_kernel, check_like, check_number, check_targets, check_train_kernel
from .spectrum import noisy_cholesky, symmetric

__all__ = ["Gaussian", "GaussianPredictions", "gp_inference"]


class Gaussian(NamedTuple):
    """A Gaussian over function values, shared across outputs.

    mean: [M] or [M, n_L] (y_train's layout), with a leading [T] axis for a vector t.
    covariance: [M, M] (leading [T] for a vector t), the covariance of every output
        (outputs are independent and identically distributed); None when the
        arguments it needs were not given.
    """

    mean: Tensor
    covariance: Optional[Tensor]


class GaussianPredictions(NamedTuple):
    """Gaussian predictions on the training inputs and, when requested, test inputs.

    train: :class:`Gaussian` at the training inputs (always computed).
    test: :class:`Gaussian` at the test inputs; None when no test kernel was given.
    """

    train: Gaussian
    test: Optional[Gaussian]


def gp_inference(
    k_train_train: Tensor, y_train: Tensor, diag_reg: float = 0.0
) -> Callable[..., GaussianPredictions]:
    """Exact GP posterior with prior f ~ GP(0, k) and observations y = f(X) + ε.

    ε ~ N(0, diag_reg·I) (diag_reg is the noise variance, the ridge of kernel ridge
    regression). With A = k(X, X) + diag_reg·I:

        mean(x)    = k(x, X) A⁻¹ Y
        cov(x, x') = k(x, x') − k(x, X) A⁻¹ k(X, x')

    With the NTK as prior and diag_reg → 0 the mean is f_∞ of gradient flow from
    f_0 = 0; with the NNGP it is the Bayesian posterior of an infinitely wide network.
    One Cholesky factorization of A (O(N³/3)), shared by all calls.

    Args:
        k_train_train: [N, N] k(X, X), symmetric PSD (NNGP or NTK; float64 recommended).
        y_train: [N] or [N, n_L] (outputs independent, same kernel).
        diag_reg: noise variance ≥ 0 added to the diagonal.

    Returns:
        ``predict_fn(k_test_train=None, k_test_test=None)`` →
        :class:`GaussianPredictions`. ``train`` is the posterior at the training inputs
        (computed once and cached); ``test`` needs k_test_train [M, N] for the mean, and
        k_test_test [M, M] for the covariance (None otherwise).

    Raises:
        ValueError: shapes/values as :func:`gradient_descent_mse`; A not positive
        definite at working precision (the message names the diag_reg that fixes it).

    Warns:
        KernelConditioningWarning: A is nearly singular (Cholesky pivots below the
        rounding level), so the posterior is dominated by rounding.
    """
    k, n, _ = check_train_kernel("k_train_train", k_train_train, allow_full=False)
    y_train = check_targets("y_train", y_train, k, n, None)
    diag_reg = check_number("diag_reg", diag_reg, 0.0, strict=False)
    chol = noisy_cholesky("k_train_train", k, diag_reg, "the posterior", stacklevel=3)
    y_shape = tuple(y_train.shape)
    y_flat = y_train.reshape(n, -1)
    alpha = torch.cholesky_solve(y_flat, chol)  # A⁻¹ Y, [N, C]
    cache: dict[str, Gaussian] = {}

    def posterior(k_cross: Tensor, k_self: Optional[Tensor], shape: tuple) -> Gaussian:
        mean = (k_cross @ alpha).reshape(shape)
        if k_self is None:
            return Gaussian(mean, None)
        v = torch.linalg.solve_triangular(chol, k_cross.mT, upper=False)  # L⁻¹ k(X, x)
        return Gaussian(mean, symmetric(k_self - v.mT @ v))

    def predict_fn(
        k_test_train: Optional[Tensor] = None, k_test_test: Optional[Tensor] = None
    ) -> GaussianPredictions:
        if "train" not in cache:
            cache["train"] = posterior(k, k, y_shape)
        if k_test_train is None:
            if k_test_test is not None:
                raise ValueError("k_test_test was given without k_test_train")
            return GaussianPredictions(cache["train"], None)
        k_cross, m = check_cross_kernel("k_test_train", k_test_train, k, n, None)
        k_self = check_like("k_test_test", k_test_test, k, (m, m))
        return GaussianPredictions(cache["train"], posterior(k_cross, k_self, (m, *y_shape[1:])))

    return predict_fn
