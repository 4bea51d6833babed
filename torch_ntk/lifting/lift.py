"""Lift an MLP or CNN — an ``nn.Sequential``, or any module whose forward torch.fx reads as
a chain of layers (:mod:`torch_ntk.fx_lift`) — into a layer spec.

An MLP spec is the alternating sequence ``Dense, Activation, Dense, …, Dense`` that
the analytic and structured kernels consume; a CNN spec is ``Conv, [Activation],
[AvgPool], …, GlobalAvgPool | Flatten, Dense, [Activation, Dense …]`` (only the
infinite-width kernels take it: :mod:`torch_ntk.cnn_analytic`). CNN lifting accepts
``NTKConv1d/2d``, ``nn.Conv1d/2d`` (PyTorch's initialization, groups 1),
``nn.AvgPool1d/2d`` (no padding), ``nn.AdaptiveAvgPool1d/2d(1)`` and
``nn.Flatten``. Lifting accepts ``NTKLinear`` (either
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

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

from torch import nn

from ..activations import Activation, from_module, from_name, module_types
from .._utils.model_context import unwrap
from .fx import FxChain, fx_chain
from ..layers.descriptors import AvgPool, Conv, Dense, Flatten, GlobalAvgPool
from ..nn import NTKConv1d, NTKConv2d, NTKLinear, conv_padding

__all__ = ["AvgPool", "Conv", "Dense", "Flatten", "GlobalAvgPool", "LIFTERS", "LayerSpec",
           "LiftOptions", "chain_modules", "flat_modules", "lift", "lift_module", "mlp_spec"]


Layer = Union[Dense, Activation, Conv, AvgPool, GlobalAvgPool, Flatten]
READOUTS = (GlobalAvgPool, Flatten)


def _check_cnn(layers: tuple) -> None:
    """ValueError unless ``layers`` is Conv, [Activation], [AvgPool], …, a readout, then an MLP
    tail Dense, Activation, …, Dense (channels and spatial dims consistent)."""
    readout = next((k for k, layer in enumerate(layers) if isinstance(layer, READOUTS)), None)
    if readout is None:
        raise ValueError("LayerSpec: a CNN spec needs a GlobalAvgPool or Flatten readout "
                         "followed by Dense layers")
    channels, dims = layers[0].in_channels, layers[0].dims
    for k, layer in enumerate(layers[:readout]):
        if not isinstance(layer, (Conv, Activation, AvgPool)):
            raise ValueError(f"LayerSpec: layer {k} of a CNN spec must be a Conv, Activation or "
                             f"AvgPool before the readout; got {type(layer).__name__}")
        if isinstance(layer, Activation) and (k == 0 or isinstance(layers[k - 1], Activation)):
            raise ValueError(f"LayerSpec: layer {k} (an Activation) must follow a Conv or AvgPool")
        if isinstance(layer, (Conv, AvgPool)) and layer.dims != dims:
            raise ValueError(f"LayerSpec: layer {k} has {layer.dims} spatial dims; the first "
                             f"Conv has {dims}")
        if isinstance(layer, Conv):
            if layer.in_channels != channels:
                raise ValueError(f"LayerSpec: layer {k} (Conv) has in_channels="
                                 f"{layer.in_channels}; the layer before gives {channels}")
            channels = layer.out_channels
    tail = layers[readout + 1:]
    if not tail or not isinstance(tail[0], Dense):
        raise ValueError(f"LayerSpec: the readout (layer {readout}) must be followed by a Dense "
                         "layer")
    first = tail[0].in_features
    if isinstance(layers[readout], GlobalAvgPool) and first != channels:
        raise ValueError(f"LayerSpec: the Dense after GlobalAvgPool has in_features={first}; "
                         f"the last Conv has {channels} channels")
    if isinstance(layers[readout], Flatten) and first % channels:
        raise ValueError(f"LayerSpec: the Dense after Flatten has in_features={first}, not a "
                         f"multiple of the last Conv's {channels} channels")
    LayerSpec(tail)  # the MLP tail's own checks


@dataclass(frozen=True)
class LayerSpec:
    """An MLP as ``Dense, Activation, Dense, …, Dense`` (L dense layers, L ≥ 1), or a CNN
    as ``Conv, [Activation], [AvgPool], …, GlobalAvgPool | Flatten, Dense, …, Dense``
    (it starts with a Conv; see :attr:`is_mlp`).

    ``flatten_input`` is True when an MLP starts with ``nn.Flatten``: inputs of
    any shape [N, ...] are then flattened to [N, n_0].
    """

    layers: tuple[Layer, ...]
    flatten_input: bool = False

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        object.__setattr__(self, "layers", layers)
        if not layers:
            raise ValueError("LayerSpec: a spec needs at least one Dense layer")
        if isinstance(layers[0], Conv):
            _check_cnn(layers)
            return
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
    def is_mlp(self) -> bool:
        """True for an MLP spec, False for a CNN spec (it starts with a Conv)."""
        return not isinstance(self.layers[0], Conv)

    def require_mlp(self, function: str) -> None:
        """ValueError naming ``function`` when the spec is a CNN's."""
        if not self.is_mlp:
            raise ValueError(
                f"{function}: this is a CNN spec (it starts with a Conv layer); {function} "
                "handles MLP specs only. Infinite-width CNN kernels: torch_ntk.analytic_kernels "
                "or NTK.limit; finite-width ones: empirical_ntk(..., method='jacobian' or "
                "'ntk_vp')")

    @property
    def dense_layers(self) -> tuple[Dense, ...]:
        return tuple(layer for layer in self.layers if isinstance(layer, Dense))

    @property
    def activations(self) -> tuple[Activation, ...]:
        return tuple(layer for layer in self.layers if isinstance(layer, Activation))

    @property
    def input_features(self) -> int:
        """n_0 of an MLP (ValueError for a CNN spec, whose inputs are [N, C, ...])."""
        self.require_mlp("LayerSpec.input_features")
        return self.layers[0].in_features

    @property
    def in_channels(self) -> int:
        """C_0, the input channels of a CNN spec."""
        return self.layers[0].in_channels

    @property
    def spatial_dims(self) -> int:
        """0 for an MLP, 1 or 2 for a CNN (its inputs are [N, C, L] or [N, C, H, W])."""
        return 0 if self.is_mlp else self.layers[0].dims

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


