"""What kernel gradient descent predicts (NTK_MATH.md §4): train and test outputs of
gradient flow at any time, infinite ensembles of networks, GP inference with the NNGP
or NTK as prior, kernel principal components, and the largest stable step.

Conventions (the same in every function here):

- **Cost and time.** C(f) = (1/2N) Σ_i ‖f(x_i) − y_i‖² over N training samples, and
  gradient flow with learning rate η runs ∂_t f = −(η/N) K (f − Y) on the training set
  (K = Θ(X, X)). Time t is measured so that t = k is k steps of full-batch gradient
  descent with ``lr=η`` on the loss ``0.5 * ((f - y) ** 2).sum() / N`` (sum over outputs,
  mean over samples), up to the discretization error of those steps. With
  ``torch.nn.MSELoss()`` (mean over all N·n_L entries, no ½) and optimizer step lr,
  pass ``learning_rate = 2 * lr / n_L``.
- **Kernels over outputs.** A *scalar* kernel has shape [N1, N2] and stands for Θ ⊗ Id
  over the n_L outputs (the infinite-width case, or the trace-mode empirical NTK): the
  outputs evolve independently with the same kernel. A *full* kernel has shape
  [N1, N2, n_L, n_L] (entry [i, j, k, k'] = Θ_kk'(x_i, x_j)), as the full-mode empirical
  NTK returns; only :func:`gradient_descent_mse` and :func:`max_learning_rate` accept it.
- **Targets.** y_train is [N] (one output) or [N, n_L]; every output has y's layout.
- **Precision.** Use float64. The closed forms go through an eigendecomposition (or a
  Cholesky factorization) of K, whose condition number on real data easily exceeds
  1/eps(float32) ≈ 8e6; float32 is accepted (and works on well-conditioned kernels)
  but predictions at large t are then dominated by rounding.
- **Singular kernels.** Eigenvalues below the rounding level ``10·n·eps·λ_max`` count as
  zero. Slightly negative eigenvalues within that level are clipped to 0; a kernel more
  negative than that raises ValueError naming the ``diag_reg`` that would make it PSD.
  At finite t a singular kernel is harmless (the λ → 0 limit is taken exactly); at
  t = ∞ its null space cannot be fitted, so the pseudo-inverse is used and a
  :class:`KernelConditioningWarning` names the ridge that gives a unique answer.
- Pure torch: CPU and CUDA tensors, float32 and float64; every tensor argument must
  share k_train_train's dtype and device.

Example::

    >>> import torch, math, torch_ntk
    >>> model = torch_ntk.ntk_mlp([3, 512, 1], "relu", dtype=torch.float64)
    >>> x, x_test = torch.randn(20, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    >>> y = torch.sin(x.sum(1, keepdim=True))
    >>> k = torch_ntk.analytic_kernels(model, x).ntk            # [20, 20]
    >>> k_test = torch_ntk.analytic_kernels(model, x_test, x).ntk  # [5, 20]
    >>> predict_fn = torch_ntk.predict.gradient_descent_mse(k, y, learning_rate=1.0)
    >>> out = predict_fn(torch.tensor([0.0, 10.0, math.inf], dtype=torch.float64),
    ...                  k_test_train=k_test)
    >>> out.train.shape, out.test.shape
    (torch.Size([3, 20, 1]), torch.Size([3, 5, 1]))
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = [
    "Gaussian",
    "GaussianPredictions",
    "KernelConditioningWarning",
    "KernelPCA",
    "Predictions",
    "gp_inference",
    "gradient_descent_mse",
    "gradient_descent_mse_ensemble",
    "kernel_pca",
    "max_learning_rate",
]

Times = Union[float, int, Tensor, Sequence[float]]


class KernelConditioningWarning(UserWarning):
    """A kernel is singular (or nearly so) at the working precision; see the message."""


class Predictions(NamedTuple):
    """Outputs of gradient flow at the requested times.

    train: y_train's shape ([N] or [N, n_L]), with a leading [T] axis when t is a
        1-d tensor of T times.
    test: [M] or [M, n_L] likewise (leading [T] for a vector t); None when no
        ``k_test_train`` was given.
    """

    train: Tensor
    test: Optional[Tensor]


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


# ----------------------------------------------------------------------------- checks


def _check_tensor(
    name: str, x: object, like: Optional[Tensor] = None, like_name: str = "k_train_train"
) -> Tensor:
    """A finite float32/float64 tensor on like's dtype and device, else a clear error."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"{name} must be float32 or float64 (float64 recommended); got {x.dtype}. "
            "Convert it with .double()."
        )
    if like is not None:
        if x.dtype != like.dtype:
            raise ValueError(
                f"{name} must have the dtype of {like_name} ({like.dtype}); got {x.dtype}. "
                f"Convert it with .to({like.dtype})."
            )
        if x.device != like.device:
            raise ValueError(
                f"{name} must be on the device of {like_name} ({like.device}); got {x.device}"
            )
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    return x


