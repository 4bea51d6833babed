"""A module's ``forward`` as a graph of layers, read through ``torch.fx``: residual sums,
concatenations, LayerNorm (:func:`fx_graph`).

:func:`torch_ntk.lift` reads a forward as a chain first (``torch_ntk.lifting.fx``); a
forward that is not a chain is read here node by node into a graph spec
(``LayerSpec(layers, inputs=...)``, checked by ``torch_ntk.lifting.graph_spec``):

- a submodule call or a functional call of one tensor: the layer it lifts to (the same
  ``LIFTERS`` and functional tables as the chains), reading the node of its input;
  ``nn.Identity``, ``nn.Dropout`` (and ``x.contiguous()``) are no nodes;
- ``a + b``, ``a += b``, ``torch.add(a, b, alpha=α)``, ``a - b``, with Python-number
  multiples (``α * h``, ``h * α``, ``h / α``, ``-h``): one ``Add`` (``torch_ntk.layers.add``)
  node with the coefficients, nested sums merged (``a + b + c`` is one node of three inputs);
  a scalar multiple outside a sum, a sum with a constant, a product of tensors are refused;
- ``torch.cat([a, b], dim=1)`` (``dim=-1`` for features): a
  ``Concat`` (``torch_ntk.layers.concat``) with the parts' widths;
- ``nn.LayerNorm(C)`` between channels-last permutes of a CNN (``x.permute(0, 2, 3, 1)``
  … ``.permute(0, 3, 1, 2)``): a LayerNorm over the channels; ``nn.LayerNorm`` on the last
  axis of a CNN's ``[N, C, H, W]`` (a position axis) is refused with the axis named;
  ``nn.GroupNorm(1, C)``: the normalization over (C, H, W).

A refusal names the fx node (op, target, ``file:line: code``), as the chains' do.
"""

from __future__ import annotations

import builtins
import operator
from dataclasses import dataclass, field, replace
from numbers import Real
from typing import Callable, Optional

import torch
import torch.fx as fx
from torch import nn

from ..layers.add import Add
from ..layers.base import Position
from ..layers.concat import Concat
from ..layers.conv import Conv
from ..layers.layernorm import LayerNorm
from ..layers.pool import Flatten
from .fx import FunctionalCall, describe_node, functional_modules, trace_forward
from .graph_spec import GraphSpecError, node_shapes, non_feature_axis
from .spec import LayerSpec, role

__all__ = ["fx_graph"]

_ADD = {("call_function", operator.add), ("call_function", operator.iadd),
        ("call_function", torch.add), ("call_method", "add"), ("call_method", "add_"),
        ("call_method", "__iadd__")}
_SUB = {("call_function", operator.sub), ("call_function", operator.isub),
        ("call_function", torch.sub), ("call_method", "sub"), ("call_method", "sub_")}
_MUL = {("call_function", operator.mul), ("call_function", operator.imul),
        ("call_function", torch.mul), ("call_method", "mul"), ("call_method", "mul_")}
_DIV = {("call_function", operator.truediv), ("call_function", torch.div),
        ("call_method", "div"), ("call_method", "div_")}
_NEG = {("call_function", operator.neg), ("call_function", torch.neg), ("call_method", "neg")}
_CAT = {("call_function", torch.cat), ("call_function", torch.concat),
        ("call_function", torch.concatenate)}
_PERMUTE = {("call_function", torch.permute), ("call_method", "permute")}
_PASS = {("call_method", "contiguous")}
_BATCH, _SHAPE = "batch size", "shape"  # values of the nodes computing x.size(0)


@dataclass(frozen=True)
class _Value:
    """What an fx node computes: Σ_k c_k·(spec node k) over ``terms`` ((k, c_k), …; one
    term with c = 1 for a plain node), in a CNN (``dims``: spatial dims) or not (None),
    channels-first or channels-last (``last``)."""

    terms: tuple
    dims: Optional[int] = None
    last: bool = False
    made_by: Optional[fx.Node] = field(default=None, compare=False)  # a sum's fx node


