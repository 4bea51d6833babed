"""The CUDA CNN kernel's code paths, run on the CPU: ``torch_ntk._cnn_kernels_blocks``
(csrc/cpu/cnn_block_cpu.cpp) executes csrc/math/cnn_block.h, the body of one CUDA block,
on emulated blocks of host threads with a barrier. So the team paths the GPU takes (the
separable CONV by entries with a barrier between its two steps, the entry walks of
ImageCursor/PlaneCursor at every thread stride, the block reduction, the graph steps)
run here, where the CPU op's one-thread row loops never reach them.

Oracles:
* the independent float64 references of tests/test_cnn_op.py (selection matrices per tap)
  and tests/test_graph_ops.py (joint matrices), at their tolerance 1e-10;
* the CPU op (one thread per pair) at 1e-13 relative to the largest entry: the separable
  taps are summed in the same order on both paths, only the final reductions (FLATTEN,
  GAP, LAYERNORM over positions: thread partial sums, then their total) differ in order.

Thread counts 1, 3, 7, 32 and 64: strides that do not divide the plane sizes (the
cursors' carries), strides larger than a plane (threads with no entry), one thread.
"""

import numpy as np
import pytest
import torch

from torch_ntk import ops

import test_cnn_op as cnn_op
import test_graph_ops as graph_ops
from conftest import rel_err

TEAMS = [(1, 1), (3, 2), (7, 1), (32, 3), (64, 1)]  # (threads, blocks)


def blocks_op(threads, blocks):
    """ops.cnn_kernels' signature, on emulated CUDA blocks."""
    def op(x1, x2, codes, ints, floats, nodes, weights, force_quadrature=False, want_nngp=True,
           want_ntk=True):
        return torch.ops.torch_ntk._cnn_kernels_blocks.default(
            x1, x2, [int(c) for c in codes], [int(i) for i in ints], [float(f) for f in floats],
            nodes, weights, bool(force_quadrature), bool(want_nngp), bool(want_ntk), threads,
            blocks)
    return op


def _gh():
    nodes, weights = np.polynomial.hermite.hermgauss(cnn_op.GH_DEGREE)
    return torch.as_tensor(nodes), torch.as_tensor(weights)


@pytest.mark.parametrize("name", list(cnn_op.NETS))
@pytest.mark.parametrize("hw", [(4, 4), (5, 3)])
@pytest.mark.parametrize("threads, blocks", TEAMS)
def test_blocks_match_reference_and_cpu(name, hw, threads, blocks):
    net = cnn_op.NETS[name]
    g = torch.Generator().manual_seed(5)
    x1 = torch.randn(3, 2, *hw, generator=g, dtype=torch.float64)
    x2 = torch.randn(2, 2, *hw, generator=g, dtype=torch.float64)
    codes, ints, floats, layers = cnn_op.encode(net, *x1.shape[1:], "ntk")
    nodes, weights = _gh()
    run = blocks_op(threads, blocks)
    ref = cnn_op.reference(layers, x1, x2)
    for b in (x2, None):
        got = run(x1, b, codes, ints, floats, nodes, weights)
        cpu = ops.cnn_kernels(x1, b, codes, ints, floats, nodes, weights)
        if b is None:
            ref = tuple(r.triu() + r.triu(1).T for r in cnn_op.reference(layers, x1, x1))
            assert all(torch.equal(t, t.T) for t in got)
        for g_, c_, r_ in zip(got, cpu, ref):
            assert rel_err(g_, r_) < 1e-10
            assert rel_err(g_, c_) < 1e-13


@pytest.mark.parametrize("name", list(graph_ops.CNN_NETS))
@pytest.mark.parametrize("threads, blocks", [(5, 2), (32, 1)])
def test_blocks_graph_programs(name, threads, blocks):
    """PUSH/LOAD/JOIN registers, LAYERNORM (its per-position and over-positions
    reductions), padded pools and the sum pool on a team, against the joint-matrix
    reference of tests/test_graph_ops.py."""
    net = graph_ops.CNN_NETS[name]
    x1, x2 = graph_ops.inputs("cnn")
    codes, ints, floats = graph_ops.encode(net)
    empty = torch.zeros(0, dtype=x1.dtype)
    run = blocks_op(threads, blocks)
    for b in (x2, None):
        got = run(x1, b, codes, ints, floats, empty, empty)
        ref = graph_ops.reference(net, x1.numpy(), None if b is None else b.numpy())
        cpu = ops.cnn_kernels(x1, b, codes, ints, floats, empty, empty)
        for g_, c_, r_ in zip(got, cpu, ref):
            assert rel_err(g_, torch.from_numpy(r_)) < graph_ops.TOL64
            assert rel_err(g_, c_) < 1e-13


def test_blocks_float32_and_wide_image():
    """float32 on a 9 x 11 image, first a 5 x 5 CONV padded by 3 columns only: its output
    (5 x 13) is wider and lower than its input, so its separable temporary plane (9 x 13
    positions) is larger than any image plane (cnn_spec.h sizes the working planes for
    it). Against the CPU op in float32 at 1e-5 (the GAP adds 65^2 = 4225 float32 entries,
    in 32 partial sums here and serially on the CPU: sqrt(n) eps ~ 4e-6), the reference
    (2e-5; float64: 1e-10)."""
    net = [cnn_op.conv(3, (5, 5), pad=((0, 0), (3, 3))), cnn_op.act("relu"),
           cnn_op.conv(2, (3, 3), pad=((1, 1), (1, 1))), cnn_op.act("relu"),
           cnn_op.GAP_, cnn_op.dense()]
    g = torch.Generator().manual_seed(9)
    x1 = torch.randn(3, 2, 9, 11, generator=g, dtype=torch.float64)
    codes, ints, floats, layers = cnn_op.encode(net, 2, 9, 11, "ntk")
    nodes, weights = _gh()
    ref = cnn_op.reference(layers, x1, x1)
    got = blocks_op(32, 2)(x1.float(), None, codes, ints, floats, nodes.float(),
                           weights.float())
    cpu = ops.cnn_kernels(x1.float(), None, codes, ints, floats, nodes.float(), weights.float())
    got64 = blocks_op(32, 2)(x1, None, codes, ints, floats, nodes, weights)
    for g_, c_, r_, g64 in zip(got, cpu, ref, got64):
        assert rel_err(g_, c_) < 1e-5
        assert rel_err(g_.double(), r_) < 2e-5
        assert rel_err(g64, r_) < 1e-10


def test_blocks_arguments_are_checked():
    x = torch.randn(2, 1, 3, 3, dtype=torch.float64)
    codes, ints, floats, _ = cnn_op.encode([cnn_op.conv(1, (2, 2)), cnn_op.GAP_,
                                            cnn_op.dense()], 1, 3, 3, "ntk")
    nodes, weights = _gh()
    with pytest.raises(ValueError, match="threads must be in"):
        blocks_op(0, 1)(x, None, codes, ints, floats, nodes, weights)
    with pytest.raises(ValueError, match="blocks must be in"):
        blocks_op(4, 100)(x, None, codes, ints, floats, nodes, weights)
