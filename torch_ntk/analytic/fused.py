"""A spec compiled to the fused ops' arguments (or None: the torch walker runs it).

- MLP specs: :func:`compiled_op_args`, the layer arguments of
  :func:`torch_ntk.ops.analytic_kernels`;
- CNN specs: :func:`cnn_op_args`, the program of :func:`torch_ntk.ops.cnn_kernels`: one
  layer code per layer with its ints and floats, each asked of the layer's kind (its
  ``@op_encoding`` in :mod:`torch_ntk.layers`). A kind without an encoding makes
  it None, and :func:`torch_ntk.analytic.cnn.cnn_kernels` runs the spec;
- MLP graph specs on the CPU: :func:`mlp_graph_args`, the MLP op's arguments with a graph
  program between its hidden layers (skip registers, LayerNorm, projections);
- graph specs (CNN or MLP): :func:`cnn_op_args` too, the DAG linearized by
  :func:`graph_program` into the same op's program with skip registers (PUSH at a fork,
  LOAD to start another branch, JOIN at an Add or a Concat). An MLP graph runs on the op as
  1 x 1 images (its Dense layers as 1 x 1 CONVs, the output Dense after a GLOBAL_AVGPOOL of
  the single position).
"""

from __future__ import annotations

from typing import Optional

from ..activations import Activation, quadrature_degree_for
from ..layers.activation import ACTIVATION
from ..layers.add import Add
from ..layers.base import OP_ENCODINGS, rule_of
from ..layers.concat import Concat
from ..layers.conv import CONV
from ..layers.dense import DENSE, Dense, law_floats
from ..layers.layernorm import LayerNorm
from ..layers.pool import AVGPOOL, FLATTEN, GLOBAL_AVGPOOL
from ..lifting.spec import LayerSpec

__all__ = ["ACTIVATION", "AVGPOOL", "CONV", "DENSE", "FLATTEN", "GLOBAL_AVGPOOL", "JOIN",
           "LOAD", "MAX_SLOTS", "MLP_MAX_SLOTS", "PUSH", "cnn_op_args", "compiled_op_args",
           "default_quadrature_degree", "graph_program", "mlp_graph_args"]

PUSH, LOAD, JOIN = 6, 7, 8  # the CNN op's skip-register codes (csrc/math/cnn_graph.h)
MAX_SLOTS = 8  # the CNN op's skip registers (math::kCnnMaxSlots)
# The MLP op's graph steps (csrc/math/mlp_graph.h) and registers (math::kMlpMaxSlots).
MLP_HIDDEN, MLP_PUSH, MLP_LOAD, MLP_JOIN, MLP_LAYERNORM, MLP_LINEAR = range(6)
MLP_MAX_SLOTS = 4


def default_quadrature_degree(spec: LayerSpec, force_quadrature: bool = False) -> int:
    """The largest default Gauss–Hermite degree among the spec's activations (≥ 1)."""
    return quadrature_degree_for(spec.activations, force_quadrature)


def compiled_op_args(spec: LayerSpec) -> dict:
    """The layer arguments of :func:`torch_ntk.ops.analytic_kernels`, in the op's order.

    input_weight_var, input_bias_var — Σ^(1) = input_weight_var·⟨x, x′⟩ + input_bias_var
    (σ_w²/n_0 and σ_b² of the first dense layer); input_ntk_weight, input_ntk_bias —
    Θ^(1) = input_ntk_weight·⟨x, x′⟩ + input_ntk_bias (the first layer's c_w, c_b); per
    hidden layer (activation, then dense): act_ids, act_params, σ_w², σ_b², and the NTK's
    additive term ntk_weight·E[φφ] + ntk_bias with ntk_weight = c_w·n_in (σ_w² for ntk,
    n_in for standard) and ntk_bias = c_b.
    MLP specs only (ValueError for a CNN spec: see :func:`cnn_op_args`).
    """
    spec.require_mlp("compiled_op_args")
    if spec.is_graph:
        raise ValueError("compiled_op_args: a graph spec (residual sums, concatenation, "
                         "LayerNorm) has no chain arguments; the torch walker runs it "
                         "(torch_ntk.analytic.cnn.cnn_kernels)")
    return _mlp_op_layers(spec.dense_layers[0], list(zip(spec.activations,
                                                         spec.dense_layers[1:])))


