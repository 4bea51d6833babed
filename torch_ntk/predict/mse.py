"""Gradient flow on the MSE cost: predictions, the infinite ensemble, the largest stable step."""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from .checks import (
    Times,
    as_times,
    check_cross_kernel,
    check_like,
    check_number,
    check_targets,
    check_tensor,
    check_train_kernel,
)
from .gp import Gaussian, GaussianPredictions
from .spectrum import Spectrum, symmetric

__all__ = [
    "Predictions",
    "gradient_descent_mse",
    "gradient_descent_mse_ensemble",
    "max_learning_rate",
]


class Predictions(NamedTuple):
    """Outputs of gradient flow at the requested times.

    train: y_train's shape ([N] or [N, n_L]), with a leading [T] axis when t is a
        1-d tensor of T times.
    test: [M] or [M, n_L] likewise (leading [T] for a vector t); None when no
        ``k_test_train`` was given.
    """

    train: Tensor
    test: Optional[Tensor]


def shape_out(x: Tensor, scalar: bool, shape: tuple) -> Tensor:
    """[T, rows, C] → [T, *shape] (or [*shape] for a scalar t)."""
    x = x.reshape(x.shape[0], *shape)
    return x[0] if scalar else x


def gradient_descent_mse(
    k_train_train: Tensor,
    y_train: Tensor,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
) -> Callable[..., Predictions]:
    """Gradient flow on the MSE cost for a linear model with kernel K: a ``predict_fn``.

    The training-set outputs and the test outputs at time t (Jacot et al. §5):

        f_t(X) = Y + e^{−ηtK/N} (f_0(X) − Y)
        f_t(x) = f_0(x) + Θ(x, X) K⁻¹ (I − e^{−ηtK/N}) (Y − f_0(X))

    with K = k_train_train + diag_reg·I. For a wide network, K is its NTK and f_0 its
    initial outputs. From K = U diag(λ) Uᵀ (λ clipped at 0):
    e^{−ηtK/N} = U diag(e^{−ηtλ/N}) Uᵀ and K⁻¹(I − e^{−ηtK/N}) = U diag(g) Uᵀ with
    g = (1 − e^{−ηtλ/N})/λ = −expm1(−ηtλ/N)/λ, taken as ηt/N where λ = 0. At t = ∞,
    with diag_reg > 0, the test prediction is kernel ridge regression with ridge
    diag_reg; with a singular K, the pseudo-inverse (see :mod:`torch_ntk.predict`).

    The eigendecomposition (O(R³) time, O(R²) memory, R = N, or N·n_L for a full
    kernel) is computed once here and reused by every call; each call then costs
    O(R²·C + M·R·(R + T·C)) for M test points, T times and C outputs. For t = ∞
    alone, :func:`gp_inference` (a Cholesky factorization) is cheaper.

    Args:
        k_train_train: [N, N] scalar kernel (Θ ⊗ Id over outputs) or [N, N, n_L, n_L]
            full kernel Θ(X, X); symmetric PSD, float64 recommended.
        y_train: [N] or [N, n_L] targets Y ([N, n_L] for a full kernel).
        learning_rate: η > 0 (the cost is (1/2N) Σ‖f − y‖²; see :mod:`torch_ntk.predict`).
        diag_reg: ridge ≥ 0 added to K's diagonal (absolute, in K's units).

    Returns:
        ``predict_fn(t, fx_train_0=None, fx_test_0=None, k_test_train=None)`` →
        :class:`Predictions` ``(train, test)``, where

        - t: a number, ``math.inf``, or a 1-d tensor/sequence of T ≥ 0 times (results
          stacked on a leading [T] axis; t = ∞ may appear among them);
        - fx_train_0: f_0(X), y_train's shape; None means zeros;
        - fx_test_0: f_0(x) at M test inputs, [M] or [M, n_L] like y_train; None means
          zeros; needs k_test_train;
        - k_test_train: Θ(x, X), [M, N] (or [M, N, n_L, n_L] for a full kernel); the test
          prediction is computed only when it is given (else ``test`` is None).

    Raises:
        TypeError: a non-tensor or non-float argument. ValueError: shapes that do not
        match (naming the argument), NaN/Inf, negative or NaN times, a non-symmetric
        kernel, or one that is not PSD beyond rounding (the message names the
        diag_reg that fixes it).

    Warns:
        KernelConditioningWarning: t = ∞ with a kernel singular to working precision.
    """
    flat, n, outputs = check_train_kernel("k_train_train", k_train_train, allow_full=True)
    y_train = check_targets("y_train", y_train, flat, n, outputs)
    learning_rate = check_number("learning_rate", learning_rate, 0.0, strict=True)
    diag_reg = check_number("diag_reg", diag_reg, 0.0, strict=False)
    spectrum = Spectrum("k_train_train", flat, diag_reg)
    y_shape = tuple(y_train.shape)
    rows = flat.shape[0]
    u = spectrum.vectors
    rate = learning_rate / n
    y_flat = y_train.reshape(rows, -1)  # [R, C]: C = n_L (scalar kernel) or 1 (full)

    def predict_fn(
        t: Times,
        fx_train_0: Optional[Tensor] = None,
        fx_test_0: Optional[Tensor] = None,
        k_test_train: Optional[Tensor] = None,
    ) -> Predictions:
        times, scalar = as_times(t, flat)
        f0 = check_like("fx_train_0", fx_train_0, flat, y_shape)
        residual = y_flat if f0 is None else y_flat - f0.reshape(rows, -1)
        coeffs = u.mT @ residual  # Uᵀ(Y − f_0(X)), [R, C]
        if spectrum.singular and bool(torch.isinf(times).any()):
            spectrum.warn_singular(
                "at t = ∞ its null space is not fitted (training residual kept there, "
                "pseudo-inverse for test points).", stacklevel=3
            )
        decay = spectrum.decay(times, rate)  # [T, R]
        train = y_flat - u @ (decay[:, :, None] * coeffs)
        train = shape_out(train, scalar, y_shape)
        if k_test_train is None:
            if fx_test_0 is not None:
                raise ValueError(
                    "fx_test_0 was given without k_test_train; test predictions need the "
                    "test-train kernel Θ(x_test, X)"
                )
            return Predictions(train, None)
        k_flat, m = check_cross_kernel("k_test_train", k_test_train, flat, n, outputs)
        test_shape = (m, *y_shape[1:])
        g0 = check_like("fx_test_0", fx_test_0, flat, test_shape)
        gain = spectrum.gain(times, rate)  # [T, R]
        test = (k_flat @ u) @ (gain[:, :, None] * coeffs)  # [T, M·(n_L or 1), C]
        if g0 is not None:
            test = test + g0.reshape(test.shape[1:])
        return Predictions(train, shape_out(test, scalar, test_shape))

    return predict_fn


