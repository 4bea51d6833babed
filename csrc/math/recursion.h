// The infinite-width layer recursion (Jacot et al. 2018, Lee et al. 2019), one pair at a time.
//
//   Sigma^(1)       = w_0 <x, x'> + b_0      (InputLayer: weight_var, bias_var)
//   Theta^(1)       = tw_0 <x, x'> + tb_0    (InputLayer: ntk_weight, ntk_bias)
//   Sigma^(l+1)     = sigma_w^2 E[phi(u) phi(v)] + sigma_b^2
//   Sigmadot^(l+1)  = sigma_w^2 E[phi'(u) phi'(v)]
//   Theta^(l+1)     = Theta^(l) Sigmadot^(l+1) + tw_l E[phi(u) phi(v)] + tb_l
// with (u, v) ~ N(0, [[Sigma^(l)(x,x), Sigma^(l)(x,x')], [., Sigma^(l)(x',x')]]).
//
// NTK parametrization: tw_l = sigma_w^2, tb_l = sigma_b^2 (the additive term is
// Sigma^(l+1)), tw_0 = w_0 = sigma_w^2 / n_0. Standard parametrization (weights
// initialized with variance sigma_w^2 / n_l): tw_l = n_l, tb_l = 1, tw_0 = 1, since
// each weight's gradient outer product is the raw activation inner product there.
#pragma once

#include <cstdint>

#include "activations.h"
#include "quadrature.h"
#include "hostdevice.h"

namespace torch_ntk {
namespace math {

// The first dense layer, on the inputs: Sigma^(1) = w_0 <x, x'> + b_0 with w_0 =
// sigma_w^2 / n_0 and b_0 = sigma_b^2, and Theta^(1) = tw_0 <x, x'> + tb_0.
template <typename T>
struct InputLayer {
  T weight_var;  // w_0
  T bias_var;    // b_0
  T ntk_weight;  // tw_0
  T ntk_bias;    // tb_0

  TNTK_HD T sigma(T inner) const { return weight_var * inner + bias_var; }
  TNTK_HD T theta(T inner) const { return ntk_weight * inner + ntk_bias; }
};

// One hidden step: activation followed by a dense layer.
template <typename T>
struct HiddenLayer {
  int act;         // ActivationId
  int kind;        // ExpectationKind
  T param;         // activation parameter (slope, beta, alpha, ...)
  T slope_neg;     // a of the ReLU family, phi = a min(x,0) + b max(x,0)
  T slope_pos;     // b of the ReLU family
  T weight_var;    // sigma_w^2
  T bias_var;      // sigma_b^2
  T ntk_weight;    // tw_l
  T ntk_bias;      // tb_l
};

template <typename T>
TNTK_HD void layer_expectations(const HiddenLayer<T>& layer, const GaussHermite<T>& gh, T q11,
                                T q22, T q12, T& e_phi, T& e_dphi) {
  switch (layer.kind) {
    case kAbRelu:
      abrelu_expectations(layer.slope_neg, layer.slope_pos, q11, q22, q12, e_phi, e_dphi);
      break;
    case kErfClosed:
      erf_expectations(q11, q22, q12, e_phi, e_dphi);
      break;
    default:
      quadrature_expectations(layer.act, layer.param, gh, q11, q22, q12, e_phi, e_dphi);
      break;
  }
}

// Advances (Sigma, Theta) of one pair through `layer`, given the expectations.
template <typename T>
TNTK_HD void apply_layer(const HiddenLayer<T>& layer, T e_phi, T e_dphi, T& sigma, T& theta) {
  theta = theta * (layer.weight_var * e_dphi) + layer.ntk_weight * e_phi + layer.ntk_bias;
  sigma = layer.weight_var * e_phi + layer.bias_var;
}

// The per-sample variance Sigma^(l+1)(x, x) from Sigma^(l)(x, x).
template <typename T>
TNTK_HD T next_variance(const HiddenLayer<T>& layer, const GaussHermite<T>& gh, T q) {
  T e_phi, e_dphi;
  layer_expectations(layer, gh, q, q, q, e_phi, e_dphi);
  return layer.weight_var * e_phi + layer.bias_var;
}

// The variances of one sample x_s from its squared norm: var[l * n + s] =
// Sigma^(l+1)(x_s, x_s), the variance entering hidden layer l (l < num_layers).
template <typename T>
TNTK_HD void sample_variances(const InputLayer<T>& input, const HiddenLayer<T>* layers,
                              int64_t num_layers, const GaussHermite<T>& gh, T sq_norm,
                              int64_t n, int64_t s, T* var) {
  T q = input.sigma(sq_norm);
  for (int64_t l = 0; l < num_layers; ++l) {
    var[l * n + s] = q;
    q = next_variance(layers[l], gh, q);
  }
}

}  // namespace math
}  // namespace torch_ntk
