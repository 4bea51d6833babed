// Branch-free arcsine and arccosine accurate to the rounding of float and double.
//
// libm's acos/atan2 are scalar calls that stop the compiler from vectorizing the
// per-pair loop on the CPU. These versions use only +, *, sqrt and selects, so
// the loop over a tile of pairs vectorizes, and the very same arithmetic runs on
// the GPU: nvcc compiles it with IEEE sqrt and division and without flush-to-zero
// (setup.py has no --use_fast_math; scripts/ptx_check.sh fails on sqrt.approx or
// div.approx in the float32 kernels). Results may still differ in the last bits where
// one compiler contracts a*b+c into an FMA and the other does not.
//
// Method: for |x| <= 1/2, asin(x) = x + x^3 R(x^2) with R a polynomial fitted
// (Chebyshev interpolation of (asin(sqrt z) - sqrt z) / z^{3/2} on [0, 1/4],
// computed with 50-digit mpmath, degree 4 for float and 13 for double; maximal
// relative error 1e-9 and 2.2e-16). For |x| > 1/2 the half-angle identity
// asin(x) = pi/2 - 2 asin(sqrt((1 - x) / 2)) maps the argument back into [0, 1/2],
// which also keeps acos accurate near x = +-1.
#pragma once

#include "hostdevice.h"

namespace torch_ntk {
namespace math {

template <typename T>
struct AsinPoly;

template <>
struct AsinPoly<float> {
  static TNTK_HD float eval(float z) {
    return 0.16666672764698376f +
           z * (0.074988091757698244f +
                z * (0.045010700055694207f +
                     z * (0.026494276786952858f + z * 0.038206452064484725f)));
  }
};

template <>
struct AsinPoly<double> {
  static TNTK_HD double eval(double z) {
    double p = 0.034198430799902181;
    p = p * z - 0.025873983405512384;
    p = p * z + 0.023709819068331247;
    p = p * z + 0.0015748862253520388;
    p = p * z + 0.009638560122506969;
    p = p * z + 0.0095793384249948186;
    p = p * z + 0.011569536370754276;
    p = p * z + 0.013963748634851976;
    p = p * z + 0.017352801040519578;
    p = p * z + 0.022372158921537225;
    p = p * z + 0.03038194441139002;
    p = p * z + 0.044642857143947563;
    p = p * z + 0.074999999999988409;
    p = p * z + 0.16666666666666669;
    return p;
  }
};

// asin(a) for a in [0, 1/2].
template <typename T>
TNTK_HD T asin_small(T a) {
  const T z = a * a;
  return a + a * z * AsinPoly<T>::eval(z);
}

// Reduction shared by asin and acos: for a = |x| in [0, 1] returns p and sets
// `big` so that asin(a) = big ? pi/2 - 2p : p.
template <typename T>
TNTK_HD T asin_reduced(T a, bool& big) {
  big = a > T(0.5);
  const T s = big ? fsqrt(max0((T(1) - a) * T(0.5))) : a;
  return asin_small(s);
}

// asin(x) for x in [-1, 1]; arguments outside are clamped.
template <typename T>
TNTK_HD T asin_fast(T x) {
  x = clamp(x, T(-1), T(1));
  const T a = x < T(0) ? -x : x;
  bool big;
  const T p = asin_reduced(a, big);
  const T r = big ? Constants<T>::half_pi - T(2) * p : p;
  return x < T(0) ? -r : r;
}

// acos(x) for x in [-1, 1]; arguments outside are clamped.
template <typename T>
TNTK_HD T acos_fast(T x) {
  x = clamp(x, T(-1), T(1));
  const T a = x < T(0) ? -x : x;
  bool big;
  const T p = asin_reduced(a, big);
  const T acos_a = big ? T(2) * p : Constants<T>::half_pi - p;
  return x < T(0) ? Constants<T>::pi - acos_a : acos_a;
}

// The angle theta in [0, pi] with cos theta = c and sin theta = s >= 0 (c^2 + s^2 ~ 1),
// like atan2(s, c): the better-conditioned of the two is inverted (asin of the sine
// when |c| > 1/sqrt(2)), so theta stays consistent with s for nearly parallel vectors.
template <typename T>
TNTK_HD T angle_from_cos_sin(T c, T s) {
  const bool use_sin = c * c > T(0.5);
  const T a = asin_fast(use_sin ? s : c);
  const T from_sin = c > T(0) ? a : Constants<T>::pi - a;
  return use_sin ? from_sin : Constants<T>::half_pi - a;
}

}  // namespace math
}  // namespace torch_ntk
