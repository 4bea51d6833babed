// CPU implementation of analytic_kernels and activation.
//
// One GEMM gives the input Gram matrix <x, x'>, written into an output buffer;
// the per-sample variances run the recursion in O(N L); then a parallel pass
// over tiles of pairs runs every layer on a tile held in L1 (q12 and theta
// arrays of kTile entries) and overwrites the buffer with the outputs. The
// closed-form and Hermite-series layers are branch-free loops over the tile that the
// compiler vectorizes (baseline SSE2, AVX2 and AVX-512 clones are selected at run time on
// x86-64; setup.py's -fno-trapping-math lets GCC if-convert the square roots and
// divisions). When x2 is None, a block of kRows rows runs at a time and the mirror
// image of its tiles is written kRows contiguous entries per column, not one.
#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../analytic_spec.h"
#include "../math/mlp_graph.h"
#include "../math/recursion.h"
#include "clones.h"

namespace torch_ntk {
namespace {

constexpr int64_t kTile = 256;
constexpr int64_t kRows = 16;  // rows per block of the symmetric pass

// A Hermite-series layer's tables (AnalyticProblem::ha1 ... for hidden layer l).
template <typename T>
struct SeriesLayer {
  const T* a1;   // [K_max, N1]
  const T* b1;
  const T* a2;   // [K_max, N2]
  const T* b2;
  const T* na1;  // [N1] E[phi^2] (the exact diagonal when symmetric)
  const T* nb1;
  const T* ra1;  // [N1] relative tails at K
  const T* rb1;
  const T* ra2;  // [N2]
  const T* rb2;
  int K;
  // Tables given by the caller (math::kSeriesTable): the pairs whose bound fails are
  // flagged in the tile's fail[] (their outputs recomputed by the caller), the diagonal
  // pair takes the series like the others (na1, nb1 unused).
  bool tabled;
};

template <typename T>
struct PairProblem {
  const math::HiddenLayer<T>* layers;
  int64_t num_layers;
  math::GaussHermite<T> gh;
  const SeriesLayer<T>* series;  // [num_layers]; used for math::kHermite layers
  math::InputLayer<T> input;
  const T* var1;  // [rows, N1]: Sigma^(l)(x1_i, x1_i) entering hidden layer l (then the
                  // LayerNorms' rows of a graph program)
  const T* var2;  // [rows, N2]
  int64_t n1, n2;
  T* gram;        // [N1, N2] input Gram, overwritten by the first wanted output
  T* nngp;        // [N1, N2] or nullptr
  T* ntk;         // [N1, N2] or nullptr
  bool symmetric;
  const math::MlpStep<T>* steps;  // a graph program (math/mlp_graph.h), or nullptr: a chain
  int num_steps;
  bool* fallback;  // [N1, N2] the pairs a kSeriesTable layer's bound failed, or nullptr
  T tolerance;     // the kSeriesTable layers' truncation tolerance
};

// A Hermite-series layer on the pairs (i, j0..j0+n): both series by Horner in rho over
// the tile (vectorized along j), the pairs whose truncation bound exceeds the tolerance
// redone by composite 2-D quadrature (math::composite_expectations, in double), the
// diagonal pair (i, i) from the exact norms. Given tables (S.tabled): the pairs whose
// bound exceeds P.tolerance are flagged in fail[] instead (as the torch path,
// ``torch_ntk.layers.numeric_series``, decides: r1 r2 rho^K for a and for b).
template <typename T>
inline __attribute__((always_inline)) void series_layer(const PairProblem<T>& P,
                                                        const math::HiddenLayer<T>& layer,
                                                        const SeriesLayer<T>& S, int64_t l,
                                                        int64_t i, int64_t j0, int64_t n,
                                                        T* sigma, T* theta, bool* fail) {
  T rho[kTile], ea[kTile], eb[kTile], bound[kTile];
  const T q11 = P.var1[l * P.n1 + i];
  const T* q22 = P.var2 + l * P.n2 + j0;
  for (int64_t k = 0; k < n; ++k) {
    const T prod = q11 * q22[k];
    rho[k] = prod > T(0) ? math::clamp(sigma[k] / math::fsqrt(prod), T(-1), T(1)) : T(0);
    ea[k] = T(0);
    eb[k] = T(0);
  }
  for (int c = S.K - 1; c >= 0; --c) {
    const T a1 = S.a1[c * P.n1 + i], b1 = S.b1[c * P.n1 + i];
    const T* a2 = S.a2 + c * P.n2 + j0;
    const T* b2 = S.b2 + c * P.n2 + j0;
    for (int64_t k = 0; k < n; ++k) {
      ea[k] = ea[k] * rho[k] + a1 * a2[k];
      eb[k] = eb[k] * rho[k] + b1 * b2[k];
    }
  }
  const T ra1 = S.ra1[i], rb1 = S.rb1[i];
  const T* ra2 = S.ra2 + j0;
  const T* rb2 = S.rb2 + j0;
  if (S.tabled) {
    const T tol = P.tolerance;
    for (int64_t k = 0; k < n; ++k) {
      const T p = math::hermite_rho_power(rho[k], S.K);
      const T ba = ra1 * ra2[k], bb = rb1 * rb2[k];
      fail[k] = fail[k] || !(ba * p <= tol) || !(bb * p <= tol);
      math::apply_layer(layer, ea[k], eb[k], sigma[k], theta[k]);
    }
    return;
  }
  bool any = false;
  for (int64_t k = 0; k < n; ++k) {
    const T p = math::hermite_rho_power(rho[k], S.K);
    const T ba = ra1 * ra2[k], bb = rb1 * rb2[k];
    bound[k] = (ba > bb ? ba : bb) * p;
    any |= bound[k] > T(math::HermiteTolerance<T>::value);
  }
  const bool diagonal = P.symmetric && j0 == i;
  if (any) {
    for (int64_t k = diagonal ? 1 : 0; k < n; ++k) {
      if (bound[k] > T(math::HermiteTolerance<T>::value)) {
        double e, ed;
        math::composite_expectations<double>(layer.act, layer.param, q11, q22[k], sigma[k], e,
                                             ed);
        ea[k] = static_cast<T>(e);
        eb[k] = static_cast<T>(ed);
      }
    }
  }
  if (diagonal) {
    ea[0] = S.na1[i];
    eb[0] = S.nb1[i];
  }
  for (int64_t k = 0; k < n; ++k) math::apply_layer(layer, ea[k], eb[k], sigma[k], theta[k]);
}

// Hidden layer l on the pairs (i, j0..j0+n), in place.
template <typename T>
inline __attribute__((always_inline)) void hidden_tile(const PairProblem<T>& P, int64_t l,
                                                       int64_t i, int64_t j0, int64_t n,
                                                       T* sigma, T* theta, bool* fail) {
  {
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
      case math::kHermite:
      case math::kSeriesTable:
        series_layer(P, layer, P.series[l], l, i, j0, n, sigma, theta, fail);
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
}

// A graph program's steps on the pairs (i, j0..j0+n), in place; its skip registers are
// tiles of kTile pairs on the stack.
template <typename T>
inline __attribute__((always_inline)) void graph_tile(const PairProblem<T>& P, int64_t i,
                                                      int64_t j0, int64_t n, T* sigma,
                                                      T* theta, bool* fail) {
  T slot_s[math::kMlpMaxSlots][kTile];
  T slot_t[math::kMlpMaxSlots][kTile];
  for (int k = 0; k < P.num_steps; ++k) {
    const math::MlpStep<T> st = P.steps[k];
    switch (st.code) {
      case math::kMlpHidden:
        if (st.affine) {  // the gain term (math/mlp_graph.h): Theta - Sigma in, + wv E[phi phi]
          for (int64_t c = 0; c < n; ++c) theta[c] -= sigma[c];
        }
        hidden_tile(P, st.index, i, j0, n, sigma, theta, fail);
        if (st.affine) {
          const T bias_var = P.layers[st.index].bias_var;
          for (int64_t c = 0; c < n; ++c) theta[c] += sigma[c] - bias_var;
        }
        break;
      case math::kMlpPush:
        std::copy(sigma, sigma + n, slot_s[st.index]);
        std::copy(theta, theta + n, slot_t[st.index]);
        break;
      case math::kMlpLoad:
        std::copy(slot_s[st.index], slot_s[st.index] + n, sigma);
        std::copy(slot_t[st.index], slot_t[st.index] + n, theta);
        break;
      case math::kMlpJoin: {
        const T a = st.f[0], b = st.f[1];
        const T* ss = slot_s[st.index];
        const T* tt = slot_t[st.index];
        for (int64_t c = 0; c < n; ++c) {
          sigma[c] = a * sigma[c] + b * ss[c];
          theta[c] = a * theta[c] + b * tt[c];
        }
        break;
      }
      case math::kMlpLayerNorm: {
        const T q11 = P.var1[st.index * P.n1 + i];
        const T* q22 = P.var2 + st.index * P.n2 + j0;
        for (int64_t c = 0; c < n; ++c) math::mlp_layernorm(st, q11, q22[c], sigma[c], theta[c]);
        break;
      }
      default:  // kMlpLinear
        for (int64_t c = 0; c < n; ++c) math::mlp_linear(st, sigma[c], theta[c]);
        break;
    }
  }
}

// Runs all layers for pairs (i, j0..j0+n) into sigma[0..n) and theta[0..n); fail[0..n):
// whether a kSeriesTable layer's bound failed for the pair.
template <typename T>
inline __attribute__((always_inline)) void pair_tile(const PairProblem<T>& P, int64_t i,
                                                     int64_t j0, int64_t n, T* sigma, T* theta,
                                                     bool* fail) {
  const T* g = P.gram + i * P.n2 + j0;
  for (int64_t k = 0; k < n; ++k) {
    sigma[k] = P.input.sigma(g[k]);
    theta[k] = P.input.theta(g[k]);
    fail[k] = false;
  }
  if (P.num_steps > 0) {
    graph_tile(P, i, j0, n, sigma, theta, fail);
    return;
  }
  for (int64_t l = 0; l < P.num_layers; ++l) hidden_tile(P, l, i, j0, n, sigma, theta, fail);
}

// All pairs of row i, written in place (x2 given).
template <typename T>
inline __attribute__((always_inline)) void pair_row(const PairProblem<T>& P, int64_t i) {
  T sigma[kTile];
  T theta[kTile];
  bool fail[kTile];
  for (int64_t j0 = 0; j0 < P.n2; j0 += kTile) {
    const int64_t n = std::min(kTile, P.n2 - j0);
    pair_tile(P, i, j0, n, sigma, theta, fail);
    if (P.nngp != nullptr) std::copy(sigma, sigma + n, P.nngp + i * P.n2 + j0);
    if (P.ntk != nullptr) std::copy(theta, theta + n, P.ntk + i * P.n2 + j0);
    if (P.fallback != nullptr) std::copy(fail, fail + n, P.fallback + i * P.n2 + j0);
  }
}

// Writes the block [i0, i0+rows) x [j0, j0+n) from buf (row r at buf + r * kTile; entries
// with j < i are not computed) and its mirror image: column j of the block goes to row j,
// rows contiguous entries at a time.
template <typename T>
inline __attribute__((always_inline)) void write_block(T* out, int64_t N, int64_t i0,
                                                       int64_t rows, int64_t j0, int64_t n,
                                                       const T* buf) {
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = i0 + r;
    const int64_t c0 = std::max<int64_t>(i - j0, 0);
    if (c0 < n) std::copy(buf + r * kTile + c0, buf + r * kTile + n, out + i * N + j0 + c0);
  }
  for (int64_t c = 0; c < n; ++c) {
    const int64_t j = j0 + c;
    T* row = out + j * N + i0;
    const int64_t r_end = std::min(rows, j - i0);  // pairs (i, j) with i < j
    for (int64_t r = 0; r < r_end; ++r) row[r] = buf[r * kTile + c];
  }
}

// The block of rows [i0, i0+rows) of the symmetric problem: pairs j >= i, by tiles of
// kTile columns, each tile written with its mirror image.
template <typename T>
inline __attribute__((always_inline)) void pair_block(const PairProblem<T>& P, int64_t i0,
                                                      int64_t rows) {
  T sigma[kRows * kTile];
  T theta[kRows * kTile];
  bool fail[kRows * kTile];
  const int64_t N = P.n1;
  for (int64_t j0 = i0; j0 < N; j0 += kTile) {
    const int64_t n = std::min(kTile, N - j0);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = i0 + r;
      const int64_t c0 = std::max<int64_t>(i - j0, 0);  // the row's pairs start at j = i
      if (c0 < n) {
        pair_tile(P, i, j0 + c0, n - c0, sigma + r * kTile + c0, theta + r * kTile + c0,
                  fail + r * kTile + c0);
      }
    }
    if (P.nngp != nullptr) write_block(P.nngp, N, i0, rows, j0, n, sigma);
    if (P.ntk != nullptr) write_block(P.ntk, N, i0, rows, j0, n, theta);
    if (P.fallback != nullptr) write_block(P.fallback, N, i0, rows, j0, n, fail);
  }
}

TNTK_CPU_CLONES void pair_row_float(const PairProblem<float>& P, int64_t i) { pair_row(P, i); }
TNTK_CPU_CLONES void pair_row_double(const PairProblem<double>& P, int64_t i) { pair_row(P, i); }
TNTK_CPU_CLONES void pair_block_float(const PairProblem<float>& P, int64_t i0, int64_t rows) {
  pair_block(P, i0, rows);
}
TNTK_CPU_CLONES void pair_block_double(const PairProblem<double>& P, int64_t i0, int64_t rows) {
  pair_block(P, i0, rows);
}

inline void pair_row_dispatch(const PairProblem<float>& P, int64_t i) { pair_row_float(P, i); }
inline void pair_row_dispatch(const PairProblem<double>& P, int64_t i) { pair_row_double(P, i); }
inline void pair_block_dispatch(const PairProblem<float>& P, int64_t i0, int64_t rows) {
  pair_block_float(P, i0, rows);
}
inline void pair_block_dispatch(const PairProblem<double>& P, int64_t i0, int64_t rows) {
  pair_block_double(P, i0, rows);
}

// The series tables of one sample set (1 or 2) and the variances: per sample, layer by layer,
// the coefficients of series layers and the next variance from their exact E[phi^2].
template <typename T>
void sample_pass(const AnalyticProblem<T>& p, const math::GaussHermite<T>& gh, int set) {
  const at::Tensor& sq = set == 1 ? p.sq1 : p.sq2;
  const at::Tensor& var = set == 1 ? p.var1 : p.var2;
  const T* sq_norms = sq.data_ptr<T>();
  T* v = var.data_ptr<T>();
  const int64_t n = sq.numel();
  const int64_t num_layers = static_cast<int64_t>(p.layers.size());
  const math::HiddenLayer<T>* layers = p.layers.data();
  if (!p.steps.empty()) {  // a graph program: its steps on q, per sample
    const math::HermiteSampleTables<T> tables =
        p.hermite ? hermite_tables(p, set) : math::HermiteSampleTables<T>{};
    const int num_steps = static_cast<int>(p.steps.size());
    at::parallel_for(0, n, 8, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        auto next = [&](int l, T q) {
          const auto& layer = layers[l];
          if (layer.kind != math::kHermite) return math::next_variance(layer, gh, q);
          const double e = math::hermite_sample(layer.act, layer.param, q, l, n, s, tables);
          return layer.weight_var * static_cast<T>(e) + layer.bias_var;
        };
        math::mlp_graph_variances(p.steps.data(), num_steps, p.input.sigma(sq_norms[s]), n, s,
                                  v, next);
      }
    });
    return;
  }
  if (!p.hermite) {
    at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        math::sample_variances(p.input, layers, num_layers, gh, sq_norms[s], n, s, v);
      }
    });
    return;
  }
  const math::HermiteSampleTables<T> tables = hermite_tables(p, set);
  at::parallel_for(0, n, 8, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      T q = p.input.sigma(sq_norms[s]);
      for (int64_t l = 0; l < num_layers; ++l) {
        v[l * n + s] = q;
        const auto& layer = layers[l];
        if (layer.kind == math::kHermite) {
          const double e = math::hermite_sample(layer.act, layer.param, q, l, n, s, tables);
          q = layer.weight_var * static_cast<T>(e) + layer.bias_var;
        } else {
          q = math::next_variance(layer, gh, q);
        }
      }
    }
  });
}

