// Host-side setup of the analytic-kernel op, shared by the CPU and CUDA
// implementations: argument checks and the per-layer coefficient table.
#pragma once

#include <vector>

#include <ATen/ATen.h>

#include "checks.h"
#include "math/recursion.h"

namespace torch_ntk {

// The layer description passed to analytic_kernels (see csrc/torch_ntk.cpp).
struct AnalyticArgs {
  double w0, b0, tw0, tb0;
  at::IntArrayRef act_ids;
  at::ArrayRef<double> act_params, weight_var, bias_var, ntk_weight, ntk_bias;
  bool force_quadrature;
};

inline void check_analytic_args(const at::Tensor& x1, const c10::optional<at::Tensor>& x2,
                                const AnalyticArgs& a, const at::Tensor& gh_nodes,
                                const at::Tensor& gh_weights, bool want_nngp, bool want_ntk) {
  const char* op = "analytic_kernels";
  TORCH_CHECK_VALUE(want_nngp || want_ntk, op,
                    ": at least one of want_nngp and want_ntk must be true");
  check_inputs(op, "x1", x1);
  if (x2.has_value()) {
    check_inputs(op, "x2", *x2);
    check_same_dtype_device(op, "x1", x1, "x2", *x2);
    TORCH_CHECK_VALUE(x2->size(1) == x1.size(1), op, ": x2 must have n0=", x1.size(1),
                      " columns like x1; got shape ", x2->sizes());
  }
  const size_t n = a.act_ids.size();
  TORCH_CHECK_VALUE(a.act_params.size() == n && a.weight_var.size() == n &&
                        a.bias_var.size() == n && a.ntk_weight.size() == n &&
                        a.ntk_bias.size() == n,
                    op, ": act_ids, act_params, weight_var, bias_var, ntk_weight and ntk_bias ",
                    "must all have one entry per hidden layer; got lengths ", n, ", ",
                    a.act_params.size(), ", ", a.weight_var.size(), ", ", a.bias_var.size(), ", ",
                    a.ntk_weight.size(), ", ", a.ntk_bias.size());
  bool needs_quadrature = false;
  for (size_t l = 0; l < n; ++l) {
    const int64_t id = a.act_ids[l];
    TORCH_CHECK_VALUE(id >= 0 && id < math::kNumActivations, op, ": act_ids[", l,
                      "] = ", id, " is not a registered activation id (0..",
                      math::kNumActivations - 1, ")");
    TORCH_CHECK_VALUE(a.weight_var[l] >= 0 && a.bias_var[l] >= 0, op,
                      ": weight_var and bias_var must be non-negative; got ", a.weight_var[l],
                      " and ", a.bias_var[l], " at hidden layer ", l);
    if (id == math::kSoftplus) {
      TORCH_CHECK_VALUE(a.act_params[l] > 0, op, ": softplus beta must be positive; got ",
                        a.act_params[l], " at hidden layer ", l);
    }
    needs_quadrature |= math::expectation_kind(static_cast<int>(id), a.force_quadrature) ==
                        math::kQuadrature;
  }
  TORCH_CHECK_VALUE(a.w0 >= 0 && a.b0 >= 0, op, ": w0 and b0 must be non-negative; got ", a.w0,
                    " and ", a.b0);
  if (needs_quadrature) {
    check_dim(op, "gh_nodes", gh_nodes, 1);
    TORCH_CHECK_VALUE(gh_nodes.numel() > 0 && gh_nodes.sizes() == gh_weights.sizes(), op,
                      ": gh_nodes and gh_weights must be non-empty and of the same length when a "
                      "layer needs quadrature; got shapes ",
                      gh_nodes.sizes(), " and ", gh_weights.sizes());
  }
}

template <typename T>
std::vector<math::HiddenLayer<T>> make_hidden_layers(const AnalyticArgs& a) {
  std::vector<math::HiddenLayer<T>> layers(a.act_ids.size());
  for (size_t l = 0; l < layers.size(); ++l) {
    auto& h = layers[l];
    h.act = static_cast<int>(a.act_ids[l]);
    h.kind = math::expectation_kind(h.act, a.force_quadrature);
    h.param = static_cast<T>(a.act_params[l]);
    math::abrelu_slopes(h.act, h.param, h.slope_neg, h.slope_pos);
    h.weight_var = static_cast<T>(a.weight_var[l]);
    h.bias_var = static_cast<T>(a.bias_var[l]);
    h.ntk_weight = static_cast<T>(a.ntk_weight[l]);
    h.ntk_bias = static_cast<T>(a.ntk_bias[l]);
  }
  return layers;
}

}  // namespace torch_ntk
