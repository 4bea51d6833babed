"""The chain of layers of a module's ``forward``, read through ``torch.fx``.

``torch.fx`` records ``forward`` as a graph of nodes. :func:`fx_chain` accepts the graph
when it is a chain — one input x, each node consuming only the previous node's output
(and, for ``x.view(x.size(0), -1)``, that output's batch size), the last node returned —
and gives, for each node, a module computing it, so that the chain lifts exactly like an
``nn.Sequential`` of those modules (:func:`torch_ntk.lift`, the same ``LIFTERS``
table and activation registry):

- a call of a submodule (``self.conv1(x)``): that module, at its qualified name
  (``"conv1"``, ``"features.0"``); nn.Sequential submodules are traced through;
- a functional call: the ``torch.nn`` module computing the same thing, built from the
  call's arguments, at the node's name (``"relu_1"``), carrying the node as ``fx_node``:

  ===========================================================  =============================
  ``F.relu``, ``torch.relu``, ``x.relu()``                     ``nn.ReLU()``
  ``torch.tanh``, ``x.tanh()``; ``torch.sigmoid``, ``x.sigmoid()``  ``nn.Tanh()``; ``nn.Sigmoid()``
  ``F.gelu(x, approximate=a)``                                 ``nn.GELU(approximate=a)``
  ``torch.erf``, ``x.erf()``; ``torch.abs``, ``x.abs()``       ``Erf()``; ``Abs()``
  ``F.silu``; ``F.leaky_relu(x, s)``; ``F.elu(x, a)``; ``F.selu``; ``F.softplus(x, b)``
                                                               the matching module
  ``torch.flatten(x, 1)``, ``x.flatten(1)``,
  ``x.view(x.size(0), -1)``, ``x.reshape(len(x), -1)``         ``nn.Flatten()``
  ``F.avg_pool1d/2d(x, k, s)``                                 ``nn.AvgPool1d/2d(k, s)``
  ``F.adaptive_avg_pool1d/2d(x, 1)``                           ``nn.AdaptiveAvgPool1d/2d(1)``
  ``x.mean((2, 3))`` after a 2-D conv (``x.mean(2)`` after 1-D)
                                                               ``nn.AdaptiveAvgPool2d(1)``,
                                                               ``nn.Flatten()``
  ===========================================================  =============================

and the functional forms the layer kinds register with
:func:`torch_ntk.layers.base.lifts_functional` (:data:`torch_ntk.layers.FUNCTIONALS`).

Anything else — two consumers of one output (a branch, a concatenation, a product:
:func:`torch_ntk.lift` then reads the forward as a graph, ``torch_ntk.lifting.graph``), a
second input, a parameter used outside a module, a layer module called twice, an unknown
function, control flow that depends on data — is a ValueError naming the node (its op,
target and the line of ``forward`` it came from).

Example::

    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc1, self.fc2 = nn.Linear(3, 8), nn.Linear(8, 1)
    ...     def forward(self, x):
    ...         return self.fc2(self.fc1(x).relu())
    >>> [(p, type(m).__name__) for p, m in fx_chain(Net(), (nn.Linear, nn.ReLU)).links]
    [('fc1', 'Linear'), ('relu', 'ReLU'), ('fc2', 'Linear')]
"""

from __future__ import annotations

import builtins
import inspect
import linecache
import operator
import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..activations import Abs, Erf
from ..layers.base import FUNCTIONALS as KIND_FUNCTIONALS
from ..nn import NTKConv1d, NTKConv2d

__all__ = ["FUNCTIONALS", "FunctionalCall", "FxChain", "describe_node", "functional_modules",
           "fx_chain", "trace_forward"]

_TORCH_DIR = os.path.dirname(torch.__file__)


# --------------------------------------------------------------------------- descriptions


def _user_frame(frames: list[tuple[str, int, str]]) -> str:
    """", at FILE:LINE: code" of the last frame outside torch and this module ("" if none)."""
    for filename, line, code in reversed(frames):
        if not filename.startswith(_TORCH_DIR) and filename != __file__:
            return f", at {filename}:{line}: {code.strip()}"
    return ""