class _Builder:
    """The spec's nodes as they are read: ``layers``, ``inputs``, the fx node of each."""

    def __init__(self, model: nn.Module, lift_one: Callable):
        self.model, self.lift_one = model, lift_one
        self.layers: list = []
        self.inputs: list = []
        self.origin: list = []  # the fx node of each spec node
        self.values: dict = {}
        self.sums: dict = {}  # terms → the Add node already made for them
        self.flatten_input = False
        self.called: dict = {}

    # ------------------------------------------------------------------ nodes

    def push(self, layer, reads: tuple, node: fx.Node) -> int:
        self.layers.append(layer)
        self.inputs.append(tuple(reads))
        self.origin.append(node)
        return len(self.layers) - 1

    def index(self, value: _Value, node: fx.Node) -> int:
        """The spec node of ``value`` (a sum becomes an Add node, made once)."""
        if value.last:
            raise ValueError("a channels-last tensor (after x.permute(0, 2, 3, 1)) lifts only "
                             "into a LayerNorm over the channels and the permute back")
        if len(value.terms) == 1:
            (k, c), = value.terms
            if c != 1.0:
                where = describe_node(value.made_by) if value.made_by is not None else "it"
                raise ValueError(f"{where} scales a layer's output by {c}: a scalar multiple "
                                 "lifts only as a term of a sum (α·h + β·f(h))")
            return k
        if value.terms not in self.sums:
            made_by = value.made_by or node
            layer = Add(tuple(c for _, c in value.terms), position=made_by.name)
            self.sums[value.terms] = self.push(layer, tuple(k for k, _ in value.terms), made_by)
        return self.sums[value.terms]

    def settled(self, value: _Value) -> _Value:
        """``value`` with a sum already made into an Add node read as that node."""
        if len(value.terms) > 1 and value.terms in self.sums:
            return replace(value, terms=((self.sums[value.terms], 1.0),))
        return value

    def plain(self, k: int, dims: Optional[int]) -> _Value:
        return _Value(((k, 1.0),), dims)

    def tensor(self, arg, node: fx.Node) -> _Value:
        value = self.values.get(arg) if isinstance(arg, fx.Node) else None
        if not isinstance(value, _Value):
            raise ValueError(f"its argument {arg!r} is not a tensor computed from the input")
        return value

    # ------------------------------------------------------------------ one fx node

    def read(self, node: fx.Node) -> None:
        key = (node.op, node.target)
        tensors = [a for a in node.all_input_nodes if isinstance(self.values.get(a), _Value)]
        if node.op == "call_module":
            self.module(node)
        elif (helper := _batch_helper(node, self.values)) is not None:
            self.values[node] = helper
        elif key in _ADD or key in _SUB:
            self.sum(node, -1.0 if key in _SUB else 1.0)
        elif key in _MUL or key in _DIV or key in _NEG:
            self.scale(node, key)
        elif key in _CAT:
            self.concat(node)
        elif key in _PERMUTE:
            self.permute(node)
        elif key in _PASS:
            self.values[node] = self.tensor(node.args[0], node)
        elif len(tensors) != 1:
            raise ValueError(f"it takes {len(tensors)} tensors computed from the input; "
                             "a layer lifts with one (sums, torch.cat and scalar multiples "
                             "join branches)")
        else:
            self.functional(node, tensors[0])

    def module(self, node: fx.Node) -> None:
        module = self.model.get_submodule(node.target)
        if node.kwargs or len(node.args) != 1:
            raise ValueError("it is called with more than its input")
        if any(True for _ in module.parameters()):
            if id(module) in self.called:
                raise ValueError(f"it calls a module already called by "
                                 f"{describe_node(self.called[id(module)])}; a shared layer "
                                 "makes dependent branches, which do not lift")
            self.called[id(module)] = node
        self.lifted([module], node.target, node, self.tensor(node.args[0], node))

    def functional(self, node: fx.Node, source: fx.Node) -> None:
        value = self.values[source]
        batch = {n for n, v in self.values.items() if v == _BATCH}
        modules = functional_modules(FunctionalCall(node, source, batch, value.dims))
        for m in modules:
            m.fx_node = node
        self.lifted(modules, node.name, node, value)

    def lifted(self, modules: list, position: Position, node: fx.Node, value: _Value) -> None:
        """The layers of ``modules`` applied in turn to ``value``."""
        for j, module in enumerate(modules):
            at = position if j == 0 else f"{position}.{j}"
            layer = self.lift_one(module, at)
            if layer is None:  # nn.Identity, nn.Dropout: no node
                continue
            if isinstance(layer, Flatten) and value.dims is None:
                if value.terms == ((-1, 1.0),) and not self.layers:
                    self.flatten_input = True
                continue  # a no-op outside the convolutions
            if isinstance(layer, LayerNorm) and layer.over == "features" and value.last:
                reads = (self.index(replace(value, last=False), node),)
                k = self.push(replace(layer, over="channels"), reads, node)
                value = _Value(((k, 1.0),), value.dims, True)
                continue
            if isinstance(layer, LayerNorm) and layer.over == "features" and value.dims:
                raise ValueError(non_feature_axis(value.dims))
            k = self.push(layer, (self.index(value, node),), node)
            dims = (layer.dims if isinstance(layer, Conv) else
                    None if role(layer) in ("readout", "dense") else value.dims)
            value = self.plain(k, dims)
        self.values[node] = value

    def sum(self, node: fx.Node, sign: float) -> None:
        args = list(node.args)
        alpha = node.kwargs.get("alpha", 1)
        if set(node.kwargs) - {"alpha"} or len(args) != 2:
            raise ValueError("only a + b, torch.add(a, b, alpha=α) and a - b join branches")
        a, b = (self.values.get(x) if isinstance(x, fx.Node) else x for x in args)
        if not (isinstance(a, _Value) and isinstance(b, _Value)):
            raise ValueError("it adds a constant to a layer's output (a shift), which does "
                             "not lift; sums of branches do")
        if not isinstance(alpha, Real):
            raise ValueError(f"alpha={alpha!r} must be a Python number")
        if a.dims != b.dims or a.last or b.last:
            raise ValueError("it adds tensors of different kinds (convolutional and not, or "
                             "channels-last)")
        a, b = self.settled(a), self.settled(b)
        terms = a.terms + tuple((k, sign * float(alpha) * c) for k, c in b.terms)
        self.values[node] = _Value(terms, a.dims, made_by=node)

    def scale(self, node: fx.Node, key: tuple) -> None:
        if key in _NEG:
            value, factor = self.tensor(node.args[0], node), -1.0
        else:
            args = [self.values.get(x, x) if isinstance(x, fx.Node) else x for x in node.args]
            tensors = [a for a in args if isinstance(a, _Value)]
            numbers = [a for a in args if isinstance(a, Real) and not isinstance(a, bool)]
            if node.kwargs or len(args) != 2 or len(tensors) != 1 or len(numbers) != 1 or (
                    key in _DIV and not isinstance(args[0], _Value)):
                raise ValueError("only a layer's output times or divided by a Python number "
                                 "lifts (a product of tensors, or by a computed value, does "
                                 "not)")
            (value,), (number,) = tensors, numbers
            factor = 1.0 / float(number) if key in _DIV else float(number)
        if value.last:
            raise ValueError("a scalar multiple of a channels-last tensor does not lift")
        value = self.settled(value)
        self.values[node] = _Value(tuple((k, factor * c) for k, c in value.terms), value.dims,
                                   made_by=value.made_by if len(value.terms) > 1 else node)

    def concat(self, node: fx.Node) -> None:
        args = dict(zip(("tensors", "dim"), node.args), **node.kwargs)
        parts, dim = args.get("tensors"), args.get("dim", 0)
        if not isinstance(parts, (list, tuple)) or len(parts) < 2:
            raise ValueError("torch.cat lifts with a list of at least two tensors")
        values = [self.tensor(p, node) for p in parts]
        dims = values[0].dims
        if any(v.dims != dims for v in values):
            raise ValueError("it concatenates convolutional and dense features")
        allowed = {1, -1} if dims is None else {1, -(dims + 1)}
        if dim not in allowed:
            axis = "features" if dims is None else "channels"
            raise ValueError(f"it concatenates along dim {dim!r}; only the {axis} (dim=1"
                             f"{', or -1' if dims is None else ''}) lift")
        reads = tuple(self.index(v, node) for v in values)
        if not self.layers:
            raise ValueError("a concatenation before any weight layer does not lift")
        shapes = node_shapes(tuple(self.layers), tuple(self.inputs))
        widths = tuple(shapes[k][1] for k in reads)
        k = self.push(Concat(widths, position=node.name), reads, node)
        self.values[node] = self.plain(k, dims)

    def permute(self, node: fx.Node) -> None:
        value = self.tensor(node.args[0], node)
        order = node.args[1:] if node.op == "call_method" else node.args[1:2]
        if len(order) == 1 and isinstance(order[0], (tuple, list)):
            order = tuple(order[0])
        order = tuple(order or node.kwargs.get("dims", ()))
        to_last = {2: (0, 2, 3, 1), 1: (0, 2, 1)}.get(value.dims)
        back = {2: (0, 3, 1, 2), 1: (0, 2, 1)}.get(value.dims)
        if to_last is not None and not value.last and order == to_last:
            self.values[node] = replace(value, last=True)
        elif back is not None and value.last and order == back:
            self.values[node] = replace(value, last=False)
        else:
            raise ValueError(f"permute{order} lifts only as the channels-last permute around a "
                             "LayerNorm over the channels (x.permute(0, 2, 3, 1) and back by "
                             ".permute(0, 3, 1, 2))")


