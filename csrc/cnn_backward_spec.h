// Host side of the cnn_kernels_backward op, shared by the CPU and CUDA implementations: the
// checks (the forward's program validation, then the layers the backward supports), the
// gradient buffers and the dtype dispatch. A backend supplies Backend::run_backward (the
// self passes, the pairs' backward, the self passes' backward; csrc/math/cnn_backward.h).
#pragma once

#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "checks.h"
#include "cnn_spec.h"
#include "math/cnn_backward.h"

namespace torch_ntk {

// layer_floats entries per layer code (make_cnn_plan's table).
inline int cnn_code_floats(int64_t code) {
  static const int kFloats[] = {4, 1, 0, 0, 0, 4, 0, 0, 2, 1, 0, 0};
  return kFloats[code];
}

// The gradient buffers a backend fills (added to; zero on entry).
template <typename T>
struct CnnGradients {
  at::Tensor g_nngp, g_ntk;  // [N1, N2] contiguous: the outputs' adjoints
  at::Tensor gx1, gx2;       // [N1, dim], [N2, dim] (gx2 aliases gx1 when symmetric)
  at::Tensor gfloat;         // [num_layers, math::kCnnFloatGrads]
};

// cnn_kernels_backward (schema in csrc/torch_ntk.cpp) on one backend, which supplies
//   Backend::run_backward<T>(CnnProblem<T>&, CnnGradients<T>&).
template <typename Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> cnn_kernels_backward_op(
    const at::Tensor& grad_nngp, const at::Tensor& grad_ntk, const at::Tensor& x1_in,
    const c10::optional<at::Tensor>& x2_in, at::IntArrayRef layer_codes,
    at::IntArrayRef layer_ints, at::ArrayRef<double> layer_floats, const at::Tensor& gh_nodes,
    const at::Tensor& gh_weights, bool force_quadrature) {
  const char* op = "cnn_kernels_backward";
  check_images(op, "x1", x1_in);
  if (x2_in.has_value()) {
    check_images(op, "x2", *x2_in);
    check_same_dtype_device(op, "x1", x1_in, "x2", *x2_in);
    TORCH_CHECK_VALUE(x2_in->sizes().slice(1) == x1_in.sizes().slice(1), op,
                      ": x2 must have the [C, H, W] of x1 ", x1_in.sizes().slice(1),
                      "; got shape ", x2_in->sizes());
  }
  const CnnPlan plan = make_cnn_plan(layer_codes, layer_ints, layer_floats, x1_in.size(2),
                                     x1_in.size(3), force_quadrature);
  for (size_t l = 0; l < plan.layers.size(); ++l) {
    const auto& L = plan.layers[l];
    TORCH_CHECK_NOT_IMPLEMENTED(math::cnn_backward_supports(L), op, ": layer ", l, " (",
                      cnn_code_name(L.code),
                      L.code == math::kCnnActivation ? ", act_id " + std::to_string(L.act.act)
                                                     : std::string(),
                      ") has no backward in the fused op (it has CONV, DENSE, AVGPOOL, "
                      "GLOBAL_AVGPOOL, GLOBAL_SUMPOOL, FLATTEN and the closed-form activations: "
                      "identity, relu, leaky_relu, abs, erf); torch_ntk.analytic_kernels "
                      "differentiates such programs by its torch path");
  }
  const bool symmetric = !x2_in.has_value();
  const int64_t n1 = x1_in.size(0);
  const int64_t n2 = symmetric ? n1 : x2_in->size(0);
  for (const auto& named : {std::make_pair("grad_nngp", &grad_nngp),
                            std::make_pair("grad_ntk", &grad_ntk)}) {
    const at::Tensor& g = *named.second;
    check_same_dtype_device(op, "x1", x1_in, named.first, g);
    TORCH_CHECK_VALUE(g.dim() == 2 && g.size(0) == n1 && g.size(1) == n2, op, ": ", named.first,
                      " must have the outputs' shape [", n1, ", ", n2, "]; got ", g.sizes());
  }
  const at::Tensor x1 = x1_in.contiguous().view({n1, -1});
  const at::Tensor x2 = symmetric ? x1 : x2_in->contiguous().view({n2, -1});
  const int64_t dim = x1.size(1);
  at::Tensor gx1 = at::zeros({n1, dim}, x1.options());
  at::Tensor gx2 = symmetric ? gx1 : at::zeros({n2, dim}, x1.options());
  at::Tensor gfloat = at::zeros({static_cast<int64_t>(plan.layers.size()),
                                 math::kCnnFloatGrads}, x1.options());
  AT_DISPATCH_FLOATING_TYPES(x1.scalar_type(), "cnn_kernels_backward", [&] {
    using T = scalar_t;
    CnnProblem<T> p;
    p.symmetric = symmetric;
    p.n1 = n1;
    p.n2 = n2;
    p.x1 = x1;
    p.x2 = x2;
    p.layers = plan.cast<T>();
    p.prog.layers = nullptr;
    p.prog.num_layers = static_cast<int>(p.layers.size());
    p.prog.full = plan.full;
    p.prog.c0 = static_cast<int>(x1_in.size(1));
    p.prog.h0 = static_cast<int>(x1_in.size(2));
    p.prog.w0 = static_cast<int>(x1_in.size(3));
    p.prog.plane = plan.plane;
    p.prog.var_len = std::max<int64_t>(plan.var_len, 1);
    p.prog.num_slots = plan.num_slots;
    p.prog.gh = {nullptr, nullptr, 0};
    p.gh_nodes = p.gh_weights = at::empty({0}, x1.options());  // closed forms only
    p.var1 = at::empty({n1, p.prog.var_len}, x1.options());
    p.var2 = symmetric ? p.var1 : at::empty({n2, p.prog.var_len}, x1.options());
    CnnGradients<T> g;
    g.g_nngp = grad_nngp.contiguous();
    g.g_ntk = grad_ntk.contiguous();
    g.gx1 = gx1;
    g.gx2 = gx2;
    g.gfloat = gfloat;
    Backend::template run_backward<T>(p, g);
  });
  (void)gh_nodes;
  (void)gh_weights;
  // each CONV/DENSE's four gradients at its place in layer_floats; the other floats
  // (activation parameters, graph steps) get 0: not differentiated
  at::Tensor grad_floats = at::zeros({static_cast<int64_t>(layer_floats.size())}, x1.options());
  const at::Tensor gfloat_cpu = gfloat.to(at::kCPU);
  int64_t f = 0;
  for (size_t l = 0; l < layer_codes.size(); ++l) {
    const int64_t code = layer_codes[l];
    if (code == math::kCnnConv || code == math::kCnnDense) {
      grad_floats.narrow(0, f, math::kCnnFloatGrads).copy_(gfloat_cpu[static_cast<int64_t>(l)]);
    }
    f += cnn_code_floats(code);
  }
  at::Tensor gx2_out = symmetric ? at::empty({0}, x1.options()) : gx2.view(x2_in->sizes());
  return {gx1.view(x1_in.sizes()), gx2_out, grad_floats};
}

}  // namespace torch_ntk