def _target_name(node: fx.Node) -> str:
    target = node.target
    if node.op == "call_method":
        return f"Tensor.{target}"
    if callable(target):
        module = getattr(target, "__module__", None) or ""
        module = "torch" if module.startswith("torch._C") else module
        return f"{module}.{getattr(target, '__name__', repr(target))}".lstrip(".")
    return str(target)


def describe_node(node: fx.Node) -> str:
    """'node NAME (OP TARGET, at FILE:LINE: code)', the line recorded while tracing."""
    frames = [node.meta["source_line"]] if "source_line" in node.meta else []
    return f"node {node.name} ({node.op} {_target_name(node)}{_user_frame(frames)})"


# --------------------------------------------------------------------------- tracing


class _ChainTracer(fx.Tracer):
    """symbolic_trace's tracer, with modules that lift kept whole (leaves) and each node's
    line of user code in ``node.meta["source_line"]`` (a frame walk: fx's own
    ``record_stack_traces`` costs seconds on its first use in a process)."""

    def __init__(self, leaf_types: tuple[type, ...]):
        super().__init__()
        self.leaf_types = leaf_types

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self.leaf_types) or super().is_leaf_module(m, module_qualified_name)

    def create_node(self, *args, **kwargs) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        frame = sys._getframe(1)
        while frame is not None and (frame.f_code.co_filename.startswith(_TORCH_DIR)
                                     or frame.f_code.co_filename == __file__):
            frame = frame.f_back
        if frame is not None and node.op not in ("placeholder", "output"):
            filename, line = frame.f_code.co_filename, frame.f_lineno
            node.meta["source_line"] = (filename, line, linecache.getline(filename, line))
        return node


def _len(obj):
    """``len`` while tracing: recorded for a traced tensor (its batch size), else builtin."""
    if isinstance(obj, fx.Proxy):
        return obj.tracer.create_proxy("call_function", builtins.len, (obj,), {})
    return builtins.len(obj)


def trace_forward(model: nn.Module, leaf_types: tuple[type, ...]) -> fx.Graph:
    """The fx graph of ``model.forward``; ``len(x)`` is recorded (fx refuses it by default:
    it is patched into the globals of every traced ``forward`` for the duration)."""
    scopes = {}
    for module in model.modules():
        scope = getattr(type(module).forward, "__globals__", None)
        if scope is None or scope.get("__name__", "").startswith("torch."):
            continue  # torch's own modules are leaves or traced without len
        if scope.get("len", builtins.len) is builtins.len:
            scopes[id(scope)] = (scope, "len" in scope)
    try:
        for scope, _ in scopes.values():
            scope["len"] = _len
        return _ChainTracer(leaf_types).trace(model)
    except Exception as error:  # noqa: BLE001 — whatever the user's forward raises under fx
        frames = [(f.filename, f.lineno, f.line or "")
                  for f in traceback.extract_tb(error.__traceback__)]
        raise ValueError(f"torch.fx cannot trace {type(model).__name__}.forward"
                         f"{_user_frame(frames)} ({type(error).__name__}: {error})") from error
    finally:
        for scope, had in scopes.values():
            if had:
                scope["len"] = builtins.len
            else:
                scope.pop("len", None)


# --------------------------------------------------------------------------- the walk


def _batch_size_helpers(node: fx.Node) -> tuple[set, set]:
    """(helpers, batch nodes) among the users of ``node``: nodes computing its batch size
    (``x.size(0)``, ``len(x)``, ``x.shape[0]``, ``x.size()[0]``) and what they need."""
    helpers, batch = set(), set()
    for user in node.users:
        if _is_batch_size(user, node):
            helpers.add(user)
            batch.add(user)
        elif _is_shape(user, node) and user.users and all(
                _is_getitem0(u, user) for u in user.users):
            helpers.add(user)
            helpers.update(user.users)
            batch.update(user.users)
    return helpers, batch


def _is_batch_size(user: fx.Node, node: fx.Node) -> bool:
    if user.op == "call_method" and user.target == "size":
        return user.args[:1] == (node,) and (
            user.args[1:] == (0,) and not user.kwargs or user.kwargs == {"dim": 0})
    return user.op == "call_function" and user.target is builtins.len and user.args == (node,)


