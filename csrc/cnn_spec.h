// Host side of the cnn_kernels op, shared by the CPU and CUDA implementations: the
// program's validation and its layer table (geometry, variance offsets, path), the
// input checks, the output buffers and the dtype dispatch. A backend supplies only its
// pass over samples and pairs (Backend::run).
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "checks.h"
#include "math/cnn_recursion.h"

namespace torch_ntk {

inline const char* cnn_code_name(int64_t code) {
  switch (code) {
    case math::kCnnConv: return "CONV";
    case math::kCnnActivation: return "ACTIVATION";
    case math::kCnnAvgPool: return "AVGPOOL";
    case math::kCnnGlobalAvgPool: return "GLOBAL_AVGPOOL";
    case math::kCnnFlatten: return "FLATTEN";
    case math::kCnnDense: return "DENSE";
    case math::kCnnPush: return "PUSH";
    case math::kCnnLoad: return "LOAD";
    case math::kCnnJoin: return "JOIN";
    case math::kCnnLayerNorm: return "LAYERNORM";
    case math::kCnnAvgPoolPad: return "AVGPOOL_PAD";
    case math::kCnnGlobalSumPool: return "GLOBAL_SUMPOOL";
    default: return "?";
  }
}

// A validated program in double precision (converted to the inputs' dtype by cast()).
struct CnnPlan {
  std::vector<math::CnnLayer<double>> layers;
  bool full = false;
  bool needs_quadrature = false;
  int64_t plane = 1;    // entries of the largest plane
  int64_t var_len = 0;  // entries of one sample's variance row
  int num_slots = 0;    // skip registers used (1 + the largest slot index)