def _batch_helper(node: fx.Node, values: dict) -> Optional[str]:
    """_BATCH for x.size(0), len(x), x.shape[0], x.size()[0]; _SHAPE for x.shape, x.size()."""
    args = node.args
    source = values.get(args[0]) if args and isinstance(args[0], fx.Node) else None
    if node.op == "call_method" and node.target == "size" and isinstance(source, _Value):
        if args[1:] == (0,) and not node.kwargs or node.kwargs == {"dim": 0}:
            return _BATCH
        return _SHAPE if len(args) == 1 and not node.kwargs else None
    if node.op == "call_function" and node.target is builtins.len and isinstance(source, _Value):
        return _BATCH
    if (node.op == "call_function" and node.target is builtins.getattr
            and isinstance(source, _Value) and args[1:] == ("shape",)):
        return _SHAPE
    if (node.op == "call_function" and node.target is operator.getitem and source == _SHAPE
            and args[1:] == (0,)):
        return _BATCH
    return None


def fx_graph(model: nn.Module, leaf_types: tuple, lift_one: Callable) -> LayerSpec:
    """The graph spec of ``model.forward`` (module doc).

    Args:
        leaf_types: module types kept whole (the types that lift).
        lift_one: ``lift_one(module, position)``, the layer one module lifts to, or None
            (``torch_ntk.lifting.lift.lift_module`` with the lift's options).

    Raises:
        ValueError: a node that does not lift, or a graph that breaks a rule of
            ``torch_ntk.lifting.graph_spec``; the message names the fx node (op, target,
            ``file:line: code``).
    """
    graph = trace_forward(model, leaf_types)
    builder = _Builder(model, lift_one)
    output = None
    for node in graph.nodes:
        try:
            if node.op == "placeholder":
                if builder.values:
                    raise ValueError("forward takes a second input; a graph spec takes one")
                builder.values[node] = builder.plain(-1, None)
            elif node.op == "output":
                output = node
            else:
                builder.read(node)
        except GraphSpecError as error:
            raise ValueError(f"{error}; {describe_node(builder.origin[error.node])}") from error
        except ValueError as error:
            message = str(error)
            if describe_node(node) in message:
                raise
            raise ValueError(f"{describe_node(node)}: {message}") from error
    value = builder.values.get(output.args[0]) if isinstance(output.args[0], fx.Node) else None
    if not isinstance(value, _Value):
        raise ValueError(f"forward returns {output.args[0]!r}, not one tensor computed from "
                         "the input")
    try:
        last = builder.index(value, output)
    except ValueError as error:
        raise ValueError(f"{describe_node(output)}: {error}") from error
    if last != len(builder.layers) - 1 or last < 0:
        dead = builder.origin[-1] if builder.layers else output
        raise ValueError(f"{describe_node(dead)} is not on the path to the output: every "
                         "layer must feed the returned tensor")
    try:
        return LayerSpec(tuple(builder.layers), builder.flatten_input, tuple(builder.inputs))
    except GraphSpecError as error:
        raise ValueError(f"{error}; {describe_node(builder.origin[error.node])}") from error