def gradient_descent_mse_ensemble(
    ntk_train_train: Tensor,
    nngp_train_train: Tensor,
    y_train: Tensor,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
) -> Callable[..., GaussianPredictions]:
    """The law of an infinite ensemble of networks trained by gradient flow on MSE.

    Networks start from f_0 ~ GP(0, Σ) (Σ: the NNGP kernel) and follow kernel gradient
    descent with the NTK Θ (Jacot et al. §5). With K = Θ(X, X) + diag_reg·I and
    T_t = K⁻¹(I − e^{−ηtK/N}), f_t is Gaussian with

        mean(x)      = Θ(x, X) T_t Y
        cov(x, x')   = Σ(x, x') + Θ(x, X) T_t Σ(X, X) T_tᵀ Θ(X, x')
                       − Θ(x, X) T_t Σ(X, x') − Θ(x', X) T_t Σ(X, x)

    and on the training inputs mean = (I − E_t) Y, cov = E_t Σ(X, X) E_t with
    E_t = e^{−ηtK/N}, which vanishes as t → ∞ when K is PD. At t = ∞ the mean is
    Θ(x, X) K⁻¹ Y. One eigendecomposition of K (O(N³)) is shared by all calls.

    Args:
        ntk_train_train: [N, N] Θ(X, X) (scalar kernel: Θ ⊗ Id over outputs).
        nngp_train_train: [N, N] Σ(X, X).
        y_train: [N] or [N, n_L].
        learning_rate: η > 0; diag_reg: ridge ≥ 0 added to Θ(X, X)'s diagonal.

    Returns:
        ``predict_fn(t, ntk_test_train=None, nngp_test_train=None, nngp_test_test=None)``
        → :class:`GaussianPredictions`. ``train`` is always computed (mean and
        covariance); ``test`` needs ntk_test_train [M, N] (Θ(x, X)) for the mean, and
        additionally nngp_test_train [M, N] (Σ(x, X)) and nngp_test_test [M, M]
        (Σ(x, x)) for the covariance (None otherwise). t as in
        :func:`gradient_descent_mse`. Covariances are per output ([M, M], shared).

    Raises/Warns: as :func:`gradient_descent_mse`.
    """
    ntk, n, _ = check_train_kernel("ntk_train_train", ntk_train_train, allow_full=False)
    check_tensor("nngp_train_train", nngp_train_train, ntk, "ntk_train_train")
    check_tensor("y_train", y_train, ntk, "ntk_train_train")
    nngp, _, _ = check_train_kernel("nngp_train_train", nngp_train_train, allow_full=False)
    if nngp.shape != ntk.shape:
        raise ValueError(
            f"nngp_train_train must have the shape of ntk_train_train ({list(ntk.shape)}); "
            f"got {list(nngp.shape)}"
        )
    y_train = check_targets("y_train", y_train, ntk, n, None)
    learning_rate = check_number("learning_rate", learning_rate, 0.0, strict=True)
    diag_reg = check_number("diag_reg", diag_reg, 0.0, strict=False)
    spectrum = Spectrum("ntk_train_train", ntk, diag_reg)
    u = spectrum.vectors
    rate = learning_rate / n
    y_shape = tuple(y_train.shape)
    y_flat = y_train.reshape(n, -1)
    coeffs = u.mT @ y_flat  # [R, C]
    nngp_eig = u.mT @ nngp @ u  # Uᵀ Σ(X, X) U

    def predict_fn(
        t: Times,
        ntk_test_train: Optional[Tensor] = None,
        nngp_test_train: Optional[Tensor] = None,
        nngp_test_test: Optional[Tensor] = None,
    ) -> GaussianPredictions:
        times, scalar = as_times(t, ntk)
        for name, value in (("ntk_test_train", ntk_test_train),
                            ("nngp_test_train", nngp_test_train),
                            ("nngp_test_test", nngp_test_test)):
            if value is not None:
                check_tensor(name, value, ntk, "ntk_train_train")
        if spectrum.singular and bool(torch.isinf(times).any()):
            spectrum.warn_singular(
                "at t = ∞ its null space is not fitted (pseudo-inverse used).", stacklevel=3
            )
        decay = spectrum.decay(times, rate)  # [T, R]
        train_mean = shape_out(y_flat - u @ (decay[:, :, None] * coeffs), scalar, y_shape)
        scaled = decay[:, :, None] * nngp_eig * decay[:, None, :]
        train_cov = symmetric(u @ scaled @ u.mT)
        train = Gaussian(train_mean, train_cov[0] if scalar else train_cov)
        if ntk_test_train is None:
            if nngp_test_train is not None or nngp_test_test is not None:
                raise ValueError(
                    "nngp_test_train/nngp_test_test were given without ntk_test_train; "
                    "test predictions need Θ(x_test, X)"
                )
            return GaussianPredictions(train, None)
        k_test, m = check_cross_kernel("ntk_test_train", ntk_test_train, ntk, n, None)
        gain = spectrum.gain(times, rate)  # [T, R]
        p_gain = (k_test @ u)[None] * gain[:, None, :]  # Θ(x, X) U diag(g): [T, M, R]
        mean = shape_out(p_gain @ coeffs, scalar, (m, *y_shape[1:]))
        if (nngp_test_train is None) != (nngp_test_test is None):
            raise ValueError(
                "the test covariance needs both nngp_test_train [M, N] and nngp_test_test "
                "[M, M]; pass both or neither"
            )
        cov = None
        if nngp_test_test is not None:
            s_cross = check_like("nngp_test_train", nngp_test_train, ntk, (m, n))
            s_test = check_like("nngp_test_test", nngp_test_test, ntk, (m, m))
            cross = p_gain @ (u.mT @ s_cross.mT)  # Θ(x,X) T Σ(X,x): [T, M, M]
            cov = symmetric(s_test + p_gain @ nngp_eig @ p_gain.mT - cross - cross.mT)
            cov = cov[0] if scalar else cov
        return GaussianPredictions(train, Gaussian(mean, cov))

    return predict_fn


def max_learning_rate(k_train_train: Tensor) -> float:
    """The largest stable step of discrete gradient descent on the MSE cost: 2N/λ_max(K).

    Gradient descent f ← f − (η/N) K (f − Y) on the cost (1/2N) Σ_i ‖f(x_i) − y_i‖²
    (loss ``0.5 * ((f - y) ** 2).sum() / N``) multiplies the residual along the top
    eigenvector by 1 − ηλ_max/N: it converges for η < 2N/λ_max and diverges above. For
    a wide network this bounds the SGD learning rate of full-batch training (for
    ``nn.MSELoss()``, mean over N·n_L entries without ½, the bound is N·n_L/λ_max).

    Args:
        k_train_train: [N, N] or full [N, N, n_L, n_L] Θ(X, X); N is the sample count.

    Returns:
        2N/λ_max as a float (math.inf for a zero kernel). Costs one eigvalsh (O(R³)).
    """
    flat, n, _ = check_train_kernel("k_train_train", k_train_train, allow_full=True)
    lambda_max = float(torch.linalg.eigvalsh(flat)[-1])
    return 2.0 * n / lambda_max if lambda_max > 0 else math.inf
