// Bivariate Gauss-Hermite quadrature of Gaussian expectations, for activations
// without a closed form.
//
// With nodes t_i and weights w_i of degree d for the weight e^{-t^2}
// (numpy.polynomial.hermite.hermgauss, computed on the Python side) and the
// Cholesky factor of [[q11, q12], [q12, q22]]:
//   u_i  = sqrt(2 q11) t_i
//   v_ij = sqrt(2 q22) (rho t_i + sqrt(1 - rho^2) t_j),   rho = q12 / sqrt(q11 q22)
//   E[g(u, v)] ~= (1/pi) sum_i sum_j w_i w_j g(u_i, v_ij).
// Cost: 2 d^2 activation evaluations per expectation pair. Exact for
// polynomials of degree < 2d; converges slowly for kinks (use the closed forms).
#pragma once

#include "activations.h"
#include "hostdevice.h"

namespace torch_ntk {
namespace math {

template <typename T>
struct GaussHermite {
  const T* nodes;    // [degree]
  const T* weights;  // [degree]
  int degree;
};

template <typename T>
TNTK_HD void quadrature_expectations(int id, T param, const GaussHermite<T>& gh, T q11, T q22,
                                     T q12, T& e_phi, T& e_dphi) {
  const T su = fsqrt(max0(T(2) * q11));
  const T sv = fsqrt(max0(T(2) * q22));
  const T norm = fsqrt(max0(q11 * q22));
  const T rho = norm > T(0) ? clamp(q12 / norm, T(-1), T(1)) : T(0);
  const T perp = fsqrt(max0(T(1) - rho * rho));
  T acc = T(0), acc_d = T(0);
  for (int i = 0; i < gh.degree; ++i) {
    const T ti = gh.nodes[i];
    const T base = rho * ti;
    T inner = T(0), inner_d = T(0);
    for (int j = 0; j < gh.degree; ++j) {
      T phi_v, dphi_v;
      activation_and_derivative(id, param, sv * (base + perp * gh.nodes[j]), phi_v, dphi_v);
      inner += gh.weights[j] * phi_v;
      inner_d += gh.weights[j] * dphi_v;
    }
    T phi_u, dphi_u;
    activation_and_derivative(id, param, su * ti, phi_u, dphi_u);
    acc += gh.weights[i] * phi_u * inner;
    acc_d += gh.weights[i] * dphi_u * inner_d;
  }
  e_phi = acc * Constants<T>::inv_pi;
  e_dphi = acc_d * Constants<T>::inv_pi;
}

}  // namespace math
}  // namespace torch_ntk
