// The reverse sweep of the infinite-width MLP recursion (recursion.h), one pair at a time:
// the derivatives of the analytic_kernels_backward op (NTK_MATH.md §9).
//
// Forward, per pair (i, j) and hidden layer l, with (q11, q22) the two samples' variances
// entering the layer and q12 = Sigma^(l):
//   (e, ed)          = (E[phi(u) phi(v)], E[phi'(u) phi'(v)]) at (q11, q22, q12)
//   Theta^(l+1)      = Theta^(l) wv ed + tw e + tb
//   Sigma^(l+1)      = wv e + bv
// and per sample q^(l+1) = wv E[phi(u)^2](q^(l)) + bv. Backward, given gS = dL/dSigma^(l+1)
// and gT = dL/dTheta^(l+1):
//   g_e  = wv gS + tw gT,   g_ed = wv Theta^(l) gT,   dL/dTheta^(l) = wv ed gT
//   dL/dwv += e gS + Theta^(l) ed gT,  dL/dbv += gS,  dL/dtw += e gT,  dL/dtb += gT
// and (g_e, g_ed) reach (q11, q22, q12) through the dual maps' derivatives (Price's theorem:
// de/dq12 = ed):
//   ReLU family phi = a min(x, 0) + b max(x, 0), c = (b - a)^2, s = sqrt(q11 q22 - q12^2):
//     de/dq11 = c s / (4 pi q11),    ded/dq12 = c / (2 pi s),    ded/dq11 = -c q12 / (4 pi q11 s)
//     At the kink s = 0 (rho = +-1: a point paired with itself), and wherever rounding
//     cannot resolve s (s <= 32 sqrt(eps) sqrt(q11 q22)), ded's derivatives are the
//     symmetric subgradient 0, the value central differences give; where q11 = 0 the
//     q11-derivatives are 0 (the conventions of torch_ntk.activations._ABReLUDual).
//   erf, d = (1 + 2 q11)(1 + 2 q22), D = d - 4 q12^2:
//     de/dq11 = -ed q12 / (1 + 2 q11),  ded/dq12 = 4 ed q12 / D,  ded/dq11 = -ed (1 + 2 q22) / D
// Only these closed forms have a backward here (closed_form_backward); the Hermite series
// and quadrature layers keep the torch composite (torch_ntk.analytic.autograd).
#pragma once

#include "activations.h"
#include "hostdevice.h"
#include "recursion.h"