def _lift_flatten(position: Position, module: nn.Flatten, options: LiftOptions) -> Flatten:
    """A Flatten: the readout after convolutions, a no-op of an MLP (:func:`lift` decides)."""
    if module.end_dim != -1:
        raise ValueError(
            f"lift: {_describe(position, module)} must flatten to the last dimension "
            "(end_dim=-1)"
        )
    return Flatten(position, module)


def _refuse(position: Position, module: nn.Module, why: str) -> ValueError:
    return ValueError(f"lift: {_describe(position, module)} does not lift: {why}. "
                      f"{EMPIRICAL_HINT}")


EMPIRICAL_HINT = ("A Monte-Carlo estimate of the infinite-width limit of any architecture: "
                  "torch_ntk.monte_carlo_kernels(model_fn, x); finite-width kernels of any "
                  "model: empirical_ntk(..., method='jacobian' or 'ntk_vp')")


def _lift_conv(position: Position, module: nn.Module, options: LiftOptions) -> Conv:
    """NTKConv1d/2d with its own law; nn.Conv1d/2d with PyTorch's initialization
    (U(±1/√fan_in): σ_w² = 1/3, σ_b² = 1/(3·fan_in), standard parametrization)."""
    has_bias = module.bias is not None
    if isinstance(module, (NTKConv1d, NTKConv2d)):
        return Conv(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                    module.dilation, module.padding_pairs, module.padding_mode,
                    module.weight_std**2, module.bias_std**2 if has_bias else 0.0,
                    module.parametrization, has_bias, position, module)
    if module.groups != 1:
        raise _refuse(position, module, f"groups={module.groups} (only groups=1 lifts)")
    if module.padding_mode not in ("zeros", "circular"):
        raise _refuse(position, module, f"padding_mode={module.padding_mode!r} (only 'zeros' "
                      "and 'circular' lift)")
    kernel = tuple(module.kernel_size)
    fan_in = module.in_channels * math.prod(kernel)
    padding = conv_padding("lift", module.padding, kernel, tuple(module.stride),
                           tuple(module.dilation))
    return Conv(module.in_channels, module.out_channels, kernel, tuple(module.stride),
                tuple(module.dilation), padding, module.padding_mode, 1.0 / 3.0,
                1.0 / (3.0 * fan_in) if has_bias else 0.0, "standard", has_bias, position, module)


def _lift_avg_pool(position: Position, module: nn.Module, options: LiftOptions) -> AvgPool:
    dims = 1 if isinstance(module, nn.AvgPool1d) else 2
    as_tuple = (lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,) * dims)
    if any(as_tuple(module.padding)) or module.ceil_mode or getattr(
            module, "divisor_override", None) is not None:
        raise _refuse(position, module, "only padding=0, ceil_mode=False and no "
                      "divisor_override lift")
    stride = module.stride if module.stride not in (None, (), []) else module.kernel_size
    return AvgPool(as_tuple(module.kernel_size), as_tuple(stride), position, module)


