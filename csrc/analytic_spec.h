// Host side of the analytic_kernels and activation ops, shared by the CPU and CUDA
// implementations: argument checks, the per-layer coefficient table, the prologue
// (Gram matrix, squared norms, quadrature rule, output buffers) and the ops' entry
// functions. A backend supplies only its loops (analytic_kernels_op, activation_op).
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "checks.h"
#include "math/hermite.h"
#include "math/mlp_graph.h"
#include "math/recursion.h"

namespace torch_ntk {

// The layer description passed to analytic_kernels (see csrc/torch_ntk.cpp).
struct AnalyticArgs {
  math::InputLayer<double> input;  // Sigma^(1), Theta^(1) as functions of <x, x'>
  at::IntArrayRef act_ids;         // then one entry per hidden layer in each list
  at::ArrayRef<double> act_params, weight_var, bias_var, ntk_weight, ntk_bias;
  bool force_quadrature;
  bool hermite_series;  // smooth activations by their Hermite series (math/hermite.h)
  at::IntArrayRef graph_codes, graph_ints;  // a graph program (math/mlp_graph.h); empty:
  at::ArrayRef<double> graph_floats;        // the hidden layers in order
  // Precomputed series tables (undefined: none; check_series_tables for the layout): the
  // layers of act id -1 run math::kSeriesTable, K = series_terms[l] terms, and the pairs
  // whose truncation bound exceeds series_tolerance are reported, not computed.
  at::Tensor series1, series2;  // undefined: none (series2: x2 is None)
  at::IntArrayRef series_terms;
  double series_tolerance;
};

// A validated graph program: its steps (empty for a chain) and the LayerNorms' variance
// rows (after the hidden layers' rows).
struct MlpGraph {
  std::vector<math::MlpStep<double>> steps;
  int64_t norms = 0;
};

inline const char* mlp_code_name(int64_t code) {
  static const char* names[] = {"HIDDEN", "PUSH", "LOAD", "JOIN", "LAYERNORM", "LINEAR"};
  return code >= 0 && code < math::kMlpNumCodes ? names[code] : "?";
}

// Reads graph_codes with their graph_ints and graph_floats (csrc/torch_ntk.cpp) for a
// network of `hidden` hidden layers.
inline MlpGraph make_mlp_graph(const AnalyticArgs& a, int64_t hidden) {
  const char* op = "analytic_kernels";
  MlpGraph g;
  if (a.graph_codes.empty()) {
    TORCH_CHECK_VALUE(a.graph_ints.empty() && a.graph_floats.empty(), op, ": graph_ints and "
                      "graph_floats must be empty without graph_codes");
    return g;
  }
  static const int kInts[] = {0, 1, 1, 1, 1, 0};
  static const int kFloats[] = {0, 0, 0, 2, 1, 4};
  size_t ni = 0, nf = 0;
  int64_t next_hidden = 0;
  bool filled[math::kMlpMaxSlots] = {false, false, false, false};
  bool gain = false;  // right after an affine LAYERNORM (kept by PUSH/LOAD registers)
  bool slot_gain[math::kMlpMaxSlots] = {false, false, false, false};
  for (size_t k = 0; k < a.graph_codes.size(); ++k) {
    const int64_t code = a.graph_codes[k];
    TORCH_CHECK_VALUE(code >= 0 && code < math::kMlpNumCodes, op, ": graph_codes[", k, "] = ",
                      code, " is not a step code (0 HIDDEN, 1 PUSH, 2 LOAD, 3 JOIN, 4 LAYERNORM, "
                      "5 LINEAR)");
    const char* name = mlp_code_name(code);
    TORCH_CHECK_VALUE(ni + kInts[code] <= a.graph_ints.size() &&
                          nf + kFloats[code] <= a.graph_floats.size(),
                      op, ": step ", k, " (", name, ") needs ", kInts[code], " graph_ints from "
                      "index ", ni, " and ", kFloats[code], " graph_floats from index ", nf,
                      "; got ", a.graph_ints.size(), " and ", a.graph_floats.size());
    math::MlpStep<double> st{};
    st.code = static_cast<int>(code);
    for (int f = 0; f < kFloats[code]; ++f) {
      st.f[f] = a.graph_floats[nf + f];
      TORCH_CHECK_VALUE(std::isfinite(st.f[f]), op, ": graph_floats[", nf + f, "] (step ", k,
                        ", ", name, ") is ", st.f[f], "; it must be finite");
    }
    const int64_t I = kInts[code] ? a.graph_ints[ni] : 0;
    ni += kInts[code];
    nf += kFloats[code];
    if (code == math::kMlpHidden) {
      TORCH_CHECK_VALUE(next_hidden < hidden, op, ": step ", k, " (HIDDEN) is hidden layer ",
                        next_hidden, "; act_ids has only ", hidden);
      const int64_t id = a.act_ids[next_hidden];
      TORCH_CHECK_VALUE(!gain || id <= math::kAbs, op, ": step ", k, " (HIDDEN): act_ids[",
                        next_hidden, "] = ", id, " right after an affine LAYERNORM has no exact "
                        "rule; only identity, relu, leaky_relu and abs (ids 0..3) do");
      st.affine = gain ? 1 : 0;
      st.index = static_cast<int>(next_hidden++);
    } else if (code == math::kMlpLayerNorm) {
      TORCH_CHECK_VALUE(I == 0 || I == 1, op, ": step ", k, " (LAYERNORM): affine = ", I,
                        " in graph_ints must be 0 or 1");
      TORCH_CHECK_VALUE(st.f[0] >= 0, op, ": step ", k, " (LAYERNORM): eps = ", st.f[0],
                        " in graph_floats must be >= 0");
      st.affine = static_cast<int>(I);
      st.index = static_cast<int>(hidden + g.norms++);
    } else if (code == math::kMlpLinear) {
      TORCH_CHECK_VALUE(st.f[0] >= 0 && st.f[1] >= 0 && st.f[2] >= 0 && st.f[3] >= 0, op,
                        ": step ", k, " (LINEAR): weight_var, bias_var, ntk_weight and ntk_bias "
                        "must be non-negative; got ", st.f[0], ", ", st.f[1], ", ", st.f[2], ", ",
                        st.f[3]);
    } else {
      TORCH_CHECK_VALUE(I >= 0 && I < math::kMlpMaxSlots, op, ": step ", k, " (", name,
                        "): slot = ", I, " is out of range; graph_ints must name a skip "
                        "register 0..", math::kMlpMaxSlots - 1);
      st.index = static_cast<int>(I);
      if (code == math::kMlpPush) {
        filled[I] = true;
        slot_gain[I] = gain;
      } else {
        TORCH_CHECK_VALUE(filled[I], op, ": step ", k, " (", name, ") reads slot ", I,
                          ", which no earlier PUSH filled; PUSH the fork's state first");
      }
      if (code == math::kMlpJoin) {
        TORCH_CHECK_VALUE(st.f[0] >= 0 && st.f[1] >= 0, op, ": step ", k, " (JOIN): the "
                          "coefficients in graph_floats must be non-negative; got ", st.f[0],
                          " and ", st.f[1]);
      }
    }
    g.steps.push_back(st);
    if (code == math::kMlpLoad) {
      gain = slot_gain[st.index];
    } else if (code != math::kMlpPush) {
      gain = code == math::kMlpLayerNorm && st.affine == 1;
    }
  }
  TORCH_CHECK_VALUE(next_hidden == hidden, op, ": the program runs ", next_hidden, " HIDDEN "
                    "steps; act_ids has ", hidden, " hidden layers");
  TORCH_CHECK_VALUE(ni == a.graph_ints.size() && nf == a.graph_floats.size(), op,
                    ": the program consumes ", ni, " graph_ints and ", nf, " graph_floats; got ",
                    a.graph_ints.size(), " and ", a.graph_floats.size());
  return g;
}

// series_x1 (when given; series_x2 likewise for x2, given with it): per hidden layer l
// and sample s the rows of [L-1, 2 K_max + 3, N] (x1's dtype and device, finite):
//   0                 Sigma^(l)(x, x), the variance entering hidden layer l (all layers)
//   1 .. K_max        a_k: the Hermite coefficients of phi(sqrt(q) z)
//   K_max+1 .. 2K_max b_k: those of phi'(sqrt(q) z)
//   2 K_max + 1, + 2  ra, rb: their relative tails r_K at K = series_terms[l]
// (rows 1.. of layers with an op id are not read); series_terms [L-1]: K (a multiple of
// math::kHermiteStep, at most K_max) for the layers of act id -1, 0 for the others.
inline void check_series_tables(const at::Tensor& x1, const c10::optional<at::Tensor>& x2,
                                const AnalyticArgs& a) {
  const char* op = "analytic_kernels";
  const int64_t L = static_cast<int64_t>(a.act_ids.size());
  TORCH_CHECK_VALUE(a.series2.defined() == x2.has_value(), op, ": series_x2 must be given "
                    "exactly when x2 is (the tables of x2's samples)");
  TORCH_CHECK_VALUE(static_cast<int64_t>(a.series_terms.size()) == L, op, ": series_terms must "
                    "have one entry per hidden layer (", L, "); got ", a.series_terms.size());
  TORCH_CHECK_VALUE(a.graph_codes.empty(), op, ": series tables with a graph program "
                    "(graph_codes) are not supported; the torch walker runs such graphs");
  TORCH_CHECK_VALUE(x1.device().is_cpu(), op, ": series tables run on the CPU only; on ",
                    x1.device(), " torch_ntk.analytic_kernels runs the recursion in torch");
  TORCH_CHECK_VALUE(a.series_tolerance > 0 && std::isfinite(a.series_tolerance), op,
                    ": series_tolerance must be positive and finite with series tables; got ",
                    a.series_tolerance);
  const int64_t rows = a.series1.dim() == 3 ? a.series1.size(1) : 0;
  for (int set = 1; set <= (x2.has_value() ? 2 : 1); ++set) {
    const at::Tensor& t = set == 1 ? a.series1 : a.series2;
    const char* name = set == 1 ? "series_x1" : "series_x2";
    const int64_t n = (set == 1 ? x1 : *x2).size(0);
    TORCH_CHECK_VALUE(t.scalar_type() == x1.scalar_type() && t.device() == x1.device(), op, ": ",
                      name, " must have x1's dtype ", x1.scalar_type(), " and device ",
                      x1.device(), "; got ", t.scalar_type(), " on ", t.device());
    TORCH_CHECK_VALUE(t.dim() == 3 && t.size(0) == L && t.size(1) == rows && rows >= 5 &&
                          (rows - 3) % 2 == 0 && t.size(2) == n,
                      op, ": ", name, " must have shape [L-1, 2 K_max + 3, N] = [", L, ", ",
                      rows >= 5 && (rows - 3) % 2 == 0 ? rows : 2 * math::kHermiteMaxTerms + 3,
                      ", ", n, "] (var, a, b, ra, rb rows per layer); got ", t.sizes());
    TORCH_CHECK_VALUE(t.numel() == 0 || at::isfinite(t).all().item<bool>(), op, ": ", name,
                      " must be finite");
  }
  const int64_t kmax = (rows - 3) / 2;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t K = a.series_terms[l];
    if (a.act_ids[l] == -1) {
      TORCH_CHECK_VALUE(K >= 1 && K <= kmax && K % math::kHermiteStep == 0, op,
                        ": series_terms[", l, "] = ", K, " must be a positive multiple of ",
                        math::kHermiteStep, " up to ", kmax, " (the K_max of the series "
                        "tables) for a layer of act id -1");
    } else {
      TORCH_CHECK_VALUE(K == 0, op, ": series_terms[", l, "] = ", K, " must be 0: hidden layer ",
                        l, " has the op id ", a.act_ids[l]);
    }
  }
}

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
  // The series falls back to quadrature for the pairs its bound does not cover.
  bool needs_quadrature = false;
  const bool tabled = a.series1.defined();
  if (tabled) check_series_tables(x1, x2, a);
  for (size_t l = 0; l < n; ++l) {
    const int64_t id = a.act_ids[l];
    TORCH_CHECK_VALUE(a.weight_var[l] >= 0 && a.bias_var[l] >= 0, op,
                      ": weight_var and bias_var must be non-negative; got ", a.weight_var[l],
                      " and ", a.bias_var[l], " at hidden layer ", l);
    if (tabled && id == -1) continue;  // a layer on the given series tables
    TORCH_CHECK_VALUE(id >= 0 && id < math::kNumActivations, op, ": act_ids[", l,
                      "] = ", id, " is not a registered activation id (0..",
                      math::kNumActivations - 1, tabled ? ", or -1 for a layer on the "
                      "series tables)" : "; -1 needs series_x1)");
    if (id == math::kSoftplus) {
      TORCH_CHECK_VALUE(a.act_params[l] > 0, op, ": softplus beta must be positive; got ",
                        a.act_params[l], " at hidden layer ", l);
    }
    needs_quadrature |= math::expectation_kind(static_cast<int>(id), a.force_quadrature) ==
                        math::kQuadrature;
  }
  TORCH_CHECK_VALUE(a.input.weight_var >= 0 && a.input.bias_var >= 0, op,
                    ": input_weight_var and input_bias_var must be non-negative; got ",
                    a.input.weight_var, " and ", a.input.bias_var);
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
    // With series tables the op's own series is off (its variances would not chain with
    // the given ones): give such layers tables too (act id -1) for the series.
    if (a.hermite_series && !a.force_quadrature && !a.series1.defined() &&
        math::hermite_series_applies(h.act)) {
      h.kind = math::kHermite;
    }
    if (h.act == -1) h.kind = math::kSeriesTable;
    h.param = static_cast<T>(a.act_params[l]);
    math::abrelu_slopes(h.act, h.param, h.slope_neg, h.slope_pos);
    h.weight_var = static_cast<T>(a.weight_var[l]);
    h.bias_var = static_cast<T>(a.bias_var[l]);
    h.ntk_weight = static_cast<T>(a.ntk_weight[l]);
    h.ntk_bias = static_cast<T>(a.ntk_bias[l]);
  }
  return layers;
}

