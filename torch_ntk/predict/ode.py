"""Kernel gradient descent for any cost (Jacot et al. §3), integrated by an ODE solver.

For a cost C(f) on the training outputs, kernel gradient descent with kernel K runs

    ∂_t f(X) = −η K ∇_f C(f(X)),        ∂_t f(x) = −η Θ(x, X) ∇_f C(f(X))

(the paper's ∂_t f = −∇_K C|_f, its §3; the paper's §5 for the least-squares case, whose
closed form is :func:`~torch_ntk.predict.gradient_descent_mse`). The gradient is the one
of the cost *as a sum over the training set*, so the 1/N of a mean cost is inside it:
``"mse"`` C = (1/2N) Σ_i ‖f_i − y_i‖² gives ∂_t f = −(η/N) K (f − Y), exactly the flow of
:func:`~torch_ntk.predict.gradient_descent_mse`, and t = k is k steps of full-batch
gradient descent with ``lr=η`` on the same loss (up to the steps' discretization error).
No closed form exists beyond least squares, so the flow is integrated by torchdiffeq's
adaptive Dormand–Prince 5(4) (``dopri5``) on the tensors' device.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor

from .checks import (
    Times,
    as_times,
    check_cross_kernel,
    check_like,
    check_number,
    check_tensor,
    check_train_kernel,
)
from .mse import Predictions

__all__ = ["COSTS", "gradient_descent"]

COSTS = ("mse", "cross_entropy")
Cost = Union[str, Callable[[Tensor, Tensor], Tensor]]
# (rtol, atol) per dtype: in float64 the defaults reach ~1e-8 relative on the outputs
# (tests/test_predict_gd.py checks "mse" against the closed form at 1e-8).
DEFAULT_TOLERANCES = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-5, 1e-6)}
INSTALL_HINT = ("torch_ntk.predict.gradient_descent integrates the flow with torchdiffeq, an "
                "optional dependency: pip install 'torch-ntk[ode]' (or pip install torchdiffeq)")


def odeint_function() -> Callable[..., Any]:
    """torchdiffeq.odeint, or ImportError saying what to install."""
    try:
        from torchdiffeq import odeint
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return odeint


def check_cost(cost: object) -> Cost:
    if isinstance(cost, str):
        if cost not in COSTS:
            raise ValueError(f"cost must be one of {', '.join(map(repr, COSTS))} or a callable "
                             f"C(f, y) -> scalar tensor; got {cost!r}")
        return cost
    if not callable(cost):
        raise TypeError(f"cost must be a name ({', '.join(map(repr, COSTS))}) or a callable "
                        f"C(f, y) -> scalar tensor; got {type(cost).__name__}")
    return cost


def check_train_targets(cost: Cost, y: object, like: Tensor, n: int,
                        outputs: Optional[int]) -> Tensor:
    """Float targets like ``like`` with N rows ([N, n_L] for a full kernel), or, for any
    cost but "mse", integer class indices [N] on like's device."""
    if isinstance(y, Tensor) and not y.is_floating_point() and not y.is_complex():
        if cost == "mse":
            raise TypeError(f"y_train must be a float tensor for cost='mse'; got {y.dtype}. "
                            "One-hot encode class labels, or use cost='cross_entropy'.")
        if y.dtype == torch.bool or y.dim() != 1 or y.shape[0] != n:
            raise ValueError(f"integer y_train must hold N = {n} class indices, shape [{n}]; "
                             f"got {y.dtype} {list(y.shape)}")
        if y.device != like.device:
            raise ValueError(f"y_train must be on the device of k_train_train ({like.device}); "
                             f"got {y.device}")
        if y.numel() and int(y.min()) < 0:
            raise ValueError(f"y_train class indices must be >= 0; got min {int(y.min())}")
        return y
    y = check_tensor("y_train", y, like)
    if outputs is not None and tuple(y.shape) != (n, outputs):
        raise ValueError(f"y_train must have shape [N, n_L] = [{n}, {outputs}] to match the "
                         f"full kernel k_train_train; got {list(y.shape)}")
    if y.dim() not in (1, 2) or y.shape[0] != n:
        raise ValueError(f"y_train must have shape [N] or [N, n_L] with N = {n} training samples "
                         f"(k_train_train is [{n}, {n}]); got {list(y.shape)}")
    if cost == "cross_entropy" and y.dim() != 2:
        raise ValueError(f"y_train for cost='cross_entropy' must be one-hot (or class "
                         f"probabilities) [N, C] or integer class indices [N]; got float "
                         f"{list(y.shape)}")
    return y