def _check_number(name: str, value: object, minimum: float, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    value = float(value)
    ok = math.isfinite(value) and (value > minimum if strict else value >= minimum)
    if not ok:
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be finite and {relation} {minimum:g}; got {value!r}")
    return value


def _check_train_kernel(
    name: str, k: object, allow_full: bool
) -> tuple[Tensor, int, Optional[int]]:
    """Validate a train-train Gram matrix; return it flat [R, R], N and n_L (or None)."""
    k = _check_tensor(name, k)
    if k.dim() == 4 and allow_full:
        n, n2, o1, o2 = k.shape
        if n != n2 or o1 != o2:
            raise ValueError(
                f"{name} must be a full kernel [N, N, n_L, n_L]; got {list(k.shape)}"
            )
        flat = k.permute(0, 2, 1, 3).reshape(n * o1, n * o1)
        outputs: Optional[int] = o1
    elif k.dim() == 2:
        n, n2 = k.shape
        if n != n2:
            raise ValueError(f"{name} must be square [N, N]; got {list(k.shape)}")
        flat, outputs = k, None
    else:
        expected = "[N, N] or a full kernel [N, N, n_L, n_L]" if allow_full else "[N, N]"
        raise ValueError(f"{name} must have shape {expected}; got {list(k.shape)}")
    if flat.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one training sample; got {list(k.shape)}")
    scale = float(flat.abs().max())
    eps = torch.finfo(flat.dtype).eps
    asym = float((flat - flat.mT).abs().max())
    if asym > 1000 * eps * max(scale, torch.finfo(flat.dtype).tiny):
        raise ValueError(
            f"{name} must be symmetric (a Gram matrix Θ(X, X) of the training inputs with "
            f"themselves); max |K - Kᵀ| = {asym:.3g} against max |K| = {scale:.3g}"
        )
    return 0.5 * (flat + flat.mT), n, outputs


def _check_targets(name: str, y: object, like: Tensor, n: int, outputs: Optional[int]) -> Tensor:
    y = _check_tensor(name, y, like)
    if outputs is not None:
        if tuple(y.shape) != (n, outputs):
            raise ValueError(
                f"{name} must have shape [N, n_L] = [{n}, {outputs}] to match the full kernel "
                f"k_train_train; got {list(y.shape)}"
            )
    elif y.dim() not in (1, 2) or y.shape[0] != n:
        raise ValueError(
            f"{name} must have shape [N] or [N, n_L] with N = {n} training samples "
            f"(k_train_train is [{n}, {n}]); got {list(y.shape)}"
        )
    return y


def _check_like(name: str, x: Optional[object], like: Tensor, shape: tuple) -> Optional[Tensor]:
    if x is None:
        return None
    x = _check_tensor(name, x, like)
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}; got {list(x.shape)}")
    return x


def _check_cross_kernel(
    name: str, k: object, like: Tensor, n: int, outputs: Optional[int]
) -> tuple[Tensor, int]:
    """Validate a test-train kernel; return it flat [M·(n_L or 1), R] and M."""
    k = _check_tensor(name, k, like)
    if outputs is not None:
        if k.dim() != 4 or k.shape[1] != n or k.shape[2] != outputs or k.shape[3] != outputs:
            raise ValueError(
                f"{name} must be a full kernel [M, N, n_L, n_L] = [M, {n}, {outputs}, "
                f"{outputs}] like k_train_train; got {list(k.shape)}"
            )
        m = k.shape[0]
        return k.permute(0, 2, 1, 3).reshape(m * outputs, n * outputs), m
    if k.dim() != 2 or k.shape[1] != n:
        raise ValueError(
            f"{name} must have shape [M, N] with N = {n} training samples (the second axis "
            f"runs over the training inputs); got {list(k.shape)}"
        )
    return k, k.shape[0]