// Everything a backend's pair pass needs, prepared on the host (T: the inputs' dtype).
template <typename T>
struct AnalyticProblem {
  bool symmetric;                            // x2 is None: x2 aliases x1
  int64_t n1, n2;
  at::Tensor x1, x2;                         // [N1, n0], [N2, n0] contiguous
  at::Tensor gram;                           // [N1, N2] <x1_i, x2_j>
  math::InputLayer<T> input;
  std::vector<math::HiddenLayer<T>> layers;  // [L - 1]
  std::vector<math::MlpStep<T>> steps;       // a graph program (empty: a chain)
  at::Tensor gh_nodes, gh_weights;           // [degree] in x1's dtype, on x1's device
  // [N1], [N2] squared norms; from the Gram diagonal when symmetric, so that pair (i, i)
  // sees exactly the variances of sample i and its angle is exactly zero.
  at::Tensor sq1, sq2;
  // [max(L - 1 + LayerNorms, 1), N1], [.., N2]: for the backend to fill with
  // math::sample_variances (math::mlp_graph_variances for a graph); var2 aliases var1
  // when symmetric.
  at::Tensor var1, var2;
  // Hermite-series tables (when a layer is math::kHermite; else undefined), per sample set
  // (the second aliases the first when symmetric), laid out as math::HermiteSampleTables:
  // a, b [L-1, K_max, N] coefficients, na, nb [L-1, N] norms, tails [L-1, 2, C, N] float64
  // (filled by the backend's sample pass); then finish_hermite sets, per layer, the terms K
  // and ra, rb [L-1, N]: the relative tails at that K.
  bool hermite = false;
  at::Tensor ha1, hb1, hna1, hnb1, htails1, ha2, hb2, hna2, hnb2, htails2;
  at::Tensor hra1, hrb1, hra2, hrb2;
  std::vector<int> hermite_terms;  // [L-1] K per layer (0 for other layers)
  // Given series tables (AnalyticArgs::series1, series2): then var1/var2 are their var, no
  // sample pass runs, and fallback [N1, N2] (bool) marks the pairs whose bound failed at a
  // kSeriesTable layer (their outputs are to be recomputed by the caller).
  bool tabled = false;
  at::Tensor ta1, tb1, tra1, trb1, ta2, tb2, tra2, trb2;
  std::vector<int> table_terms;  // [L-1] K per layer (0 for other layers)
  double table_tolerance = 0;
  at::Tensor fallback;
};