def _mlp_op_layers(first: Dense, hidden: list) -> dict:
    """The MLP op's layer arguments: the input layer ``first`` (Σ¹ = σ_w²⟨x, x′⟩/n₀ + σ_b²)
    and one (activation, dense) pair per hidden layer."""
    return dict(
        input_weight_var=first.weight_var / first.in_features,
        input_bias_var=first.bias_var,
        input_ntk_weight=first.ntk_weight_coef,
        input_ntk_bias=first.ntk_bias_coef,
        act_ids=[a.id for a, _ in hidden],
        act_params=[float(a.param) for a, _ in hidden],
        weight_var=[float(d.weight_var) for _, d in hidden],
        bias_var=[float(d.bias_var) for _, d in hidden],
        ntk_weight=[float(d.ntk_weight_coef * d.in_features) for _, d in hidden],
        ntk_bias=[float(d.ntk_bias_coef) for _, d in hidden],
    )


def cnn_op_args(spec: LayerSpec) -> Optional[tuple[list[int], list[int], list[float]]]:
    """(layer_codes, layer_ints, layer_floats): the program of a CNN spec for the compiled
    op, or None when a layer's kind has no op encoding.

    One code per layer (CONV 0, ACTIVATION 1, AVGPOOL 2, GLOBAL_AVGPOOL 3, FLATTEN 4,
    DENSE 5), its ints and floats appended in order: CONV — kh, kw, sh, sw, dh, dw,
    ph_before, ph_after, pw_before, pw_after, circular | σ_w², σ_b², tw, tb (1-D as kh = 1);
    ACTIVATION — act_id | param; AVGPOOL — kh, kw, sh, sw; DENSE — | σ_w², σ_b², tw, tb;
    the graph codes (PUSH 6, LOAD 7, JOIN 8, LAYERNORM 9, AVGPOOL_PAD 10, GLOBAL_SUMPOOL
    11) as in csrc/torch_ntk.cpp. A graph spec (also an MLP's): :func:`graph_program`.
    """
    if spec.is_graph:
        return graph_program(spec)
    if spec.is_mlp:
        raise ValueError("cnn_op_args: an MLP spec; its op arguments are "
                         "torch_ntk.analytic.compiled_op_args")
    codes: list[int] = []
    ints: list[int] = []
    floats: list[float] = []
    for layer in spec.layers:
        encode = rule_of(OP_ENCODINGS, layer)
        if encode is None:
            return None
        encoded = encode(layer)
        if encoded is None:  # settings or activations the op has no code for
            return None
        code, layer_ints, layer_floats = encoded
        codes.append(code)
        ints += layer_ints
        floats += layer_floats
    return codes, ints, floats


def _join_weights(layer) -> Optional[list[float]]:
    """The weights a_i of a join's inputs in K ← Σ_i a_i·K_i (Add: c_i²; Concat: w_i/Σw)."""
    if isinstance(layer, Add):
        return [c * c for c in layer.coefficients]
    if isinstance(layer, Concat):
        return [w / layer.width for w in layer.widths]
    return None


def _linearize(spec: LayerSpec, codes: tuple, max_slots: int, node_steps, push_input: bool
               ) -> Optional[tuple[list[int], list[int], list[float]]]:
    """The DAG's nodes as a program of one op (the walk :func:`graph_program` documents):
    ``codes`` (PUSH, LOAD, JOIN) of the op, its ``max_slots`` registers,
    ``node_steps(k, layer, emit) -> bool`` emitting node k's own steps (False: decline),
    ``push_input``: whether the input is a state a branch may start from. None when a node
    declines or more than ``max_slots`` values are live at once."""
    push, load, join = codes
    nodes = spec.nodes
    last = len(nodes) - 1
    readers: dict = {}
    for k, node in enumerate(nodes):
        for i in node.inputs:
            readers.setdefault(i, []).append(k)
    out: tuple = ([], [], [])
    slot_of: dict = {}
    free = list(range(max_slots))

    def emit(code: int, i: list, f: list) -> None:
        out[0].append(code)
        out[1].extend(i)
        out[2].extend(f)

    def save(value: int) -> bool:
        """PUSH the current state (node ``value``) when a later node needs it from a slot."""
        if readers.get(value, []) == [value + 1]:  # read only as the next node's current
            return True
        if not free:
            return False
        slot_of[value] = free.pop(0)
        emit(push, [slot_of[value]], [])
        return True

    if push_input and not save(-1):
        return None
    current = -1
    for k, node in enumerate(nodes):
        layer, reads = node.layer, node.inputs
        weights = _join_weights(layer)
        if weights is not None:
            first = next((n for n, r in enumerate(reads) if r == current), None)
            if first is None:
                first = 0
                emit(load, [slot_of[reads[0]]], [])
            own = weights[first]
            for n in range(len(reads)):
                if n != first:
                    emit(join, [slot_of[reads[n]]], [float(own), float(weights[n])])
                    own = 1.0
        else:
            if reads[0] != current:
                emit(load, [slot_of[reads[0]]], [])
            if not node_steps(k, layer, emit):
                return None
        current = k
        for i in set(reads):  # free the registers whose last reader this was
            if i in slot_of and readers[i][-1] == k:
                free.append(slot_of.pop(i))
                free.sort()
        if k < last and not save(k):
            return None
    return out


