"""The factorizations of K + diag_reg·I (eigendecomposition, Cholesky), their rounding level
and warnings."""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

__all__ = [
    "F64_HINT",
    "KernelConditioningWarning",
    "Spectrum",
    "noisy_cholesky",
    "ridge_hint",
    "rounding_level",
    "symmetric",
]


class KernelConditioningWarning(UserWarning):
    """A kernel is singular (or nearly so) at the working precision; see the message."""


def rounding_level(values: Tensor, rows: int) -> float:
    """Eigenvalues of a PSD matrix with |λ| below this are zero up to rounding."""
    top = float(values.abs().max()) if values.numel() else 0.0
    return 10.0 * rows * torch.finfo(values.dtype).eps * top


F64_HINT = {torch.float32: ", or compute the kernel in float64", torch.float64: ""}


def ridge_hint(diag_reg: float, lambda_min: float, lambda_max: float, level: float, dtype) -> str:
    """A diag_reg that makes K PSD with a condition number the dtype can handle."""
    margin = max(10.0 * level, math.sqrt(torch.finfo(dtype).eps) * max(lambda_max, 0.0))
    value = diag_reg + max(-lambda_min, 0.0) + margin
    if value <= 0.0 or not math.isfinite(value):
        return f"{value:.3g}"
    unit = 10.0 ** (math.floor(math.log10(value)) - 2)  # round up to 3 significant digits
    return f"{math.ceil(value / unit * (1 - 1e-12)) * unit:.3g}"


class Spectrum:
    """Eigendecomposition K + diag_reg·I = U diag(λ) Uᵀ with λ clipped at 0."""

    def __init__(self, name: str, flat: Tensor, diag_reg: float) -> None:
        rows = flat.shape[0]
        if diag_reg:
            flat = flat + diag_reg * torch.eye(rows, dtype=flat.dtype, device=flat.device)
        values, vectors = torch.linalg.eigh(flat)
        self.level = rounding_level(values, rows)
        self.lambda_min = float(values[0])
        self.lambda_max = float(values[-1])
        if self.lambda_min < -self.level:
            reg = " + diag_reg·I" if diag_reg else ""
            raise ValueError(
                f"{name}{reg} is not positive semi-definite: its smallest eigenvalue is "
                f"{self.lambda_min:.3e} against a largest of {self.lambda_max:.3e}, beyond "
                f"{flat.dtype} rounding (|λ| ≤ {self.level:.2e}). A Gram matrix of one kernel "
                "on one set of inputs is PSD: check that it was built from the training "
                f"inputs on both sides{F64_HINT[flat.dtype]}, or pass diag_reg="
                f"{ridge_hint(diag_reg, self.lambda_min, self.lambda_max, self.level, flat.dtype)}"
                " to shift its spectrum."
            )
        self.name = name
        self.diag_reg = diag_reg
        self.values = values.clamp_min(0)
        self.vectors = vectors
        self.zero = self.values <= self.level  # numerically zero eigenvalues
        self.singular = bool(self.zero.any())

    def warn_singular(self, what: str, stacklevel: int = 4) -> None:
        count, dtype = int(self.zero.sum()), self.values.dtype
        warnings.warn(
            f"{self.name} is singular to working precision ({count} of "
            f"{self.values.numel()} eigenvalues ≤ {self.level:.2e}, the largest "
            f"{self.lambda_max:.3e}): {what} Pass diag_reg="
            f"{ridge_hint(self.diag_reg, self.lambda_min, self.lambda_max, self.level, dtype)}"
            f" for a unique, well-conditioned answer{F64_HINT[dtype]}.",
            KernelConditioningWarning,
            stacklevel=stacklevel,
        )

    def decay(self, times: Tensor, rate: float) -> Tensor:
        """[T, R] e^{−rate·t·λ}; at t = ∞, 1 on the numerical null space, else 0."""
        t = times[:, None]
        infinite = torch.isinf(t)
        z = rate * torch.where(infinite, torch.zeros_like(t), t) * self.values
        at_inf = self.zero.to(self.values.dtype).expand_as(z)
        return torch.where(infinite, at_inf, torch.exp(-z))

    def gain(self, times: Tensor, rate: float) -> Tensor:
        """[T, R] (1 − e^{−rate·t·λ})/λ (rate·t at λ = 0); at t = ∞ 1/λ, 0 on the null space."""
        t = times[:, None]
        infinite = torch.isinf(t)
        a = rate * torch.where(infinite, torch.zeros_like(t), t)
        z = a * self.values
        positive = z > 0
        ratio = torch.where(positive, -torch.expm1(-z) / torch.where(positive, z, 1), 1)
        finite = a * ratio
        inverse = torch.where(self.zero, 0, 1 / torch.where(self.zero, 1, self.values))
        return torch.where(infinite, inverse.expand_as(finite), finite)


def noisy_cholesky(name: str, k: Tensor, diag_reg, what: str, stacklevel: int = 3) -> Tensor:
    """The lower Cholesky factor L of A = k + diag_reg·I (k [N, N] symmetric, diag_reg a
    number or a 0-dim tensor, differentiable through both).

    Raises ValueError when A is not positive definite at k's precision (the message names
    the ``diag_reg`` that fixes it); warns :class:`KernelConditioningWarning` when a pivot
    is below the rounding level ``10·N·eps·max diag A`` (``what``, e.g. "the posterior", is
    then dominated by rounding).
    """
    n = k.shape[0]
    a = k + diag_reg * torch.eye(n, dtype=k.dtype, device=k.device)
    chol, info = torch.linalg.cholesky_ex(a)
    reg = float(diag_reg.detach()) if isinstance(diag_reg, Tensor) else float(diag_reg)
    with torch.no_grad():
        level = 10.0 * n * torch.finfo(k.dtype).eps * float(torch.diagonal(a).abs().max())
        if int(info) != 0:
            values = torch.linalg.eigvalsh(a)
            raise ValueError(
                f"{name} + diag_reg·I is singular or not positive definite at "
                f"{k.dtype} precision (Cholesky failed; smallest eigenvalue "
                f"{float(values[0]):.3e}, largest {float(values[-1]):.3e}); pass diag_reg="
                f"{ridge_hint(reg, float(values[0]), float(values[-1]), level, k.dtype)} "
                f"(a noise variance){F64_HINT[k.dtype]}."
            )
        pivots = torch.diagonal(chol) ** 2
        if float(pivots.min()) <= level:
            warnings.warn(
                f"{name} + diag_reg·I is nearly singular at {k.dtype} precision (smallest "
                f"Cholesky pivot {float(pivots.min()):.2e} ≤ rounding level {level:.2e}); "
                f"{what} is dominated by rounding. Pass diag_reg="
                f"{ridge_hint(reg, 0.0, float(torch.diagonal(a).max()), level, k.dtype)}"
                f"{F64_HINT[k.dtype]}.",
                KernelConditioningWarning,
                stacklevel=stacklevel,
            )
    return chol


def symmetric(c: Tensor) -> Tensor:
    """(C + Cᵀ)/2 over the last two axes: a computed covariance without its rounding asymmetry."""
    return 0.5 * (c + c.mT)