def _lift_global_pool(position: Position, module: nn.Module,
                      options: LiftOptions) -> GlobalAvgPool:
    size = module.output_size
    if any(s != 1 for s in (size if isinstance(size, (tuple, list)) else (size,))):
        raise _refuse(position, module, f"output_size={size!r} (only global pooling, "
                      "output_size=1, lifts)")
    return GlobalAvgPool(position, module)


Lifter = Callable[[Position, nn.Module, LiftOptions], Optional[Layer]]

# Module type → its lifting: the layer it is, or None for a no-op of the kernels
# (a subclass lifts like its nearest listed base when it keeps that base's forward).
LIFTERS: dict[type, Lifter] = {
    NTKLinear: _lift_dense,
    nn.Linear: _lift_dense,
    nn.Identity: _lift_no_op,
    nn.Dropout: _lift_no_op,
    nn.Flatten: _lift_flatten,
    NTKConv1d: _lift_conv,
    NTKConv2d: _lift_conv,
    nn.Conv1d: _lift_conv,
    nn.Conv2d: _lift_conv,
    nn.AvgPool1d: _lift_avg_pool,
    nn.AvgPool2d: _lift_avg_pool,
    nn.AdaptiveAvgPool1d: _lift_global_pool,
    nn.AdaptiveAvgPool2d: _lift_global_pool,
    **{t: _lift_activation for t in module_types()},
}


def lift_module(
    module: nn.Module,
    position: Position = 0,
    linear_weight_var: Optional[float] = None,
    linear_bias_var: Optional[float] = None,
) -> Optional[Layer]:
    """The layer one module lifts to (bound to it), or None for a kernel no-op
    (``nn.Flatten`` lifts to :class:`Flatten`, which :func:`lift` keeps only as a CNN's
    readout).

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
        f"lift: {_describe(position, module)} does not lift to a layer spec; "
        "supported: NTKLinear, nn.Linear, registered activations "
        "(torch_ntk.activations.REGISTRY), nn.Identity, nn.Flatten, nn.Dropout, NTKConv1d/2d, "
        "nn.Conv1d/2d (groups=1), nn.AvgPool1d/2d, nn.AdaptiveAvgPool1d/2d(1). "
        f"{EMPIRICAL_HINT}"
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
    """The layer spec of an MLP or CNN, each layer bound to its module.

    Args:
        model: ``nn.Sequential`` (nested Sequentials are flattened) of NTKLinear,
            nn.Linear, registered activations, nn.Identity, nn.Flatten, nn.Dropout; a CNN
            starts with NTKConv1d/2d or nn.Conv1d/2d, may pool (nn.AvgPool1d/2d), and reads
            out by nn.Flatten or nn.AdaptiveAvgPool1d/2d(1) into dense layers. Or any
            module whose ``forward`` torch.fx reads as a chain of those modules and of
            their functional forms (``x.relu()``, ``F.gelu``, ``x.flatten(1)``,
            ``F.avg_pool2d``, ``x.mean((2, 3))``, …: :mod:`torch_ntk.fx_lift`); a
            functional call's layer is bound to an equivalent module carrying the fx node
            (``layer.source.fx_node``), and positions are qualified module names or node
            names.
        linear_weight_var, linear_bias_var: σ_w², σ_b² assumed for ``nn.Linear`` layers
            (standard parametrization). Default: PyTorch's initialization, uniform on
            ±1/√fan_in, i.e. σ_w² = 1/3 and σ_b² = 1/(3·fan_in) (always so for nn.Conv).

    Raises:
        ValueError: a module that does not lift (naming it and its position), a
            subclass of a supported type that overrides ``forward``, a model that does
            not start with a dense or conv layer and end with a dense layer, two
            activations in a row, or CNN layers out of order; for a model that is not an
            nn.Sequential, a forward that is not such a chain (naming the fx node: op,
            target and source line).
    """
    chain = _chain(model)
    if isinstance(model, nn.Sequential) and not chain.nodes:
        return _lift_links(chain.links, linear_weight_var, linear_bias_var)
    try:
        return _lift_links(chain.links, linear_weight_var, linear_bias_var, chain.where)
    except ValueError as error:
        raise _with_context(error, "") from error


def chain_modules(model: nn.Module) -> list[tuple[Position, nn.Module]]:
    """The (position, module) links :func:`lift` reads, in order: the leaves of an
    ``nn.Sequential``, or the chain torch.fx reads in another module's forward
    (:func:`torch_ntk.fx_lift.fx_chain`); applied one after the other they compute the model.

    Raises:
        ValueError: a forward that is not a chain (naming the fx node).
    """
    return list(_chain(model).links)


def _chain(model: nn.Module) -> FxChain:
    model = unwrap(model)  # torch.compile, DataParallel, NTK: the module holding the layers
    if isinstance(model, nn.Sequential):
        return _sequential_chain(model)
    try:
        return fx_chain(model, tuple(LIFTERS))
    except ValueError as error:
        raise ValueError(
            "lift: the model must be an nn.Sequential or a module whose forward torch.fx "
            f"reads as a chain of supported layers; {type(model).__name__}: {error}. "
            f"{EMPIRICAL_HINT}") from error


def _sequential_chain(model: nn.Sequential) -> FxChain:
    """The leaves of a Sequential as links; a leaf of the user's own class (neither a type
    that lifts nor one of torch's) is replaced by its fx chain, at positions "i.name"."""
    chain = FxChain()
    for position, module in flat_modules(model):
        if isinstance(module, tuple(LIFTERS)) or type(module).__module__.startswith("torch."):
            chain.links.append((position, module))
            continue
        try:
            inner = fx_chain(module, tuple(LIFTERS))
        except ValueError as error:
            raise ValueError(f"lift: {_describe(position, module)} does not lift: {error}. "
                             f"{EMPIRICAL_HINT}") from error
        for at, leaf in inner.links:
            chain.links.append((f"{position}.{at}", leaf))
            chain.nodes[f"{position}.{at}"] = inner.nodes.get(at)
    return chain


