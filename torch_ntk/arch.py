"""Lift an ``nn.Sequential`` MLP into a layer spec.

A spec is the alternating sequence ``Dense, Activation, Dense, …, Dense`` that
the analytic and structured kernels consume. Lifting accepts ``NTKLinear`` (either
parametrization), ``nn.Linear``, the registered activations
(:mod:`torch_ntk.activations`), and ``nn.Identity``, ``nn.Flatten`` and ``nn.Dropout``
(no-ops for kernels; Dropout only in eval mode for finite-width kernels). Two
dense layers in a row are joined by an identity activation. Anything else raises
ValueError naming the module and its position; so does a subclass of an accepted type
that overrides ``forward`` (its layer formula is unknown).

The lifted spec is bound to the model: each ``Dense`` and ``Activation`` carries the
module it came from (``source``), so consumers run the model through the spec instead
of walking it again. How each module type lifts is one table (:data:`LIFTERS`): a new
layer kind is one layer class and one entry there.

Example::

    >>> spec = lift(ntk_mlp([3, 64, 1], "erf"))
    >>> [type(layer).__name__ for layer in spec.layers]
    ['Dense', 'Activation', 'Dense']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

from torch import nn

from .activations import Activation, from_module, from_name, module_types
from .nn import PARAMETRIZATIONS, NTKLinear

__all__ = ["Dense", "LIFTERS", "LayerSpec", "LiftOptions", "flat_modules", "lift", "lift_module",
           "mlp_spec"]


@dataclass(frozen=True)
class Dense:
    """A dense layer: its law at initialization and its parametrization.

    At initialization z = W̃ a + b̃ with Var(W̃_ij) = σ_w²/n_in and Var(b̃_i) = σ_b²
    (whatever the parametrization). The parametrization decides the NTK: the layer
    contributes (c_w·⟨a, a′⟩ + c_b)·⟨δ, δ′⟩, see ``ntk_weight_coef``/``ntk_bias_coef``.

    Attributes:
        in_features, out_features: n_in and n_out.
        weight_var: σ_w² — the law of the function has Var(z_i) = σ_w²·|a|²/n_in + σ_b².
        bias_var: σ_b² (0 when the layer has no bias).
        parametrization: "ntk" or "standard".
        has_bias: whether b exists (and so contributes to the NTK).
        position: index of the module in the lifted model (None for hand-built specs).
        source: the module it was lifted from (None for hand-built specs).
    """

    in_features: int
    out_features: int
    weight_var: float = 1.0
    bias_var: float = 0.01
    parametrization: str = "ntk"
    has_bias: bool = True
    position: Optional[Union[int, str]] = field(default=None, compare=False)
    source: Optional[nn.Module] = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.parametrization not in PARAMETRIZATIONS:
            raise ValueError(
                f"Dense: parametrization must be one of {PARAMETRIZATIONS}; "
                f"got {self.parametrization!r}"
            )
        if not self.weight_var >= 0 or not self.bias_var >= 0:
            raise ValueError(
                f"Dense: weight_var and bias_var must be non-negative; got {self.weight_var}, "
                f"{self.bias_var}"
            )

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


Layer = Union[Dense, Activation]


@dataclass(frozen=True)
class LayerSpec:
    """An MLP as ``Dense, Activation, Dense, …, Dense`` (L dense layers, L ≥ 1).

    ``flatten_input`` is True when the model starts with ``nn.Flatten``: inputs of
    any shape [N, ...] are then flattened to [N, n_0].
    """

    layers: tuple[Layer, ...]
    flatten_input: bool = False

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        object.__setattr__(self, "layers", layers)
        if not layers:
            raise ValueError("LayerSpec: a spec needs at least one Dense layer")
        for k, layer in enumerate(layers):
            expected = Dense if k % 2 == 0 else Activation
            if not isinstance(layer, expected):
                raise ValueError(
                    f"LayerSpec: layer {k} must be a {expected.__name__} (specs alternate Dense, "
                    f"Activation, ..., Dense); got {type(layer).__name__}"
                )
        if not isinstance(layers[-1], Dense):
            raise ValueError("LayerSpec: the last layer must be Dense")
        dense = self.dense_layers
        for a, b in zip(dense[:-1], dense[1:]):
            if a.out_features != b.in_features:
                raise ValueError(
                    f"LayerSpec: a dense layer with out_features={a.out_features} is followed "
                    f"by one with in_features={b.in_features}"
                )

    @property
    def dense_layers(self) -> tuple[Dense, ...]:
        return self.layers[0::2]

    @property
    def activations(self) -> tuple[Activation, ...]:
        return self.layers[1::2]

    @property
    def input_features(self) -> int:
        return self.layers[0].in_features

    @property
    def output_features(self) -> int:
        return self.layers[-1].out_features

    @property
    def depth(self) -> int:
        """L, the number of dense layers."""
        return len(self.dense_layers)


def mlp_spec(
    widths: Sequence[int],
    activation: Union[str, Activation] = "relu",
    weight_std: float = 1.0,
    bias_std: float = 0.1,
    parametrization: str = "ntk",
    bias: bool = True,
) -> LayerSpec:
    """The spec of ``ntk_mlp(widths, activation, ...)`` without building the model."""
    act = from_name(activation) if isinstance(activation, str) else activation
    widths = list(widths)
    if len(widths) < 2:
        raise ValueError(f"mlp_spec: widths must have at least two entries; got {widths!r}")
    layers: list[Layer] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        if i > 0:
            layers.append(act)
        layers.append(
            Dense(n_in, n_out, weight_std**2, bias_std**2 if bias else 0.0, parametrization, bias)
        )
    return LayerSpec(tuple(layers))


Position = Union[int, str]  # a module's index in the model, "i.j" inside nested Sequentials


def _describe(position: Position, module: nn.Module) -> str:
    return f"module {position} ({type(module).__name__})"


@dataclass(frozen=True)
class LiftOptions:
    """σ_w², σ_b² assumed for ``nn.Linear`` layers (None: PyTorch's initialization)."""

    linear_weight_var: Optional[float] = None
    linear_bias_var: Optional[float] = None


def _lift_dense(position: Position, module: nn.Module, options: LiftOptions) -> Dense:
    has_bias = module.bias is not None
    if isinstance(module, NTKLinear):
        return Dense(
            module.in_features, module.out_features, module.weight_std**2,
            module.bias_std**2 if has_bias else 0.0, module.parametrization, has_bias, position,
            module,
        )
    fan_in = module.in_features
    weight_var, bias_var = options.linear_weight_var, options.linear_bias_var
    weight_var = 1.0 / 3.0 if weight_var is None else float(weight_var)
    bias_var = 1.0 / (3.0 * fan_in) if bias_var is None else float(bias_var)
    return Dense(
        fan_in, module.out_features, weight_var, bias_var if has_bias else 0.0, "standard",
        has_bias, position, module,
    )


def _lift_activation(position: Position, module: nn.Module, options: LiftOptions) -> Activation:
    return from_module(module)


def _lift_no_op(position: Position, module: nn.Module, options: LiftOptions) -> None:
    return None


def _lift_flatten(position: Position, module: nn.Flatten, options: LiftOptions) -> None:
    if module.end_dim != -1:
        raise ValueError(
            f"lift: {_describe(position, module)} must flatten to the last dimension "
            "(end_dim=-1)"
        )
    return None


Lifter = Callable[[Position, nn.Module, LiftOptions], Optional[Union[Dense, Activation]]]

# Module type → its lifting: the layer it is, or None for a no-op of the kernels
# (a subclass lifts like its nearest listed base when it keeps that base's forward).
LIFTERS: dict[type, Lifter] = {
    NTKLinear: _lift_dense,
    nn.Linear: _lift_dense,
    nn.Identity: _lift_no_op,
    nn.Dropout: _lift_no_op,
    nn.Flatten: _lift_flatten,
    **{t: _lift_activation for t in module_types()},
}


def lift_module(
    module: nn.Module,
    position: Position = 0,
    linear_weight_var: Optional[float] = None,
    linear_bias_var: Optional[float] = None,
) -> Optional[Layer]:
    """The layer one module lifts to (bound to it), or None for a kernel no-op.

    Raises:
        ValueError: a module type that does not lift, a subclass that overrides
            ``forward``, or unsupported settings (naming the module and ``position``).
    """
    for cls in type(module).__mro__:
        lifter = LIFTERS.get(cls)
        if lifter is None:
            continue
        if type(module).forward is not cls.forward:
            raise ValueError(
                f"lift: {_describe(position, module)} overrides forward, so its layer formula "
                "is unknown"
            )
        return lifter(position, module, LiftOptions(linear_weight_var, linear_bias_var))
    raise ValueError(
        f"lift: {_describe(position, module)} does not lift to an MLP layer spec; "
        "supported: NTKLinear, nn.Linear, registered activations "
        "(torch_ntk.activations.REGISTRY), nn.Identity, nn.Flatten, nn.Dropout"
    )


def flat_modules(model: nn.Sequential, prefix: str = ""):
    """(position, module) of the leaves of nested Sequentials, positions like 3 or "1.0"."""
    for i, module in enumerate(model):
        if isinstance(module, nn.Sequential):
            yield from flat_modules(module, f"{prefix}{i}.")
        else:
            yield (f"{prefix}{i}" if prefix else i), module


def lift(
    model: nn.Module,
    linear_weight_var: Optional[float] = None,
    linear_bias_var: Optional[float] = None,
) -> LayerSpec:
    """The layer spec of an ``nn.Sequential`` MLP, each layer bound to its module.

    Args:
        model: ``nn.Sequential`` (nested Sequentials are flattened) of NTKLinear,
            nn.Linear, registered activations, nn.Identity, nn.Flatten, nn.Dropout.
        linear_weight_var, linear_bias_var: σ_w², σ_b² assumed for ``nn.Linear`` layers
            (standard parametrization). Default: PyTorch's initialization, uniform on
            ±1/√fan_in, i.e. σ_w² = 1/3 and σ_b² = 1/(3·fan_in).

    Raises:
        ValueError: a module that does not lift (naming it and its position), a
            subclass of a supported type that overrides ``forward``, a model that does
            not start and end with a dense layer, or two activations in a row.
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError(
            f"lift: the model must be an nn.Sequential MLP; got {type(model).__name__}"
        )
    layers: list[Layer] = []
    flatten_input = False
    for position, module in flat_modules(model):
        layer = lift_module(module, position, linear_weight_var, linear_bias_var)
        if layer is None:
            if isinstance(module, nn.Flatten) and not layers:
                flatten_input = True
            continue
        if isinstance(layer, Dense):
            if layers and isinstance(layers[-1], Dense):
                layers.append(Activation("identity"))
            layers.append(layer)
            continue
        if not layers:
            raise ValueError(
                f"lift: {_describe(position, module)} comes before the first dense layer; "
                "the model must start with a dense layer"
            )
        if isinstance(layers[-1], Activation):
            raise ValueError(
                f"lift: {_describe(position, module)} follows another activation; "
                "two activations in a row do not lift"
            )
        layers.append(layer)
    if not layers:
        raise ValueError("lift: the model has no dense layer")
    if isinstance(layers[-1], Activation):
        raise ValueError(
            "lift: the model ends with an activation; the output layer must be dense"
        )
    return LayerSpec(tuple(layers), flatten_input)
