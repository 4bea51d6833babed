"""Lift an MLP or CNN — an ``nn.Sequential``, or any module whose forward torch.fx reads as
a chain of layers (``torch_ntk.lifting.fx``) — into a layer spec.

An MLP spec is the alternating sequence ``Dense, Activation, Dense, …, Dense`` that
the analytic and structured kernels consume; a CNN spec is ``Conv, [Activation],
[AvgPool], …, GlobalAvgPool | Flatten, Dense, [Activation, Dense …]`` (only the
infinite-width kernels take it: :mod:`torch_ntk.analytic.cnn`). CNN lifting accepts
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
of walking it again. How each module type lifts is one table (:data:`LIFTERS`), filled
by the layer kind files of :mod:`torch_ntk.layers` with ``@lifts(...)`` (more kinds than
listed here may be registered there); the spec and its grammar are
:mod:`torch_ntk.lifting.spec`.

Example::

    >>> spec = lift(ntk_mlp([3, 64, 1], "erf"))
    >>> [type(layer).__name__ for layer in spec.layers]
    ['Dense', 'Activation', 'Dense']
"""

from __future__ import annotations

from typing import Callable, Optional

from torch import nn

from ..activations import Activation, module_types
from .._utils.model_context import unwrap
from ..layers import AvgPool, Conv, Dense, Flatten, GlobalAvgPool
from ..layers.base import (EMPIRICAL_HINT, LIFTERS, Lifter, LiftOptions, Position, describe,
                           refusal)
from .fx import FxChain, fx_chain
from .graph import fx_graph
from .graph_spec import GraphSpecError
from .spec import Layer, LayerSpec, mlp_spec, role

__all__ = ["AvgPool", "Conv", "Dense", "EMPIRICAL_HINT", "Flatten", "GlobalAvgPool", "LIFTERS",
           "LayerSpec", "LiftOptions", "Lifter", "Position", "chain_modules", "flat_modules",
           "lift", "lift_module", "mlp_spec"]


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
                f"lift: {describe(position, module)} overrides forward, so its layer formula "
                "is unknown"
            )
        return lifter(position, module, LiftOptions(linear_weight_var, linear_bias_var))
    raise ValueError(
        f"lift: {describe(position, module)} does not lift to a layer spec; "
        f"supported: {_supported()}. {EMPIRICAL_HINT}"
    )


def _supported() -> str:
    """The module types that lift (torch_ntk.layers.LIFTERS), activations named once."""
    activations = set(module_types())
    names = [("nn." if t.__module__.startswith("torch.") else "") + t.__name__
             for t in LIFTERS if t not in activations]
    return (", ".join(names) + ", registered activations (torch_ntk.activations.REGISTRY) "
            "(see torch_ntk.layers.LIFTERS)")


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
            ``F.avg_pool2d``, ``x.mean((2, 3))``, …: ``torch_ntk.lifting.fx``); a
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
    inner = unwrap(model)
    if not isinstance(inner, tuple(LIFTERS)) and (not isinstance(inner, nn.Sequential) or any(
            _user_block(m) for _, m in flat_modules(inner))):
        try:
            chain = _chain(model)
        except ValueError:  # not a chain: read the forward as a graph
            return _lift_graph(inner, linear_weight_var, linear_bias_var)
    else:
        chain = _chain(model)
    if isinstance(model, nn.Sequential) and not chain.nodes:
        return _lift_links(chain.links, linear_weight_var, linear_bias_var)
    try:
        return _lift_links(chain.links, linear_weight_var, linear_bias_var, chain.where)
    except ValueError as error:
        raise _with_context(error, "") from error


def _user_block(module: nn.Module) -> bool:
    """A module of the user's own class (neither a type that lifts nor one of torch's)."""
    return not isinstance(module, tuple(LIFTERS)) and not type(module).__module__.startswith(
        "torch.")


