"""The layer spec: a model's architecture as the kernels read it.

A spec is a list of nodes, each a layer (a descriptor of :mod:`torch_ntk.layers`) with the
indices of the nodes it reads (:class:`Node`; -1 is the model's input). A chain — each node
reads the one before — is written in one of two grammars:

- an MLP: ``Dense, Activation, Dense, …, Dense`` (L ≥ 1 dense layers);
- a CNN: ``Conv, [Activation], [pool], …, readout, Dense, [Activation, Dense …]``: a Conv
  first, then layers of role ``"spatial"`` (Conv, AvgPool, …) and activations, one
  layer of role ``"readout"`` (GlobalAvgPool, Flatten, …), an MLP tail.

A layer kind says where it goes by its class attribute ``role`` ("dense", "spatial",
"readout", "join", "norm"; activations have none); a readout's ``keeps_positions`` says
whether the next Dense takes channels × positions (Flatten) or the channels (global pools).

A **graph** spec gives each node's inputs: ``LayerSpec(layers, inputs=((-1,), (0,), (-1,
1), …))`` in topological order, the last node the output. Joins — ``Add`` (a residual
sum), ``Concat`` — read several nodes; :attr:`LayerSpec.layers` stays the nodes'
layers in order. A spec holding a join or a LayerNorm is always a graph (its ``inputs``
default to the chain's); its checks (topology, shapes, independence of summed branches,
Gaussian inputs of activations) are ``torch_ntk.lifting.graph_spec``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Union

from torch import Tensor

from ..activations import Activation, from_name
from ..layers.base import window_output
from ..layers.conv import Conv
from ..layers.dense import Dense
from .._utils.validation import check_batch
from .graph_spec import check_graph, node_shapes

__all__ = ["GRAPH_ROLES", "Layer", "LayerSpec", "Node", "mlp_spec", "role"]

Layer = object  # a descriptor of torch_ntk.layers or an Activation

GRAPH_ROLES = ("join", "norm")  # kinds only a graph spec holds


def role(layer) -> Optional[str]:
    """The layer's place in the grammar: "dense", "spatial", "readout", "activation"."""
    return "activation" if isinstance(layer, Activation) else getattr(layer, "role", None)


class Node(NamedTuple):
    """One layer of a spec and the nodes it reads (indices into the spec's nodes; -1 the
    model's input). A chain's node k reads (k − 1,)."""

    layer: Layer
    inputs: tuple


def _name(layer) -> str:
    return type(layer).__name__


def _check_cnn(layers: tuple) -> None:
    """ValueError unless ``layers`` is Conv, [Activation], [pool], …, a readout, then an MLP
    tail Dense, Activation, …, Dense (channels and spatial dims consistent)."""
    readout = next((k for k, layer in enumerate(layers) if role(layer) == "readout"), None)
    if readout is None:
        raise ValueError("LayerSpec: a CNN spec needs a readout (GlobalAvgPool, Flatten, …) "
                         "followed by Dense layers")
    channels, dims = layers[0].in_channels, layers[0].dims
    for k, layer in enumerate(layers[:readout]):
        if role(layer) not in ("spatial", "activation"):
            raise ValueError(f"LayerSpec: layer {k} of a CNN spec must be a Conv, Activation or "
                             f"pooling layer before the readout; got "
                             f"{_name(layer)}")
        if role(layer) == "activation" and (k == 0 or role(layers[k - 1]) == "activation"):
            raise ValueError(f"LayerSpec: layer {k} (an Activation) must follow a Conv or a "
                             "pooling layer")
        if role(layer) == "activation" and _pooled_activation(layers, k):
            raise ValueError(f"LayerSpec: layer {k} (an Activation) follows a pooling of an "
                             "activation's output, which is not Gaussian at infinite width; "
                             "put a Conv between them")
        if role(layer) == "spatial" and layer.dims != dims:
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
    first, out = tail[0].in_features, layers[readout]
    if not out.keeps_positions and first != channels:
        raise ValueError(f"LayerSpec: the Dense after {_name(out)} has in_features={first}; "
                         f"the last Conv has {channels} channels")
    if out.keeps_positions and first % channels:
        raise ValueError(f"LayerSpec: the Dense after {_name(out)} has in_features={first}, not "
                         f"a multiple of the last Conv's {channels} channels")
    LayerSpec(tail)  # the MLP tail's own checks


def _pooled_activation(layers: tuple, k: int) -> bool:
    """Whether layer ``k``'s input is pools (no weight layer) of an activation's output."""
    before = k - 1
    while before >= 0 and role(layers[before]) == "spatial" and not isinstance(
            layers[before], Conv):
        before -= 1
    return before < k - 1 and before >= 0 and role(layers[before]) == "activation"


