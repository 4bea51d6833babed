"""What every layer kind shares, and the registries a kind file fills with decorators.

A layer kind is one file in :mod:`torch_ntk.layers` holding its descriptor (a frozen
dataclass of the layer's law and shape) and the functions that say what the layer is to
each consumer, each registered by a decorator of this module:

- ``@lifts(*module_types)``: ``(position, module, options) -> descriptor | None``, how a
  torch module lifts (:data:`LIFTERS`, read by :func:`torch_ntk.lifting.lift`);
- ``@lifts_functional((op, target), ...)``: ``(call, *args, **kwargs) -> [modules]``, the
  modules computing a functional call that torch.fx records (:data:`FUNCTIONALS`, read by
  ``torch_ntk.lifting.fx`` after its own table);
- ``@kernel_rule(Kind, planes=..., variances=..., joins=...)``: ``(layer, state) ->
  state``, the layer's infinite-width map on a :class:`~torch_ntk.layers.state.KernelState`
  (:data:`KERNEL_RULES`, walked by :mod:`torch_ntk.analytic.graph`); ``planes=True``
  when the rule needs full position–position planes (not only same-position diagonals),
  ``variances=True`` when it reads the per-side variances ``state.var1``/``var2``,
  ``joins=True`` for a node of several inputs: ``(layer, states) -> state``;
- ``@op_encoding(Kind)``: ``layer -> (code, ints, floats)``, the layer in the fused CNN
  op's program (:data:`OP_ENCODINGS`, read by :mod:`torch_ntk.analytic.fused`); a kind
  without one makes the torch walker run the spec.

This module imports none of the kind files (they import it), so the tables are filled
when :mod:`torch_ntk.layers` imports every kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Union

from torch import nn

from ..nn import PARAMETRIZATIONS

__all__ = ["EMPIRICAL_HINT", "FUNCTIONALS", "KERNEL_RULES", "KernelRule", "LIFTERS", "Lifter",
           "LiftOptions", "OP_ENCODINGS", "Position", "WeightLaw", "check_law", "describe",
           "kernel_rule", "lifts", "lifts_functional", "op_encoding", "refusal", "rule_of",
           "window_output"]

Position = Union[int, str]  # a module's index in the model, "i.j" inside nested Sequentials

EMPIRICAL_HINT = ("A Monte-Carlo estimate of the infinite-width limit of any architecture: "
                  "torch_ntk.monte_carlo_kernels(model_fn, x); finite-width kernels of any "
                  "model: empirical_ntk(..., method='hooks', 'jacobian' or 'ntk_vp')")


@dataclass(frozen=True)
class LiftOptions:
    """σ_w², σ_b² assumed for ``nn.Linear`` layers (None: PyTorch's initialization)."""

    linear_weight_var: Optional[float] = None
    linear_bias_var: Optional[float] = None


def describe(position: Position, module: nn.Module) -> str:
    """``"module 3 (Conv2d)"``: how errors name a module."""
    return f"module {position} ({type(module).__name__})"


def refusal(position: Position, module: nn.Module, why: str) -> ValueError:
    """The ValueError of a module that does not lift, saying why and where to go instead."""
    return ValueError(f"lift: {describe(position, module)} does not lift: {why}. "
                      f"{EMPIRICAL_HINT}")


# --------------------------------------------------------------------------- weight law


def check_law(kind: str, layer) -> None:
    """ValueError naming ``kind`` unless the layer's parametrization is known and its
    σ_w², σ_b² are non-negative."""
    if layer.parametrization not in PARAMETRIZATIONS:
        raise ValueError(
            f"{kind}: parametrization must be one of {PARAMETRIZATIONS}; "
            f"got {layer.parametrization!r}"
        )
    if not layer.weight_var >= 0 or not layer.bias_var >= 0:
        raise ValueError(
            f"{kind}: weight_var and bias_var must be non-negative; got {layer.weight_var}, "
            f"{layer.bias_var}"
        )


class WeightLaw:
    """The NTK coefficients of a layer z = W̃a + b̃ with Var(W̃) = σ_w²/n_in, Var(b̃) = σ_b²
    (Dense with n_in = in_features, Conv with n_in = fan_in): its parameters contribute
    (c_w·⟨a, a′⟩ + c_b)·⟨δ, δ′⟩ to the NTK."""

    @property
    def ntk_weight_coef(self) -> float:
        """c_w: the NTK term of W is c_w·⟨a, a′⟩ (σ_w²/n_in for ntk, 1 for standard)."""
        return self.weight_var / self.in_features if self.parametrization == "ntk" else 1.0

    @property
    def ntk_bias_coef(self) -> float:
        """c_b: the NTK term of b (σ_b² for ntk, 1 for standard, 0 without bias)."""
        if not self.has_bias:
            return 0.0
        return self.bias_var if self.parametrization == "ntk" else 1.0


def window_output(window: tuple, size: tuple) -> tuple:
    """The 2-D output size (H′, W′) of a sliding window ``(kernel, stride, dilation,
    padding)`` (2-D, padding as (before, after) per dim) over inputs of size (H, W):
    H′ = ⌊(H + pad − d·(k − 1) − 1)/s⌋ + 1."""
    k, s, d, p = window
    return tuple((n + sum(p[i]) - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i, n in enumerate(size))


# --------------------------------------------------------------------------- registries


Lifter = Callable[[Position, nn.Module, LiftOptions], Optional[object]]

# Module type → its lifting: the layer it is, or None for a no-op of the kernels
# (a subclass lifts like its nearest listed base when it keeps that base's forward).
LIFTERS: dict[type, Lifter] = {}

# (fx op, target) → builder(call, *args after the input, **kwargs) → the modules computing
# the call; read by torch_ntk.lifting.fx after its own FUNCTIONALS table.
FUNCTIONALS: dict[tuple, Callable] = {}


class KernelRule(NamedTuple):
    """A layer kind's infinite-width map and what it needs of the state."""

    fn: Callable
    planes: bool = False
    variances: bool = False
    joins: bool = False


KERNEL_RULES: dict[type, KernelRule] = {}

OP_ENCODINGS: dict[type, Callable] = {}


def _register(table: dict, keys: tuple, value, what: str) -> None:
    for key in keys:
        if key in table:
            raise ValueError(f"{what}: {key!r} is registered twice")
        table[key] = value


def lifts(*module_types: type) -> Callable[[Lifter], Lifter]:
    """Register ``fn(position, module, options) -> layer | None`` as the lifting of
    ``module_types`` (and of their subclasses that keep the base's forward)."""
    def register(fn: Lifter) -> Lifter:
        _register(LIFTERS, module_types, fn, "lifts")
        return fn
    return register


def lifts_functional(*keys: tuple) -> Callable:
    """Register ``builder(call, *args, **kwargs) -> [modules]`` for the fx nodes
    ``(op, target)`` in ``keys`` (op "call_function" with the function, or "call_method"
    with the method's name). ``call`` has ``node``, ``input``, ``batch`` and ``dims`` (the
    spatial dims of the last convolution, None outside convolutions)."""
    def register(fn: Callable) -> Callable:
        _register(FUNCTIONALS, keys, fn, "lifts_functional")
        return fn
    return register


def kernel_rule(kind: type, *, planes: bool = False, variances: bool = False,
                joins: bool = False) -> Callable:
    """Register ``fn(layer, state) -> state`` as the infinite-width map of layers of
    ``kind``. ``planes``: the rule needs position–position planes (the walker then keeps
    planes for the whole spec); ``variances``: it reads ``state.var1``/``state.var2``;
    ``joins``: a join of several nodes (a residual sum, a concatenation), registered as
    ``fn(layer, states) -> state`` with ``states`` the tuple of its inputs' states in the
    order of the node's inputs."""
    if joins and variances:
        raise ValueError("kernel_rule: a join rule reads no per-side variances")

    def register(fn: Callable) -> Callable:
        _register(KERNEL_RULES, (kind,), KernelRule(fn, planes, variances, joins),
                  "kernel_rule")
        return fn
    return register


def op_encoding(kind: type) -> Callable:
    """Register ``fn(layer) -> (code, ints, floats)``: the layer in the fused CNN op's
    program (csrc/ops/cnn_kernels: the op's layer codes and argument order)."""
    def register(fn: Callable) -> Callable:
        _register(OP_ENCODINGS, (kind,), fn, "op_encoding")
        return fn
    return register


def rule_of(table: dict, layer) -> Optional[object]:
    """The entry of ``table`` for the layer's type or its nearest registered base."""
    for cls in type(layer).__mro__:
        if cls in table:
            return table[cls]
    return None
