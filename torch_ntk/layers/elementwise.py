"""Any elementwise activation in the limit: the descriptor, its lifting and dual maps.

:class:`NumericActivation` is an :class:`~torch_ntk.activations.Activation` (the spec
grammar and the activation rule of ``torch_ntk.layers.activation`` take it as one) whose φ
is a torch function rather than a registered id. Its dual maps

    E[φ(u)φ(v)],  E[φ′(u)φ′(v)],  (u, v) ~ N(0, [[q11, q12], [q12, q22]])

come from its closed form when it has one (the families in ``torch_ntk.layers.dual``, a
user kernel map ``Elementwise(fn, nngp_fn=..., ntk_fn=...)``), else from the numeric
Hermite series split at its kinks (``torch_ntk.layers.numeric_series``): for MLP chains
on the CPU its per-sample tables are computed in torch and the fused MLP op sums the
series over the pairs (``torch_ntk.analytic.tabled``); graphs, CNNs and CUDA inputs run
the torch recursion (``torch_ntk.analytic.autograd.mlp_kernels``, the walker).

What lifts here, each with the kinks its type implies:

    nn.Mish ()                nn.Hardswish (−3, 3)          nn.Hardtanh / nn.ReLU6 (min, max)
    nn.Softsign (0)           nn.CELU (0)                   nn.Threshold (threshold)
    nn.Hardsigmoid (−3, 3)    nn.Tanhshrink ()              nn.Softshrink, nn.Hardshrink (±λ)
    nn.LogSigmoid ()          nn.Softplus, threshold ≠ 20 (threshold/β)
    torch_ntk.activations.Elementwise (its declared kinks)

and their functional forms under torch.fx (``F.mish``, ``F.hardtanh``, ``F.relu6``, …;
``torch.clamp`` / ``x.clamp(lo, hi)`` as an Elementwise with kinks at lo and hi).
ELU and SELU (registered ids) take the same series by default (kink at 0), since the
op's 2-D Gauss–Hermite quadrature is 2–3% off at their kink.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..activations import REGISTRY, Activation, Elementwise, autograd_derivative
from .base import LiftOptions, Position, lifts, lifts_functional
from .numeric_series import numeric_expectations

__all__ = ["MODULE_KINKS", "AutogradDerivative", "NumericActivation", "dual_functions", "needs_numeric",
           "numeric_activation"]


@dataclass(frozen=True, eq=False)
class NumericActivation(Activation):
    """An activation given by torch functions: φ (``fn``), φ′ (``dfn``), its ``kinks`` and,
    when known, ``closed(q11, q22, q12) -> (E[φφ], E[φ′φ′])``. Compared by identity."""

    fn: Optional[Callable[[Tensor], Tensor]] = None
    dfn: Optional[Callable[[Tensor], Tensor]] = None
    kinks: tuple = ()
    closed: Optional[Callable] = field(default=None, repr=False)

    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __post_init__(self) -> None:
        if self.fn is None:
            raise TypeError("NumericActivation: fn is required")

    @property
    def id(self) -> int:
        return -1  # no C++ id: the fused ops never see it

    @property
    def default_quadrature_degree(self) -> int:
        return 0

    @property
    def has_closed_form(self) -> bool:
        return self.closed is not None

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def derivative(self, x: Tensor) -> Tensor:
        return self.dfn(x) if self.dfn is not None else autograd_derivative(self.fn, x)

    def module(self) -> nn.Module:
        return self.source if self.source is not None else Elementwise(
            self.fn, self.dfn, self.name, self.kinks)

    def closed_form(self, q11: Tensor, q22: Tensor, q12: Tensor) -> tuple[Tensor, Tensor]:
        if self.closed is None:
            raise ValueError(f"activation {self.name!r} has no closed form; it takes the "
                             "numeric Hermite series")
        return self.closed(q11, q22, q12)


class AutogradDerivative:
    """φ′ of an elementwise module by autograd; ``with_value(x)`` gives (φ(x), φ′(x)) from
    one forward pass (``torch_ntk.layers.numeric_series`` evaluates both on its nodes)."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        self.fn = fn

    def __call__(self, x: Tensor) -> Tensor:
        return autograd_derivative(self.fn, x)

    def with_value(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            y = self.fn(x)
            if not y.requires_grad:
                return y.detach(), torch.zeros_like(x)
            (g,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
        return y.detach(), torch.zeros_like(x) if g is None else g.detach()


def _softplus_kinks(m: nn.Softplus) -> tuple:
    return (m.threshold / m.beta,)


# module type -> its kinks (points where φ or φ′ is not smooth) from the module's settings
MODULE_KINKS: dict[type, Callable[[nn.Module], tuple]] = {
    nn.Mish: lambda m: (),
    nn.Hardswish: lambda m: (-3.0, 3.0),
    nn.Hardtanh: lambda m: (float(m.min_val), float(m.max_val)),  # nn.ReLU6 is one
    nn.Softsign: lambda m: (0.0,),  # φ″ jumps at 0
    nn.CELU: lambda m: (0.0,),
    nn.Threshold: lambda m: (float(m.threshold),),
    nn.Hardsigmoid: lambda m: (-3.0, 3.0),
    nn.Tanhshrink: lambda m: (),
    nn.Softshrink: lambda m: (-float(m.lambd), float(m.lambd)),
    nn.Hardshrink: lambda m: (-float(m.lambd), float(m.lambd)),
    nn.LogSigmoid: lambda m: (),
}


def _kinks_of(module: nn.Module) -> tuple:
    for cls in type(module).__mro__:
        if cls in MODULE_KINKS:
            return MODULE_KINKS[cls](module)
    if isinstance(module, nn.Softplus):
        return _softplus_kinks(module)
    return ()


def numeric_activation(module: nn.Module) -> NumericActivation:
    """The descriptor of an elementwise torch module (one of :data:`MODULE_KINKS`, an
    ``nn.Softplus`` of any threshold, or an :class:`~torch_ntk.activations.Elementwise`)."""
    if isinstance(module, Elementwise):
        closed = None
        if module.nngp_fn is not None:
            nngp_fn, ntk_fn = module.nngp_fn, module.ntk_fn
            closed = lambda q11, q22, q12: (nngp_fn(q12, q11, q22),  # noqa: E731
                                            ntk_fn(q12, q11, q22))
        return NumericActivation(module.name, 0.0, module, module.fn, module.derivative,
                                 module.kinks, closed)
    return NumericActivation(repr(module), 0.0, module, module, AutogradDerivative(module),
                             _kinks_of(module))


@lifts(*MODULE_KINKS, Elementwise)
def lift_elementwise(position: Position, module: nn.Module,
                     options: LiftOptions) -> NumericActivation:
    return numeric_activation(module)


def needs_numeric(act: Activation, series: bool) -> bool:
    """Whether ``act``'s expectations take the numeric path (no fused op computes them):
    every :class:`NumericActivation`, and ELU/SELU when the series is asked for
    (``series``: ``quadrature_degree`` left None and no ``force_quadrature``)."""
    if isinstance(act, NumericActivation):
        return True
    return series and REGISTRY[act.name].numeric_kinks is not None


def dual_functions(act: Activation) -> tuple[Callable, Callable, tuple]:
    """(φ, φ′, kinks) of an activation on the numeric path."""
    if isinstance(act, NumericActivation):
        return act.fn, act.dfn if act.dfn is not None else act.derivative, act.kinks
    kinks = REGISTRY[act.name].numeric_kinks
    return act, act.derivative, tuple(kinks(act.param)) if kinks else ()


def expectations(act: Activation, q11: Tensor, q22: Tensor, q12: Tensor,
                 force_quadrature: bool = False) -> tuple[Tensor, Tensor]:
    """(E[φ(u)φ(v)], E[φ′(u)φ′(v)]) of an activation on the numeric path: its closed form
    (unless ``force_quadrature``), else the numeric series (module doc)."""
    if act.has_closed_form and not force_quadrature:
        return act.closed_form(q11, q22, q12)
    phi, dphi, kinks = dual_functions(act)
    return numeric_expectations(phi, dphi, kinks, q11, q22, q12, name=act.name)


__all__.append("expectations")


def _module(factory: Callable[..., nn.Module], *names: str) -> Callable:
    """A functional's builder: the module ``factory`` with the arguments ``names`` after
    the input (``inplace`` ignored), constants only."""
    def build(call, *args, **kwargs):
        values = {**dict(zip(names, args)), **kwargs}
        values.pop("inplace", None)
        for n, v in values.items():
            if isinstance(v, torch.fx.Node):
                raise ValueError(f"argument {n} is computed at run time; only constants lift")
        return [factory(**values)]
    return build


lifts_functional(("call_function", F.mish))(_module(nn.Mish, "inplace"))
lifts_functional(("call_function", F.hardswish))(_module(nn.Hardswish, "inplace"))
lifts_functional(("call_function", F.hardtanh))(_module(nn.Hardtanh, "min_val", "max_val",
                                                         "inplace"))
lifts_functional(("call_function", F.relu6))(_module(nn.ReLU6, "inplace"))
lifts_functional(("call_function", F.softsign))(_module(nn.Softsign))
lifts_functional(("call_function", F.celu))(_module(nn.CELU, "alpha", "inplace"))
lifts_functional(("call_function", F.threshold))(_module(nn.Threshold, "threshold", "value",
                                                          "inplace"))
lifts_functional(("call_function", F.hardsigmoid))(_module(nn.Hardsigmoid, "inplace"))
lifts_functional(("call_function", F.tanhshrink))(_module(nn.Tanhshrink))
lifts_functional(("call_function", F.softshrink))(_module(nn.Softshrink, "lambd"))
lifts_functional(("call_function", F.hardshrink))(_module(nn.Hardshrink, "lambd"))
lifts_functional(("call_function", F.logsigmoid))(_module(nn.LogSigmoid))


@lifts_functional(("call_function", torch.clamp), ("call_method", "clamp"))
def _clamp(call, min=None, max=None):  # noqa: A002 - torch's argument names
    """torch.clamp(x, lo, hi) / x.clamp(lo, hi): an Elementwise with kinks at lo and hi."""
    for n, v in (("min", min), ("max", max)):
        if isinstance(v, torch.fx.Node) or (v is not None and not isinstance(v, (int, float))):
            raise ValueError(f"argument {n} must be a constant number to lift; got {v!r}")
    kinks = tuple(float(v) for v in (min, max) if v is not None)
    return [Elementwise(lambda t: torch.clamp(t, min, max), name=f"clamp({min}, {max})",
                        kinks=kinks)]
