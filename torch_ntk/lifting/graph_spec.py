"""The checks of a graph spec: a DAG of layer nodes (``LayerSpec(layers, inputs=...)``).

:func:`check_graph` accepts the nodes when

- **topology**: node k reads earlier nodes only (-1 is the model's input), a join (an
  ``Add`` or a ``Concat``) reads as many nodes as its layer has entries (at least two), any
  other node one; every node but the last is read by a later one; the first node is a Dense
  or a Conv (it fixes the input's shape); the last is a Dense;
- **shapes**: features (MLP, and after a readout) or channels (CNN) agree along each edge:
  a Dense's ``in_features``, a Conv's ``in_channels``, the equal shapes of an Add's inputs,
  the ``widths`` of a Concat, a LayerNorm's ``width``; a LayerNorm over ``"features"``
  reads features, over ``"channels"``/``"channels_positions"`` channels before the readout;
- **independence** (what makes the sum of kernels exact): an Add's inputs are distinct and
  of every two of them one *starts with its own weight layer* — it is a function of the
  outputs of weight layers (Dense, Conv) alone, which the other input does not read, so it
  is independent of the other at infinite width — and one has *mean zero* (a weight
  layer's output, through linear maps, sums, concatenations, LayerNorm or odd activations:
  identity, erf, tanh). Then their cross terms in K (E z·E z′) and in T (through the
  independent weights) vanish. ``x + relu(x)``, ``x + x``, two branches through one
  weight layer, ``relu(a(x)) + relu(b(x))`` (both means positive) are refused;
  ``x + relu(W x)`` is exact;
- **Gaussianity** (what makes the dual-activation recursion exact): an activation's input
  is Gaussian — a weight layer's output, or a pool, sum, concatenation or LayerNorm of
  Gaussians — and of one variance per position (not straight after a concatenation,
  whose parts differ); a LayerNorm's input is a zero-mean Gaussian (not the output of a
  nonlinearity, whose mean E φ(√q z) ≠ 0); an activation reading an affine LayerNorm's
  gain term (``torch_ntk.layers.layernorm``) is a ReLU-family one right after the
  LayerNorm. A ResNet-v1 block ``relu(x + f(x))`` with x a
  post-ReLU output is refused; the pre-activation block ``x + conv(relu(norm(x)))`` is
  exact.

Errors are :class:`GraphSpecError` (a ValueError) carrying the offending node's index, so
that lifting can name the torch.fx node behind it.
"""

from __future__ import annotations

from typing import Optional

from ..activations import Activation
from ..layers.conv import Conv
from ..layers.dense import Dense
from ..layers.layernorm import HOMOGENEOUS

ODD = ("identity", "erf", "tanh")  # activations with φ(−u) = −φ(u): E φ(u) = 0 on N(0, q)

__all__ = ["GraphSpecError", "NodeShape", "check_graph", "node_shapes", "non_feature_axis"]

NodeShape = tuple  # ("features", n) | ("channels", c) | ("flat", c): c channels × positions


class GraphSpecError(ValueError):
    """A graph spec's node breaks a rule (``node``: its index)."""

    def __init__(self, message: str, node: int):
        super().__init__(message)
        self.node = node


def _role(layer) -> Optional[str]:
    return "activation" if isinstance(layer, Activation) else getattr(layer, "role", None)


def _name(k: int, layer) -> str:
    where = getattr(layer, "position", None)
    return f"node {k} ({type(layer).__name__}{'' if where is None else f' at {where}'})"


def _fail(k: int, layer, why: str) -> GraphSpecError:
    return GraphSpecError(f"LayerSpec: {_name(k, layer)} {why}", k)


def _check_topology(layers: tuple, inputs: tuple) -> None:
    if len(inputs) != len(layers):
        raise ValueError(f"LayerSpec: inputs has {len(inputs)} entries for {len(layers)} layers")
    readers = set()
    for k, (layer, reads) in enumerate(zip(layers, inputs)):
        if not isinstance(reads, tuple) or not reads or not all(
                isinstance(i, int) and -1 <= i < k for i in reads):
            raise _fail(k, layer, f"reads {reads!r}; a node reads a tuple of earlier nodes "
                        "(-1: the model's input)")
        arity = getattr(layer, "arity", 1) if _role(layer) == "join" else 1
        if len(reads) != arity:
            raise _fail(k, layer, f"reads {len(reads)} nodes; its layer takes {arity}")
        readers.update(reads)
    unread = [k for k in range(len(layers) - 1) if k not in readers]
    if unread:
        raise _fail(unread[0], layers[unread[0]], "is read by no node: every node must be on a "
                    "path to the output (the last node)")
    if not isinstance(layers[0], (Dense, Conv)):
        raise _fail(0, layers[0], "comes first; a graph spec starts with a Dense or a Conv")
    if not isinstance(layers[-1], Dense):
        raise _fail(len(layers) - 1, layers[-1], "is the output; the last node must be Dense")