def _is_shape(user: fx.Node, node: fx.Node) -> bool:
    if user.op == "call_method" and user.target == "size":
        return user.args == (node,) and not user.kwargs
    return (user.op == "call_function" and user.target is builtins.getattr
            and user.args == (node, "shape"))


def _is_getitem0(user: fx.Node, shape: fx.Node) -> bool:
    return (user.op == "call_function" and user.target is operator.getitem
            and user.args == (shape, 0))


def _not_a_chain(why: str) -> ValueError:
    return ValueError(f"its forward is not a chain: {why}")


def _walk(graph: fx.Graph) -> list[tuple[fx.Node, fx.Node, set]]:
    """The chain's nodes in order, each with its input node and the batch-size nodes of
    that input it may use.

    Raises ValueError naming the first node that breaks the chain.
    """
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise _not_a_chain(f"forward takes {len(inputs)} inputs "
                           f"({', '.join(n.name for n in inputs)}); a chain takes one")
    current, chain, seen = inputs[0], [], {inputs[0]}
    while True:
        helpers, batch = _batch_size_helpers(current)
        main = [u for u in current.users if u not in helpers]
        if len(main) != 1:
            users = "; ".join(describe_node(u) for u in main) or "nothing"
            raise _not_a_chain(
                f"the output of {describe_node(current)} is used by {len(main)} nodes "
                f"({users}): a residual (skip) connection or a branch, which a chain cannot "
                "hold (torch_ntk.lift reads such a forward as a graph); in a chain each output "
                "feeds only the next layer")
        (nxt,) = main
        for b in batch:
            stray = [u for u in b.users if u is not nxt]
            if stray:
                raise _not_a_chain(f"{describe_node(stray[0])} uses the batch size of "
                                   f"{describe_node(current)}")
        seen.update(helpers)
        seen.add(nxt)
        if nxt.op == "output":
            if nxt.args != (current,):
                raise _not_a_chain(f"forward returns {nxt.args[0]!r}, not one tensor")
            break
        uses = [a for a in nxt.all_input_nodes if a is not current and a not in batch]
        if uses:
            raise _not_a_chain(f"{describe_node(nxt)} also takes {describe_node(uses[0])}")
        chain.append((nxt, current, batch))
        current = nxt
    stray = [n for n in nodes if n not in seen]
    if stray:
        raise _not_a_chain(f"{describe_node(stray[0])} is not on the path from the input "
                           "to the output")
    return chain


# --------------------------------------------------------------------------- functionals


@dataclass
class FunctionalCall:
    """What a functional builder sees: the node, the node its input comes from, the batch
    size nodes of that input, and the spatial dims of the last convolution (None after a
    readout or before any)."""

    node: fx.Node
    input: fx.Node
    batch: set
    dims: Optional[int]


def _constant(call: FunctionalCall, name: str, value):
    if isinstance(value, fx.Node) or (isinstance(value, (tuple, list)) and any(
            isinstance(v, fx.Node) for v in value)):
        raise ValueError(f"{describe_node(call.node)}: argument {name} is computed at run "
                         "time; only constants lift")
    return value


def _one(module_type: type, *names: str) -> Callable:
    """A builder for an activation module whose constructor takes ``names``: the
    functional's arguments after the input, in order (``inplace`` after them is ignored)."""
    order = (*names, "inplace")

    def build(call, *args, **kwargs):
        if len(args) > len(order) or set(kwargs) - set(order):
            raise ValueError(f"{describe_node(call.node)}: unsupported arguments {args} "
                             f"{kwargs}")
        values = {**dict(zip(order, args)), **kwargs}
        values.pop("inplace", None)
        return [module_type(**{n: _constant(call, n, v) for n, v in values.items()})]
    return build


def _gelu(call, approximate="none"):
    if _constant(call, "approximate", approximate) not in ("none", "tanh"):
        raise ValueError(f"{describe_node(call.node)}: approximate must be 'none' or 'tanh'; "
                         f"got {approximate!r}")
    return [nn.GELU(approximate=approximate)]