// The tables of sample set 1 or 2 as the math code wants them.
template <typename T>
math::HermiteSampleTables<T> hermite_tables(const AnalyticProblem<T>& p, int set) {
  const bool one = set == 1;
  return {(one ? p.ha1 : p.ha2).template data_ptr<T>(), (one ? p.hb1 : p.hb2).template data_ptr<T>(),
          (one ? p.hna1 : p.hna2).template data_ptr<T>(),
          (one ? p.hnb1 : p.hnb2).template data_ptr<T>(),
          (one ? p.htails1 : p.htails2).template data_ptr<double>()};
}

// After the sample pass: per series layer the smallest K (a multiple of kHermiteStep, at
// most K_max) whose bound r_K(q)^2 meets the tolerance for every sample (so that even
// rho = 1 pairs of similar samples are within it), and the samples' relative tails there.
template <typename T>
void finish_hermite(AnalyticProblem<T>& p) {
  if (!p.hermite) return;
  const int64_t L = static_cast<int64_t>(p.layers.size());
  at::Tensor worst = p.htails1.amax(-1);  // [L, 2, C]
  if (!p.symmetric) worst = at::maximum(worst, p.htails2.amax(-1));
  worst = worst.amax(1).cpu().contiguous();  // [L, C]
  const double* w = worst.data_ptr<double>();
  const double tol = math::HermiteTolerance<T>::value;
  p.hermite_terms.assign(L, 0);
  std::vector<int64_t> checkpoint(L, 0);
  for (int64_t l = 0; l < L; ++l) {
    if (p.layers[l].kind != math::kHermite) continue;
    int c = 0;
    while (c + 1 < math::HermiteTerms<T>::value / math::kHermiteStep && w[l * math::kHermiteCheckpoints + c] *
                                                        w[l * math::kHermiteCheckpoints + c] >
                                                    tol) {
      ++c;
    }
    p.hermite_terms[l] = (c + 1) * math::kHermiteStep;
    checkpoint[l] = c;
  }
  const at::Tensor idx =
      at::tensor(checkpoint, at::TensorOptions().dtype(at::kLong)).to(p.htails1.device());
  auto pick = [&](const at::Tensor& tails, int which) {  // [L, N] in T
    const at::Tensor t = tails.select(1, which);         // [L, C, N]
    return t.gather(1, idx.view({L, 1, 1}).expand({L, 1, t.size(2)}))
        .squeeze(1)
        .to(p.x1.scalar_type())
        .contiguous();
  };
  p.hra1 = pick(p.htails1, 0);
  p.hrb1 = pick(p.htails1, 1);
  p.hra2 = p.symmetric ? p.hra1 : pick(p.htails2, 0);
  p.hrb2 = p.symmetric ? p.hrb1 : pick(p.htails2, 1);
}

