// CPU implementation of analytic_kernels and activation.
//
// One GEMM gives the input Gram matrix <x, x'>, written into an output buffer;
// the per-sample variances run the recursion in O(N L); then a parallel pass
// over tiles of pairs runs every layer on a tile held in L1 (q12 and theta
// arrays of kTile entries) and overwrites the buffer with the outputs. The
// closed-form layers are branch-free loops over the tile that the compiler
// vectorizes (AVX2/AVX-512 clones are selected at run time on x86-64).
#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../analytic_spec.h"
#include "../checks.h"
#include "../math/recursion.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TNTK_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TNTK_CPU_CLONES
#endif

namespace torch_ntk {
namespace {

constexpr int64_t kTile = 256;

template <typename T>
struct PairProblem {
  const math::HiddenLayer<T>* layers;
  int64_t num_layers;
  math::GaussHermite<T> gh;
  T w0, b0, tw0, tb0;
  const T* var1;  // [num_layers, N1]: Sigma^(l)(x1_i, x1_i) entering hidden layer l
  const T* var2;  // [num_layers, N2]
  int64_t n1, n2;
  T* gram;        // [N1, N2] input Gram, overwritten by the first wanted output
  T* nngp;        // [N1, N2] or nullptr
  T* ntk;         // [N1, N2] or nullptr
  bool symmetric;
};

// Runs all layers for pairs (i, j0..j0+n) and writes the outputs (and their mirror
// images when symmetric).
template <typename T>
inline __attribute__((always_inline)) void pair_tile(const PairProblem<T>& P, int64_t i,
                                                     int64_t j0, int64_t n) {
  T sigma[kTile];
  T theta[kTile];
  const T* g = P.gram + i * P.n2 + j0;
  for (int64_t k = 0; k < n; ++k) {
    sigma[k] = P.w0 * g[k] + P.b0;
    theta[k] = P.tw0 * g[k] + P.tb0;
  }
  for (int64_t l = 0; l < P.num_layers; ++l) {
    const math::HiddenLayer<T> layer = P.layers[l];
    const T q11 = P.var1[l * P.n1 + i];
    const T* q22 = P.var2 + l * P.n2 + j0;
    // The diagonal pair (i, i) has Sigma^(l)(x, x) = q11 by definition; setting it
    // exactly keeps its angle at zero instead of ~sqrt(eps) from rounding.
    if (P.symmetric && j0 == i) sigma[0] = q11;
    switch (layer.kind) {
      case math::kAbRelu:
        for (int64_t k = 0; k < n; ++k) {
          T e, ed;
          math::abrelu_expectations(layer.slope_neg, layer.slope_pos, q11, q22[k], sigma[k], e,
                                    ed);
          math::apply_layer(layer, e, ed, sigma[k], theta[k]);
        }
        break;
      case math::kErfClosed:
        for (int64_t k = 0; k < n; ++k) {
          T e, ed;
          math::erf_expectations(q11, q22[k], sigma[k], e, ed);
          math::apply_layer(layer, e, ed, sigma[k], theta[k]);
        }
        break;
      default:
        for (int64_t k = 0; k < n; ++k) {
          T e, ed;
          math::quadrature_expectations(layer.act, layer.param, P.gh, q11, q22[k], sigma[k], e,
                                        ed);
          math::apply_layer(layer, e, ed, sigma[k], theta[k]);
        }
        break;
    }
  }
  if (P.nngp != nullptr) {
    T* out = P.nngp + i * P.n2 + j0;
    for (int64_t k = 0; k < n; ++k) out[k] = sigma[k];
    if (P.symmetric) {
      for (int64_t k = 0; k < n; ++k) P.nngp[(j0 + k) * P.n2 + i] = sigma[k];
    }
  }
  if (P.ntk != nullptr) {
    T* out = P.ntk + i * P.n2 + j0;
    for (int64_t k = 0; k < n; ++k) out[k] = theta[k];
    if (P.symmetric) {
      for (int64_t k = 0; k < n; ++k) P.ntk[(j0 + k) * P.n2 + i] = theta[k];
    }
  }
}

// All pairs of row i (j >= i when symmetric: the lower triangle is only written).
template <typename T>
inline __attribute__((always_inline)) void pair_row(const PairProblem<T>& P, int64_t i) {
  const int64_t start = P.symmetric ? i : 0;
  for (int64_t j0 = start; j0 < P.n2; j0 += kTile) {
    pair_tile(P, i, j0, std::min(kTile, P.n2 - j0));
  }
}

TNTK_CPU_CLONES void pair_row_float(const PairProblem<float>& P, int64_t i) { pair_row(P, i); }
TNTK_CPU_CLONES void pair_row_double(const PairProblem<double>& P, int64_t i) { pair_row(P, i); }

inline void pair_row_dispatch(const PairProblem<float>& P, int64_t i) { pair_row_float(P, i); }
inline void pair_row_dispatch(const PairProblem<double>& P, int64_t i) { pair_row_double(P, i); }

// var[l, n] = Sigma^(l)(x_n, x_n) entering hidden layer l (l = 0 .. L-2).
template <typename T>
void sample_variances(const std::vector<math::HiddenLayer<T>>& layers,
                      const math::GaussHermite<T>& gh, T w0, T b0, const T* sq_norms, int64_t n,
                      T* var) {
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      T q = w0 * sq_norms[s] + b0;
      for (size_t l = 0; l < layers.size(); ++l) {
        var[l * n + s] = q;
        q = math::next_variance(layers[l], gh, q);
      }
    }
  });
}

