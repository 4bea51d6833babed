// Host/device qualifiers shared by the CPU and CUDA builds.
//
// Everything in csrc/math/ is written once and compiled by both g++ (CPU ops)
// and nvcc (CUDA ops); TNTK_HD expands to `__host__ __device__` under nvcc and
// to a plain forced-inline function for the C++ compiler.
#pragma once

#if defined(__CUDACC__)
#define TNTK_HD __host__ __device__ __forceinline__
#else
#define TNTK_HD inline __attribute__((always_inline))
#endif

#include <cmath>

namespace torch_ntk {
namespace math {

// Overloads that pick the float or double libm/CUDA function, so templates
// never silently promote float arithmetic to double. Under nvcc sqrtf and '/' are the
// IEEE (correctly rounded) instructions because the build has no --use_fast_math, so
// fsqrt(q * q) == q exactly, on which the exact diagonal of the ReLU family rests.
TNTK_HD float fsqrt(float x) { return sqrtf(x); }
TNTK_HD double fsqrt(double x) { return sqrt(x); }
TNTK_HD float fexp(float x) { return expf(x); }
TNTK_HD double fexp(double x) { return exp(x); }
TNTK_HD float flog1p(float x) { return log1pf(x); }
TNTK_HD double flog1p(double x) { return log1p(x); }
TNTK_HD float ftanh(float x) { return tanhf(x); }
TNTK_HD double ftanh(double x) { return tanh(x); }
TNTK_HD float ferf(float x) { return erff(x); }
TNTK_HD double ferf(double x) { return erf(x); }
TNTK_HD float fceil(float x) { return ceilf(x); }
TNTK_HD double fceil(double x) { return ceil(x); }

template <typename T>
TNTK_HD T clamp(T x, T lo, T hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

template <typename T>
TNTK_HD T max0(T x) {
  return x > T(0) ? x : T(0);
}

template <typename T>
struct Constants {
  static constexpr T pi = T(3.14159265358979323846264338327950288);
  static constexpr T half_pi = T(1.57079632679489661923132169163975144);
  static constexpr T inv_pi = T(0.318309886183790671537767526745028724);
  static constexpr T inv_two_pi = T(0.159154943091895335768883763372514362);
  static constexpr T sqrt2 = T(1.41421356237309504880168872420969808);
  static constexpr T inv_sqrt2 = T(0.707106781186547524400844362104849039);
  static constexpr T two_over_sqrt_pi = T(1.12837916709551257389615890312154517);
  static constexpr T inv_sqrt_two_pi = T(0.398942280401432677939946059934381868);
};

}  // namespace math
}  // namespace torch_ntk