namespace torch_ntk {
namespace math {

// Whether layers of this ExpectationKind have a derivative in this header.
TNTK_HD bool closed_form_backward(int kind) { return kind == kAbRelu || kind == kErfClosed; }

// The gradient coefficients of one layer's dL/d(weight_var, bias_var, ntk_weight, ntk_bias).
enum CoefIndex : int { kCoefWeightVar = 0, kCoefBiasVar = 1, kCoefNtkWeight = 2,
                       kCoefNtkBias = 3, kNumCoefs = 4 };

template <typename T>
struct KinkThreshold;  // 32 sqrt(eps): below it (relative to sqrt(q11 q22)) s is unresolved
template <>
struct KinkThreshold<float> {
  static constexpr float value = 32.0f * 3.4526698e-4f;  // 32 sqrt(2^-23)
};
template <>
struct KinkThreshold<double> {
  static constexpr double value = 32.0 * 1.4901161193847656e-8;  // 32 sqrt(2^-52)
};

// (dL/dq11, dL/dq22, dL/dq12) from (g_e, g_ed) = (dL/de, dL/ded) for the ReLU family,
// given the forward's ed.
template <typename T>
TNTK_HD void abrelu_expectations_backward(T a, T b, T q11, T q22, T q12, T ed, T g_e, T g_ed,
                                          T& g11, T& g22, T& g12) {
  const T c = (b - a) * (b - a);
  const T norm = fsqrt(max0(q11 * q22));
  const T s = fsqrt(max0((norm - q12) * (norm + q12)));  // as abrelu_expectations
  const bool resolved = s > KinkThreshold<T>::value * norm;
  const T inv_s = resolved ? T(1) / (resolved ? s : T(1)) : T(0);
  const T gd = g_ed * c * Constants<T>::inv_two_pi * inv_s;  // g_ed ded/dq12
  const T inv_q11 = q11 > T(0) ? T(1) / (q11 > T(0) ? q11 : T(1)) : T(0);
  const T inv_q22 = q22 > T(0) ? T(1) / (q22 > T(0) ? q22 : T(1)) : T(0);
  const T common = g_e * c * T(0.25) * Constants<T>::inv_pi * s - gd * T(0.5) * q12;
  g11 = common * inv_q11;
  g22 = common * inv_q22;
  g12 = g_e * ed + gd;
}

// The same for erf.
template <typename T>
TNTK_HD void erf_expectations_backward(T q11, T q22, T q12, T ed, T g_e, T g_ed, T& g11,
                                       T& g22, T& g12) {
  const T a1 = T(1) + T(2) * q11;
  const T a2 = T(1) + T(2) * q22;
  const T D = a1 * a2 - T(4) * q12 * q12;  // >= 1 (Cauchy-Schwarz)
  const T gd = g_ed * ed / D;
  g11 = -g_e * ed * q12 / a1 - gd * a2;
  g22 = -g_e * ed * q12 / a2 - gd * a1;
  g12 = g_e * ed + T(4) * gd * q12;
}

// A closed-form layer's expectation derivatives (closed_form_backward(layer.kind)).
template <typename T>
TNTK_HD void layer_expectations_backward(const HiddenLayer<T>& layer, T q11, T q22, T q12, T ed,
                                         T g_e, T g_ed, T& g11, T& g22, T& g12) {
  if (layer.kind == kErfClosed) {
    erf_expectations_backward(q11, q22, q12, ed, g_e, g_ed, g11, g22, g12);
  } else {
    abrelu_expectations_backward(layer.slope_neg, layer.slope_pos, q11, q22, q12, ed, g_e, g_ed,
                                 g11, g22, g12);
  }
}

// One hidden layer backward for one pair. In: theta (Theta^(l)), e, ed of the forward and
// g_sigma, g_theta = dL/dSigma^(l+1), dL/dTheta^(l+1). Out: g_sigma, g_theta = dL/dSigma^(l)
// (through q12), dL/dTheta^(l); g11, g22 = dL/dq11, dL/dq22; coef[kNumCoefs] the pair's
// contributions to dL/d(wv, bv, tw, tb) (written, not accumulated).
template <typename T>
TNTK_HD void hidden_layer_backward(const HiddenLayer<T>& layer, T q11, T q22, T q12, T theta,
                                   T e, T ed, T& g_sigma, T& g_theta, T& g11, T& g22,
                                   T* coef) {
  const T gS = g_sigma, gT = g_theta;
  coef[kCoefWeightVar] = e * gS + theta * ed * gT;
  coef[kCoefBiasVar] = gS;
  coef[kCoefNtkWeight] = e * gT;
  coef[kCoefNtkBias] = gT;
  const T g_e = layer.weight_var * gS + layer.ntk_weight * gT;
  const T g_ed = layer.weight_var * theta * gT;
  g_theta = layer.weight_var * ed * gT;
  layer_expectations_backward(layer, q11, q22, q12, ed, g_e, g_ed, g11, g22, g_sigma);
}

// The input layer backward for one pair: from g_sigma, g_theta = dL/dSigma^(1), dL/dTheta^(1)
// the gradient of the Gram entry <x, x'> and the pair's coefficient contributions.
template <typename T>
TNTK_HD T input_layer_backward(const InputLayer<T>& input, T inner, T g_sigma, T g_theta,
                               T* coef) {
  coef[kCoefWeightVar] = g_sigma * inner;
  coef[kCoefBiasVar] = g_sigma;
  coef[kCoefNtkWeight] = g_theta * inner;
  coef[kCoefNtkBias] = g_theta;
  return input.weight_var * g_sigma + input.ntk_weight * g_theta;
}

// A closed-form layer's expectations (recursion.h's layer_expectations without the
// quadrature branch, which closed_form_backward layers never take).
template <typename T>
TNTK_HD void closed_form_expectations(const HiddenLayer<T>& layer, T q11, T q22, T q12, T& e,
                                      T& ed) {
  if (layer.kind == kErfClosed) {
    erf_expectations(q11, q22, q12, e, ed);
  } else {
    abrelu_expectations(layer.slope_neg, layer.slope_pos, q11, q22, q12, e, ed);
  }
}

// The per-sample variance chain backward of one sample (every layer closed_form_backward).
// var(l) (l < num_layers) is the variance entering hidden layer l (sample_variances),
// g_var(l) the pair pass's dL/dvar(l) summed over every pair of the sample. Returns
// dL/d<x, x>; adds the sample's contributions to coef (input layer at coef[0..4), hidden
// layer l at coef[4 (l + 1) ..]).
template <typename T, typename Var, typename GVar>
TNTK_HD T sample_variances_backward(const InputLayer<T>& input, const HiddenLayer<T>* layers,
                                    int64_t num_layers, T sq_norm, Var var, GVar g_var,
                                    double* coef) {
  T g_next = T(0);  // dL/dvar(l + 1)
  for (int64_t l = num_layers - 1; l >= 0; --l) {
    T g = g_var(l);
    if (l + 1 < num_layers) {  // var(l + 1) = wv E[phi^2](var(l)) + bv
      const HiddenLayer<T>& layer = layers[l];
      const T q = var(l);
      T e, ed, g11, g22, g12;
      closed_form_expectations(layer, q, q, q, e, ed);
      layer_expectations_backward(layer, q, q, q, ed, layer.weight_var * g_next, T(0), g11, g22,
                                  g12);
      coef[kNumCoefs * (l + 1) + kCoefWeightVar] += double(g_next) * double(e);
      coef[kNumCoefs * (l + 1) + kCoefBiasVar] += double(g_next);
      g += g11 + g22 + g12;
    }
    g_next = g;
  }
  if (num_layers == 0) return T(0);  // no variance chain: the pairs' Gram entries carry all
  coef[kCoefWeightVar] += double(g_next) * double(sq_norm);
  coef[kCoefBiasVar] += double(g_next);
  return input.weight_var * g_next;
}

}  // namespace math
}  // namespace torch_ntk
