"""Random networks of an MLP architecture and their random features (Jacot et al. §3.1).

``random_network``, ``random_features`` and the readout features of the NNGP.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..analytic.kernels import KERNEL_NAMES
from ..lifting.lift import Dense, LayerSpec, chain_modules, lift_module, mlp_spec
from ..nn import NTKLinear
from .._utils.runtime import forked_rng, seed_all
from ..empirical.mlp_plan import StructuredPlan
from .._utils.validation import check_batch, check_int

__all__ = ["SpecOrWidths", "build_network", "random_features", "random_network",
           "readout_features", "spec_at_width"]

SpecOrWidths = Union[LayerSpec, Sequence[int]]


def apply_in_chunks(name: str, arg: str, seed: int, x: Tensor, chunk: Optional[int],
                    fn: Callable[[Tensor], Tensor]) -> list[Tensor]:
    """[fn(x[i:i+chunk]) for each chunk] (chunk None: one), an error of the model on x
    reported as a ValueError naming ``name``, ``arg`` and the network's ``seed``."""
    parts = []
    step = chunk or x.shape[0]
    for start in range(0, x.shape[0], step):
        try:
            parts.append(fn(x[start:start + step]))
        except (RuntimeError, ValueError) as error:
            raise ValueError(
                f"{name}: {arg} of shape {list(x.shape)} does not fit the model of seed "
                f"{seed} ({error})"
            ) from error
    return parts


@torch.no_grad()
def readout_features(name: str, model: nn.Module, arg: str, x: Tensor,
                     chunk: Optional[int], seed: int) -> Tensor:
    """[σ_w α(x)/√n, σ_b] [N, n + 1] float64, α the input of the last dense layer.

    ``name`` (the calling function), ``arg`` (x's name) and ``seed`` (the network's)
    make the error messages; ``chunk`` samples per forward pass (None: all).
    """
    body, dense = _last_dense(name, model, seed)

    def features(a: Tensor) -> Tensor:
        for module in body:
            a = module(a)
        return a.reshape(a.shape[0], -1).to(torch.float64)

    a = torch.cat(apply_in_chunks(name, arg, seed, x, chunk, features))
    if a.shape[1] != dense.in_features:
        raise ValueError(
            f"{name}: the last dense layer of the model of seed {seed} expects "
            f"{dense.in_features} features; the layers before it give {a.shape[1]}"
        )
    if not bool(torch.isfinite(a).all()):
        raise ValueError(f"{name}: the model of seed {seed} produced NaN or Inf")
    bias = torch.full((a.shape[0], 1), math.sqrt(dense.bias_var), dtype=a.dtype,
                      device=a.device)
    return torch.cat([a * math.sqrt(dense.weight_var / dense.in_features), bias], 1)


def _last_dense(function: str, model: nn.Module, seed: int) -> tuple[list[nn.Module], Dense]:
    """The modules before the last dense layer, and that layer lifted (bound to its module).

    Only the last layer must lift: the modules before it may be anything.
    """
    try:
        modules = chain_modules(model)
    except ValueError as error:
        raise ValueError(
            f"{function}: nngp_estimator='readout' needs an nn.Sequential (or a chain of "
            f"layers, torch_ntk.lift) ending in a dense layer; the model of seed {seed} is "
            f"{type(model).__name__} ({error}). Use nngp_estimator='outputs'."
        ) from error
    while modules and isinstance(modules[-1][1], (nn.Identity, nn.Dropout)):
        modules.pop()
    position, last = modules[-1] if modules else (None, None)
    try:
        dense = lift_module(last, position) if modules else None
    except ValueError:  # e.g. a subclass with its own forward
        dense = None
    if not isinstance(dense, Dense):
        raise ValueError(
            f"{function}: nngp_estimator='readout' needs the model to end in NTKLinear or "
            f"nn.Linear; the model of seed {seed} ends in {type(last).__name__}. Use "
            "nngp_estimator='outputs'."
        )
    return [m for _, m in modules[:-1]], dense


def random_network(
    spec_or_widths: SpecOrWidths,
    width: Optional[int] = None,
    seed: int = 0,
    *,
    activation="relu",
    weight_std: float = 1.0,
    bias_std: float = 0.1,
    parametrization: str = "ntk",
    dtype: Optional[torch.dtype] = None,
    device=None,
) -> nn.Sequential:
    """The MLP of an architecture at hidden width n, drawn from ``seed``.

    Args:
        spec_or_widths: a :class:`~torch_ntk.LayerSpec` (its σ_w², σ_b²,
            activations and parametrization are kept) or widths [n_0, n_1, …, n_L]
            (built like :func:`torch_ntk.mlp_spec` with ``activation``, ``weight_std``,
            ``bias_std``, ``parametrization``).
        width: n, the width given to every hidden layer; None keeps the spec's widths.
        seed: torch's generators are seeded with it for the draw and restored after.
        dtype, device: of the parameters (default torch's).

    Returns:
        ``nn.Sequential`` of NTKLinear and activation modules; the same network as
        ``monte_carlo_kernels`` draws for seed ``seed`` with ``model_fn`` building the
        architecture in the same dtype.
    """
    spec = spec_at_width("random_network", spec_or_widths, width, activation, weight_std,
                         bias_std, parametrization)
    seed = check_int("random_network", "seed", seed, minimum=None)
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.init()  # so the draw uses a generator that is seeded and restored
    with forked_rng():
        seed_all(seed)
        return build_network(spec, dtype, device)


