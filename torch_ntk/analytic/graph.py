"""The infinite-width walker: a spec's nodes, each mapped by its layer kind's rule.

Each layer kind registers ``@kernel_rule(Kind, planes=..., variances=...)``: a function
``(layer, state) -> state`` on :class:`~torch_ntk.layers.state.KernelState`. This module
looks the rules up and switches on no layer type:

- :func:`requirements` folds what the rules declare: full position planes when any rule
  needs them (pooling, global average/sum readouts), else same-position diagonals;
- :func:`walk` runs the nodes of any DAG in topological order from an input state, each
  rule on the state of the node it reads (a join's rule, ``joins=True``, on the tuple of its
  inputs' states), keeping a state until its last reader; for a rule that reads the per-side variances (activations) it sets
  ``var1``/``var2`` first — from the state itself on a self-pair run (recording them), or
  from the recorded self-pair variances on a cross run.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

from ..layers.base import KERNEL_RULES, KernelRule, rule_of
from ..layers.state import KernelState
from ..lifting.spec import LayerSpec

__all__ = ["Requirements", "kernel_rule_of", "requirements", "walk"]


class Requirements(NamedTuple):
    """What a spec's rules need of the state: ``planes`` (full position planes)."""

    planes: bool

    @property
    def sets(self) -> int:
        """2 for position planes, 1 for same-position diagonals."""
        return 2 if self.planes else 1


def kernel_rule_of(layer) -> KernelRule:
    """The registered rule of the layer's kind (ValueError naming the kind if none)."""
    rule = rule_of(KERNEL_RULES, layer)
    if rule is None:
        raise ValueError(f"analytic_kernels: the layer kind {type(layer).__name__} has no "
                         "infinite-width rule (@kernel_rule in its torch_ntk.layers file)")
    return rule


def requirements(spec: LayerSpec) -> Requirements:
    """The rules' requirements folded over the spec (planes if any rule needs planes)."""
    return Requirements(any(kernel_rule_of(node.layer).planes for node in spec.nodes))


def walk(spec: LayerSpec, state: KernelState, variances: Optional[tuple],
         view: Callable) -> tuple[KernelState, list]:
    """Run the spec's nodes from the input ``state``.

    Args:
        variances: None for a self-pair run (pairs (x, x): the variances of each rule that
            reads them are taken from its input state and recorded), or (var1, var2), the
            lists recorded by the self-pair runs of x1 and x2, for a cross run.
        view: ``view(var, side, sets)``, a recorded variance viewed to broadcast on ``side``
            (1 or 2) of a state with ``sets`` position sets.

    Returns:
        (the output node's state, the recorded variances in node order).
    """
    nodes = spec.nodes
    last_reader = {i: k for k, node in enumerate(nodes) for i in node.inputs}
    states, recorded = {-1: state}, []
    for index, node in enumerate(nodes):
        rule = kernel_rule_of(node.layer)
        inputs = tuple(states[i] for i in node.inputs)
        for i in set(node.inputs):  # keep a state until its last reader
            if last_reader[i] == index:
                del states[i]
        if rule.joins:
            states[index] = rule.fn(node.layer, inputs)
            continue
        if len(inputs) != 1:
            raise ValueError(f"analytic_kernels: node {index} ({type(node.layer).__name__}) "
                             f"reads {len(inputs)} nodes; its kind's rule is not a join")
        (state,) = inputs
        if rule.variances:
            if variances is None:
                var = state.variance()
                recorded.append(var)
                v1, v2 = view(var, 1, state.sets), view(var, 2, state.sets)
            else:
                a = len(recorded)
                recorded.append(None)
                v1 = view(variances[0][a], 1, state.sets)
                v2 = view(variances[1][a], 2, state.sets)
            state = state.replace(var1=v1, var2=v2, gain_term=state.gain_term)
        states[index] = rule.fn(node.layer, state)
    return states[len(nodes) - 1], recorded
