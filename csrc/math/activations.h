// The C++ side of the activation registry (torch_ntk/activations.py holds the
// Python side; tests/test_activations.py checks that both tables agree).
//
// For each activation phi: phi(x), phi'(x), and for the ReLU family and erf the
// closed-form Gaussian expectations
//     E[phi(u) phi(v)]   and   E[phi'(u) phi'(v)],   (u, v) ~ N(0, [[q11, q12], [q12, q22]]).
// Every other activation is integrated by quadrature (quadrature.h), or, for the smooth
// ones in the MLP op, by its Hermite series (hermite.h).
#pragma once

#include "angles.h"
#include "hostdevice.h"

namespace torch_ntk {
namespace math {

// Stable ids: the Python registry uses the same numbers.
enum ActivationId : int {
  kIdentity = 0,
  kRelu = 1,
  kLeakyRelu = 2,  // param: negative slope
  kAbs = 3,
  kErf = 4,
  kGelu = 5,  // param: 0 exact (erf form), 1 tanh approximation
  kTanh = 6,
  kSigmoid = 7,
  kSilu = 8,
  kSoftplus = 9,  // param: beta (threshold 20 as torch.nn.Softplus)
  kElu = 10,      // param: alpha
  kSelu = 11,
  kNumActivations = 12,
};

inline const char* activation_name(int id) {
  switch (id) {
    case kIdentity: return "identity";
    case kRelu: return "relu";
    case kLeakyRelu: return "leaky_relu";
    case kAbs: return "abs";
    case kErf: return "erf";
    case kGelu: return "gelu";
    case kTanh: return "tanh";
    case kSigmoid: return "sigmoid";
    case kSilu: return "silu";
    case kSoftplus: return "softplus";
    case kElu: return "elu";
    case kSelu: return "selu";
    default: return "";
  }
}

// How a layer's expectations are computed. kHermite (the Hermite series of hermite.h,
// with kQuadrature for the pairs where its bound is not met) is chosen by the analytic
// op's hermite_series argument (csrc/analytic_spec.h), never by expectation_kind; code
// that does not know it treats it as kQuadrature. kSeriesTable (act id -1): the series
// with per-sample tables given by the caller (the analytic op's series_tables, CPU only).
enum ExpectationKind : int {
  kAbRelu = 0, kErfClosed = 1, kQuadrature = 2, kHermite = 3, kSeriesTable = 4
};

inline int expectation_kind(int id, bool force_quadrature) {
  if (force_quadrature) return kQuadrature;
  switch (id) {
    case kIdentity: case kRelu: case kLeakyRelu: case kAbs: return kAbRelu;
    case kErf: return kErfClosed;
    default: return kQuadrature;
  }
}

// phi(x) = a min(x, 0) + b max(x, 0): the (a, b) of the ReLU family members.
template <typename T>
TNTK_HD void abrelu_slopes(int id, T param, T& a, T& b) {
  b = T(1);
  switch (id) {
    case kIdentity: a = T(1); break;
    case kRelu: a = T(0); break;
    case kLeakyRelu: a = param; break;
    default: a = T(-1); break;  // kAbs
  }
}

template <typename T>
struct SeluConstants {
  static constexpr T alpha = T(1.6732632423543772848170429916717);
  static constexpr T scale = T(1.0507009873554804934193349852946);
};

template <typename T>
TNTK_HD T sigmoid(T x) {
  return T(1) / (T(1) + fexp(-x));
}

// phi(x) for every registered activation.
template <typename T>
TNTK_HD T activation(int id, T param, T x) {
  switch (id) {
    case kIdentity: return x;
    case kRelu: return max0(x);
    case kLeakyRelu: return x > T(0) ? x : param * x;
    case kAbs: return x < T(0) ? -x : x;
    case kErf: return ferf(x);
    case kGelu:
      if (param != T(0)) {
        const T c = T(0.7978845608028654);  // sqrt(2 / pi)
        return T(0.5) * x * (T(1) + ftanh(c * (x + T(0.044715) * x * x * x)));
      }
      return T(0.5) * x * (T(1) + ferf(x * Constants<T>::inv_sqrt2));
    case kTanh: return ftanh(x);
    case kSigmoid: return sigmoid(x);
    case kSilu: return x * sigmoid(x);
    case kSoftplus: {
      const T bx = param * x;
      return bx > T(20) ? x : flog1p(fexp(bx)) / param;
    }
    case kElu: return x > T(0) ? x : param * (fexp(x) - T(1));
    case kSelu:
      return SeluConstants<T>::scale *
             (x > T(0) ? x : SeluConstants<T>::alpha * (fexp(x) - T(1)));
    default: return T(0);
  }
}

// phi'(x); at kinks the right derivative's convention of torch autograd is
// irrelevant because kinks have Gaussian measure zero.
template <typename T>
TNTK_HD T activation_derivative(int id, T param, T x) {
  switch (id) {
    case kIdentity: return T(1);
    case kRelu: return x > T(0) ? T(1) : T(0);
    case kLeakyRelu: return x > T(0) ? T(1) : param;
    case kAbs: return x > T(0) ? T(1) : T(-1);
    case kErf: return Constants<T>::two_over_sqrt_pi * fexp(-x * x);
    case kGelu:
      if (param != T(0)) {
        const T c = T(0.7978845608028654);
        const T inner = c * (x + T(0.044715) * x * x * x);
        const T t = ftanh(inner);
        return T(0.5) * (T(1) + t) +
               T(0.5) * x * (T(1) - t * t) * c * (T(1) + T(3) * T(0.044715) * x * x);
      }
      return T(0.5) * (T(1) + ferf(x * Constants<T>::inv_sqrt2)) +
             x * Constants<T>::inv_sqrt_two_pi * fexp(T(-0.5) * x * x);
    case kTanh: {
      const T t = ftanh(x);
      return T(1) - t * t;
    }
    case kSigmoid: {
      const T s = sigmoid(x);
      return s * (T(1) - s);
    }
    case kSilu: {
      const T s = sigmoid(x);
      return s * (T(1) + x * (T(1) - s));
    }
    case kSoftplus: {
      const T bx = param * x;
      return bx > T(20) ? T(1) : sigmoid(bx);
    }
    case kElu: return x > T(0) ? T(1) : param * fexp(x);
    case kSelu:
      return SeluConstants<T>::scale *
             (x > T(0) ? T(1) : SeluConstants<T>::alpha * fexp(x));
    default: return T(0);
  }
}

// phi(x) and phi'(x) together, sharing the transcendental evaluation (the inner loop
// of the quadrature needs both at every node).
template <typename T>
TNTK_HD void activation_and_derivative(int id, T param, T x, T& phi, T& dphi) {
  switch (id) {
    case kTanh: {
      const T t = ftanh(x);
      phi = t;
      dphi = T(1) - t * t;
      return;
    }
    case kSigmoid: {
      const T sg = sigmoid(x);
      phi = sg;
      dphi = sg * (T(1) - sg);
      return;
    }
    case kSilu: {
      const T sg = sigmoid(x);
      phi = x * sg;
      dphi = sg * (T(1) + x * (T(1) - sg));
      return;
    }
    case kSoftplus: {
      const T bx = param * x;
      if (bx > T(20)) {
        phi = x;
        dphi = T(1);
      } else {
        const T e = fexp(bx);
        phi = flog1p(e) / param;
        dphi = e / (T(1) + e);
      }
      return;
    }
    case kElu:
    case kSelu: {
      const T alpha = id == kElu ? param : SeluConstants<T>::alpha;
      const T scale = id == kElu ? T(1) : SeluConstants<T>::scale;
      if (x > T(0)) {
        phi = scale * x;
        dphi = scale;
      } else {
        const T e = fexp(x);
        phi = scale * alpha * (e - T(1));
        dphi = scale * alpha * e;
      }
      return;
    }
    default:
      phi = activation(id, param, x);
      dphi = activation_derivative(id, param, x);
      return;
  }
}

// Closed form for phi(x) = a min(x, 0) + b max(x, 0) (ReLU, LeakyReLU, Abs,
// identity). With theta the angle between u and v (cos theta = q12 / sqrt(q11 q22))
// and s = sqrt(q11 q22 - q12^2) = sqrt(q11 q22) sin theta:
//   E[phi phi]   = ((a^2 + b^2)(s + (pi - theta) q12) - 2ab (s - theta q12)) / (2 pi)
//   E[phi' phi'] = ((a^2 + b^2)(pi - theta) + 2ab theta) / (2 pi)
// Branch-free and finite for zero variances.
template <typename T>
TNTK_HD void abrelu_expectations(T a, T b, T q11, T q22, T q12, T& e_phi, T& e_dphi) {
  const T prod = q11 * q22;
  const T norm = fsqrt(prod);
  // Zero variance: theta = 0, the convention of atan2(0, 0) used by the Python oracle.
  const T rho = norm > T(0) ? q12 / norm : T(1);
  // (norm - q12)(norm + q12) rather than prod - q12^2: exactly zero when q12 = norm,
  // even where the compiler contracts the product into a fused multiply-add.
  const T s = fsqrt(max0((norm - q12) * (norm + q12)));
  // theta from (cos, sin) as atan2 would: for nearly parallel inputs theta must agree with
  // s, or s - theta q12 loses its O(theta^3) cancellation and deeper layers amplify it.
  const T theta = angle_from_cos_sin(rho, norm > T(0) ? s / norm : T(0));
  const T sq = a * a + b * b;
  const T ab2 = T(2) * a * b;
  e_phi = (sq * (s + (Constants<T>::pi - theta) * q12) - ab2 * (s - theta * q12)) *
          Constants<T>::inv_two_pi;
  e_dphi = (sq * (Constants<T>::pi - theta) + ab2 * theta) * Constants<T>::inv_two_pi;
}

// Closed form for phi = erf (Williams 1997):
//   E[phi phi]   = (2/pi) asin(2 q12 / sqrt((1 + 2 q11)(1 + 2 q22)))
//   E[phi' phi'] = (4/pi) / sqrt((1 + 2 q11)(1 + 2 q22) - 4 q12^2)
template <typename T>
TNTK_HD void erf_expectations(T q11, T q22, T q12, T& e_phi, T& e_dphi) {
  const T d = (T(1) + T(2) * q11) * (T(1) + T(2) * q22);
  e_phi = T(2) * Constants<T>::inv_pi * asin_fast(T(2) * q12 / fsqrt(d));
  // d - 4 q12^2 >= 1 by Cauchy-Schwarz, so the root is never of a negative number.
  e_dphi = T(4) * Constants<T>::inv_pi / fsqrt(d - T(4) * q12 * q12);
}

}  // namespace math
}  // namespace torch_ntk