def _flatten(call, start_dim=0, end_dim=-1):
    if _constant(call, "start_dim", start_dim) != 1:
        raise ValueError(f"{describe_node(call.node)} flattens from dim {start_dim}; only "
                         "start_dim=1 (keeping the batch dim) lifts")
    return [nn.Flatten(1, _constant(call, "end_dim", end_dim))]


def _view_flat(call, *shape):
    """``x.view(b, -1)`` / ``x.reshape(b, -1)`` with b the batch size of x."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    if len(shape) != 2 or shape[0] not in call.batch or shape[1] != -1:
        raise ValueError(f"{describe_node(call.node)}: only x.view(x.size(0), -1) or "
                         "x.reshape(len(x), -1) (a flatten keeping the batch dim) lifts")
    return [nn.Flatten()]


def _avg_pool(module_type: type) -> Callable:
    def build(call, kernel_size, stride=None, padding=0, ceil_mode=False,
              count_include_pad=True, divisor_override=None):
        args = dict(kernel_size=kernel_size, stride=stride or None, padding=padding,
                    ceil_mode=ceil_mode, count_include_pad=count_include_pad)
        if module_type is nn.AvgPool2d:
            args["divisor_override"] = divisor_override
        return [module_type(**{k: _constant(call, k, v) for k, v in args.items()})]
    return build


def _adaptive(module_type: type) -> Callable:
    def build(call, output_size):
        return [module_type(_constant(call, "output_size", output_size))]
    return build


def _mean(call, dim=None, keepdim=False, dtype=None):
    dims = _constant(call, "dim", dim)
    dims = set(dims) if isinstance(dims, (tuple, list)) else {dims}
    spatial = {1: ({2}, {-1}), 2: ({2, 3}, {-2, -1}, {2, -1}, {-2, 3})}.get(call.dims, ())
    if dims not in spatial or _constant(call, "dtype", dtype) is not None:
        where = (f"after a {call.dims}-D convolution" if call.dims else
                 "outside the convolutions (no Conv before it)")
        raise ValueError(f"{describe_node(call.node)}: a mean over dims {dim} {where} is not "
                         "a global average pool; x.mean((2, 3)) after 2-D and x.mean(2) "
                         "after 1-D convolutions lift")
    pool = nn.AdaptiveAvgPool2d(1) if call.dims == 2 else nn.AdaptiveAvgPool1d(1)
    return [pool] if _constant(call, "keepdim", keepdim) else [pool, nn.Flatten()]


_RELU, _TANH, _SIGMOID = _one(nn.ReLU), _one(nn.Tanh), _one(nn.Sigmoid)
_ERF, _ABS = _one(Erf), _one(Abs)

# (op, target) → builder(call, *args after the input, **kwargs) → the modules computing
# the call (call_function targets are the functions; call_method targets the names).
FUNCTIONALS: dict[tuple[str, object], Callable] = {
    **{("call_function", f): _RELU for f in (F.relu, torch.relu, F.relu_, torch.relu_)},
    **{("call_method", m): _RELU for m in ("relu", "relu_")},
    **{("call_function", f): _TANH for f in (torch.tanh, F.tanh)},
    ("call_method", "tanh"): _TANH,
    **{("call_function", f): _SIGMOID for f in (torch.sigmoid, F.sigmoid)},
    ("call_method", "sigmoid"): _SIGMOID,
    **{("call_function", f): _ERF for f in (torch.erf, torch.special.erf)},
    ("call_method", "erf"): _ERF,
    ("call_function", torch.abs): _ABS,
    ("call_method", "abs"): _ABS,
    ("call_function", F.gelu): _gelu,
    ("call_function", F.silu): _one(nn.SiLU),
    ("call_function", F.leaky_relu): _one(nn.LeakyReLU, "negative_slope"),
    ("call_function", F.elu): _one(nn.ELU, "alpha"),
    ("call_function", F.selu): _one(nn.SELU),
    ("call_function", F.softplus): _one(nn.Softplus, "beta", "threshold"),
    ("call_function", torch.flatten): _flatten,
    ("call_method", "flatten"): _flatten,
    ("call_method", "view"): _view_flat,
    ("call_method", "reshape"): _view_flat,
    ("call_function", torch.reshape): _view_flat,
    ("call_function", F.avg_pool1d): _avg_pool(nn.AvgPool1d),
    ("call_function", F.avg_pool2d): _avg_pool(nn.AvgPool2d),
    ("call_function", F.adaptive_avg_pool1d): _adaptive(nn.AdaptiveAvgPool1d),
    ("call_function", F.adaptive_avg_pool2d): _adaptive(nn.AdaptiveAvgPool2d),
    ("call_method", "mean"): _mean,
    ("call_function", torch.mean): _mean,
}


def functional_modules(call: FunctionalCall) -> list[nn.Module]:
    """The modules computing a functional node (ValueError naming it if it is not listed)."""
    node = call.node
    build = FUNCTIONALS.get((node.op, node.target)) or KIND_FUNCTIONALS.get((node.op,
                                                                             node.target))
    if build is None:
        raise ValueError(f"{describe_node(node)} is not a supported layer (functional forms "
                         "that lift: torch_ntk.layers.base.FUNCTIONALS)")
    kwargs = dict(node.kwargs)
    kwargs.pop("inplace", None)
    args = list(node.args)
    if args[:1] == [call.input]:
        args = args[1:]
    elif kwargs.get("input") is call.input:
        del kwargs["input"]
    else:
        raise ValueError(f"{describe_node(node)} takes the previous layer's output in another "
                         "argument than its first")
    try:
        inspect.signature(build).bind(call, *args, **kwargs)
    except TypeError as error:
        raise ValueError(f"{describe_node(node)}: unsupported arguments ({error})") from error
    try:
        return build(call, *args, **kwargs)
    except ValueError as error:
        if str(error).startswith(describe_node(node)):
            raise
        raise ValueError(f"{describe_node(node)}: {error}") from error


# --------------------------------------------------------------------------- the chain


@dataclass
class FxChain:
    """A module's forward as a chain: ``links`` (position, module) in order, and
    ``nodes`` mapping each position to the fx node it came from."""

    links: list = field(default_factory=list)
    nodes: dict = field(default_factory=dict)

    def where(self, position) -> str:
        """The description of the node behind ``position`` ("" if none)."""
        node = self.nodes.get(position)
        return describe_node(node) if node is not None else ""


def _conv_dims(module: nn.Module, dims: Optional[int]) -> Optional[int]:
    """The spatial dims after ``module``: a conv sets them, a flatten/pool readout or a dense
    layer ends them."""
    if isinstance(module, (nn.Conv1d, NTKConv1d)):
        return 1
    if isinstance(module, (nn.Conv2d, NTKConv2d)):
        return 2
    if isinstance(module, (nn.Flatten, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)) or hasattr(
            module, "in_features") or getattr(module, "readout", False):
        return None
    return dims


def fx_chain(model: nn.Module, leaf_types: tuple[type, ...]) -> FxChain:
    """The chain of ``model.forward`` as (position, module) links (see the module doc).

    Args:
        model: any ``nn.Module`` (not traced when it is itself one of ``leaf_types``).
        leaf_types: module types kept whole (the types that lift).

    Raises:
        ValueError: fx cannot trace forward, or its graph is not a chain of supported
            layers; the message names the node (op, target, source line).
    """
    if isinstance(model, leaf_types):
        return FxChain([(0, model)], {})
    graph = trace_forward(model, leaf_types)
    chain, dims, called = FxChain(), None, {}
    for node, previous, batch in _walk(graph):
        if node.op == "call_module":
            module = model.get_submodule(node.target)
            if node.kwargs or len(node.args) != 1:
                raise ValueError(f"{describe_node(node)} is called with more than its input")
            if any(True for _ in module.parameters()):
                if id(module) in called:
                    raise ValueError(f"{describe_node(node)} calls a module already called by "
                                     f"{describe_node(called[id(module)])}; shared layers "
                                     "do not lift")
                called[id(module)] = node
            modules, position = [module], node.target
        else:
            modules = functional_modules(FunctionalCall(node, previous, batch, dims))
            for m in modules:
                m.fx_node = node
            position = node.name
        for k, module in enumerate(modules):
            at = position if k == 0 else f"{position}.{k}"
            chain.links.append((at, module))
            chain.nodes[at] = node
            dims = _conv_dims(module, dims)
    return chain