def _as_times(t: Times, like: Tensor) -> tuple[Tensor, bool]:
    """Times as a 1-d tensor on like's dtype/device, and whether t was a scalar."""
    if isinstance(t, bool) or t is None:
        raise TypeError(
            f"t must be a number, math.inf, or a 1-d tensor/sequence of times; got {t!r}"
        )
    if isinstance(t, numbers.Real):
        times, scalar = torch.tensor([float(t)], dtype=like.dtype, device=like.device), True
    elif isinstance(t, Tensor):
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"t must hold real times; got a {t.dtype} tensor")
        if t.dim() > 1:
            raise ValueError(f"t must be a scalar or a 1-d tensor of times; got {list(t.shape)}")
        scalar = t.dim() == 0
        times = t.reshape(-1).to(dtype=like.dtype, device=like.device)
    elif isinstance(t, (list, tuple)):
        try:
            times = torch.tensor([float(v) for v in t], dtype=like.dtype, device=like.device)
        except (TypeError, ValueError) as error:
            raise TypeError(f"t must be a sequence of real times; got {t!r}") from error
        scalar = False
    else:
        raise TypeError(
            f"t must be a number, math.inf, or a 1-d tensor/sequence of times; "
            f"got {type(t).__name__}"
        )
    if times.numel():
        if bool(torch.isnan(times).any()):
            raise ValueError("t contains NaN")
        if bool((times < 0).any()):
            raise ValueError(
                f"t must be non-negative (gradient flow runs forward from t = 0); got "
                f"min t = {float(times.min()):g}"
            )
    return times, scalar


# --------------------------------------------------------------------------- spectrum


def _rounding_level(values: Tensor, rows: int) -> float:
    """Eigenvalues of a PSD matrix with |λ| below this are zero up to rounding."""
    top = float(values.abs().max()) if values.numel() else 0.0
    return 10.0 * rows * torch.finfo(values.dtype).eps * top


_F64_HINT = {torch.float32: ", or compute the kernel in float64", torch.float64: ""}


def _ridge_hint(diag_reg: float, lambda_min: float, lambda_max: float, level: float, dtype) -> str:
    """A diag_reg that makes K PSD with a condition number the dtype can handle."""
    margin = max(10.0 * level, math.sqrt(torch.finfo(dtype).eps) * max(lambda_max, 0.0))
    value = diag_reg + max(-lambda_min, 0.0) + margin
    if value <= 0.0 or not math.isfinite(value):
        return f"{value:.3g}"
    unit = 10.0 ** (math.floor(math.log10(value)) - 2)  # round up to 3 significant digits
    return f"{math.ceil(value / unit * (1 - 1e-12)) * unit:.3g}"