def graph_program(spec: LayerSpec) -> Optional[tuple[list[int], list[int], list[float]]]:
    """(layer_codes, layer_ints, layer_floats) of a graph spec's DAG for the CNN op, or None
    (the torch walker runs it) when a node's kind has no encoding or more than
    :data:`MAX_SLOTS` values are live at once.

    The nodes run in their (topological) order; the op's current state is the last node's
    value. A value read by any node other than as the current input of the next one is
    PUSHed into a free skip register when computed, and its register is freed after its
    last reader. A node whose input is not the current state LOADs it first; a join of
    inputs r_0, …, r_m with weights a_i starts from the current state when it is one of
    them (else LOADs r_0) and JOINs each other input: the first JOIN scales the current
    state by its own weight, the next ones by 1. An MLP graph runs as 1 x 1 images: each
    Dense but the last as a 1 x 1 CONV, the last after a GLOBAL_AVGPOOL (the mean of its
    one position) as the DENSE readout.
    """
    mlp, last = spec.is_mlp, len(spec.layers) - 1

    def node_steps(k: int, layer, emit) -> bool:
        if mlp and isinstance(layer, Dense):
            if k == last:
                emit(GLOBAL_AVGPOOL, [], [])
                emit(DENSE, [], law_floats(layer))
            else:
                emit(CONV, [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0], law_floats(layer))
            return True
        encode = rule_of(OP_ENCODINGS, layer)
        encoded = None if encode is None else encode(layer)
        if encoded is None:
            return False
        emit(*encoded)
        return True

    return _linearize(spec, (PUSH, LOAD, JOIN), MAX_SLOTS, node_steps, push_input=True)


def mlp_graph_args(spec: LayerSpec) -> Optional[dict]:
    """The arguments of :func:`torch_ntk.ops.analytic_kernels` for an MLP graph spec
    (:func:`compiled_op_args`' and the graph program's ``graph_codes``, ``graph_ints``,
    ``graph_floats``), or None when the MLP op cannot run it (then the CNN op runs it as
    1 x 1 images: :func:`graph_program`).

    The op's state is a dense layer's pre-activations: node 0 is the input layer (it must
    be the input's only reader); an activation is read only by the Dense after it, the
    two a HIDDEN step (MLP_HIDDEN); a Dense reading anything else is a LINEAR (a
    projection shortcut); a LayerNorm over the features is a LAYERNORM; Add and Concat are
    JOINs (:func:`_linearize`, at most MLP_MAX_SLOTS values live).
    """
    nodes = spec.nodes
    if not spec.is_mlp or not isinstance(nodes[0].layer, Dense) or any(
            -1 in node.inputs for node in nodes[1:]):
        return None
    readers: dict = {}
    for k, node in enumerate(nodes):
        for i in node.inputs:
            readers.setdefault(i, []).append(k)
    hidden: list = []  # (activation, dense) per HIDDEN step

    def node_steps(k: int, layer, emit) -> bool:
        if k == 0:
            return True  # the input layer: the op's input_* arguments
        if isinstance(layer, Activation):
            return readers.get(k) == [k + 1] and isinstance(nodes[k + 1].layer, Dense)
        if isinstance(layer, Dense):
            before = nodes[nodes[k].inputs[0]].layer
            if isinstance(before, Activation):
                hidden.append((before, layer))
                emit(MLP_HIDDEN, [], [])
            else:
                emit(MLP_LINEAR, [], law_floats(layer))
            return True
        if isinstance(layer, LayerNorm) and layer.over == "features":
            emit(MLP_LAYERNORM, [int(layer.affine)], [layer.eps])
            return True
        return False

    program = _linearize(spec, (MLP_PUSH, MLP_LOAD, MLP_JOIN), MLP_MAX_SLOTS, node_steps,
                         push_input=False)
    if program is None:
        return None
    return dict(_mlp_op_layers(nodes[0].layer, hidden), graph_codes=program[0],
                graph_ints=program[1], graph_floats=program[2])
