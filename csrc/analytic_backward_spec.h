// Host side of the analytic_kernels_backward op, shared by the CPU and CUDA implementations:
// argument checks, the prologue (the forward's Gram matrix, squared norms and per-sample
// variances, from csrc/analytic_spec.h) and the op's entry function. A backend supplies
// only its loops (analytic_kernels_backward_op).
//
// The op returns, for the loss L = <grad_nngp, NNGP> + <grad_ntk, NTK> of the forward's
// outputs (csrc/math/recursion_backward.h for the formulas):
//   grad_gram  [N1, N2]  dL/d<x1_i, x2_j> through each pair's own chain (x2 None: the
//                        upper triangle j >= i, whose entries the forward mirrors; zeros
//                        below);
//   grad_sq1   [N1]      dL/d<x1_i, x1_i> through the per-sample variances (x2 None: of
//                        the samples of x1, which are also x2's);
//   grad_sq2   [N2]      dL/d<x2_j, x2_j> ([0] when x2 is None);
//   grad_coefs [L, 4]    float64: dL/d(weight_var, bias_var, ntk_weight, ntk_bias) of the
//                        input layer (row 0: input_weight_var, ... input_ntk_bias) and of
//                        each hidden layer (rows 1..L-1).
// The caller chains them to x1, x2 (the Gram product is torch's; torch_ntk/ops.py).
#pragma once

#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "analytic_spec.h"
#include "math/recursion_backward.h"

namespace torch_ntk {

// grad_nngp / grad_ntk: the forward's output shape [N1, N2], or [0] (an output not wanted or
// without gradient: taken as zero).
inline void check_output_grad(const char* name, const at::Tensor& g, const at::Tensor& x1,
                              int64_t n1, int64_t n2) {
  const char* op = "analytic_kernels_backward";
  if (g.numel() == 0) return;
  check_same_dtype_device(op, "x1", x1, name, g);
  TORCH_CHECK_VALUE(g.dim() == 2 && g.size(0) == n1 && g.size(1) == n2, op, ": ", name,
                    " must have the outputs' shape [", n1, ", ", n2, "] or be empty; got ",
                    g.sizes());
}

// The backward op (schema in csrc/torch_ntk.cpp) on one backend, which supplies
//   Backend::run<T>(const AnalyticProblem<T>& p, const T* g_nngp, const T* g_ntk,
//                   at::Tensor& grad_gram, at::Tensor& grad_sq1, at::Tensor& grad_sq2,
//                   at::Tensor& grad_coefs):
//   the per-sample variances (p.var1, p.var2), then the pair pass and the sample pass; g_nngp,
//   g_ntk are nullptr for a zero gradient, else [N1, N2] (x2 None: already summed with their
//   transposes, so entry (i, j >= i) is the whole gradient of the pair the forward computes).
template <typename Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> analytic_kernels_backward_op(
    const at::Tensor& grad_nngp, const at::Tensor& grad_ntk, const at::Tensor& x1_in,
    const c10::optional<at::Tensor>& x2_in, double input_weight_var, double input_bias_var,
    double input_ntk_weight, double input_ntk_bias, at::IntArrayRef act_ids,
    at::ArrayRef<double> act_params, at::ArrayRef<double> weight_var,
    at::ArrayRef<double> bias_var, at::ArrayRef<double> ntk_weight,
    at::ArrayRef<double> ntk_bias) {
  const char* op = "analytic_kernels_backward";
  const AnalyticArgs args{{input_weight_var, input_bias_var, input_ntk_weight, input_ntk_bias},
                          act_ids, act_params, weight_var, bias_var, ntk_weight, ntk_bias,
                          /*force_quadrature=*/false, /*hermite_series=*/false, {}, {}, {}};
  const at::Tensor no_rule = at::empty({0}, x1_in.options().dtype(at::kDouble));
  for (size_t l = 0; l < act_ids.size(); ++l) {
    const int64_t id = act_ids[l];
    TORCH_CHECK_VALUE(id >= 0 && id < math::kNumActivations &&
                          math::closed_form_backward(math::expectation_kind(
                              static_cast<int>(id), false)),
                      op, ": act_ids[", l, "] = ", id, " has no closed-form derivative in the "
                      "op (only identity, relu, leaky_relu, abs and erf: ids 0..4); "
                      "torch_ntk.analytic_kernels differentiates the others by the torch "
                      "composite (torch_ntk.analytic.autograd)");
  }
  check_analytic_args(x1_in, x2_in, args, no_rule, no_rule, true, true);
  const bool symmetric = !x2_in.has_value();
  const int64_t n1 = x1_in.size(0);
  const int64_t n2 = symmetric ? n1 : x2_in->size(0);
  check_output_grad("grad_nngp", grad_nngp, x1_in, n1, n2);
  check_output_grad("grad_ntk", grad_ntk, x1_in, n1, n2);

  const at::Tensor x1 = x1_in.contiguous();
  const at::Tensor x2 = symmetric ? x1 : x2_in->contiguous();
  // x2 None: the forward computes pair (i, j >= i) and mirrors it to (j, i), so that pair's
  // gradient is g_ij + g_ji (g_ii on the diagonal: the halving of 2 g_ii is exact).
  auto pair_grad = [&](const at::Tensor& g) {
    if (g.numel() == 0) return at::Tensor();
    if (!symmetric) return g.contiguous();
    at::Tensor s = g + g.t();
    s.diagonal().mul_(0.5);
    return s;
  };
  const at::Tensor g_nngp = pair_grad(grad_nngp);
  const at::Tensor g_ntk = pair_grad(grad_ntk);
  const at::Tensor gram = full_precision_gram(x1, x2, symmetric);
  const int64_t rows = static_cast<int64_t>(act_ids.size()) + 1;
  at::Tensor grad_gram = at::zeros({n1, n2}, x1.options());
  at::Tensor grad_sq1 = at::zeros({n1}, x1.options());
  at::Tensor grad_sq2 = at::zeros({symmetric ? 0 : n2}, x1.options());
  at::Tensor grad_coefs = at::zeros({rows, math::kNumCoefs}, x1.options().dtype(at::kDouble));
  if (!g_nngp.defined() && !g_ntk.defined()) return {grad_gram, grad_sq1, grad_sq2, grad_coefs};
  AT_DISPATCH_FLOATING_TYPES(x1.scalar_type(), "analytic_kernels_backward", [&] {
    auto problem = make_analytic_problem<scalar_t>(x1, x2, symmetric, gram, args, MlpGraph{},
                                                   no_rule, no_rule);
    Backend::template run<scalar_t>(
        problem, g_nngp.defined() ? g_nngp.data_ptr<scalar_t>() : nullptr,
        g_ntk.defined() ? g_ntk.data_ptr<scalar_t>() : nullptr, grad_gram, grad_sq1, grad_sq2,
        grad_coefs);
  });
  return {grad_gram, grad_sq1, grad_sq2, grad_coefs};
}

}  // namespace torch_ntk
