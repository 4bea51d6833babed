// CPU implementation of analytic_kernels_backward (csrc/analytic_backward_spec.h).
//
// Plan: the per-sample variances as the forward; then the pair pass, rows of x1 dealt
// round-robin to C chunks (one per thread; balanced also for the triangle of x2 None). A
// chunk runs a row's pairs kTile at a time: the forward recursion of the tile, keeping per
// hidden layer its (Sigma^(l), Theta^(l), e, ed) in a tape of 4 L kTile entries on the heap
// (one per chunk: memory O(threads L), whatever the depth), then the reverse sweep layer by
// layer (csrc/math/recursion_backward.h), loops over the tile that the compiler vectorizes.
// Reductions without atomics: a row's own variance gradients (q11) go to its row of
// g_var1, which only its chunk writes; the column samples' (q22) to the chunk's own
// [L, N2] buffer, summed after the pass; coefficient gradients to per-chunk float64
// accumulators. Last, the sample pass runs each sample's variance chain backward.
#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../analytic_backward_spec.h"
#include "../math/recursion_backward.h"
#include "clones.h"

namespace torch_ntk {
namespace {

constexpr int64_t kTile = 128;

template <typename T>
struct BackwardProblem {
  const math::HiddenLayer<T>* layers;
  int64_t num_layers;
  math::InputLayer<T> input;
  const T* var1;  // [L, N1] variances entering each hidden layer
  const T* var2;  // [L, N2]
  const T* gram;  // [N1, N2]
  const T* g_nngp;  // [N1, N2] or nullptr (zero)
  const T* g_ntk;
  int64_t n1, n2;
  bool symmetric;
  T* grad_gram;    // [N1, N2]
  double* g_var1;  // [L, N1] dL/dvar1 from the row side of the pairs
};

// One chunk's scratch: the tape, the column samples' variance gradients and the
// coefficient gradients.
template <typename T>
struct ChunkScratch {
  std::vector<T> tape;        // [L, 4, kTile]: Sigma^(l), Theta^(l), e, ed
  std::vector<double> g_var2; // [L, N2]
  std::vector<double> coef;   // [(L + 1) * 4]
};

// The pairs (i, j0..j0+n): forward with the tape, then backward.
template <typename T>
inline __attribute__((always_inline)) void backward_tile(const BackwardProblem<T>& P,
                                                         ChunkScratch<T>& S, int64_t i,
                                                         int64_t j0, int64_t n) {
  const int64_t L = P.num_layers;
  const bool diagonal = P.symmetric && j0 == i;  // pair (i, i) is entry 0
  T sigma[kTile], theta[kTile], gs[kTile], gt[kTile];
  T c0[kTile], c1[kTile], c2[kTile], c3[kTile], g11[kTile], g22[kTile];
  const T* g = P.gram + i * P.n2 + j0;
  for (int64_t k = 0; k < n; ++k) {
    sigma[k] = P.input.sigma(g[k]);
    theta[k] = P.input.theta(g[k]);
  }
  for (int64_t l = 0; l < L; ++l) {
    const math::HiddenLayer<T> layer = P.layers[l];
    const T q11 = P.var1[l * P.n1 + i];
    const T* q22 = P.var2 + l * P.n2 + j0;
    if (diagonal) sigma[0] = q11;  // as the forward: the exact variance
    T* ts = S.tape.data() + (l * 4 + 0) * kTile;
    T* tt = S.tape.data() + (l * 4 + 1) * kTile;
    T* te = S.tape.data() + (l * 4 + 2) * kTile;
    T* ted = S.tape.data() + (l * 4 + 3) * kTile;
    for (int64_t k = 0; k < n; ++k) {
      T e, ed;
      math::closed_form_expectations(layer, q11, q22[k], sigma[k], e, ed);
      ts[k] = sigma[k];
      tt[k] = theta[k];
      te[k] = e;
      ted[k] = ed;
      math::apply_layer(layer, e, ed, sigma[k], theta[k]);
    }
  }
  for (int64_t k = 0; k < n; ++k) {
    gs[k] = P.g_nngp ? P.g_nngp[i * P.n2 + j0 + k] : T(0);
    gt[k] = P.g_ntk ? P.g_ntk[i * P.n2 + j0 + k] : T(0);
  }
  for (int64_t l = L - 1; l >= 0; --l) {
    const math::HiddenLayer<T> layer = P.layers[l];
    const T q11 = P.var1[l * P.n1 + i];
    const T* q22 = P.var2 + l * P.n2 + j0;
    const T* ts = S.tape.data() + (l * 4 + 0) * kTile;
    const T* tt = S.tape.data() + (l * 4 + 1) * kTile;
    const T* te = S.tape.data() + (l * 4 + 2) * kTile;
    const T* ted = S.tape.data() + (l * 4 + 3) * kTile;
    for (int64_t k = 0; k < n; ++k) {
      T coef[math::kNumCoefs];
      math::hidden_layer_backward(layer, q11, q22[k], ts[k], tt[k], te[k], ted[k], gs[k], gt[k],
                                  g11[k], g22[k], coef);
      c0[k] = coef[0];
      c1[k] = coef[1];
      c2[k] = coef[2];
      c3[k] = coef[3];
    }
    if (diagonal) {  // Sigma^(l)(x, x) was the variance q11: its gradient goes there
      g11[0] += gs[0];
      gs[0] = T(0);
    }
    double s11 = 0, a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    double* gv2 = S.g_var2.data() + l * P.n2 + j0;
    for (int64_t k = 0; k < n; ++k) {
      s11 += g11[k];
      gv2[k] += g22[k];
      a0 += c0[k];
      a1 += c1[k];
      a2 += c2[k];
      a3 += c3[k];
    }
    P.g_var1[l * P.n1 + i] += s11;
    double* coef = S.coef.data() + math::kNumCoefs * (l + 1);
    coef[0] += a0;
    coef[1] += a1;
    coef[2] += a2;
    coef[3] += a3;
  }
  T* out = P.grad_gram + i * P.n2 + j0;
  double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  for (int64_t k = 0; k < n; ++k) {
    T coef[math::kNumCoefs];
    out[k] = math::input_layer_backward(P.input, g[k], gs[k], gt[k], coef);
    a0 += coef[0];
    a1 += coef[1];
    a2 += coef[2];
    a3 += coef[3];
  }
  S.coef[0] += a0;
  S.coef[1] += a1;
  S.coef[2] += a2;
  S.coef[3] += a3;
}

// All pairs of row i (x2 None: j >= i).
template <typename T>
inline __attribute__((always_inline)) void backward_row(const BackwardProblem<T>& P,
                                                        ChunkScratch<T>& S, int64_t i) {
  for (int64_t j0 = P.symmetric ? i : 0; j0 < P.n2; j0 += kTile) {
    backward_tile(P, S, i, j0, std::min(kTile, P.n2 - j0));
  }
}

TNTK_CPU_CLONES void backward_row_float(const BackwardProblem<float>& P,
                                        ChunkScratch<float>& S, int64_t i) {
  backward_row(P, S, i);
}
TNTK_CPU_CLONES void backward_row_double(const BackwardProblem<double>& P,
                                         ChunkScratch<double>& S, int64_t i) {
  backward_row(P, S, i);
}
inline void backward_row_dispatch(const BackwardProblem<float>& P, ChunkScratch<float>& S,
                                  int64_t i) {
  backward_row_float(P, S, i);
}
inline void backward_row_dispatch(const BackwardProblem<double>& P, ChunkScratch<double>& S,
                                  int64_t i) {
  backward_row_double(P, S, i);
}

struct CpuAnalyticBackward {
  template <typename T>
  static void run(const AnalyticProblem<T>& p, const T* g_nngp, const T* g_ntk,
                  at::Tensor& grad_gram, at::Tensor& grad_sq1, at::Tensor& grad_sq2,
                  at::Tensor& grad_coefs) {
    const int64_t L = static_cast<int64_t>(p.layers.size());
    const math::HiddenLayer<T>* layers = p.layers.data();
    const math::GaussHermite<T> no_rule{nullptr, nullptr, 0};  // closed forms only
    for (int set = 1; set <= (p.symmetric ? 1 : 2); ++set) {
      const at::Tensor& sq = set == 1 ? p.sq1 : p.sq2;
      const T* sq_norms = sq.data_ptr<T>();
      T* v = (set == 1 ? p.var1 : p.var2).template data_ptr<T>();
      const int64_t n = sq.numel();
      at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
        for (int64_t s = begin; s < end; ++s) {
          math::sample_variances(p.input, layers, L, no_rule, sq_norms[s], n, s, v);
        }
      });
    }
    const int64_t n1 = p.n1, n2 = p.n2;
    const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n1));
    const int64_t coefs = (L + 1) * math::kNumCoefs;
    std::vector<double> g_var1(static_cast<size_t>(std::max<int64_t>(L, 1) * n1), 0.0);
    std::vector<ChunkScratch<T>> scratch(chunks);
    const BackwardProblem<T> P{layers, L, p.input, p.var1.template data_ptr<T>(),
                               p.var2.template data_ptr<T>(), p.gram.template data_ptr<T>(),
                               g_nngp, g_ntk, n1, n2, p.symmetric,
                               grad_gram.data_ptr<T>(), g_var1.data()};
    at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        ChunkScratch<T>& S = scratch[c];
        S.tape.assign(static_cast<size_t>(std::max<int64_t>(L, 1) * 4 * kTile), T(0));
        S.g_var2.assign(static_cast<size_t>(std::max<int64_t>(L, 1) * n2), 0.0);
        S.coef.assign(static_cast<size_t>(coefs), 0.0);
        for (int64_t i = c; i < n1; i += chunks) backward_row_dispatch(P, S, i);
      }
    });
    // The column samples' variance gradients: into g_var1 (x2 None: the same samples) or
    // g_var2.
    std::vector<double> g_var2(p.symmetric ? 0 : static_cast<size_t>(std::max<int64_t>(L, 1) * n2),
                               0.0);
    double* into = p.symmetric ? g_var1.data() : g_var2.data();
    std::vector<double> coef(static_cast<size_t>(coefs), 0.0);
    for (const auto& S : scratch) {
      for (size_t k = 0; k < S.g_var2.size(); ++k) into[k] += S.g_var2[k];
      for (int64_t k = 0; k < coefs; ++k) coef[k] += S.coef[k];
    }
    // The sample pass: each sample's variance chain backward, in chunks with their own
    // coefficient accumulators.
    auto sample_pass = [&](const AnalyticProblem<T>& pr, int set, const std::vector<double>& gv,
                           at::Tensor& grad_sq) {
      const T* sq_norms = (set == 1 ? pr.sq1 : pr.sq2).template data_ptr<T>();
      const T* var = (set == 1 ? pr.var1 : pr.var2).template data_ptr<T>();
      const int64_t n = set == 1 ? pr.n1 : pr.n2;
      T* out = grad_sq.data_ptr<T>();
      std::vector<std::vector<double>> part(chunks, std::vector<double>(coefs, 0.0));
      at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
        for (int64_t c = begin; c < end; ++c) {
          for (int64_t s = c; s < n; s += chunks) {
            out[s] = math::sample_variances_backward(
                pr.input, layers, L, sq_norms[s], [&](int64_t l) { return var[l * n + s]; },
                [&](int64_t l) { return static_cast<T>(gv[l * n + s]); }, part[c].data());
          }
        }
      });
      for (const auto& q : part) {
        for (int64_t k = 0; k < coefs; ++k) coef[k] += q[k];
      }
    };
    sample_pass(p, 1, g_var1, grad_sq1);
    if (!p.symmetric) sample_pass(p, 2, g_var2, grad_sq2);
    double* out = grad_coefs.data_ptr<double>();
    for (int64_t k = 0; k < coefs; ++k) out[k] = coef[k];
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(torch_ntk, CPU, m) {
  m.impl("analytic_kernels_backward", &analytic_kernels_backward_op<CpuAnalyticBackward>);
}

}  // namespace torch_ntk