// The CPU backend of analytic_kernels_op and activation_op (csrc/analytic_spec.h).
struct CpuAnalytic {
  // Each tile reads its Gram entries before it writes its outputs.
  static constexpr bool kGramIsOutput = true;
  static constexpr bool kHermiteSeries = true;

  template <typename T>
  static void run(const AnalyticProblem<T>& p, at::Tensor& nngp, at::Tensor& ntk) {
    const int64_t num_layers = static_cast<int64_t>(p.layers.size());
    const math::GaussHermite<T> gh{p.gh_nodes.template data_ptr<T>(),
                                   p.gh_weights.template data_ptr<T>(),
                                   static_cast<int>(p.gh_nodes.numel())};
    if (!p.tabled) {  // given tables come with their variances
      sample_pass(p, gh, 1);
      if (!p.symmetric) sample_pass(p, gh, 2);
    }
    AnalyticProblem<T>& pm = const_cast<AnalyticProblem<T>&>(p);
    finish_hermite(pm);
    std::vector<SeriesLayer<T>> series(num_layers);
    for (int64_t l = 0; l < num_layers && p.tabled; ++l) {
      const int64_t K = p.ta1.size(1);
      series[l] = {p.ta1.template data_ptr<T>() + l * K * p.n1,
                   p.tb1.template data_ptr<T>() + l * K * p.n1,
                   p.ta2.template data_ptr<T>() + l * K * p.n2,
                   p.tb2.template data_ptr<T>() + l * K * p.n2,
                   nullptr,
                   nullptr,
                   p.tra1.template data_ptr<T>() + l * p.n1,
                   p.trb1.template data_ptr<T>() + l * p.n1,
                   p.tra2.template data_ptr<T>() + l * p.n2,
                   p.trb2.template data_ptr<T>() + l * p.n2,
                   p.table_terms[l],
                   true};
    }
    for (int64_t l = 0; l < num_layers && p.hermite; ++l) {
      const int64_t K = math::kHermiteMaxTerms;
      series[l] = {p.ha1.template data_ptr<T>() + l * K * p.n1,
                   p.hb1.template data_ptr<T>() + l * K * p.n1,
                   p.ha2.template data_ptr<T>() + l * K * p.n2,
                   p.hb2.template data_ptr<T>() + l * K * p.n2,
                   p.hna1.template data_ptr<T>() + l * p.n1,
                   p.hnb1.template data_ptr<T>() + l * p.n1,
                   p.hra1.template data_ptr<T>() + l * p.n1,
                   p.hrb1.template data_ptr<T>() + l * p.n1,
                   p.hra2.template data_ptr<T>() + l * p.n2,
                   p.hrb2.template data_ptr<T>() + l * p.n2,
                   p.hermite_terms[l],
                   false};
    }

    const PairProblem<T> P{p.layers.data(),
                           num_layers,
                           gh,
                           series.data(),
                           p.input,
                           p.var1.template data_ptr<T>(),
                           p.var2.template data_ptr<T>(),
                           p.n1,
                           p.n2,
                           p.gram.template data_ptr<T>(),
                           nngp.defined() ? nngp.data_ptr<T>() : nullptr,
                           ntk.defined() ? ntk.data_ptr<T>() : nullptr,
                           p.symmetric,
                           p.steps.empty() ? nullptr : p.steps.data(),
                           static_cast<int>(p.steps.size()),
                           p.tabled ? p.fallback.template data_ptr<bool>() : nullptr,
                           static_cast<T>(p.table_tolerance)};
    const int64_t n1 = p.n1;
    if (p.symmetric) {
      // Block b holds rows [b kRows, ...) and its pairs j >= i: pairing block k with block
      // nb-1-k balances the threads. A block reads Gram entries (i, j >= i) of its own rows
      // only and writes the mirror (j, i) of them, in rows j > i whose own block reads only
      // columns >= j: no entry is written before it is read.
      const int64_t nb = (n1 + kRows - 1) / kRows;
      const int64_t half = (nb + 1) / 2;
      auto block = [&](int64_t b) {
        pair_block_dispatch(P, b * kRows, std::min(kRows, n1 - b * kRows));
      };
      at::parallel_for(0, half, 1, [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) {
          block(k);
          if (nb - 1 - k != k) block(nb - 1 - k);
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