template <typename T>
AnalyticProblem<T> make_analytic_problem(const at::Tensor& x1, const at::Tensor& x2,
                                         bool symmetric, const at::Tensor& gram,
                                         const AnalyticArgs& args, const MlpGraph& graph,
                                         const at::Tensor& gh_nodes,
                                         const at::Tensor& gh_weights) {
  AnalyticProblem<T> p;
  p.symmetric = symmetric;
  p.n1 = x1.size(0);
  p.n2 = x2.size(0);
  p.x1 = x1;
  p.x2 = x2;
  p.gram = gram;
  p.input = {static_cast<T>(args.input.weight_var), static_cast<T>(args.input.bias_var),
             static_cast<T>(args.input.ntk_weight), static_cast<T>(args.input.ntk_bias)};
  p.layers = make_hidden_layers<T>(args);
  for (const auto& st : graph.steps) {
    math::MlpStep<T> t{st.code, st.index, st.affine, {}};
    for (int f = 0; f < 4; ++f) t.f[f] = static_cast<T>(st.f[f]);
    p.steps.push_back(t);
  }
  p.gh_nodes = gh_nodes.to(x1.options()).contiguous();
  p.gh_weights = gh_weights.to(x1.options()).contiguous();
  // Rectangular: the squared norms in float64 rounded once, like the Gram entries
  // (full_precision_gram), so a point present in x1 and x2 sees the same <x, x> in both.
  auto sq_norms = [&](const at::Tensor& x) {
    const at::Tensor xd = x.to(at::kDouble);
    return xd.mul(xd).sum(1).to(x.scalar_type());
  };
  p.sq1 = symmetric ? gram.diagonal().contiguous() : sq_norms(x1);
  p.sq2 = symmetric ? p.sq1 : sq_norms(x2);
  const int64_t rows = std::max<int64_t>(static_cast<int64_t>(p.layers.size()), 1);
  const int64_t var_rows = std::max<int64_t>(
      static_cast<int64_t>(p.layers.size()) + graph.norms, 1);
  p.var1 = at::empty({var_rows, p.n1}, x1.options());
  p.var2 = symmetric ? p.var1 : at::empty({var_rows, p.n2}, x1.options());
  p.tabled = args.series1.defined();
  if (p.tabled) {  // checked by check_series_tables; rows var, a, b, ra, rb
    const int64_t K = (args.series1.size(1) - 3) / 2;
    auto split = [&](const at::Tensor& t, at::Tensor& var, at::Tensor& a, at::Tensor& b,
                     at::Tensor& ra, at::Tensor& rb) {
      var = t.select(1, 0).contiguous();
      a = t.narrow(1, 1, K).contiguous();
      b = t.narrow(1, 1 + K, K).contiguous();
      ra = t.select(1, 2 * K + 1).contiguous();
      rb = t.select(1, 2 * K + 2).contiguous();
    };
    at::Tensor v1, v2;
    split(args.series1, v1, p.ta1, p.tb1, p.tra1, p.trb1);
    if (symmetric) {
      v2 = v1, p.ta2 = p.ta1, p.tb2 = p.tb1, p.tra2 = p.tra1, p.trb2 = p.trb1;
    } else {
      split(args.series2, v2, p.ta2, p.tb2, p.tra2, p.trb2);
    }
    if (!p.layers.empty()) {
      p.var1 = v1;
      p.var2 = v2;
    }
    p.table_terms.assign(args.series_terms.begin(), args.series_terms.end());
    p.table_tolerance = args.series_tolerance;
    p.fallback = at::zeros({p.n1, p.n2}, x1.options().dtype(at::kBool));
  }
  for (const auto& h : p.layers) p.hermite |= h.kind == math::kHermite;
  if (p.hermite) {
    const int64_t K = math::kHermiteMaxTerms, C = math::kHermiteCheckpoints;
    const auto f64 = x1.options().dtype(at::kDouble);
    auto alloc = [&](int64_t n, at::Tensor& a, at::Tensor& b, at::Tensor& na, at::Tensor& nb,
                     at::Tensor& tails) {
      a = at::empty({rows, K, n}, x1.options());
      b = at::empty({rows, K, n}, x1.options());
      na = at::empty({rows, n}, x1.options());
      nb = at::empty({rows, n}, x1.options());
      // Zeros: rows of layers that are not series layers are never written, yet
      // finish_hermite reduces over every row (their result is discarded).
      tails = at::zeros({rows, 2, C, n}, f64);
    };
    alloc(p.n1, p.ha1, p.hb1, p.hna1, p.hnb1, p.htails1);
    if (symmetric) {
      p.ha2 = p.ha1, p.hb2 = p.hb1, p.hna2 = p.hna1, p.hnb2 = p.hnb1, p.htails2 = p.htails1;
    } else {
      alloc(p.n2, p.ha2, p.hb2, p.hna2, p.hnb2, p.htails2);
    }
  }
  return p;
}