class _Spectrum:
    """Eigendecomposition K + diag_reg·I = U diag(λ) Uᵀ with λ clipped at 0."""

    def __init__(self, name: str, flat: Tensor, diag_reg: float) -> None:
        rows = flat.shape[0]
        if diag_reg:
            flat = flat + diag_reg * torch.eye(rows, dtype=flat.dtype, device=flat.device)
        values, vectors = torch.linalg.eigh(flat)
        self.level = _rounding_level(values, rows)
        self.lambda_min = float(values[0])
        self.lambda_max = float(values[-1])
        if self.lambda_min < -self.level:
            reg = " + diag_reg·I" if diag_reg else ""
            raise ValueError(
                f"{name}{reg} is not positive semi-definite: its smallest eigenvalue is "
                f"{self.lambda_min:.3e} against a largest of {self.lambda_max:.3e}, beyond "
                f"{flat.dtype} rounding (|λ| ≤ {self.level:.2e}). A Gram matrix of one kernel "
                "on one set of inputs is PSD: check that it was built from the training "
                f"inputs on both sides{_F64_HINT[flat.dtype]}, or pass diag_reg="
                f"{_ridge_hint(diag_reg, self.lambda_min, self.lambda_max, self.level, flat.dtype)}"
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
            f"{_ridge_hint(self.diag_reg, self.lambda_min, self.lambda_max, self.level, dtype)}"
            f" for a unique, well-conditioned answer{_F64_HINT[dtype]}.",
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


def _shape_out(x: Tensor, scalar: bool, shape: tuple) -> Tensor:
    """[T, rows, C] → [T, *shape] (or [*shape] for a scalar t)."""
    x = x.reshape(x.shape[0], *shape)
    return x[0] if scalar else x


# ------------------------------------------------------------------ gradient descent


def gradient_descent_mse(
    k_train_train: Tensor,
    y_train: Tensor,
    learning_rate: float = 1.0,
    diag_reg: float = 0.0,
) -> Callable[..., Predictions]:
    """Gradient flow on the MSE cost for a linear model with kernel K: a ``predict_fn``.

    The training-set outputs and the test outputs at time t (NTK_MATH.md §4):

        f_t(X) = Y + e^{−ηtK/N} (f_0(X) − Y)
        f_t(x) = f_0(x) + Θ(x, X) K⁻¹ (I − e^{−ηtK/N}) (Y − f_0(X))

    with K = k_train_train + diag_reg·I. For a wide network, K is its NTK and f_0 its
    initial outputs. From K = U diag(λ) Uᵀ (λ clipped at 0):
    e^{−ηtK/N} = U diag(e^{−ηtλ/N}) Uᵀ and K⁻¹(I − e^{−ηtK/N}) = U diag(g) Uᵀ with
    g = (1 − e^{−ηtλ/N})/λ = −expm1(−ηtλ/N)/λ, taken as ηt/N where λ = 0. At t = ∞,
    with diag_reg > 0, the test prediction is kernel ridge regression with ridge
    diag_reg; with a singular K, the pseudo-inverse (see the module notes).

    The eigendecomposition (O(R³) time, O(R²) memory, R = N, or N·n_L for a full
    kernel) is computed once here and reused by every call; each call then costs
    O(R²·C + M·R·(R + T·C)) for M test points, T times and C outputs. For t = ∞
    alone, :func:`gp_inference` (a Cholesky factorization) is cheaper.

    Args:
        k_train_train: [N, N] scalar kernel (Θ ⊗ Id over outputs) or [N, N, n_L, n_L]
            full kernel Θ(X, X); symmetric PSD, float64 recommended.
        y_train: [N] or [N, n_L] targets Y ([N, n_L] for a full kernel).
        learning_rate: η > 0 (the cost is (1/2N) Σ‖f − y‖²; see the module notes).
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
    flat, n, outputs = _check_train_kernel("k_train_train", k_train_train, allow_full=True)
    y_train = _check_targets("y_train", y_train, flat, n, outputs)
    learning_rate = _check_number("learning_rate", learning_rate, 0.0, strict=True)
    diag_reg = _check_number("diag_reg", diag_reg, 0.0, strict=False)
    spectrum = _Spectrum("k_train_train", flat, diag_reg)
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
        times, scalar = _as_times(t, flat)
        f0 = _check_like("fx_train_0", fx_train_0, flat, y_shape)
        residual = y_flat if f0 is None else y_flat - f0.reshape(rows, -1)
        coeffs = u.mT @ residual  # Uᵀ(Y − f_0(X)), [R, C]
        if spectrum.singular and bool(torch.isinf(times).any()):
            spectrum.warn_singular(
                "at t = ∞ its null space is not fitted (training residual kept there, "
                "pseudo-inverse for test points).", stacklevel=3
            )
        decay = spectrum.decay(times, rate)  # [T, R]
        train = y_flat - u @ (decay[:, :, None] * coeffs)
        train = _shape_out(train, scalar, y_shape)
        if k_test_train is None:
            if fx_test_0 is not None:
                raise ValueError(
                    "fx_test_0 was given without k_test_train; test predictions need the "
                    "test-train kernel Θ(x_test, X)"
                )
            return Predictions(train, None)
        k_flat, m = _check_cross_kernel("k_test_train", k_test_train, flat, n, outputs)
        test_shape = (m, *y_shape[1:])
        g0 = _check_like("fx_test_0", fx_test_0, flat, test_shape)
        gain = spectrum.gain(times, rate)  # [T, R]
        test = (k_flat @ u) @ (gain[:, :, None] * coeffs)  # [T, M·(n_L or 1), C]
        if g0 is not None:
            test = test + g0.reshape(test.shape[1:])
        return Predictions(train, _shape_out(test, scalar, test_shape))

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
    descent with the NTK Θ (NTK_MATH.md §4). With K = Θ(X, X) + diag_reg·I and
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
    ntk, n, _ = _check_train_kernel("ntk_train_train", ntk_train_train, allow_full=False)
    _check_tensor("nngp_train_train", nngp_train_train, ntk, "ntk_train_train")
    _check_tensor("y_train", y_train, ntk, "ntk_train_train")
    nngp, _, _ = _check_train_kernel("nngp_train_train", nngp_train_train, allow_full=False)
    if nngp.shape != ntk.shape:
        raise ValueError(
            f"nngp_train_train must have the shape of ntk_train_train ({list(ntk.shape)}); "
            f"got {list(nngp.shape)}"
        )
    y_train = _check_targets("y_train", y_train, ntk, n, None)
    learning_rate = _check_number("learning_rate", learning_rate, 0.0, strict=True)
    diag_reg = _check_number("diag_reg", diag_reg, 0.0, strict=False)
    spectrum = _Spectrum("ntk_train_train", ntk, diag_reg)
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
        times, scalar = _as_times(t, ntk)
        for name, value in (("ntk_test_train", ntk_test_train),
                            ("nngp_test_train", nngp_test_train),
                            ("nngp_test_test", nngp_test_test)):
            if value is not None:
                _check_tensor(name, value, ntk, "ntk_train_train")
        if spectrum.singular and bool(torch.isinf(times).any()):
            spectrum.warn_singular(
                "at t = ∞ its null space is not fitted (pseudo-inverse used).", stacklevel=3
            )
        decay = spectrum.decay(times, rate)  # [T, R]
        train_mean = _shape_out(y_flat - u @ (decay[:, :, None] * coeffs), scalar, y_shape)
        scaled = decay[:, :, None] * nngp_eig * decay[:, None, :]
        train_cov = _symmetric(u @ scaled @ u.mT)
        train = Gaussian(train_mean, train_cov[0] if scalar else train_cov)
        if ntk_test_train is None:
            if nngp_test_train is not None or nngp_test_test is not None:
                raise ValueError(
                    "nngp_test_train/nngp_test_test were given without ntk_test_train; "
                    "test predictions need Θ(x_test, X)"
                )
            return GaussianPredictions(train, None)
        k_test, m = _check_cross_kernel("ntk_test_train", ntk_test_train, ntk, n, None)
        gain = spectrum.gain(times, rate)  # [T, R]
        p_gain = (k_test @ u)[None] * gain[:, None, :]  # Θ(x, X) U diag(g): [T, M, R]
        mean = _shape_out(p_gain @ coeffs, scalar, (m, *y_shape[1:]))
        if (nngp_test_train is None) != (nngp_test_test is None):
            raise ValueError(
                "the test covariance needs both nngp_test_train [M, N] and nngp_test_test "
                "[M, M]; pass both or neither"
            )
        cov = None
        if nngp_test_test is not None:
            s_cross = _check_like("nngp_test_train", nngp_test_train, ntk, (m, n))
            s_test = _check_like("nngp_test_test", nngp_test_test, ntk, (m, m))
            cross = p_gain @ (u.mT @ s_cross.mT)  # Θ(x,X) T Σ(X,x): [T, M, M]
            cov = _symmetric(s_test + p_gain @ nngp_eig @ p_gain.mT - cross - cross.mT)
            cov = cov[0] if scalar else cov
        return GaussianPredictions(train, Gaussian(mean, cov))

    return predict_fn


def _symmetric(c: Tensor) -> Tensor:
    return 0.5 * (c + c.mT)


# ----------------------------------------------------------------------- GP inference


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
    k, n, _ = _check_train_kernel("k_train_train", k_train_train, allow_full=False)
    y_train = _check_targets("y_train", y_train, k, n, None)
    diag_reg = _check_number("diag_reg", diag_reg, 0.0, strict=False)
    a = k + diag_reg * torch.eye(n, dtype=k.dtype, device=k.device)
    chol, info = torch.linalg.cholesky_ex(a)
    level = 10.0 * n * torch.finfo(k.dtype).eps * float(torch.diagonal(a).abs().max())
    if int(info) != 0:
        values = torch.linalg.eigvalsh(a)
        raise ValueError(
            "k_train_train + diag_reg·I is singular or not positive definite at "
            f"{k.dtype} precision (Cholesky failed; smallest eigenvalue "
            f"{float(values[0]):.3e}, largest {float(values[-1]):.3e}); pass diag_reg="
            f"{_ridge_hint(diag_reg, float(values[0]), float(values[-1]), level, k.dtype)} "
            f"(a noise variance){_F64_HINT[k.dtype]}."
        )
    pivots = torch.diagonal(chol) ** 2
    if float(pivots.min()) <= level:
        warnings.warn(
            f"k_train_train + diag_reg·I is nearly singular at {k.dtype} precision (smallest "
            f"Cholesky pivot {float(pivots.min()):.2e} ≤ rounding level {level:.2e}); the "
            "posterior is dominated by rounding. Pass diag_reg="
            f"{_ridge_hint(diag_reg, 0.0, float(torch.diagonal(a).max()), level, k.dtype)}"
            f"{_F64_HINT[k.dtype]}.",
            KernelConditioningWarning,
            stacklevel=2,
        )
    y_shape = tuple(y_train.shape)
    y_flat = y_train.reshape(n, -1)
    alpha = torch.cholesky_solve(y_flat, chol)  # A⁻¹ Y, [N, C]
    cache: dict[str, Gaussian] = {}

    def posterior(k_cross: Tensor, k_self: Optional[Tensor], shape: tuple) -> Gaussian:
        mean = (k_cross @ alpha).reshape(shape)
        if k_self is None:
            return Gaussian(mean, None)
        v = torch.linalg.solve_triangular(chol, k_cross.mT, upper=False)  # L⁻¹ k(X, x)
        return Gaussian(mean, _symmetric(k_self - v.mT @ v))

    def predict_fn(
        k_test_train: Optional[Tensor] = None, k_test_test: Optional[Tensor] = None
    ) -> GaussianPredictions:
        if "train" not in cache:
            cache["train"] = posterior(k, k, y_shape)
        if k_test_train is None:
            if k_test_test is not None:
                raise ValueError("k_test_test was given without k_test_train")
            return GaussianPredictions(cache["train"], None)
        k_cross, m = _check_cross_kernel("k_test_train", k_test_train, k, n, None)
        k_self = _check_like("k_test_test", k_test_test, k, (m, m))
        return GaussianPredictions(cache["train"], posterior(k_cross, k_self, (m, *y_shape[1:])))

    return predict_fn


# ----------------------------------------------------------- kernel principal components


class KernelPCA(NamedTuple):
    """Top eigenpairs of a Gram matrix K = Θ(X, X), largest first.

    eigenvalues: [k] λ_1 ≥ … ≥ λ_k ≥ 0 (clipped at 0).
    eigenvectors: [N, k] orthonormal u_i with K u_i = λ_i u_i.

    Gradient flow decomposes along these components (NTK_MATH.md §4): from f_0 = 0,

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
        k_cross, _ = _check_cross_kernel(
            "k_test_train", k_test_train, self.eigenvectors, self.eigenvectors.shape[0], None
        )
        level = _rounding_level(self.eigenvalues, self.eigenvectors.shape[0])
        zero = self.eigenvalues <= level
        inverse = torch.where(zero, 0, 1 / torch.where(zero, 1, self.eigenvalues))
        return (k_cross @ self.eigenvectors) * inverse

    def coefficients(self, y: Tensor) -> Tensor:
        """⟨u_i, y⟩ for each component: [k] for y [N], [k, n_L] for y [N, n_L]."""
        y = _check_targets("y", y, self.eigenvectors, self.eigenvectors.shape[0], None)
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
        learning_rate = _check_number("learning_rate", learning_rate, 0.0, strict=True)
        times, scalar = _as_times(t, self.eigenvalues)
        n = self.eigenvectors.shape[0]
        zero = self.eigenvalues <= _rounding_level(self.eigenvalues, n)
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
        num_components out of range. TypeError: non-float input.
    """
    k, n, _ = _check_train_kernel("k_train_train", k_train_train, allow_full=False)
    if num_components is None:
        num_components = n
    if isinstance(num_components, bool) or not isinstance(num_components, int):
        raise TypeError(f"num_components must be an int or None; got {num_components!r}")
    if not 1 <= num_components <= n:
        raise ValueError(f"num_components must be in 1 … N = {n}; got {num_components}")
    spectrum = _Spectrum("k_train_train", k, 0.0)
    order = torch.arange(n - 1, n - 1 - num_components, -1, device=k.device)
    return KernelPCA(spectrum.values[order], spectrum.vectors[:, order])


# --------------------------------------------------------------------- learning rate


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
    flat, n, _ = _check_train_kernel("k_train_train", k_train_train, allow_full=True)
    lambda_max = float(torch.linalg.eigvalsh(flat)[-1])
    return 2.0 * n / lambda_max if lambda_max > 0 else math.inf