def random_features(
    spec_or_widths: SpecOrWidths,
    width: Optional[int],
    x: Tensor,
    seed: int = 0,
    kernel: str = "nngp",
    *,
    activation="relu",
    weight_std: float = 1.0,
    bias_std: float = 0.1,
    parametrization: str = "ntk",
) -> Tensor:
    """Random features Φ(x) of the network of width n drawn from ``seed`` (Jacot §3.1).

    Their Gram Φ(x1) Φ(x2)ᵀ is that network's finite-width kernel; its mean over seeds
    tends to the infinite-width kernel as n → ∞ (exactly equal for one hidden layer),
    with fluctuations O(n^−½):

    - ``kernel="nngp"``: Φ(x) = [σ_w α(x)/√n, σ_b] [N, n + 1], α the last hidden
      layer's activations: ΦΦᵀ = E over the output layer of f_k(x1) f_k(x2), the NNGP
      given the hidden layers, i.e. n random functions σ_w α_j with the bias as one
      more (the "readout" estimator of :func:`monte_carlo_kernels`).
    - ``kernel="ntk"``: Φ(x) = ∂f(x)/∂θ / √n_L flattened over (output k, parameter p)
      [N, n_L·P]: ΦΦᵀ = Σ_k Θ_kk / n_L, the trace-mode empirical NTK (the
      linearized network's features). Built from the structured factors
      (√c_w δ ⊗ α and √c_b δ per dense layer); holds N·n_L·P numbers.

    Args:
        spec_or_widths, width, activation, weight_std, bias_std, parametrization: the
            architecture, as in :func:`random_network`.
        x: [N, n_0] float32/float64; the network is drawn in its dtype and on its device.
        seed: which network (the caller's generators are restored).
        kernel: "nngp" or "ntk".

    Returns:
        Φ(x) [N, P_features] in x's dtype.
    """
    name = "random_features"
    if kernel not in KERNEL_NAMES:
        raise ValueError(f"{name}: kernel must be one of {KERNEL_NAMES}; got {kernel!r}")
    spec = spec_at_width(name, spec_or_widths, width, activation, weight_std, bias_std,
                         parametrization)
    x = check_batch(name, "x", x)
    if x.dim() != 2 or x.shape[1] != spec.input_features:
        raise ValueError(
            f"{name}: x must have shape [N, {spec.input_features}] (the architecture's n_0); "
            f"got {list(x.shape)}"
        )
    model = random_network(spec, None, seed, dtype=x.dtype, device=x.device)
    if kernel == "nngp":
        return readout_features(name, model, "x", x, None, seed).to(x.dtype)
    plan = StructuredPlan.of(model)
    acts, cots = plan.features(x)
    cw, cb = plan.coefficients()
    n, n_out = x.shape[0], plan.n_out
    blocks = []
    for a, d, c_w, c_b in zip(acts, cots, cw, cb):
        # d [N, n_L, m], a [N, n_in]: weight features δ_k ⊗ α, bias features δ_k
        weight = math.sqrt(c_w) * d.unsqueeze(-1) * a[:, None, None, :]  # [N, n_L, m, n_in]
        blocks.append(weight.reshape(n, n_out, -1))
        if c_b:
            blocks.append(math.sqrt(c_b) * d)
    return torch.cat(blocks, 2).reshape(n, -1) / math.sqrt(n_out)


def spec_at_width(name: str, spec_or_widths: SpecOrWidths, width: Optional[int], activation,
                  weight_std: float, bias_std: float, parametrization: str) -> LayerSpec:
    """The architecture as a LayerSpec with every hidden width set to ``width`` (None: kept).

    ``spec_or_widths`` is a LayerSpec or widths [n_0, …, n_L] (built by
    :func:`torch_ntk.mlp_spec` with the other arguments); ``name`` is the caller, for errors.
    Resized dense layers are no longer bound to a module.
    """
    if isinstance(spec_or_widths, LayerSpec):
        spec = spec_or_widths
    elif isinstance(spec_or_widths, Sequence) and not isinstance(spec_or_widths, str):
        widths = list(spec_or_widths)
        if len(widths) < 2 or not all(
            isinstance(w, numbers.Integral) and not isinstance(w, bool) and w >= 1 for w in widths
        ):
            raise ValueError(
                f"{name}: spec_or_widths must be a LayerSpec or widths [n_0, ..., n_L] of at "
                f"least two positive integers; got {spec_or_widths!r}"
            )
        spec = mlp_spec([int(w) for w in widths], activation, weight_std, bias_std,
                        parametrization)
    else:
        raise TypeError(
            f"{name}: spec_or_widths must be a torch_ntk.LayerSpec or a list of widths; "
            f"got {type(spec_or_widths).__name__}"
        )
    spec.require_mlp(name)
    if width is None:
        return spec
    width = check_int(name, "width", width, minimum=1)
    dense = list(spec.dense_layers)
    if len(dense) < 2:
        raise ValueError(f"{name}: the architecture has no hidden layer, so width={width} "
                         "has nothing to set; pass width=None")
    layers = list(spec.layers)
    for k, d in enumerate(dense):
        changes = {}
        if k > 0:
            changes["in_features"] = width
        if k < len(dense) - 1:
            changes["out_features"] = width
        layers[2 * k] = dataclasses.replace(d, source=None, **changes)
    return LayerSpec(tuple(layers), spec.flatten_input)


def build_network(spec: LayerSpec, dtype, device) -> nn.Sequential:
    """NTKLinear/activation modules for ``spec`` (parameters from torch's generator)."""
    modules: list[nn.Module] = [nn.Flatten()] if spec.flatten_input else []
    for k, layer in enumerate(spec.layers):
        if k % 2 == 0:
            modules.append(NTKLinear(
                layer.in_features, layer.out_features, bias=layer.has_bias,
                weight_std=math.sqrt(layer.weight_var), bias_std=math.sqrt(layer.bias_var),
                parametrization=layer.parametrization, dtype=dtype, device=device,
            ))
        else:
            modules.append(layer.module())
    return nn.Sequential(*modules)
