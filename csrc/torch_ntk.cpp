// Operator schemas of the torch_ntk library, and the Python module stub that
// makes `import torch_ntk._C` run the registrations in every linked source file.
#include <Python.h>

#include <string>

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <pybind11/pybind11.h>

#include "math/activations.h"
#include "structured_spec.h"

TORCH_LIBRARY(torch_ntk, m) {
  // Infinite-width NNGP and NTK of an MLP (csrc/math/recursion.h for the formulas).
  // x1 [N1, n0], x2 [N2, n0] or None (x2 = x1, result exactly symmetric). The first
  // dense layer gives Sigma^(1) = input_weight_var <x, x'> + input_bias_var and
  // Theta^(1) = input_ntk_weight <x, x'> + input_ntk_bias; then one entry per hidden
  // layer (activation followed by a dense layer) in each list.
  // hermite_series: smooth activations (tanh, sigmoid, SiLU, GELU, softplus) by their
  // Hermite series (csrc/math/hermite.h), the gh rule serving the pairs outside its
  // bound; false: by the 2-D gh rule throughout. force_quadrature overrides both.
  // graph_codes (CPU only; empty: the hidden layers in order) runs a graph program
  // between the hidden layers (csrc/math/mlp_graph.h), each step taking its arguments in
  // order from graph_ints and graph_floats:
  //   0 HIDDEN      the next hidden layer (each exactly once, in order)
  //   1 PUSH, 2 LOAD  ints slot (0..3): register <- state / state <- register
  //   3 JOIN        ints slot; floats a, b: Sigma <- a Sigma + b Sigma_slot, Theta likewise
  //   4 LAYERNORM   ints affine (0/1); floats eps (>= 0)
  //   5 LINEAR      floats weight_var, bias_var, ntk_weight, ntk_bias (a dense layer on
  //                 the current pre-activations: a projection shortcut)
  // series_x1, series_x2 (CPU only, no graph_codes; None: none; series_x2 with x2):
  // precomputed Hermite series tables for the hidden layers of act id -1 (any elementwise
  // phi), [L-1, 2 K_max + 3, N] per sample set, rows var (the variances of every layer,
  // used instead of the op's own), a_k, b_k, ra, rb (check_series_tables,
  // csrc/analytic_spec.h); series_terms [L-1] the K of each such layer (0 elsewhere); the
  // pairs whose truncation bound exceeds series_tolerance are marked in the third output.
  // Returns (nngp [N1, N2], ntk [N1, N2], fallback [N1, N2] bool: the pairs to recompute,
  // whose outputs hold the truncated series); an output that is not wanted, and fallback
  // without series tables, is an empty tensor of shape [0].
  m.def(
      "analytic_kernels(Tensor x1, Tensor? x2, float input_weight_var, float input_bias_var, "
      "float input_ntk_weight, float input_ntk_bias, int[] act_ids, float[] act_params, "
      "float[] weight_var, float[] bias_var, float[] ntk_weight, float[] ntk_bias, "
      "Tensor gh_nodes, Tensor gh_weights, bool force_quadrature, bool want_nngp, "
      "bool want_ntk, bool hermite_series=True, int[] graph_codes=[], int[] graph_ints=[], "
      "float[] graph_floats=[], Tensor? series_x1=None, Tensor? series_x2=None, "
      "int[] series_terms=[], "
      "float series_tolerance=0.) -> (Tensor, Tensor, Tensor)");
  // The backward of analytic_kernels for chains of closed-form layers (act_ids 0..4:
  // identity, relu, leaky_relu, abs, erf; csrc/math/recursion_backward.h), the layer
  // arguments as the forward's. For L = <grad_nngp, NNGP> + <grad_ntk, NTK> (each [N1, N2],
  // or [0] for zero) returns (grad_gram [N1, N2]: dL/d<x1_i, x2_j> per pair, x2 None: the
  // upper triangle; grad_sq1 [N1], grad_sq2 [N2] ([0] when x2 is None): dL/d<x, x> through
  // the per-sample variances; grad_coefs [hidden + 1, 4] float64: dL/d(weight_var,
  // bias_var, ntk_weight, ntk_bias), row 0 the input_* arguments). See
  // csrc/analytic_backward_spec.h.
  m.def(
      "analytic_kernels_backward(Tensor grad_nngp, Tensor grad_ntk, Tensor x1, Tensor? x2, "
      "float input_weight_var, float input_bias_var, float input_ntk_weight, "
      "float input_ntk_bias, int[] act_ids, float[] act_params, float[] weight_var, "
      "float[] bias_var, float[] ntk_weight, float[] ntk_bias) -> (Tensor, Tensor, Tensor, "
      "Tensor)");
  // Infinite-width NNGP and NTK of a CNN (csrc/math/cnn_recursion.h for the formulas).
  // x1 [N1, C0, H, W] (1-D inputs as [N, C, 1, L]), x2 [N2, C0, H, W] or None (x2 = x1,
  // result exactly symmetric). The network is a program: one code per layer, each taking
  // its arguments in order from layer_ints and layer_floats:
  //   0 CONV            ints kh, kw, sh, sw, dh, dw, ph_before, ph_after, pw_before,
  //                     pw_after, circular (0/1); floats weight_var, bias_var, ntk_weight,
  //                     ntk_bias
  //   1 ACTIVATION      ints act_id; floats param
  //   2 AVGPOOL         ints kh, kw, sh, sw
  //   3 GLOBAL_AVGPOOL  4 FLATTEN  (no arguments)
  //   5 DENSE           floats weight_var, bias_var, ntk_weight, ntk_bias
  // Graph steps (csrc/math/cnn_graph.h for the formulas), for DAGs of layers:
  //   6 PUSH            ints slot: copy the current planes into skip register slot (0..7)
  //   7 LOAD            ints slot: the current planes <- the register (another branch)
  //   8 JOIN            ints slot; floats a, b: Sigma <- a Sigma + b Sigma_slot, Theta
  //                     likewise (an Add of coefficients c: a, b = c^2; a Concat of widths
  //                     w: a, b = w / sum w); the register keeps its planes
  //   9 LAYERNORM       ints over (0 per position, 1 over the positions), affine (0/1);
  //                     floats eps (>= 0)
  //  10 AVGPOOL_PAD     ints kh, kw, sh, sw, ph, pw (2 ph <= kh, 2 pw <= kw),
  //                     count_include_pad (0/1)
  //  11 GLOBAL_SUMPOOL  (no arguments)
  // LOAD and JOIN need a register an earlier PUSH filled (JOIN: of the same positions);
  // an ACTIVATION needs Gaussian features (a CONV or DENSE since the last activation, in
  // every branch a JOIN sums). The program ends with a DENSE, or with graph steps on the
  // scalars of DENSE layers; a DENSE follows GLOBAL_AVGPOOL, GLOBAL_SUMPOOL, FLATTEN or
  // DENSE (+ ACTIVATION). Returns (nngp [N1, N2], ntk [N1, N2]); an output that is not
  // wanted is an empty tensor of shape [0].
  m.def(
      "cnn_kernels(Tensor x1, Tensor? x2, int[] layer_codes, int[] layer_ints, "
      "float[] layer_floats, Tensor gh_nodes, Tensor gh_weights, bool force_quadrature, "
      "bool want_nngp, bool want_ntk) -> (Tensor, Tensor)");
  // The backward of cnn_kernels (issue 30; csrc/math/cnn_backward.h): grad_nngp, grad_ntk
  // [N1, N2] the adjoints of its outputs (zeros for one not used), the other arguments as
  // cnn_kernels'. Returns (grad_x1 [N1, C0, H, W], grad_x2 [N2, C0, H, W] or an empty [0]
  // when x2 is None, grad_floats [len(layer_floats)]: each CONV/DENSE's weight_var,
  // bias_var, ntk_weight, ntk_bias gradients, 0 for the other floats). Programs of CONV,
  // DENSE, AVGPOOL, GLOBAL_AVGPOOL, GLOBAL_SUMPOOL, FLATTEN and closed-form activations
  // (identity, relu, leaky_relu, abs, erf) only; others raise a NotImplementedError.
  m.def(
      "cnn_kernels_backward(Tensor grad_nngp, Tensor grad_ntk, Tensor x1, Tensor? x2, "
      "int[] layer_codes, int[] layer_ints, float[] layer_floats, Tensor gh_nodes, "
      "Tensor gh_weights, bool force_quadrature) -> (Tensor, Tensor, Tensor)");
  // phi(x) (derivative=False) or phi'(x) (derivative=True) of a registered activation,
  // elementwise, evaluated by the same code the kernels use.
  m.def("activation(Tensor x, int act_id, float param, bool derivative) -> Tensor");
  // Structured empirical NTK of an MLP (csrc/math/structured_tile.h for the formula):
  //   Theta = sum_l (weight_coef[l] <A1_l, A2_l> + bias_coef[l]) * <D1_l, D2_l>.
  // Per dense layer l: a1[l] [N1, n_l] input activations, d1[l] [N1, n_L, m_l] output
  // cotangents; a2/d2 likewise for x2, or both empty lists for x2 = x1 (the result is
  // then exactly symmetric). mode "full" -> [N1, N2, n_L, n_L], "trace" -> [N1, N2]
  // (sum over k of Theta_kk), "diagonal" -> [N1, N2, n_L]. precision "highest" computes
  // in the inputs' dtype; "bf16" / "bf16x3" (float32 inputs only) use bfloat16 operands
  // (one part, or a high and a low part) with float32 accumulation: tensor cores on
  // CUDA, the same roundings emulated on CPU (structured_spec.h). workspace_bytes
  // limits the op's Gram buffers (0: 1 GiB); structured_workspace_bytes below says
  // what they take.
  m.def(
      "structured_ntk(Tensor[] a1, Tensor[] d1, Tensor[] a2, Tensor[] d2, float[] weight_coef, "
      "float[] bias_coef, str mode, str precision=\"highest\", int workspace_bytes=0) -> Tensor");
}