def node_shapes(layers: tuple, inputs: tuple) -> dict:
    """{node: the shape of its output} (-1: the model's input); GraphSpecError at a
    mismatch."""
    first = layers[0]
    shapes = {-1: ("channels", first.in_channels) if isinstance(first, Conv)
              else ("features", first.in_features)}
    for k, (layer, reads) in enumerate(zip(layers, inputs)):
        got = [shapes[i] for i in reads]
        kind, width = got[0]
        role = _role(layer)
        if isinstance(layer, Dense):
            if not (kind == "features" and width == layer.in_features
                    or kind == "flat" and layer.in_features % width == 0):
                raise _fail(k, layer, f"has in_features={layer.in_features}; its input gives "
                            f"{_describe(got[0])}")
            shapes[k] = ("features", layer.out_features)
        elif isinstance(layer, Conv):
            if kind != "channels" or width != layer.in_channels:
                raise _fail(k, layer, f"has in_channels={layer.in_channels}; its input gives "
                            f"{_describe(got[0])}")
            if layer.dims != first.dims:
                raise _fail(k, layer, f"has {layer.dims} spatial dims; the first Conv has "
                            f"{first.dims}")
            shapes[k] = ("channels", layer.out_channels)
        elif role in ("spatial", "readout"):
            if kind != "channels":
                raise _fail(k, layer, f"pools positions; its input gives {_describe(got[0])} "
                            "(pools and readouts come after convolutions, before the readout)")
            if role == "spatial" and layer.dims != first.dims:
                raise _fail(k, layer, f"has {layer.dims} spatial dims; the first Conv has "
                            f"{first.dims}")
            shapes[k] = (("flat" if layer.keeps_positions else "features", width)
                         if role == "readout" else got[0])
        elif role == "join" and hasattr(layer, "widths"):
            if len({s[0] for s in got}) != 1 or kind == "flat" or tuple(
                    s[1] for s in got) != tuple(layer.widths):
                raise _fail(k, layer, f"has widths {tuple(layer.widths)}; its inputs give "
                            f"{', '.join(_describe(s) for s in got)}")
            shapes[k] = (kind, sum(layer.widths))
        elif role == "join":
            if len(set(got)) != 1:
                raise _fail(k, layer, "adds inputs of different shapes: "
                            f"{', '.join(_describe(s) for s in got)}")
            shapes[k] = got[0]
        elif role == "norm":
            wanted = "features" if layer.over == "features" else "channels"
            if kind != wanted:
                raise _fail(k, layer, f"normalizes over {layer.over}; its input gives "
                            f"{_describe(got[0])}" + (
                                f": {non_feature_axis(first.dims)}" if kind == "channels"
                                else ""))
            if layer.width is not None and layer.width != width:
                raise _fail(k, layer, f"normalizes {layer.width} features; its input gives "
                            f"{_describe(got[0])}")
            shapes[k] = got[0]
        else:  # an activation or another kind keeping the shape
            shapes[k] = got[0]
    return shapes


def non_feature_axis(dims: int) -> str:
    """Why a LayerNorm over the last axis of a CNN's output is refused, the axis named."""
    shape, axis = ("H, W", "W (the width)") if dims == 2 else ("L", "L (the length)")
    return (f"a LayerNorm over the last axis of a {dims}-D CNN's [N, C, {shape}] normalizes "
            f"the position axis {axis}, not the channels; lift one over the channels between "
            "x.permute(0, 2, 3, 1) and .permute(0, 3, 1, 2), or nn.GroupNorm(1, C) over "
            "(C, H, W)")


def _describe(shape: NodeShape) -> str:
    kind, width = shape
    return {"features": f"{width} features", "channels": f"{width} channels",
            "flat": f"{width} channels × positions (a Flatten)"}[kind]


