"""Activation parameters as overrides of a spec, differentiable when they are tensors (issue 30).

``analytic_kernels(model, x1, x2, activation_params=...)`` replaces parameters of the spec's
activation layers (:func:`with_activation_params`), like ``weight_var`` / ``bias_var`` for the
linear layers (``torch_ntk.analytic.autograd.with_variances``). ``activation_params`` is

- a mapping ``{name: value}`` applied to every activation layer (each must have every name),
- or a sequence with one entry per activation layer, in order: a mapping or None (keep).

A value is a number or a 0-dim tensor of x1's dtype and device (Polynomial's ``coef``: one
per coefficient, a sequence or a 1-D tensor of the polynomial's length). Tensors may require
grad: the kernels then run on the differentiable torch path and autograd differentiates the
dual maps E[φ(u)φ(v)], E[φ′(u)φ′(v)] in the parameters:

==============  ===================  ==========================================================
activation      parameters           dual map on the differentiable path
==============  ===================  ==========================================================
leaky_relu      ``negative_slope``   closed form (b − a)²·E_relu + ab·q12 with a = s, b = 1
                                     (``torch_ntk.layers.dual.abrelu``; no NaN at ρ = ±1)
elu             ``alpha``            2-D Gauss–Hermite quadrature (the degree of its x-grads)
softplus        ``beta``             Hermite series in torch (quadrature with a degree given)
ABReLU          ``a``, ``b``         closed form, as leaky_relu
Exp, Gaussian   ``a``, ``b``         closed forms (``torch_ntk.layers.dual``)
Sin, Cos        ``a``, ``b``, ``c``  closed form
Rbf             ``gamma``            closed form (Sin with b = √(2γ))
Polynomial      ``coef``             exact finite Hermite series
==============  ===================  ==========================================================

Refused with a ValueError that names the layer, the activation and what it has: a name the
activation does not have; discrete settings (GELU's ``approximate``, the ``degree`` of
RectifiedMonomial and Monomial); activations on the numeric Hermite series (CELU, Mish, an
``Elementwise`` without a kernel map: set their parameters on the module; the series has no
gradient path).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import Tensor

from ..activations import Activation
from ..layers.dual.abrelu import abrelu_dual
from ..layers.elementwise import NumericActivation, numeric_activation
from ..lifting.lift import LayerSpec

__all__ = ["POSITIVE", "REGISTERED", "TensorParamActivation", "activation_param_tensors",
           "with_activation_params"]

#: Parameters that must stay positive (a fit parametrizes them by their logarithm).
POSITIVE = ("beta", "gamma")


class _Registered(NamedTuple):
    """A registered activation's parameter: its name, φ(x, p), φ′(x, p) and, for a closed
    form, (E[φφ], E[φ′φ′])(q11, q22, q12, p), all with p a number or a 0-dim tensor."""

    param: str
    phi: Callable[[Tensor, Any], Tensor]
    dphi: Callable[[Tensor, Any], Tensor]
    closed: Optional[Callable] = None


def _where(cond: Tensor, a, b: Tensor) -> Tensor:
    return torch.where(cond, torch.as_tensor(a, dtype=b.dtype, device=b.device), b)


REGISTERED: dict[str, _Registered] = {
    "leaky_relu": _Registered(
        "negative_slope", lambda x, p: torch.where(x > 0, x, p * x),
        lambda x, p: _where(x > 0, 1.0, p * torch.ones_like(x)),
        lambda q11, q22, q12, p: abrelu_dual(q12, q11, q22, p, 1.0)),
    "elu": _Registered(  # exp of min(x, 0): no overflow in the branch not taken
        "alpha", lambda x, p: torch.where(x > 0, x, p * torch.expm1(torch.clamp(x, max=0))),
        lambda x, p: _where(x > 0, 1.0, p * torch.exp(torch.clamp(x, max=0)))),
    "softplus": _Registered(  # linear where βx > 20, as nn.Softplus
        "beta",
        lambda x, p: torch.where(p * x > 20, x, torch.log1p(torch.exp(
            torch.clamp(p * x, max=20))) / p),
        lambda x, p: _where(p * x > 20, 1.0, torch.sigmoid(p * x))),
}
_DISCRETE = {"gelu": ("approximate",)}  # registered settings that are choices, not numbers


@dataclass(frozen=True, eq=False)
class TensorParamActivation(Activation):
    """A registered activation whose parameter is a tensor ``value`` (``param`` holds its
    float for the fused ops and the series' scale): φ, φ′ and the closed form are computed
    with the tensor, so autograd reaches it. Compared by identity."""

    value: Optional[Tensor] = field(default=None, repr=False)

    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __call__(self, x: Tensor) -> Tensor:
        return REGISTERED[self.name].phi(x, self.value)

    def derivative(self, x: Tensor) -> Tensor:
        return REGISTERED[self.name].dphi(x, self.value)

    def closed_form(self, q11: Tensor, q22: Tensor, q12: Tensor) -> tuple[Tensor, Tensor]:
        closed = REGISTERED[self.name].closed
        if closed is None:
            return super().closed_form(q11, q22, q12)  # raises: no closed form
        return closed(q11, q22, q12, self.value)


def activation_param_tensors(activation_params) -> list:
    """The tensors in an ``activation_params`` argument (to know whether one requires grad)."""
    entries = (activation_params if isinstance(activation_params, (list, tuple))
               else [activation_params])
    out: list = []
    for entry in entries:
        if isinstance(entry, Mapping):
            for value in entry.values():
                if isinstance(value, Tensor):
                    out.append(value)
                elif isinstance(value, (list, tuple)):
                    out += [v for v in value if isinstance(v, Tensor)]
    return out


def with_activation_params(spec: LayerSpec, x1: Tensor, activation_params,
                           function: str = "analytic_kernels") -> LayerSpec:
    """``spec`` with the parameters of its activation layers replaced (module doc for the
    forms of ``activation_params``); tensors keep their autograd history. None: ``spec``."""
    if activation_params is None:
        return spec
    index = [k for k, layer in enumerate(spec.layers) if isinstance(layer, Activation)]
    if isinstance(activation_params, Mapping):
        entries = [activation_params] * len(index)
    elif isinstance(activation_params, (list, tuple)):
        if len(activation_params) != len(index):
            raise ValueError(f"{function}: activation_params must have one entry (a mapping "
                             f"or None) per activation layer ({len(index)}); got "
                             f"{len(activation_params)}")
        entries = list(activation_params)
    else:
        raise TypeError(f"{function}: activation_params must be a mapping {{name: value}} "
                        f"(every activation layer) or a sequence of mappings (one per "
                        f"activation layer); got {type(activation_params).__name__}")
    layers = list(spec.layers)
    for k, entry in zip(index, entries):
        if entry is None:
            continue
        if not isinstance(entry, Mapping):
            raise TypeError(f"{function}: activation_params for layer {k} must be a mapping "
                            f"{{name: value}} or None; got {type(entry).__name__}")
        if entry:
            layers[k] = _override(layers[k], dict(entry), f"{function}: activation_params "
                                  f"for layer {k} ({layers[k].name})", x1)
    return dataclasses.replace(spec, layers=tuple(layers))


def _names(act: Activation) -> tuple[tuple[str, ...], tuple[str, ...], Optional[type]]:
    """(the settable parameters, the discrete settings, the dual family's class or None)."""
    if isinstance(act, NumericActivation):
        family = type(act.source) if act.source is not None and act.has_closed_form else None
        if family is None:
            return (), (), None
        return getattr(family, "PARAMS", ()), getattr(family, "DISCRETE", ()), family
    rule = REGISTERED.get(act.name)
    return ((rule.param,) if rule else ()), _DISCRETE.get(act.name, ()), None


def _override(act: Activation, values: dict, where: str, like: Tensor) -> Activation:
    names, discrete, family = _names(act)
    for name in values:
        if name in names:
            continue
        if name in discrete:
            raise ValueError(f"{where}: {name!r} is a discrete setting, not a number to "
                             f"differentiate; build the model with the value wanted")
        if isinstance(act, NumericActivation) and not act.has_closed_form:
            raise ValueError(f"{where}: an activation on the numeric Hermite series has no "
                             f"parameters to override (set them on its module; gradients "
                             f"through the series are not offered); got {name!r}")
        has = f"its parameters: {', '.join(names)}" if names else "it has none"
        raise ValueError(f"{where}: the activation has no parameter {name!r}; {has}")
    checked = {name: _value(f"{where}: {name}", value, like, _length(act, name))
               for name, value in values.items()}
    try:
        if family is None:  # a registered activation
            (name, value), = checked.items()
            if isinstance(value, Tensor):
                return TensorParamActivation(act.name, float(value.detach()), None, value)
            return Activation(act.name, value)
        merged = {n: getattr(act.source, n) for n in names}
        merged.update(checked)
        instance = numeric_activation(family(**{n: _floats(v) for n, v in merged.items()}))
    except ValueError as error:  # the family's or registry's own domain checks
        raise ValueError(f"{where}: {error}") from error
    if not activation_param_tensors([merged]):
        return instance
    kernel_map = family.kernel_map
    return dataclasses.replace(instance, closed=lambda q11, q22, q12: kernel_map(
        q12, q11, q22, **merged))


def _length(act: Activation, name: str) -> Optional[int]:
    """The entries a vector parameter takes (Polynomial's coef), None for a scalar."""
    if name == "coef" and isinstance(act, NumericActivation):
        return len(act.source.coef)
    return None


def _floats(value):
    if isinstance(value, (list, tuple)):
        return [_floats(v) for v in value]
    return float(value.detach()) if isinstance(value, Tensor) else float(value)


def _value(where: str, value, like: Tensor, length: Optional[int]):
    """A number or a 0-dim tensor of ``like``'s dtype and device (``length``: a sequence or a
    1-D tensor of that many entries, returned as a list)."""
    if length is not None:
        if isinstance(value, Tensor):
            _same_kind(where, value, like)
            if value.dim() != 1 or value.shape[0] != length:
                raise ValueError(f"{where} must have one entry per coefficient ({length}); got "
                                 f"shape {list(value.shape)}")
            value = list(value.unbind(0))
        elif not isinstance(value, (list, tuple)) or len(value) != length:
            raise ValueError(f"{where} must be a sequence or 1-D tensor of {length} entries "
                             f"(one per coefficient); got {value!r}")
        return [_value(f"{where}[{i}]", v, like, None) for i, v in enumerate(value)]
    if isinstance(value, Tensor):
        _same_kind(where, value, like)
        if value.dim() != 0:
            raise ValueError(f"{where} must be a number or a 0-dim tensor; got shape "
                             f"{list(value.shape)}")
        if not bool(torch.isfinite(value)):
            raise ValueError(f"{where} must be finite; got {float(value)}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where} must be a number or a 0-dim tensor; got "
                        f"{type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{where} must be finite; got {value}")
    return float(value)


def _same_kind(where: str, value: Tensor, like: Tensor) -> None:
    if value.dtype != like.dtype:
        raise ValueError(f"{where} must have the dtype of x1 ({like.dtype}); got {value.dtype}")
    if value.device != like.device:
        raise ValueError(f"{where} must be on x1's device ({like.device}); got {value.device}")
