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
  math::InputLayer<T> input;
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
    sigma[k] = P.input.sigma(g[k]);
    theta[k] = P.input.theta(g[k]);
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

// The CPU backend of analytic_kernels_op and activation_op (csrc/analytic_spec.h).
struct CpuAnalytic {
  // Each tile reads its Gram entries before it writes its outputs.
  static constexpr bool kGramIsOutput = true;

  template <typename T>
  static void run(const AnalyticProblem<T>& p, at::Tensor& nngp, at::Tensor& ntk) {
    const int64_t num_layers = static_cast<int64_t>(p.layers.size());
    const math::GaussHermite<T> gh{p.gh_nodes.template data_ptr<T>(),
                                   p.gh_weights.template data_ptr<T>(),
                                   static_cast<int>(p.gh_nodes.numel())};
    auto variances = [&](const at::Tensor& sq, const at::Tensor& var) {
      const T* sq_norms = sq.data_ptr<T>();
      T* v = var.data_ptr<T>();
      const int64_t n = sq.numel();
      at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
        for (int64_t s = begin; s < end; ++s) {
          math::sample_variances(p.input, p.layers.data(), num_layers, gh, sq_norms[s], n, s, v);
        }
      });
    };
    variances(p.sq1, p.var1);
    if (!p.symmetric) variances(p.sq2, p.var2);

    const PairProblem<T> P{p.layers.data(),
                           num_layers,
                           gh,
                           p.input,
                           p.var1.template data_ptr<T>(),
                           p.var2.template data_ptr<T>(),
                           p.n1,
                           p.n2,
                           p.gram.template data_ptr<T>(),
                           nngp.defined() ? nngp.data_ptr<T>() : nullptr,
                           ntk.defined() ? ntk.data_ptr<T>() : nullptr,
                           p.symmetric};
    const int64_t n1 = p.n1;
    if (p.symmetric) {
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

  template <typename T>
  static void activation(const at::Tensor& x, at::Tensor& out, int act_id, T param,
                         bool derivative) {
    const T* in = x.data_ptr<T>();
    T* o = out.data_ptr<T>();
    at::parallel_for(0, x.numel(), 4096, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        o[k] = derivative ? math::activation_derivative(act_id, param, in[k])
                          : math::activation(act_id, param, in[k]);
      }
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(torch_ntk, CPU, m) {
  m.impl("analytic_kernels", &analytic_kernels_op<CpuAnalytic>);
  m.impl("activation", &activation_op<CpuAnalytic>);
}

}  // namespace torch_ntk