def _check_laws(layers: tuple, inputs: tuple) -> None:
    """Independence at each Add, Gaussian inputs of activations and LayerNorms (module doc)."""
    gaussian, homogeneous, zero_mean, gain = {-1: False}, {-1: True}, {-1: False}, {-1: False}
    bases: dict = {-1: None}  # the weight layers a node is a function of alone (None: others)
    ancestors: dict = {-1: frozenset({-1})}
    for k, (layer, reads) in enumerate(zip(layers, inputs)):
        role = _role(layer)
        ancestors[k] = frozenset({k}).union(*(ancestors[i] for i in reads))
        # an affine LayerNorm's gain term, carried through linear maps to a weight layer
        gain[k] = (role == "norm" and layer.affine) or not isinstance(layer, (
            Dense, Conv, Activation)) and any(gain[i] for i in reads)
        if isinstance(layer, (Dense, Conv)):
            gaussian[k], homogeneous[k], zero_mean[k], bases[k] = True, True, True, frozenset({k})
            continue
        (i, *_) = reads
        if role == "activation":
            if not gaussian[i]:
                raise _fail(k, layer, f"applies a nonlinearity to {_source(i, layers)}, which "
                            "is not Gaussian at infinite width (not a weight layer's output "
                            "or a sum/pool/LayerNorm of such): the dual-activation kernel "
                            "would be wrong. A ResNet-v1 block relu(x + f(x)) with x a "
                            "post-activation output is such a case; the pre-activation "
                            "block x + f(relu(norm(x))) is exact")
            right_after = (_role(layers[i]) == "norm" and layers[i].affine
                           and not gain[inputs[i][0]])  # one gain term: the LayerNorm's own
            if gain[i] and not (right_after and layer.name in HOMOGENEOUS):
                raise _fail(k, layer, f"follows {_source(i, layers)}, which carries the NTK "
                            "term of an affine LayerNorm's gain (the product of the normalized "
                            "features): exact only for a ReLU-family activation "
                            f"({', '.join(HOMOGENEOUS)}) right after the LayerNorm; use "
                            "elementwise_affine=False (GroupNorm: affine=False) or such an "
                            "activation")
            if not homogeneous[i]:
                raise _fail(k, layer, f"applies a nonlinearity to {_source(i, layers)}, a "
                            "concatenation whose parts have different variances; apply it "
                            "in each branch before the concatenation")
            gaussian[k], homogeneous[k], bases[k] = False, True, bases[i]
            zero_mean[k] = layer.name in ODD and zero_mean[i]  # E φ(u) = 0 for odd φ
        elif role == "join":
            if hasattr(layer, "coefficients"):
                _check_independent(k, layer, reads, zero_mean, bases, ancestors, layers)
            gaussian[k] = all(gaussian[j] for j in reads)
            homogeneous[k] = hasattr(layer, "coefficients") and all(
                homogeneous[j] for j in reads)
            zero_mean[k] = all(zero_mean[j] for j in reads)
            bases[k] = (None if any(bases[j] is None for j in reads)
                        else frozenset().union(*(bases[j] for j in reads)))
        else:  # linear in the limit: pools, readouts, LayerNorm (h/σ(x))
            if role == "norm" and not gaussian[i]:
                raise _fail(k, layer, f"normalizes {_source(i, layers)}, which is not a "
                            "zero-mean Gaussian at infinite width (the output of a "
                            "nonlinearity has mean E φ(√q z) ≠ 0): its limit is not the "
                            "normalized kernel; normalize a weight layer's output (or a sum "
                            "of such) instead")
            gaussian[k], homogeneous[k] = gaussian[i], homogeneous[i]
            zero_mean[k], bases[k] = zero_mean[i], bases[i]


def _source(i: int, layers: tuple) -> str:
    return "the model's input" if i < 0 else _name(i, layers[i])


def _check_independent(k: int, layer, reads: tuple, zero_mean: dict, bases: dict,
                       ancestors: dict, layers: tuple) -> None:
    """Every two inputs i, j of a sum: one is a function of weight layers the other does not
    read (so independent of it at infinite width), and one is zero-mean (so E[z_i z_j′] =
    E z_i · E z_j′ = 0). Then the cross terms of K and T vanish."""
    if len(set(reads)) != len(reads):
        raise _fail(k, layer, f"adds {_source(reads[0], layers)} to itself (inputs {reads}): "
                    "the branches are one process, not independent ones, so the sum of "
                    "their kernels would be wrong")

    def apart(i: int, j: int) -> bool:  # i is a function of weight layers j does not read
        return bases[i] is not None and not bases[i] & ancestors[j]

    for a, i in enumerate(reads):
        for j in reads[a + 1:]:
            if not (apart(i, j) or apart(j, i)):
                raise _fail(k, layer, "adds branches that are not independent given their "
                            f"fork: neither {_source(i, layers)} nor {_source(j, layers)} starts "
                            "with a weight layer the other does not read (x + relu(x), x + x, "
                            "two branches through one weight layer), so the sum of their "
                            "kernels would be wrong; one branch may be the identity of the "
                            "fork, the others must each start with a Dense/Conv used only "
                            "there")
            if not (zero_mean[i] or zero_mean[j]):
                raise _fail(k, layer, f"adds {_source(i, layers)} and {_source(j, layers)}, "
                            "neither of which has mean zero (the output of a non-odd "
                            "activation such as ReLU, or the model's input), so their means "
                            "add a cross term E z·E z′ the sum of kernels leaves out; keep one "
                            "branch linear after its weight layer (or an odd activation: erf, "
                            "tanh)")


def check_graph(layers: tuple, inputs: tuple) -> None:
    """ValueError (GraphSpecError naming the node) unless the graph is valid (module doc)."""
    _check_topology(layers, inputs)
    node_shapes(layers, inputs)
    _check_laws(layers, inputs)