  template <typename T>
  std::vector<math::CnnLayer<T>> cast() const {
    std::vector<math::CnnLayer<T>> out(layers.size());
    for (size_t l = 0; l < layers.size(); ++l) {
      const auto& a = layers[l];
      auto& b = out[l];
      b.code = a.code;
      b.h_in = a.h_in; b.w_in = a.w_in; b.h_out = a.h_out; b.w_out = a.w_out;
      b.kh = a.kh; b.kw = a.kw; b.sh = a.sh; b.sw = a.sw; b.dh = a.dh; b.dw = a.dw;
      b.ph = a.ph; b.pw = a.pw; b.circular = a.circular;
      b.var_offset = a.var_offset;
      b.slot = a.slot; b.mode = a.mode; b.affine = a.affine;
      b.coef = static_cast<T>(a.coef);
      b.coef_slot = static_cast<T>(a.coef_slot);
      b.eps = static_cast<T>(a.eps);
      b.act.act = a.act.act;
      b.act.kind = a.act.kind;
      b.act.param = static_cast<T>(a.act.param);
      b.act.slope_neg = static_cast<T>(a.act.slope_neg);
      b.act.slope_pos = static_cast<T>(a.act.slope_pos);
      b.act.weight_var = static_cast<T>(a.act.weight_var);
      b.act.bias_var = static_cast<T>(a.act.bias_var);
      b.act.ntk_weight = static_cast<T>(a.act.ntk_weight);
      b.act.ntk_bias = static_cast<T>(a.act.ntk_bias);
    }
    return out;
  }
};

// Reads the program (layer_codes with their layer_ints and layer_floats, as documented
// in csrc/torch_ntk.cpp) for an input of c0 channels and h0 x w0 positions.
inline CnnPlan make_cnn_plan(at::IntArrayRef codes, at::IntArrayRef ints,
                             at::ArrayRef<double> floats, int64_t h0, int64_t w0,
                             bool force_quadrature) {
  const char* op = "cnn_kernels";
  TORCH_CHECK_VALUE(!codes.empty(), op, ": layer_codes is empty; the program must end with a "
                    "DENSE layer (code 5)");
  CnnPlan plan;
  size_t ni = 0, nf = 0;
  // What the current features are: images (spatial), the scalars of a FLATTEN (only a
  // DENSE may follow), or scalars (after GLOBAL_AVGPOOL or DENSE).
  enum { kSpatial, kFlat, kScalar } state = kSpatial;
  bool gaussian = false;  // a CONV or DENSE since the last ACTIVATION
  bool dense = false;     // the current features are a DENSE's (+ graph steps)
  bool gain = false;      // right after an affine LAYERNORM (its gain's NTK term)
  int64_t h = h0, w = w0, max_positions = h0 * w0;
  bool pooled = false;
  // The skip registers: what a PUSH saved (the state's kind, size and flags).
  struct Slot {
    bool filled = false;
    int state = 0;
    int64_t h = 0, w = 0;
    bool gaussian = false, dense = false, gain = false;
  };
  Slot slots[math::kCnnMaxSlots];
  for (size_t l = 0; l < codes.size(); ++l) {
    const int64_t code = codes[l];
    TORCH_CHECK_VALUE(code >= 0 && code < math::kCnnNumCodes, op, ": layer_codes[", l, "] = ",
                      code, " is not a layer code (0 CONV, 1 ACTIVATION, 2 AVGPOOL, "
                      "3 GLOBAL_AVGPOOL, 4 FLATTEN, 5 DENSE, 6 PUSH, 7 LOAD, 8 JOIN, "
                      "9 LAYERNORM, 10 AVGPOOL_PAD, 11 GLOBAL_SUMPOOL)");
    const char* name = cnn_code_name(code);
    static const int kInts[] = {11, 1, 4, 0, 0, 0, 1, 1, 1, 2, 7, 0};
    static const int kFloats[] = {4, 1, 0, 0, 0, 4, 0, 0, 2, 1, 0, 0};
    TORCH_CHECK_VALUE(ni + kInts[code] <= ints.size(), op, ": layer ", l, " (", name,
                      ") needs ", kInts[code], " entries of layer_ints from index ", ni,
                      "; layer_ints has only ", ints.size());
    TORCH_CHECK_VALUE(nf + kFloats[code] <= floats.size(), op, ": layer ", l, " (", name,
                      ") needs ", kFloats[code], " entries of layer_floats from index ", nf,
                      "; layer_floats has only ", floats.size());
    const int64_t* I = ints.data() + ni;
    const double* F = floats.data() + nf;
    ni += kInts[code];
    nf += kFloats[code];
    for (int k = 0; k < kFloats[code]; ++k) {
      TORCH_CHECK_VALUE(std::isfinite(F[k]), op, ": layer_floats[", nf - kFloats[code] + k,
                        "] (layer ", l, ", ", name, ") is ", F[k], "; it must be finite");
    }
    math::CnnLayer<double> L{};
    L.code = static_cast<int>(code);
    L.kh = L.kw = L.sh = L.sw = L.dh = L.dw = 1;
    if (state == kSpatial) {
      L.h_in = static_cast<int>(h);
      L.w_in = static_cast<int>(w);
    } else {
      L.h_in = L.w_in = 1;
    }
    if (code == math::kCnnPush || code == math::kCnnLoad || code == math::kCnnJoin) {
      TORCH_CHECK_VALUE(I[0] >= 0 && I[0] < math::kCnnMaxSlots, op, ": layer ", l, " (", name,
                        "): slot = ", I[0], " is out of range; layer_ints must name a skip "
                        "register 0..", math::kCnnMaxSlots - 1);
      L.slot = static_cast<int>(I[0]);
      Slot& S = slots[L.slot];
      plan.num_slots = std::max(plan.num_slots, L.slot + 1);
      if (code == math::kCnnPush) {
        S.filled = true;
        S.state = state; S.h = h; S.w = w; S.gaussian = gaussian; S.dense = dense;
        S.gain = gain;
      } else {
        TORCH_CHECK_VALUE(S.filled, op, ": layer ", l, " (", name, ") reads slot ", L.slot,
                          ", which no earlier PUSH filled; PUSH the fork's state first");
        if (code == math::kCnnLoad) {
          state = static_cast<decltype(state)>(S.state);
          h = S.h; w = S.w; gaussian = S.gaussian; dense = S.dense; gain = S.gain;
        } else {
          TORCH_CHECK_VALUE(S.state == state && (state != kSpatial || (S.h == h && S.w == w)), op, ": layer ", l,
                            " (JOIN): slot ", L.slot, " holds features of ", S.h, " x ", S.w,
                            " positions", S.state == kFlat ? " (flattened)" : "", " and the "
                            "current ones have ", h, " x ", w, state == kFlat ? " (flattened)" : "",
                            "; a join needs the same positions and kind");
          TORCH_CHECK_VALUE(F[0] >= 0 && F[1] >= 0, op, ": layer ", l, " (JOIN): the "
                            "coefficients in layer_floats must be non-negative; got ", F[0],
                            " and ", F[1]);
          L.coef = F[0];
          L.coef_slot = F[1];
          gaussian = gaussian && S.gaussian;
          dense = dense && S.dense;
          gain = false;
        }
      }
      if (state != kSpatial) L.h_in = L.w_in = 1;
      else { L.h_in = static_cast<int>(h); L.w_in = static_cast<int>(w); }
      L.h_out = L.h_in;
      L.w_out = L.w_in;
    } else if (code == math::kCnnLayerNorm) {
      TORCH_CHECK_VALUE(state != kFlat, op, ": layer ", l, " (LAYERNORM) follows a FLATTEN; a "
                        "DENSE must come first");
      TORCH_CHECK_VALUE(I[0] == 0 || I[0] == 1, op, ": layer ", l, " (LAYERNORM): over = ", I[0],
                        " in layer_ints must be 0 (per position) or 1 (over the positions)");
      TORCH_CHECK_VALUE(I[1] == 0 || I[1] == 1, op, ": layer ", l, " (LAYERNORM): affine = ",
                        I[1], " in layer_ints must be 0 or 1");
      TORCH_CHECK_VALUE(F[0] >= 0, op, ": layer ", l, " (LAYERNORM): eps = ", F[0], " in "
                        "layer_floats must be >= 0");
      L.mode = static_cast<int>(I[0]);
      L.affine = static_cast<int>(I[1]);
      L.eps = F[0];
      L.var_offset = plan.var_len;
      plan.var_len += L.mode == 0 ? static_cast<int64_t>(L.h_in) * L.w_in : 1;
      L.h_out = L.h_in;
      L.w_out = L.w_in;
      plan.layers.push_back(L);
      gain = L.affine == 1;  // the next ACTIVATION sees the gain's term
      continue;
    } else if (code == math::kCnnAvgPoolPad) {
      TORCH_CHECK_VALUE(state == kSpatial, op, ": layer ", l, " is an AVGPOOL_PAD after a "
                        "FLATTEN, GLOBAL_AVGPOOL or DENSE; pooling must come before them");
      for (int k = 0; k < 4; ++k) {
        TORCH_CHECK_VALUE(I[k] >= 1, op, ": layer ", l, " (AVGPOOL_PAD): kernel size and stride "
                          "must be >= 1; got kh, kw, sh, sw = ", I[0], ", ", I[1], ", ", I[2],
                          ", ", I[3]);
      }
      TORCH_CHECK_VALUE(I[4] >= 0 && I[5] >= 0 && 2 * I[4] <= I[0] && 2 * I[5] <= I[1], op,
                        ": layer ", l, " (AVGPOOL_PAD): padding must be >= 0 and at most half "
                        "the window; got ph, pw = ", I[4], ", ", I[5], " for a ", I[0], " x ",
                        I[1], " window");
      TORCH_CHECK_VALUE(I[6] == 0 || I[6] == 1, op, ": layer ", l, " (AVGPOOL_PAD): "
                        "count_include_pad = ", I[6], " must be 0 or 1");
      TORCH_CHECK_VALUE(I[0] <= h + 2 * I[4] && I[1] <= w + 2 * I[5], op, ": layer ", l,
                        " (AVGPOOL_PAD): the window (", I[0], " x ", I[1], ") is larger than "
                        "its padded input (", h + 2 * I[4], " x ", w + 2 * I[5], ")");
      L.kh = static_cast<int>(I[0]); L.kw = static_cast<int>(I[1]);
      L.sh = static_cast<int>(I[2]); L.sw = static_cast<int>(I[3]);
      L.ph = static_cast<int>(I[4]); L.pw = static_cast<int>(I[5]);
      L.mode = static_cast<int>(I[6]);
      h = (h + 2 * L.ph - L.kh) / L.sh + 1;
      w = (w + 2 * L.pw - L.kw) / L.sw + 1;
      L.h_out = static_cast<int>(h);
      L.w_out = static_cast<int>(w);
      pooled = true;
      dense = false;
    } else if (code == math::kCnnConv || code == math::kCnnDense) {
      if (code == math::kCnnConv) {
        TORCH_CHECK_VALUE(state == kSpatial, op, ": layer ", l, " is a CONV after a ",
                          "FLATTEN, GLOBAL_AVGPOOL or DENSE; convolutions must come before them");
        for (int k = 0; k < 6; ++k) {
          TORCH_CHECK_VALUE(I[k] >= 1, op, ": layer ", l, " (CONV): kernel size, stride and "
                            "dilation must be >= 1; got kh, kw, sh, sw, dh, dw = ", I[0], ", ",
                            I[1], ", ", I[2], ", ", I[3], ", ", I[4], ", ", I[5]);
        }
        for (int k = 6; k < 10; ++k) {
          TORCH_CHECK_VALUE(I[k] >= 0, op, ": layer ", l, " (CONV): padding must be >= 0; got ",
                            I[6], ", ", I[7], ", ", I[8], ", ", I[9]);
        }
        TORCH_CHECK_VALUE(I[10] == 0 || I[10] == 1, op, ": layer ", l, " (CONV): circular must be 0 "
                          "(zeros) or 1 (circular); got ", I[10]);
        const int64_t span_h = I[4] * (I[0] - 1) + 1, span_w = I[5] * (I[1] - 1) + 1;
        const int64_t hp = h + I[6] + I[7], wp = w + I[8] + I[9];
        TORCH_CHECK_VALUE(span_h <= hp && span_w <= wp, op, ": layer ", l, " (CONV): the ",
                          "dilated kernel (", span_h, " x ", span_w, ") is larger than the padded "
                          "input (", hp, " x ", wp, ")");
        L.kh = static_cast<int>(I[0]); L.kw = static_cast<int>(I[1]);
        L.sh = static_cast<int>(I[2]); L.sw = static_cast<int>(I[3]);
        L.dh = static_cast<int>(I[4]); L.dw = static_cast<int>(I[5]);
        L.ph = static_cast<int>(I[6]); L.pw = static_cast<int>(I[8]);
        L.circular = static_cast<int>(I[10]);
        h = (hp - span_h) / L.sh + 1;
        w = (wp - span_w) / L.sw + 1;
        L.h_out = static_cast<int>(h);
        L.w_out = static_cast<int>(w);
        // The temporary plane of the separable taps, [h_in w_out]^2, fits a working plane
        // (math::cnn_conv_is_separable: the CPU and the GPU take that path alike).
        max_positions = std::max<int64_t>(max_positions, static_cast<int64_t>(L.h_in) * L.w_out);
      } else {
        TORCH_CHECK_VALUE(state != kSpatial, op, ": layer ", l, " is a DENSE on images; a DENSE "
                          "must follow a GLOBAL_AVGPOOL, FLATTEN or DENSE (+ ACTIVATION)");
        state = kScalar;
        L.h_out = L.w_out = 1;
      }
      dense = code == math::kCnnDense;
      TORCH_CHECK_VALUE(F[0] >= 0 && F[1] >= 0 && F[2] >= 0 && F[3] >= 0, op, ": layer ", l, " (",
                        name, "): weight_var, bias_var, ntk_weight and ntk_bias must be "
                        "non-negative; got ", F[0], ", ", F[1], ", ", F[2], ", ", F[3]);
      L.act.weight_var = F[0];
      L.act.bias_var = F[1];
      L.act.ntk_weight = F[2];
      L.act.ntk_bias = F[3];
      gaussian = true;
    } else if (code == math::kCnnActivation) {
      TORCH_CHECK_VALUE(gaussian, op, ": layer ", l, " (ACTIVATION) must follow a CONV or DENSE "
                        "(an activation of the raw input or of another activation is not "
                        "Gaussian)");
      TORCH_CHECK_VALUE(state != kFlat, op, ": layer ", l, " (ACTIVATION) follows a FLATTEN; a "
                        "DENSE must come first");
      const int64_t id = I[0];
      TORCH_CHECK_VALUE(id >= 0 && id < math::kNumActivations, op, ": layer ", l,
                        " (ACTIVATION): act_id = ", id, " is not a registered activation id (0..",
                        math::kNumActivations - 1, ")");
      if (id == math::kSoftplus) {
        TORCH_CHECK_VALUE(F[0] > 0, op, ": layer ", l, " (ACTIVATION): softplus beta must be "
                          "positive; got ", F[0]);
      }
      // After an affine LAYERNORM its gain adds u u' to the NTK: exact for the positively
      // homogeneous activations (phi'(u) u = phi(u)), Theta <- E[phi'phi'] (Theta - K) + E[phi phi].
      TORCH_CHECK_VALUE(!gain || id <= math::kAbs, op, ": layer ", l, " (ACTIVATION): act_id = ",
                        id, " right after an affine LAYERNORM has no exact rule; only identity, "
                        "relu, leaky_relu and abs (ids 0..3) do");
      L.affine = gain ? 1 : 0;
      L.act.act = static_cast<int>(id);
      L.act.kind = math::expectation_kind(L.act.act, force_quadrature);
      L.act.param = F[0];
      math::abrelu_slopes(L.act.act, L.act.param, L.act.slope_neg, L.act.slope_pos);
      plan.needs_quadrature |= L.act.kind == math::kQuadrature;
      L.var_offset = plan.var_len;
      plan.var_len += static_cast<int64_t>(L.h_in) * L.w_in;
      L.h_out = L.h_in;
      L.w_out = L.w_in;
      gaussian = false;
      dense = false;
    } else if (code == math::kCnnAvgPool) {
      TORCH_CHECK_VALUE(state == kSpatial, op, ": layer ", l, " is an AVGPOOL after a FLATTEN, "
                        "GLOBAL_AVGPOOL or DENSE; pooling must come before them");
      for (int k = 0; k < 4; ++k) {
        TORCH_CHECK_VALUE(I[k] >= 1, op, ": layer ", l, " (AVGPOOL): kernel size and stride must "
                          "be >= 1; got kh, kw, sh, sw = ", I[0], ", ", I[1], ", ", I[2], ", ",
                          I[3]);
      }
      TORCH_CHECK_VALUE(I[0] <= h && I[1] <= w, op, ": layer ", l, " (AVGPOOL): the window (",
                        I[0], " x ", I[1], ") is larger than its input (", h, " x ", w, ")");
      L.kh = static_cast<int>(I[0]); L.kw = static_cast<int>(I[1]);
      L.sh = static_cast<int>(I[2]); L.sw = static_cast<int>(I[3]);
      h = (h - L.kh) / L.sh + 1;
      w = (w - L.kw) / L.sw + 1;
      L.h_out = static_cast<int>(h);
      L.w_out = static_cast<int>(w);
      pooled = true;
      dense = false;
    } else {  // GLOBAL_AVGPOOL, GLOBAL_SUMPOOL, FLATTEN
      TORCH_CHECK_VALUE(state == kSpatial, op, ": layer ", l, " (", name, ") must act on images; "
                        "it follows a FLATTEN, GLOBAL_AVGPOOL or DENSE");
      if (code != math::kCnnFlatten) pooled = true;
      state = code == math::kCnnFlatten ? kFlat : kScalar;
      dense = false;
      L.h_out = L.w_out = 1;
    }
    max_positions = std::max<int64_t>(max_positions, static_cast<int64_t>(L.h_out) * L.w_out);
    plan.layers.push_back(L);
    if (code != math::kCnnPush && code != math::kCnnLoad) gain = false;
  }
  TORCH_CHECK_VALUE(state == kScalar && dense, op, ": the program must end with a DENSE "
                    "layer (code 5), or with graph steps (LOAD, JOIN, LAYERNORM) on the scalars "
                    "of DENSE layers; its last layer is ", cnn_code_name(codes.back()));
  TORCH_CHECK_VALUE(ni == ints.size() && nf == floats.size(), op, ": the program consumes ", ni,
                    " layer_ints and ", nf, " layer_floats; got ", ints.size(), " and ",
                    floats.size());
  plan.full = pooled;
  plan.plane = math::cnn_plane_size(plan.full, max_positions);
  return plan;
}

// A batch of images [N, C, H, W]: floating, 4-D, non-empty, finite.
inline void check_images(const char* op, const char* name, const at::Tensor& x) {
  check_floating(op, name, x);
  check_dim(op, name, x, 4);
  check_nonempty_rows(op, name, x);
  check_finite(op, name, x);
}

// Everything a backend's pass needs, prepared on the host (T: the inputs' dtype).
template <typename T>
struct CnnProblem {
  bool symmetric;                           // x2 is None: x2 aliases x1
  int64_t n1, n2;
  at::Tensor x1, x2;                        // [N1, C0 * H0 * W0], [N2, ...] contiguous
  std::vector<math::CnnLayer<T>> layers;
  math::CnnProgram<T> prog;                 // prog.layers and prog.gh left for the backend
  at::Tensor gh_nodes, gh_weights;          // [degree] in x1's dtype, on x1's device
  at::Tensor var1, var2;                    // [N1, var_len], [N2, var_len] (var2 aliases var1
                                            // when symmetric), for the backend to fill
};

// The cnn_kernels op (schema in csrc/torch_ntk.cpp) on one backend, which supplies
//   Backend::run<T>(CnnProblem<T>&, at::Tensor& nngp, at::Tensor& ntk): the self passes
//   filling var1/var2, then the pair pass into the [N1, N2] outputs (undefined if unwanted).
template <typename Backend>
std::tuple<at::Tensor, at::Tensor> cnn_kernels_op(
    const at::Tensor& x1_in, const c10::optional<at::Tensor>& x2_in, at::IntArrayRef layer_codes,
    at::IntArrayRef layer_ints, at::ArrayRef<double> layer_floats, const at::Tensor& gh_nodes,
    const at::Tensor& gh_weights, bool force_quadrature, bool want_nngp, bool want_ntk) {
  const char* op = "cnn_kernels";
  TORCH_CHECK_VALUE(want_nngp || want_ntk, op,
                    ": at least one of want_nngp and want_ntk must be true");
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
  if (plan.needs_quadrature) {
    check_dim(op, "gh_nodes", gh_nodes, 1);
    TORCH_CHECK_VALUE(gh_nodes.numel() > 0 && gh_nodes.sizes() == gh_weights.sizes(), op,
                      ": gh_nodes and gh_weights must be non-empty and of the same length when a "
                      "layer needs quadrature; got shapes ",
                      gh_nodes.sizes(), " and ", gh_weights.sizes());
  }
  const bool symmetric = !x2_in.has_value();
  const int64_t n1 = x1_in.size(0);
  const at::Tensor x1 = x1_in.contiguous().view({n1, -1});
  const at::Tensor x2 = symmetric ? x1 : x2_in->contiguous().view({x2_in->size(0), -1});
  const int64_t n2 = x2.size(0);
  at::Tensor nngp, ntk;
  if (want_nngp) nngp = at::empty({n1, n2}, x1.options());
  if (want_ntk) ntk = at::empty({n1, n2}, x1.options());
  AT_DISPATCH_FLOATING_TYPES(x1.scalar_type(), "cnn_kernels", [&] {
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
    p.prog.var_len = std::max<int64_t>(plan.var_len, 1);  // the rows' stride
    p.prog.num_slots = plan.num_slots;
    p.prog.gh = {nullptr, nullptr, 0};
    if (plan.needs_quadrature) {
      p.gh_nodes = gh_nodes.to(x1.options()).contiguous();
      p.gh_weights = gh_weights.to(x1.options()).contiguous();
    } else {
      p.gh_nodes = p.gh_weights = at::empty({0}, x1.options());
    }
    p.var1 = at::empty({n1, p.prog.var_len}, x1.options());
    p.var2 = symmetric ? p.var1 : at::empty({n2, p.prog.var_len}, x1.options());
    Backend::template run<T>(p, nngp, ntk);
  });
  const auto empty = at::empty({0}, x1.options());
  return {want_nngp ? nngp : empty, want_ntk ? ntk : empty};
}

}  // namespace torch_ntk
