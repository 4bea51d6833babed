"""Fit an architecture's σ_w², σ_b² (and the noise ridge) by the GP marginal likelihood.

The limit kernels are differentiable in the variances of the linear layers
(``analytic_kernels(..., weight_var=, bias_var=)`` with tensors that require grad,
``torch_ntk.analytic.autograd``), and the log evidence
:func:`torch_ntk.predict.gp_marginal_likelihood` is differentiable in the kernel and the
noise variance, so gradient ascent on

    log p(Y | X; σ_w², σ_b², σ²) = −½ tr(Yᵀ A⁻¹ Y) − (C/2) log det A − (N C/2) log 2π,
    A = K(X, X; σ_w², σ_b²) + σ² I

learns them (type-II maximum likelihood; Rasmussen & Williams 2006, §5.4). Each variance
is parametrized by its logarithm (so it stays positive); L-BFGS (or Adam) runs on the
logarithms. Activation parameters (``activation_params={"negative_slope": 0.2}``, any
name ``torch_ntk.analytic.activation_params`` lists, shared by every activation layer) can
be fitted too: by their logarithm those that must stay positive (β, γ), directly the others.

Example::

    >>> spec = mlp_spec([3, 1, 1, 1], "relu", weight_std=1.0, bias_std=0.3)
    >>> x = torch.randn(50, 3, dtype=torch.float64); y = torch.sin(x[:, :1])
    >>> fitted = fit_kernel_hyperparameters(spec, x, y)
    >>> fitted.weight_var.shape, bool(fitted.log_evidence[-1] >= fitted.log_evidence[0])
    (torch.Size([3]), True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Iterable, NamedTuple, Optional, Union

import torch
from torch import Tensor, nn

from ..layers import Conv, Dense
from ..lifting.lift import LayerSpec
from ..predict import gp_marginal_likelihood
from .._utils.validation import check_batch, check_choices, check_int
from .activation_params import POSITIVE, with_activation_params
from .autograd import with_variances
from .kernels import analytic_kernels, as_spec

__all__ = ["FittedHyperparameters", "fit_kernel_hyperparameters"]

FITTABLE = ("weight_var", "bias_var", "diag_reg")


class FittedHyperparameters(NamedTuple):
    """What :func:`fit_kernel_hyperparameters` learned.

    weight_var: [L] σ_w² of each linear (Dense/Conv) layer, in order (all equal when
        shared), detached, x's dtype.

    bias_var: [L] σ_b² of each linear layer (0 for a layer without bias).

    diag_reg: 0-dim, the noise variance σ² (the ridge).

    log_evidence: [E + 1] the objective at each of the E evaluations the optimizer made
        (Adam: before each step; L-BFGS: its line-search trials included, so not
        monotone), then at the fitted values.

    spec: the input spec with the fitted variances and activation parameters (floats):
        pass it to :func:`torch_ntk.analytic_kernels` or ``predict.gp_inference`` with
        ``diag_reg``.

    activation_params: {name: float} the fitted activation parameters ({} when none were
        asked for).
    """

    weight_var: Tensor
    bias_var: Tensor
    diag_reg: Tensor
    log_evidence: Tensor
    spec: LayerSpec
    activation_params: dict = {}


def fit_kernel_hyperparameters(
    model_or_spec: Union[nn.Module, LayerSpec],
    x: Tensor,
    y: Tensor,
    *,
    kernel: str = "nngp",
    per_layer: bool = False,
    fit: Iterable[str] = FITTABLE,
    diag_reg: Optional[float] = None,
    method: str = "lbfgs",
    steps: int = 100,
    lr: float = 0.05,
    activation_params: Optional[Mapping] = None,
) -> FittedHyperparameters:
    """Learn σ_w², σ_b² and the ridge σ² of an architecture by gradient ascent on the GP
    marginal likelihood of (x, y) with the architecture's NNGP (or NTK) as prior.

    Args:
        model_or_spec: a model that lifts or a LayerSpec (MLP or CNN); its variances are
            the starting point (each fitted one must be > 0).
        x: [N, n_0] (or images for a CNN), float64 recommended.
        y: [N] or [N, C] targets (C independent outputs sharing the kernel), x's dtype.
        kernel: "nngp" (the Bayesian prior of the network at initialization) or "ntk".
        per_layer: one σ_w² and σ_b² per linear layer (True) or one of each shared by all
            of them (False).
        fit: which of "weight_var", "bias_var", "diag_reg" to learn (at least one); the
            others stay at their starting values.
        diag_reg: the starting noise variance (> 0 when fitted); None: a tenth of the
            mean square of y.
        method: "lbfgs" (default: ``torch.optim.LBFGS`` with a strong-Wolfe line search,
            at most ``steps`` iterations and 2·``steps`` evaluations; stops earlier when
            the step or gradient is negligible) or "adam" (``steps`` Adam steps of initial
            size ``lr`` with a cosine decay to 0; for noisy objectives, e.g. minibatches).
        steps: the iteration budget (see ``method``); lr: Adam's step (unused by L-BFGS).
        activation_params: activation parameters to fit as well, {name: starting value}
            (numbers), each shared by every activation layer (e.g. ``{"negative_slope":
            0.2}`` for a leaky ReLU network); None: the activations stay as they are.

    Returns:
        :class:`FittedHyperparameters`. Cost per step: one differentiable kernel [N, N]
        and one Cholesky factorization (O(N³/3)).

    Raises:
        TypeError / ValueError: x or y malformed (as ``analytic_kernels`` and
        ``gp_marginal_likelihood``), an unknown ``kernel`` or ``fit`` name, a fitted
        variance that starts at 0, steps < 0 or lr ≤ 0, an activation parameter the
        activations do not have (or ≤ 0 where it must be positive).
    """
    name = "fit_kernel_hyperparameters"
    spec = as_spec(model_or_spec, name)
    if kernel not in ("nngp", "ntk"):
        raise ValueError(f"{name}: kernel must be 'nngp' or 'ntk'; got {kernel!r}")
    fit = check_choices(name, "fit", fit if isinstance(fit, str) else tuple(fit), FITTABLE)
    steps = check_int(name, "steps", steps, minimum=0)
    if method not in ("lbfgs", "adam"):
        raise ValueError(f"{name}: method must be 'lbfgs' or 'adam'; got {method!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"{name}: lr must be a positive number; got {lr!r}")
    if not isinstance(x, Tensor):
        check_batch(name, "x", x)
    if not isinstance(y, Tensor):
        raise TypeError(f"{name}: y must be a torch.Tensor [N] or [N, C]; got "
                        f"{type(y).__name__}")
    if y.shape[:1] != x.shape[:1]:
        raise ValueError(f"{name}: y must be a tensor [N] or [N, C] with N = {x.shape[0]} "
                         f"rows like x; got {list(y.shape)}")
    if activation_params is not None and not isinstance(activation_params, Mapping):
        raise TypeError(f"{name}: activation_params must be a mapping {{name: starting "
                        f"value}}; got {type(activation_params).__name__}")
    acts = {}
    if activation_params:  # names and values checked against the activations first
        spec = with_activation_params(spec, x, dict(activation_params), name)
    for key, value in (activation_params or {}).items():
        value = float(value)
        if key in POSITIVE and not value > 0:
            raise ValueError(f"{name}: activation_params[{key!r}] starts at {value!r}; it "
                             f"must start > 0 (it is fitted by its logarithm)")
        acts[key] = torch.tensor(math.log(value) if key in POSITIVE else value,
                                 dtype=x.dtype, device=x.device).requires_grad_(True)
    if diag_reg is None:
        diag_reg = 0.1 * float(y.detach().double().square().mean())
    layers = [layer for layer in spec.layers if isinstance(layer, (Conv, Dense))]
    biased = [k for k, layer in enumerate(layers) if layer.has_bias]
    like = dict(dtype=x.dtype, device=x.device)
    start = {
        "weight_var": [float(layer.weight_var) for layer in layers],
        "bias_var": [float(layers[k].bias_var) for k in biased],
        "diag_reg": [float(diag_reg)],
    }
    if not per_layer:  # shared: start from the mean over the layers
        start = {key: v[:1] if key == "diag_reg" or not v else [sum(v) / len(v)]
                 for key, v in start.items()}
    logs = {}
    for key, values in start.items():
        if key in fit and values:
            if min(values) <= 0:
                raise ValueError(f"{name}: {key} starts at {min(values)!r}; a fitted variance "
                                 f"must start > 0 (it is fitted by its logarithm): set it in "
                                 f"the model/spec (or diag_reg=) or leave it out of fit=")
            logs[key] = torch.tensor(values, **like).log().requires_grad_(True)

    def current(key: str) -> Tensor:
        if key in logs:
            return logs[key].exp()
        return torch.tensor(start[key], **like)

    def variances() -> tuple[Tensor, Tensor, Tensor]:
        w = current("weight_var").expand(len(layers))
        b = torch.zeros(len(layers), **like)
        if biased:
            b = b.index_put((torch.tensor(biased, device=x.device),),
                            current("bias_var").expand(len(biased)))
        return w, b, current("diag_reg")[0]

    def activation_values() -> Optional[dict]:
        return {k: v.exp() if k in POSITIVE else v for k, v in acts.items()} or None

    def objective() -> Tensor:
        w, b, noise = variances()
        k = getattr(analytic_kernels(spec, x, get=kernel, weight_var=w, bias_var=b,
                                     activation_params=activation_values()), kernel)
        return gp_marginal_likelihood(k, y, noise)

    trace = []
    fitted_tensors = list(logs.values()) + list(acts.values())
    if fitted_tensors and method == "lbfgs":
        optimizer = torch.optim.LBFGS(fitted_tensors, lr=1.0, max_iter=steps,
                                      max_eval=2 * steps, tolerance_grad=1e-9,
                                      tolerance_change=1e-12, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad(set_to_none=True)
            loss = -objective()
            trace.append(-float(loss.detach()))
            loss.backward()
            return loss

        if steps:
            optimizer.step(closure)
    elif fitted_tensors:
        optimizer = torch.optim.Adam(fitted_tensors, lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            value = objective()
            trace.append(float(value.detach()))
            (-value).backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        trace.append(float(objective()))
        w, b, noise = variances()
        fitted_acts = {k: float(v) for k, v in (activation_values() or {}).items()}
    fitted = with_variances(spec, x, [float(v) for v in w], [float(v) for v in b],
                            function=name)
    fitted = with_activation_params(fitted, x, fitted_acts or None, name)
    return FittedHyperparameters(w.detach().clone(), b.detach().clone(), noise.detach().clone(),
                                 torch.tensor(trace, dtype=torch.float64), fitted, fitted_acts)