template <typename T>
void run_analytic(const at::Tensor& x1, const at::Tensor& x2, bool symmetric,
                  const AnalyticArgs& args, const at::Tensor& gh_nodes,
                  const at::Tensor& gh_weights, at::Tensor& gram, at::Tensor& nngp,
                  at::Tensor& ntk) {
  const auto layers = make_hidden_layers<T>(args);
  const int64_t num_layers = static_cast<int64_t>(layers.size());
  const int64_t n1 = x1.size(0), n2 = x2.size(0);

  at::Tensor nodes = gh_nodes.to(x1.scalar_type()).contiguous();
  at::Tensor weights = gh_weights.to(x1.scalar_type()).contiguous();
  math::GaussHermite<T> gh{nodes.data_ptr<T>(), weights.data_ptr<T>(),
                           static_cast<int>(nodes.numel())};

  const T w0 = static_cast<T>(args.w0), b0 = static_cast<T>(args.b0);
  // Squared norms from the Gram diagonal when symmetric, so that pair (i, i) sees
  // exactly the variances of sample i and its angle is exactly zero.
  at::Tensor sq1 = symmetric ? gram.diagonal().contiguous() : x1.mul(x1).sum(1);
  at::Tensor sq2 = symmetric ? sq1 : x2.mul(x2).sum(1);
  at::Tensor var1 = at::empty({std::max<int64_t>(num_layers, 1), n1}, x1.options());
  sample_variances(layers, gh, w0, b0, sq1.data_ptr<T>(), n1, var1.data_ptr<T>());
  at::Tensor var2 = var1;
  if (!symmetric) {
    var2 = at::empty({std::max<int64_t>(num_layers, 1), n2}, x1.options());
    sample_variances(layers, gh, w0, b0, sq2.data_ptr<T>(), n2, var2.data_ptr<T>());
  }

  PairProblem<T> P{layers.data(),
                   num_layers,
                   gh,
                   w0,
                   b0,
                   static_cast<T>(args.tw0),
                   static_cast<T>(args.tb0),
                   var1.data_ptr<T>(),
                   var2.data_ptr<T>(),
                   n1,
                   n2,
                   gram.data_ptr<T>(),
                   nngp.defined() ? nngp.data_ptr<T>() : nullptr,
                   ntk.defined() ? ntk.data_ptr<T>() : nullptr,
                   symmetric};
  if (symmetric) {
    // Row i holds N - i pairs: pairing row k with row N-1-k balances the threads.
    const int64_t half = (n1 + 1) / 2;
    at::parallel_for(0, half, 1, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        pair_row_dispatch(P, k);
        if (n1 - 1 - k != k) pair_row_dispatch(P, n1 - 1 - k);
      }
    });
  } else {
    at::parallel_for(0, n1, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) pair_row_dispatch(P, i);
    });
  }
}

std::tuple<at::Tensor, at::Tensor> analytic_kernels_cpu(
    const at::Tensor& x1_in, const c10::optional<at::Tensor>& x2_in, double w0, double b0,
    double tw0, double tb0, at::IntArrayRef act_ids, at::ArrayRef<double> act_params,
    at::ArrayRef<double> weight_var, at::ArrayRef<double> bias_var,
    at::ArrayRef<double> ntk_weight, at::ArrayRef<double> ntk_bias, const at::Tensor& gh_nodes,
    const at::Tensor& gh_weights, bool force_quadrature, bool want_nngp, bool want_ntk) {
  const AnalyticArgs args{w0,       b0,       tw0,        tb0,      act_ids,   act_params,
                          weight_var, bias_var, ntk_weight, ntk_bias, force_quadrature};
  check_analytic_args(x1_in, x2_in, args, gh_nodes, gh_weights, want_nngp, want_ntk);
  TORCH_INTERNAL_ASSERT(x1_in.device().is_cpu());

  const bool symmetric = !x2_in.has_value();
  const at::Tensor x1 = x1_in.contiguous();
  const at::Tensor x2 = symmetric ? x1 : x2_in->contiguous();
  // The Gram matrix is computed straight into the first wanted output.
  at::Tensor gram = at::mm(x1, x2.t());
  at::Tensor nngp, ntk;
  if (want_nngp) {
    nngp = gram;
    if (want_ntk) ntk = at::empty_like(gram);
  } else {
    ntk = gram;
  }
  AT_DISPATCH_FLOATING_TYPES(x1.scalar_type(), "analytic_kernels_cpu", [&] {
    run_analytic<scalar_t>(x1, x2, symmetric, args, gh_nodes, gh_weights, gram, nngp, ntk);
  });
  const auto empty = at::empty({0}, x1.options());
  return {want_nngp ? nngp : empty, want_ntk ? ntk : empty};
}

at::Tensor activation_cpu(const at::Tensor& x_in, int64_t act_id, double param, bool derivative) {
  check_floating("activation", "x", x_in);
  TORCH_CHECK_VALUE(act_id >= 0 && act_id < math::kNumActivations, "activation: act_id = ",
                    act_id, " is not a registered activation id (0..",
                    math::kNumActivations - 1, ")");
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "activation_cpu", [&] {
    const scalar_t* in = x.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const int id = static_cast<int>(act_id);
    const scalar_t p = static_cast<scalar_t>(param);
    at::parallel_for(0, x.numel(), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        o[k] = derivative ? math::activation_derivative(id, p, in[k])
                          : math::activation(id, p, in[k]);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_ntk, CPU, m) {
  m.impl("analytic_kernels", &analytic_kernels_cpu);
  m.impl("activation", &activation_cpu);
}

}  // namespace torch_ntk