def _lift_graph(model: nn.Module, linear_weight_var: Optional[float],
                linear_bias_var: Optional[float]) -> LayerSpec:
    """The graph spec of a forward that is not a chain (``torch_ntk.lifting.graph``)."""
    def lift_one(module: nn.Module, position: Position) -> Optional[Layer]:
        return lift_module(module, position, linear_weight_var, linear_bias_var)

    try:
        return fx_graph(model, tuple(LIFTERS), lift_one)
    except ValueError as error:
        message = str(error)
        if message.endswith(EMPIRICAL_HINT):
            message = message[:-len(EMPIRICAL_HINT)].rstrip()
        raise ValueError(
            "lift: the model must be an nn.Sequential or a module whose forward torch.fx "
            f"reads as a graph of supported layers; {type(model).__name__}: "
            f"{message.rstrip('.')}. {EMPIRICAL_HINT}") from error


def chain_modules(model: nn.Module) -> list[tuple[Position, nn.Module]]:
    """The (position, module) links :func:`lift` reads, in order: the leaves of an
    ``nn.Sequential``, or the chain torch.fx reads in another module's forward
    (``torch_ntk.lifting.fx.fx_chain``); applied one after the other they compute the model.

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
            raise ValueError(f"lift: {describe(position, module)} does not lift: {error}. "
                             f"{EMPIRICAL_HINT}") from error
        for at, leaf in inner.links:
            chain.links.append((f"{position}.{at}", leaf))
            chain.nodes[f"{position}.{at}"] = inner.nodes.get(at)
    return chain


def _pools_an_activation(layers: list) -> bool:
    """Whether ``layers`` ends with pools (no convolution) after an activation."""
    k = len(layers)
    while k and role(layers[k - 1]) == "spatial" and not isinstance(layers[k - 1], Conv):
        k -= 1
    return k < len(layers) and k > 0 and isinstance(layers[k - 1], Activation)


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
    layers: list = []
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
            if role(layer) == "norm":  # LayerNorm / GroupNorm(1): the spec checks its input
                if not layers:
                    raise ValueError(f"lift: {describe(position, module)} comes before the "
                                     "first dense layer or convolution")
                layers.append(layer)
                continue
            if role(layer) in ("spatial", "readout"):  # Flatten is handled above
                if isinstance(layer, Conv) and not layers:
                    convolutional = True
                if not convolutional or read_out:
                    raise refusal(position, module, "convolutions and pooling lift only at the "
                                  "start of a model, before its Flatten or global pooling readout")
                read_out = role(layer) == "readout"
                layers.append(layer)
                continue
            if role(layer) == "dense":
                if convolutional and not read_out:
                    raise refusal(position, module, "a dense layer after convolutions needs an "
                                  "nn.Flatten or nn.AdaptiveAvgPool(1) readout before it")
                if layers and isinstance(layers[-1], Dense):
                    layers.append(Activation("identity"))
                layers.append(layer)
                continue
            if not layers:
                raise ValueError(
                    f"lift: {describe(position, module)} comes before the first dense layer; "
                    "the model must start with a dense layer (or a convolution)"
                )
            if isinstance(layers[-1], Activation):
                raise ValueError(
                    f"lift: {describe(position, module)} follows another activation; "
                    "two activations in a row do not lift"
                )
            if role(layers[-1]) == "readout":
                raise refusal(position, module, "an activation between the readout and the "
                              "dense layer after it")
            if _pools_an_activation(layers):
                raise refusal(position, module, "an activation of a pooled activation's output "
                              "(conv → activation → pool → activation): the pool's output is "
                              "not Gaussian at infinite width; put a convolution between them")
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
    except GraphSpecError as error:  # a LayerNorm's input: name the node, where else to go
        at = getattr(layers[error.node], "position", None)
        context = where(at) if where is not None and at is not None else ""
        raise _with_context(ValueError(f"lift: {error}"), context) from error
    except ValueError as error:
        raise ValueError(f"lift: {error}") from error