namespace {
pybind11::dict activation_table() {
  pybind11::dict table;
  for (int id = 0; id < torch_ntk::math::kNumActivations; ++id) {
    table[torch_ntk::math::activation_name(id)] = id;
  }
  return table;
}

// Bytes of Gram buffers structured_ntk allocates for these sizes (arguments checked
// by the Python wrapper, torch_ntk.ops.structured_workspace_bytes).
int64_t structured_workspace_bytes(int64_t n1, int64_t n2, int64_t n_out,
                                   const std::string& mode, const std::string& precision,
                                   int64_t element_size, bool cuda, bool symmetric,
                                   int64_t workspace_bytes) {
  using namespace torch_ntk;
  StructuredShape s;
  s.n1 = n1;
  s.n2 = n2;
  s.n_out = n_out;
  s.mode = parse_structured_mode(mode);
  s.channels = math::num_channels(s.mode, n_out);
  s.precision = parse_precision(precision);
  s.symmetric = symmetric;
  return torch_ntk::structured_workspace_bytes(
      s, element_size, resolve_workspace_limit(workspace_bytes), cuda, at::get_num_threads());
}
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "Compiled operators of torch_ntk (registered under torch.ops.torch_ntk).";
  m.def("activation_table", &activation_table, "Activation name -> id of the C++ table.");
  m.def("structured_workspace_bytes", &structured_workspace_bytes,
        "Bytes of Gram buffers structured_ntk allocates (see csrc/structured_spec.h).");
  m.attr("default_workspace_bytes") = torch_ntk::kDefaultWorkspaceBytes;
#ifdef TORCH_NTK_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