@dataclass(frozen=True)
class LayerSpec:
    """An MLP as ``Dense, Activation, Dense, …, Dense`` (L dense layers, L ≥ 1), or a CNN
    as ``Conv, [Activation], [pool], …, readout, Dense, …, Dense`` (it starts with a Conv;
    see :attr:`is_mlp`). The module doc has the grammar; :attr:`nodes` the graph view.

    ``flatten_input`` is True when an MLP starts with ``nn.Flatten``: inputs of
    any shape [N, ...] are then flattened to [N, n_0].

    ``inputs``: None for a chain, else one tuple per node of the nodes it reads (-1: the
    model's input), a graph (module doc); a spec with a join or a LayerNorm gets the
    chain's inputs when none are given.
    """

    layers: tuple
    flatten_input: bool = False
    inputs: Optional[tuple] = None

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        object.__setattr__(self, "layers", layers)
        if not layers:
            raise ValueError("LayerSpec: a spec needs at least one Dense layer")
        inputs = self.inputs
        if inputs is None and any(role(layer) in GRAPH_ROLES for layer in layers):
            inputs = tuple((k - 1,) for k in range(len(layers)))
        if inputs is not None:
            inputs = tuple(tuple(reads) if isinstance(reads, (tuple, list)) else reads
                           for reads in inputs)
            object.__setattr__(self, "inputs", inputs)
            check_graph(layers, inputs)
            return
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
    def nodes(self) -> tuple[Node, ...]:
        """The graph view of the spec, in which node k is layer k reading ``inputs[k]`` (a
        chain's node k reads k − 1; -1 is the input) and the last node is the output."""
        if self.inputs is None:
            return tuple(Node(layer, (k - 1,)) for k, layer in enumerate(self.layers))
        return tuple(Node(layer, reads) for layer, reads in zip(self.layers, self.inputs))

    @property
    def is_graph(self) -> bool:
        """True for a graph spec (``inputs`` given, or a join or LayerNorm in it): only
        the torch walker and the Jacobian/ntk_vp engines run it, not the chains' fused and
        structured paths."""
        return self.inputs is not None

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

    # ----------------------------------------------------------------------- inputs

    def output_size(self, size: tuple) -> Optional[tuple]:
        """The spatial size (H, W) at the readout for inputs of spatial size ``size`` (2-D;
        1-D as (1, L)), or None when a layer's output would be empty (or, in a graph, the
        inputs of a join differ in size)."""
        if self.is_graph:
            return self._graph_output_size(tuple(size))
        for layer in self.layers:
            if role(layer) == "spatial":
                size = window_output(layer.window(), size)
                if min(size) < 1:
                    return None
        return tuple(size)

    def _graph_output_size(self, size: tuple) -> Optional[tuple]:
        sizes: dict = {-1: size}
        for k, (layer, reads) in enumerate(self.nodes):
            got = {sizes[i] for i in reads}
            if None in got or len(got) != 1:
                sizes[k] = None
                continue
            (now,) = got
            if role(layer) == "spatial":
                now = window_output(layer.window(), now)
                now = now if min(now) >= 1 else None
            sizes[k] = now
            if role(layer) == "readout":
                return now
        return None

    def readout_positions(self) -> Optional[int]:
        """P at a readout that keeps positions (the next Dense's in_features / channels),
        None for a global pool (or an MLP)."""
        if self.is_graph:
            shapes = node_shapes(self.layers, self.inputs)
            for k, (layer, reads) in enumerate(self.nodes):
                if isinstance(layer, Dense) and shapes[reads[0]][0] == "flat":
                    return layer.in_features // shapes[reads[0]][1]
            return None
        k = next((k for k, layer in enumerate(self.layers) if role(layer) == "readout"), None)
        if k is None or not self.layers[k].keeps_positions:
            return None
        channels = [layer.out_channels for layer in self.layers[:k]
                    if isinstance(layer, Conv)][-1]
        return self.layers[k + 1].in_features // channels

    def check_input(self, function: str, name: str, x: Tensor,
                    like: Optional[Tensor] = None) -> Tensor:
        """x validated for this spec, as ``function``'s argument ``name``: [N, n_0] for an
        MLP (any [N, ...] flattened when it starts with Flatten), [N, C, H, W] or [N, C, L]
        for a 2-D or 1-D CNN whose readout gets the positions its next Dense takes.

        Raises:
            TypeError, ValueError: as ``check_batch`` (NaN,
                empty batch, dtype/device unlike ``like``); ValueError naming the expected
                per-sample shape otherwise.
        """
        if self.is_mlp:
            return check_batch(function, name, x, like=like, features=self.input_features,
                               flatten=self.flatten_input)
        x = check_batch(function, name, x, like=like)
        dims, channels = self.spatial_dims, self.in_channels
        wanted = f"{channels}, H, W" if dims == 2 else f"{channels}, L"
        positions = self.readout_positions()
        if x.dim() != dims + 2 or x.shape[1] != channels:
            raise ValueError(f"{function}: {name} must have shape [N, {wanted}] for this CNN; "
                             f"got {list(x.shape)}")
        size = tuple(x.shape[2:]) if dims == 2 else (1, x.shape[2])
        out = self.output_size(size)
        if out is not None and (positions is None or out[0] * out[1] == positions):
            return x
        if positions is not None:
            sizes = {(h, w): self.output_size((h, w))
                     for h in (range(1, 129) if dims == 2 else (1,)) for w in range(1, 129)}
            fits = sorted((hw for hw, o in sizes.items() if o and o[0] * o[1] == positions),
                          key=lambda hw: (hw[0] != hw[1], hw))
            if fits:
                wanted = ", ".join(map(str, (channels, *fits[0]) if dims == 2 else
                                       (channels, fits[0][1])))
            why = (f"the dense layer after the Flatten takes {positions} positions per channel; "
                   f"these inputs give {'none' if out is None else out[0] * out[1]}")
        else:
            why = "the image is smaller than the network's receptive field"
        raise ValueError(f"{function}: {name} must have per-sample shape [{wanted}] ({why}); "
                         f"got {list(x.shape[1:])}")


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
    layers: list = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        if i > 0:
            layers.append(act)
        layers.append(
            Dense(n_in, n_out, weight_std**2, bias_std**2 if bias else 0.0, parametrization, bias)
        )
    return LayerSpec(tuple(layers))
