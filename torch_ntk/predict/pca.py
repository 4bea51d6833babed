"""Kernel principal components: a Gram matrix's top eigenpairs and gradient flow along them."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .._utils.validation import check_int
from .checks import (
    Times,
    as_times,
    check_cross_kernel,
    check_number,
    check_targets,
    check_train_kernel,
)
from .spectrum import Spectrum, rounding_level

__all__ = ["KernelPCA", "kernel_pca"]


class KernelPCA(NamedTuple):
    """Top eigenpairs of a Gram matrix K = Θ(X, X), largest first.

    eigenvalues: [k] λ_1 ≥ … ≥ λ_k ≥ 0 (clipped at 0).
    eigenvectors: [N, k] orthonormal u_i with K u_i = λ_i u_i.

    Gradient flow decomposes along these components (Jacot et al. §5): from f_0 = 0,

        f_t(x) = Σ_i φ_i(x) · (1 − e^{−ηtλ_i/N}) · ⟨u_i, Y⟩,   φ_i(x) = Θ(x, X) u_i / λ_i,

    so :meth:`components` gives φ_i, :meth:`coefficients` ⟨u_i, Y⟩, :meth:`captured`
    the share of ‖Y‖² along each u_i, and :meth:`decay` the factor e^{−ηtλ_i/N} by
    which the training residual along u_i shrinks. (The eigenfunctions of the integral
    operator f ↦ (1/N) Σ_j Θ(·, x_j) f(x_j) are √N·φ_i, with eigenvalues λ_i/N.)
    """

    eigenvalues: Tensor
    eigenvectors: Tensor

    def components(self, k_test_train: Tensor) -> Tensor:
        """Nyström extension φ_i(x) = Θ(x, X) u_i / λ_i of each component: [M, k].

        On the training inputs φ_i(X) = u_i. Components whose eigenvalue is zero to
        working precision have no extension (Θ(·, X) u_i = 0 exactly) and give 0.

        Args:
            k_test_train: [M, N] Θ(x, X).
        """
        k_cross, _ = check_cross_kernel(
            "k_test_train", k_test_train, self.eigenvectors, self.eigenvectors.shape[0], None
        )
        level = rounding_level(self.eigenvalues, self.eigenvectors.shape[0])
        zero = self.eigenvalues <= level
        inverse = torch.where(zero, 0, 1 / torch.where(zero, 1, self.eigenvalues))
        return (k_cross @ self.eigenvectors) * inverse

    def coefficients(self, y: Tensor) -> Tensor:
        """⟨u_i, y⟩ for each component: [k] for y [N], [k, n_L] for y [N, n_L]."""
        y = check_targets("y", y, self.eigenvectors, self.eigenvectors.shape[0], None)
        return self.eigenvectors.mT @ y

    def captured(self, y: Tensor) -> Tensor:
        """[k] share of ‖y‖² (Frobenius over outputs) along each u_i; sums to 1 over all N."""
        coeffs = self.coefficients(y)
        total = float((y * y).sum())
        if total == 0.0:
            raise ValueError("y must be non-zero to measure the share each component captures")
        squares = coeffs * coeffs
        return (squares if squares.dim() == 1 else squares.sum(1)) / total

    def decay(self, t: Times, learning_rate: float = 1.0) -> Tensor:
        """e^{−ηtλ_i/N}: [k] for a scalar t, [T, k] for T times.

        The training residual of gradient flow along u_i at time t is this factor times
        its initial value ⟨u_i, f_0(X) − Y⟩ (as in :func:`gradient_descent_mse`). At
        t = ∞ it is 0, or 1 for eigenvalues that are zero to working precision.
        """
        learning_rate = check_number("learning_rate", learning_rate, 0.0, strict=True)
        times, scalar = as_times(t, self.eigenvalues)
        n = self.eigenvectors.shape[0]
        zero = self.eigenvalues <= rounding_level(self.eigenvalues, n)
        infinite = torch.isinf(times)[:, None]
        finite_t = torch.where(infinite, torch.zeros_like(times[:, None]), times[:, None])
        at_inf = zero.to(self.eigenvalues.dtype).expand(times.shape[0], -1)
        rates = (learning_rate / n) * self.eigenvalues
        out = torch.where(infinite, at_inf, torch.exp(-finite_t * rates))
        return out[0] if scalar else out


def kernel_pca(k_train_train: Tensor, num_components: Optional[int] = None) -> KernelPCA:
    """The top principal components of a Gram matrix (eigenpairs, largest first).

    Args:
        k_train_train: [N, N] symmetric PSD Θ(X, X) (float64 recommended).
        num_components: k in 1 … N; None for all N.

    Returns:
        :class:`KernelPCA` ``(eigenvalues [k], eigenvectors [N, k])``, with methods for
        Nyström extension, target shares and decay rates. Costs one eigendecomposition
        (O(N³)).

    Raises:
        ValueError: bad shape, NaN/Inf, non-symmetric, not PSD beyond rounding, or
        num_components out of range. TypeError: non-float input, or a non-integer
        num_components.
    """
    k, n, _ = check_train_kernel("k_train_train", k_train_train, allow_full=False)
    if num_components is None:
        num_components = n
    num_components = check_int("kernel_pca", "num_components", num_components)
    if not 1 <= num_components <= n:
        raise ValueError(f"num_components must be in 1 … N = {n}; got {num_components}")
    spectrum = Spectrum("k_train_train", k, 0.0)
    order = torch.arange(n - 1, n - 1 - num_components, -1, device=k.device)
    return KernelPCA(spectrum.values[order], spectrum.vectors[:, order])