def _with_context(error: ValueError, context: str) -> ValueError:
    """``error``'s message with ``context`` (the fx node) and the empirical hint at its end."""
    message = str(error)
    if message.endswith(EMPIRICAL_HINT):
        message = message[:-len(EMPIRICAL_HINT)].rstrip()
    message = message.rstrip(".") + (f"; {context}" if context else "")
    return ValueError(f"{message}. {EMPIRICAL_HINT}")


def _lift_links(
    links,
    linear_weight_var: Optional[float],
    linear_bias_var: Optional[float],
    where: Optional[Callable[[Position], str]] = None,
) -> LayerSpec:
    """The spec of (position, module) links in order (``where(position)``: the fx node
    behind a link, added to errors)."""
    layers: list[Layer] = []
    flatten_input = convolutional = read_out = False
    for position, module in links:
        try:
            layer = lift_module(module, position, linear_weight_var, linear_bias_var)
            if layer is None:
                continue
            if isinstance(layer, Flatten):
                if convolutional and not read_out:
                    layers.append(layer)
                    read_out = True
                elif not layers:
                    flatten_input = True
                continue  # otherwise a no-op (inside an MLP, or after global pooling)
            if isinstance(layer, (Conv, AvgPool, GlobalAvgPool)):
                if isinstance(layer, Conv) and not layers:
                    convolutional = True
                if not convolutional or read_out:
                    raise _refuse(position, module, "convolutions and pooling lift only at the "
                                  "start of a model, before its Flatten or global pooling readout")
                read_out = isinstance(layer, GlobalAvgPool)
                layers.append(layer)
                continue
            if isinstance(layer, Dense):
                if convolutional and not read_out:
                    raise _refuse(position, module, "a dense layer after convolutions needs an "
                                  "nn.Flatten or nn.AdaptiveAvgPool(1) readout before it")
                if layers and isinstance(layers[-1], Dense):
                    layers.append(Activation("identity"))
                layers.append(layer)
                continue
            if not layers:
                raise ValueError(
                    f"lift: {_describe(position, module)} comes before the first dense layer; "
                    "the model must start with a dense layer (or a convolution)"
                )
            if isinstance(layers[-1], Activation):
                raise ValueError(
                    f"lift: {_describe(position, module)} follows another activation; "
                    "two activations in a row do not lift"
                )
            if isinstance(layers[-1], READOUTS):
                raise _refuse(position, module, "an activation between the readout and the "
                              "dense layer after it")
            layers.append(layer)
        except ValueError as error:
            if where is None:
                raise
            raise _with_context(error, where(position)) from error
    if not layers:
        raise ValueError("lift: the model has no dense layer")
    if isinstance(layers[-1], Activation):
        raise ValueError(
            "lift: the model ends with an activation; the output layer must be dense"
        )
    try:
        return LayerSpec(tuple(layers), flatten_input and not convolutional)
    except ValueError as error:
        raise ValueError(f"lift: {error}") from error