def gradient_descent(
    cost: Cost,
    k_train_train: Tensor,
    y_train: Tensor,
    learning_rate: float = 1.0,
    momentum: Optional[float] = None,
    *,
    rtol: Optional[float] = None,
    atol: Optional[float] = None,
    max_steps: int = 100_000,
) -> Callable[..., Predictions]:
    """Kernel gradient descent on any cost, integrated by an adaptive ODE solver.

    Train and test outputs follow (the paper's §3, with f_0 the initial function)

        ∂_t f(X) = −η K ∇_f C(f(X)),      ∂_t f(x) = −η Θ(x, X) ∇_f C(f(X)),

    K = Θ(X, X). With ``momentum`` μ (heavy ball, θ_{k+1} = θ_k + μ(θ_k − θ_{k−1}) − η∇C)
    the flow is the second-order system whose unit-step finite differences are those
    steps, f'' = −(1 − μ) f' − η K ∇_f C(f) with f'(0) = 0 (for test points likewise with
    Θ(x, X)); it approximates the steps when the outputs change little per step (small η),
    and, unlike the discrete steps, does not reduce to the first-order flow at μ = 0.

    Costs (``cost``):

    - ``"mse"``: C = (1/2N) Σ_i ‖f_i − y_i‖², ∇C = (f − Y)/N; the same flow as
      :func:`gradient_descent_mse` (which solves it in closed form: prefer it).
    - ``"cross_entropy"``: C = (1/N) Σ_i −log softmax(f_i)[y_i], ∇C = (softmax(f) − Y)/N,
      with y_train one-hot (or class probabilities) [N, C] or integer class indices [N]
      (then ``fx_train_0`` [N, C] fixes the number of classes C).
    - a callable ``C(f, y) -> scalar tensor``, f of fx_train_0's shape (y_train's when
      fx_train_0 is None), y = y_train as given; its gradient comes from autograd. It is
      the cost of the whole training set: include the 1/N of a mean yourself.

    Time t is measured as in :mod:`torch_ntk.predict`: t = k is k full-batch gradient
    descent steps of ``lr=η`` on C. The kernel acts on the sample axis: an [N, N] kernel
    stands for Θ ⊗ Id over outputs; a full [N, N, n_L, n_L] kernel couples them.

    Cost per call: one integration from t = 0 to max(t) by torchdiffeq's ``dopri5``
    (6 vector-field evaluations per accepted step, each O(R²·C + M·R·C) for R = N (or
    N·n_L) and M test points); the number of steps grows with η·λ_max(K)/N · max(t) (the
    flow is stiff when K is ill-conditioned; large η·λ_max/N means many small steps).
    For small N on a CPU the solver's per-step overhead dominates, and several torch
    threads contend for nothing: ``torch.set_num_threads(1)`` around the call ran the
    example below 10–30× faster (0.34 s against 3.3–11 s) on two shared cores under load.

    Args:
        cost: "mse", "cross_entropy" or a callable C(f, y) → 0-dim tensor.
        k_train_train: [N, N] scalar kernel or [N, N, n_L, n_L] full kernel Θ(X, X),
            symmetric, float32/float64 (float64 recommended).
        y_train: [N] or [N, n_L] float targets ([N, n_L] for a full kernel), or integer
            class indices [N] (any cost but "mse").
        learning_rate: η > 0.
        momentum: None (gradient flow) or μ in [0, 1) (heavy ball, above).
        rtol, atol: the solver's relative and absolute tolerances per step (None: 1e-10 and
            1e-12 in float64, reaching ~1e-8 relative accuracy of the outputs; 1e-5 and
            1e-6 in float32).
        max_steps: the most solver steps one call may take (RuntimeError beyond).

    Returns:
        ``predict_fn(t, fx_train_0=None, fx_test_0=None, k_test_train=None)`` →
        :class:`Predictions` ``(train, test)``:

        - t: a finite number ≥ 0, or a 1-d tensor/sequence of T such times (one
          integration serves all; results stacked on a leading [T] axis);
        - fx_train_0: f_0(X), [N] or [N, C] ([N, n_L] for a full kernel; y_train's shape
          for "mse"); None means zeros of y_train's shape (float targets only);
        - fx_test_0: f_0(x) at M test inputs, [M, *fx_train_0.shape[1:]]; None means
          zeros; needs k_test_train;
        - k_test_train: Θ(x, X) [M, N] (full: [M, N, n_L, n_L]).

    Raises:
        ImportError: torchdiffeq is missing (``pip install 'torch-ntk[ode]'``).
        TypeError / ValueError: a bad argument (named): a non-symmetric or non-finite
            kernel, shapes that do not match, negative, NaN or infinite t, a cost that
            does not return a finite scalar or does not depend on f.
        FloatingPointError: the gradient of the cost became NaN/Inf during integration.
        RuntimeError: more than ``max_steps`` solver steps.

    Example::

        >>> import torch, torch_ntk
        >>> x = torch.randn(12, 4, dtype=torch.float64)
        >>> model = torch_ntk.ntk_mlp([4, 256, 3], "relu", dtype=torch.float64)
        >>> k = torch_ntk.analytic_kernels(model, x).ntk                     # [12, 12]
        >>> labels = torch.arange(12) % 3
        >>> predict_fn = torch_ntk.predict.gradient_descent("cross_entropy", k, labels)
        >>> out = predict_fn([0.0, 200.0], torch.zeros(12, 3, dtype=torch.float64))
        >>> out.train.shape, bool((out.train[1].argmax(1) == labels).all())
        (torch.Size([2, 12, 3]), True)
    """
    cost = check_cost(cost)
    flat, n, outputs = check_train_kernel("k_train_train", k_train_train, allow_full=True)
    y_train = check_train_targets(cost, y_train, flat, n, outputs)
    learning_rate = check_number("learning_rate", learning_rate, 0.0, strict=True)
    if momentum is not None:
        momentum = check_number("momentum", momentum, 0.0, strict=False)
        if momentum >= 1.0:
            raise ValueError(f"momentum must be in [0, 1) (heavy ball); got {momentum!r}")
    default_rtol, default_atol = DEFAULT_TOLERANCES[flat.dtype]
    rtol = default_rtol if rtol is None else check_number("rtol", rtol, 0.0, strict=True)
    atol = default_atol if atol is None else check_number("atol", atol, 0.0, strict=True)
    if isinstance(max_steps, bool) or not isinstance(max_steps, numbers.Integral) \
            or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer; got {max_steps!r}")
    odeint = odeint_function()
    rows = flat.shape[0]

    def apply(kernel: Tensor, grad: Tensor, out_rows: int) -> Tensor:
        """Kernel [out·(n_L or 1), R] acting on a gradient [N, ...] → [out, ...]."""
        if outputs is None:
            return (kernel @ grad.reshape(n, -1)).reshape(out_rows, *grad.shape[1:])
        return (kernel @ grad.reshape(rows, 1)).reshape(out_rows, outputs)

    def predict_fn(
        t: Times,
        fx_train_0: Optional[Tensor] = None,
        fx_test_0: Optional[Tensor] = None,
        k_test_train: Optional[Tensor] = None,
    ) -> Predictions:
        times, scalar = as_times(t, flat)
        if times.numel() and bool(torch.isinf(times).any()):
            raise ValueError("t must be finite: gradient_descent integrates the flow up to "
                             "max(t) (for cost='mse', gradient_descent_mse gives t = ∞)")
        f0 = start(fx_train_0)
        target = targets(f0)
        gradient = cost_gradient(target)
        test_kernel, g0 = None, None
        if k_test_train is not None:
            test_kernel, m = check_cross_kernel("k_test_train", k_test_train, flat, n, outputs)
            g0 = check_like("fx_test_0", fx_test_0, flat, (m, *f0.shape[1:]))
            if g0 is None:
                g0 = torch.zeros((m, *f0.shape[1:]), dtype=flat.dtype, device=flat.device)
        elif fx_test_0 is not None:
            raise ValueError("fx_test_0 was given without k_test_train; test predictions need "
                             "the test-train kernel Θ(x_test, X)")
        gradient(f0, check=True)
        state0 = (f0,) if g0 is None else (f0, g0)
        if momentum is not None:
            state0 = state0 + tuple(torch.zeros_like(s) for s in state0)
        path = integrate(state0, times, gradient, test_kernel)
        train = path[0]
        test = path[1] if g0 is not None else None
        if scalar:
            train, test = train[0], (None if test is None else test[0])
        return Predictions(train, test)

    def start(fx_train_0: Optional[Tensor]) -> Tensor:
        if fx_train_0 is None:
            if not y_train.is_floating_point():
                raise ValueError("fx_train_0 [N, C] is needed with class-index targets: it fixes "
                                 "the number of classes C (pass zeros for f_0 = 0)")
            return torch.zeros_like(y_train)
        f0 = check_tensor("fx_train_0", fx_train_0, flat)
        if outputs is not None:
            expected = "[N, n_L] = " + str([n, outputs])
            ok = tuple(f0.shape) == (n, outputs)
        elif cost == "mse" or (cost == "cross_entropy" and y_train.is_floating_point()):
            expected, ok = f"y_train's shape {list(y_train.shape)}", f0.shape == y_train.shape
        elif cost == "cross_entropy":
            expected, ok = f"[N, C] = [{n}, C] (C ≥ 2 classes)", f0.dim() == 2 and \
                f0.shape[0] == n and f0.shape[1] >= 2
        else:
            expected, ok = f"[N] or [N, n_L] with N = {n}", f0.dim() in (1, 2) and \
                f0.shape[0] == n
        if not ok:
            raise ValueError(f"fx_train_0 must have shape {expected}; got {list(f0.shape)}")
        return f0

    def targets(f0: Tensor) -> Tensor:
        if cost != "cross_entropy" or y_train.is_floating_point():
            return y_train
        classes = f0.shape[1]
        if int(y_train.max()) >= classes:
            raise ValueError(f"y_train class indices must be < C = {classes} (fx_train_0 is "
                             f"{list(f0.shape)}); got max {int(y_train.max())}")
        return torch.nn.functional.one_hot(y_train, classes).to(flat.dtype)

    def cost_gradient(target: Tensor) -> Callable[..., Tensor]:
        """∇_f C at f (f's shape); ``check=True`` validates a callable cost's value."""
        if cost == "mse":
            return lambda f, check=False: (f - target) / n
        if cost == "cross_entropy":
            return lambda f, check=False: (torch.softmax(f, -1) - target) / n

        def autograd(f: Tensor, check: bool = False) -> Tensor:
            with torch.enable_grad():
                f = f.detach().requires_grad_(True)
                value = cost(f, target)
                if check:
                    check_cost_value(value)
                grad = (torch.autograd.grad(value, f, allow_unused=True)[0]
                        if value.requires_grad else None)
            if grad is None:
                raise ValueError("cost(f, y) does not depend on f (autograd found no path "
                                 "from f to the cost); write it with torch operations on f")
            return grad

        return autograd

    def integrate(state0: tuple, times: Tensor, gradient: Callable,
                  test_kernel: Optional[Tensor]) -> tuple:
        """The state at ``times`` (each [T, ...]) from one solver run over sorted times."""
        if times.numel() == 0 or float(times.max()) == 0.0:
            return tuple(s.expand(times.numel(), *s.shape).clone() for s in state0)
        grid = torch.unique(torch.cat([times.new_zeros(1), times]))  # sorted, from 0
        index = torch.searchsorted(grid, times)
        second = momentum is not None
        half = len(state0) // 2 if second else len(state0)

        def field(_t: Tensor, state: tuple) -> tuple:
            f = state[0]
            grad = gradient(f)
            if not bool(torch.isfinite(grad).all()):
                raise FloatingPointError(
                    "the cost's gradient became NaN/Inf during integration (outputs "
                    f"max |f| = {float(f.abs().max()):.3g}); check the cost, or lower t")
            forces = [-learning_rate * apply(flat, grad, n)]
            if test_kernel is not None:
                forces.append(-learning_rate * apply(test_kernel, grad, state[1].shape[0]))
            if not second:
                return tuple(forces)
            velocities = state[half:]
            damping = 1.0 - momentum
            return tuple(velocities) + tuple(a - damping * v for a, v in zip(forces, velocities))

        try:
            with torch.no_grad():
                path = odeint(field, state0, grid, rtol=rtol, atol=atol, method="dopri5",
                              options={"max_num_steps": int(max_steps)})
        except AssertionError as error:  # torchdiffeq reports step failures by assert
            raise RuntimeError(
                f"the ODE solver failed ({error}) before t = {float(grid[-1]):g}: more than "
                f"max_steps = {max_steps} steps, or a step size underflow. The flow is stiff "
                "when η·λ_max(K)/N·t is large; raise max_steps, loosen rtol/atol, or lower t."
            ) from error
        return tuple(p[index] for p in path[:half])

    return predict_fn


def check_cost_value(value: object) -> None:
    """A callable cost must return a finite real scalar tensor."""
    if not isinstance(value, Tensor):
        raise TypeError(f"cost(f, y) must return a scalar torch.Tensor; got "
                        f"{type(value).__name__}")
    if value.numel() != 1 or value.dim() > 1:
        raise ValueError(f"cost(f, y) must return a scalar (the cost of the whole training "
                         f"set, e.g. a .sum() or .mean()); got shape {list(value.shape)}")
    if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
        raise ValueError(f"cost(f, y) must return a finite float scalar at f_0; got {value}")