// Whether torch runs CPU float32 products in float32 (precision "highest"); false when it
// may lower them (bfloat16 passes) or when the setting cannot be read (torch refuses to
// read the legacy setting after the new per-backend API was used).
inline bool cpu_float32_matmul_is_ieee() {
  try {
    return at::globalContext().float32MatmulPrecision() == at::Float32MatmulPrecision::HIGHEST;
  } catch (const std::exception&) {
    return false;
  }
}

// gram = x1 x2^T [N1, N2] in the inputs' dtype, in full precision whatever torch's matmul
// settings say: a float32 product is formed in float64 and rounded once, so neither TF32
// (torch.backends.cuda.matmul.allow_tf32, torch.set_float32_matmul_precision("high"))
// nor bfloat16 passes ("medium") reach the angles: with TF32, a point present in both x1
// and x2 would get an angle off by ~0.03 rad. The float64 temporaries are bounded by
// forming ~32 MB row blocks. The detour costs a DGEMM and an N1·N2 conversion (on 2 CPU
// cores, N = 4000, n0 = 16: 64 ms against 20 ms for the float32 product); a symmetric CPU
// call under precision "highest" skips it, since its diagonal supplies the squared norms.
inline at::Tensor full_precision_gram(const at::Tensor& x1, const at::Tensor& x2,
                                      bool symmetric) {
  if (x1.scalar_type() != at::kFloat) return at::mm(x1, x2.t());
  if (symmetric && x1.device().is_cpu() && cpu_float32_matmul_is_ieee()) {
    // The squared norms are this Gram's diagonal: a float32 product is exact enough.
    return at::mm(x1, x2.t());
  }
  const at::Tensor x2d = x2.to(at::kDouble);
  const int64_t n1 = x1.size(0), n2 = x2.size(0);
  at::Tensor gram = at::empty({n1, n2}, x1.options());
  const int64_t rows = std::max<int64_t>(1, (int64_t(1) << 22) / std::max<int64_t>(n2, 1));
  for (int64_t r = 0; r < n1; r += rows) {
    const int64_t m = std::min(rows, n1 - r);
    gram.narrow(0, r, m).copy_(at::mm(x1.narrow(0, r, m).to(at::kDouble), x2d.t()));
  }
  return gram;
}

// The analytic_kernels op (schema in csrc/torch_ntk.cpp) on one backend, which supplies
//   Backend::kHermiteSeries: whether it runs math::kHermite layers (else they stay
//     kQuadrature),
//   Backend::kGramIsOutput: whether the first wanted output may overwrite the Gram matrix
//     (each part of the Gram matrix is read before its outputs are written), and
//   Backend::run<T>(const AnalyticProblem<T>&, at::Tensor& nngp, at::Tensor& ntk): the
//     sample variances and the pair pass into the [N1, N2] outputs (undefined if unwanted);
//     with series tables (CPU only) also the problem's fallback mask.
template <typename Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor> analytic_kernels_op(
    const at::Tensor& x1_in, const c10::optional<at::Tensor>& x2_in, double input_weight_var,
    double input_bias_var, double input_ntk_weight, double input_ntk_bias,
    at::IntArrayRef act_ids, at::ArrayRef<double> act_params, at::ArrayRef<double> weight_var,
    at::ArrayRef<double> bias_var, at::ArrayRef<double> ntk_weight,
    at::ArrayRef<double> ntk_bias, const at::Tensor& gh_nodes, const at::Tensor& gh_weights,
    bool force_quadrature, bool want_nngp, bool want_ntk, bool hermite_series,
    at::IntArrayRef graph_codes, at::IntArrayRef graph_ints, at::ArrayRef<double> graph_floats,
    const c10::optional<at::Tensor>& series_x1, const c10::optional<at::Tensor>& series_x2,
    at::IntArrayRef series_terms, double series_tolerance) {
  const AnalyticArgs args{{input_weight_var, input_bias_var, input_ntk_weight, input_ntk_bias},
                          act_ids,    act_params, weight_var, bias_var, ntk_weight, ntk_bias,
                          force_quadrature, hermite_series && Backend::kHermiteSeries,
                          graph_codes, graph_ints, graph_floats,
                          series_x1.has_value() ? *series_x1 : at::Tensor(),
                          series_x2.has_value() ? *series_x2 : at::Tensor(), series_terms,
                          series_tolerance};
  check_analytic_args(x1_in, x2_in, args, gh_nodes, gh_weights, want_nngp, want_ntk);
  const MlpGraph graph = make_mlp_graph(args, static_cast<int64_t>(act_ids.size()));
  TORCH_CHECK_VALUE(graph.steps.empty() || x1_in.device().is_cpu(), "analytic_kernels: a "
                    "graph program (graph_codes) runs on the CPU; on ", x1_in.device(),
                    " run the graph with cnn_kernels on [N, n0, 1, 1] inputs "
                    "(torch_ntk.analytic.fused.graph_program)");

  const bool symmetric = !x2_in.has_value();
  const at::Tensor x1 = x1_in.contiguous();
  const at::Tensor x2 = symmetric ? x1 : x2_in->contiguous();
  const at::Tensor gram = full_precision_gram(x1, x2, symmetric);
  at::Tensor nngp, ntk, fallback = at::empty({0}, x1.options().dtype(at::kBool));
  if (Backend::kGramIsOutput) {
    (want_nngp ? nngp : ntk) = gram;
    if (want_nngp && want_ntk) ntk = at::empty_like(gram);
  } else {
    if (want_nngp) nngp = at::empty_like(gram);
    if (want_ntk) ntk = at::empty_like(gram);
  }
  AT_DISPATCH_FLOATING_TYPES(x1.scalar_type(), "analytic_kernels", [&] {
    // A named (non-const) problem: the backends' finish_hermite may update it in place.
    auto problem = make_analytic_problem<scalar_t>(x1, x2, symmetric, gram, args, graph,
                                                   gh_nodes, gh_weights);
    Backend::template run<scalar_t>(problem, nngp, ntk);
    if (problem.tabled) fallback = problem.fallback;
  });
  const auto empty = at::empty({0}, x1.options());
  return {want_nngp ? nngp : empty, want_ntk ? ntk : empty, fallback};
}

// The activation op (schema in csrc/torch_ntk.cpp) on one backend, which supplies
//   Backend::activation<T>(const at::Tensor& x, at::Tensor& out, int act_id, T param,
//     bool derivative): out = phi(x) or phi'(x), both contiguous with x.numel() >= 1.
template <typename Backend>
at::Tensor activation_op(const at::Tensor& x_in, int64_t act_id, double param, bool derivative) {
  check_floating("activation", "x", x_in);
  TORCH_CHECK_VALUE(act_id >= 0 && act_id < math::kNumActivations, "activation: act_id = ",
                    act_id, " is not a registered activation id (0..",
                    math::kNumActivations - 1, ")");
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "activation", [&] {
    Backend::template activation<scalar_t>(x, out, static_cast<int>(act_id),
                                           static_cast<scalar_t>(param), derivative);
  });
  return out;
}

}  // namespace torch_ntk
