// Dual activations by Hermite series (Daniely et al. 2016), for the smooth activations
// without a closed form (tanh, sigmoid, SiLU, GELU in both forms, softplus).
//
// With h_k = He_k / sqrt(k!) (orthonormal under N(0, 1)) and, per sample, its variance q:
//   a_k(q) = E[phi(sqrt(q) z) h_k(z)],   b_k(q) = E[phi'(sqrt(q) z) h_k(z)],   z ~ N(0, 1),
// Mehler's formula gives, for rho = q12 / sqrt(q11 q22),
//   E[phi(u) phi(v)]   = sum_k a_k(q11) a_k(q22) rho^k,
//   E[phi'(u) phi'(v)] = sum_k b_k(q11) b_k(q22) rho^k.
// Per pair: two length-K polynomials in rho (Horner; no transcendental calls). Truncated
// after K terms, the error is bounded by Cauchy-Schwarz:
//   |sum_{k>=K} a_k a'_k rho^k| <= |rho|^K t_K(q11) t_K(q22),  t_K(q)^2 = E[phi^2] - sum_{k<K} a_k^2.
// With relative tails r_K = t_K / sqrt(E[phi^2]) the pair's relative error (against the
// Cauchy-Schwarz scale sqrt(E[phi(u)^2] E[phi(v)^2])) is at most r_K(q11) r_K(q22) |rho|^K.
//
// The coefficients come from a 1-D composite Gauss-Legendre rule in z on [-13, 13] (the
// weight e^{-z^2/4} left after |h_k(z)| e^{-z^2/4} <= 1.09 is below 6e-19 outside), 16 nodes
// per panel: panels of width min(1, 1/(c sqrt(q))) on |z| < 16 min(1, 1/(c sqrt(q))), where
// phi(sqrt(q) z) turns (c: the activation's inverse length scale, its poles lie at distance
// >= ~1/c from the real axis), and width 1 outside. Accurate to ~1e-15 for q <= 1e4.
#pragma once

#include <cstdint>

#include "activations.h"
#include "hostdevice.h"

namespace torch_ntk {
namespace math {

constexpr int kHermiteMaxTerms = 128;  // K_max
constexpr int kHermiteStep = 8;       // K is a multiple of this
constexpr int kHermiteCheckpoints = kHermiteMaxTerms / kHermiteStep;

// sqrt(k) for k = 0 .. kHermiteMaxTerms, the recurrence coefficients of h_k: correctly
// rounded doubles (Python's repr of math.sqrt(k), equal to sqrt(double(k)) in IEEE
// arithmetic; tests/test_hermite.py checks every entry). A table read at the same k by
// every thread: in constant memory on the GPU (a broadcast, no per-thread array on the
// stack), a static array on the host.
#define TNTK_HERMITE_SQRT_K { \
    0.0, 1.0, 1.4142135623730951, 1.7320508075688772, 2.0, 2.23606797749979, \
    2.449489742783178, 2.6457513110645907, 2.8284271247461903, 3.0, 3.1622776601683795, \
    3.3166247903554, 3.4641016151377544, 3.605551275463989, 3.7416573867739413, \
    3.872983346207417, 4.0, 4.123105625617661, 4.242640687119285, 4.358898943540674, \
    4.47213595499958, 4.58257569495584, 4.69041575982343, 4.795831523312719, \
    4.898979485566356, 5.0, 5.0990195135927845, 5.196152422706632, 5.291502622129181, \
    5.385164807134504, 5.477225575051661, 5.5677643628300215, 5.656854249492381, \
    5.744562646538029, 5.830951894845301, 5.916079783099616, 6.0, 6.082762530298219, \
    6.164414002968976, 6.244997998398398, 6.324555320336759, 6.4031242374328485, \
    6.48074069840786, 6.557438524302, 6.6332495807108, 6.708203932499369, 6.782329983125268, \
    6.855654600401044, 6.928203230275509, 7.0, 7.0710678118654755, 7.14142842854285, \
    7.211102550927978, 7.280109889280518, 7.3484692283495345, 7.416198487095663, \
    7.483314773547883, 7.54983443527075, 7.615773105863909, 7.681145747868608, \
    7.745966692414834, 7.810249675906654, 7.874007874011811, 7.937253933193772, 8.0, \
    8.06225774829855, 8.12403840463596, 8.18535277187245, 8.246211251235321, \
    8.306623862918075, 8.366600265340756, 8.426149773176359, 8.48528137423857, \
    8.54400374531753, 8.602325267042627, 8.660254037844387, 8.717797887081348, \
    8.774964387392123, 8.831760866327848, 8.888194417315589, 8.94427190999916, 9.0, \
    9.055385138137417, 9.1104335791443, 9.16515138991168, 9.219544457292887, \
    9.273618495495704, 9.327379053088816, 9.38083151964686, 9.433981132056603, \
    9.486832980505138, 9.539392014169456, 9.591663046625438, 9.643650760992955, \
    9.695359714832659, 9.746794344808963, 9.797958971132712, 9.848857801796104, \
    9.899494936611665, 9.9498743710662, 10.0, 10.04987562112089, 10.099504938362077, \
    10.14889156509222, 10.198039027185569, 10.246950765959598, 10.295630140987, \
    10.344080432788601, 10.392304845413264, 10.44030650891055, 10.488088481701515, \
    10.535653752852738, 10.583005244258363, 10.63014581273465, 10.677078252031311, \
    10.723805294763608, 10.770329614269007, 10.816653826391969, 10.862780491200215, \
    10.908712114635714, 10.954451150103322, 11.0, 11.045361017187261, 11.090536506409418, \
    11.135528725660043, 11.180339887498949, 11.224972160321824, 11.269427669584644, \
    11.313708498984761, }
#ifdef __CUDACC__
static __constant__ double kHermiteSqrtKDevice[kHermiteMaxTerms + 1] = TNTK_HERMITE_SQRT_K;
#endif
static constexpr double kHermiteSqrtKHost[kHermiteMaxTerms + 1] = TNTK_HERMITE_SQRT_K;
#undef TNTK_HERMITE_SQRT_K

TNTK_HD double hermite_sqrt_k(int k) {
#ifdef __CUDA_ARCH__
  return kHermiteSqrtKDevice[k];
#else
  return kHermiteSqrtKHost[k];
#endif
}

// Gauss-Legendre nodes per group in hermite_panel: the recurrence runs over a panel's 16
// nodes in two groups of 8, so a thread keeps 5 x 8 values of the recurrence live instead
// of 5 x 16 (on the GPU: ~80 fewer registers in double).
constexpr int kHermiteNodeGroup = 8;

// Whether the activation's expectations use the series (its phi and phi' are analytic).
TNTK_HD bool hermite_series_applies(int id) {
  return id == kTanh || id == kSigmoid || id == kSilu || id == kGelu || id == kSoftplus;
}

// The relative truncation tolerance of the series in the dtype T (the pair's error against
// the Cauchy-Schwarz scale); pairs whose bound exceeds it use 2-D quadrature instead.
template <typename T>
struct HermiteTolerance;
template <>
struct HermiteTolerance<float> {
  static constexpr double value = 1e-7;
};
template <>
struct HermiteTolerance<double> {
  static constexpr double value = 1e-11;
};

// The terms computed per sample in the dtype T (float: the tolerance 1e-7 is met by fewer).
template <typename T>
struct HermiteTerms {
  static constexpr int value = kHermiteMaxTerms;
};
template <>
struct HermiteTerms<float> {
  static constexpr int value = kHermiteMaxTerms / 2;
};

// The inverse length scale c of phi (see the header comment).
template <typename T>
TNTK_HD T hermite_scale(int id, T param) {
  switch (id) {
    case kSoftplus: return param;  // poles at i pi / beta
    case kSigmoid:
    case kSilu: return T(0.5);     // poles at i pi
    default: return T(1);          // tanh (i pi / 2), GELU
  }
}

// The panels of the 1-D rule in z for an integrand that turns on the scale 1/cs (see the
// header comment): 2m panels of width h around 0, then width-1 panels out to +-13.
template <typename T>
struct Panels {
  T h, reach;  // inner width, inner reach m h
  int m, outer;

  TNTK_HD explicit Panels(T cs) {
    const T zmax = T(13);
    h = cs > T(1) ? T(1) / cs : T(1);
    const int need = static_cast<int>(fceil(zmax / h));
    m = need < 16 ? need : 16;
    reach = T(m) * h;
    outer = reach < zmax ? static_cast<int>(fceil(zmax - reach)) : 0;
  }
  TNTK_HD int count() const { return 2 * m + 2 * outer; }
  TNTK_HD void get(int p, T& lo, T& hi) const {
    if (p < 2 * m) {
      lo = T(p - m) * h;
      hi = lo + h;
      return;
    }
    const int k = (p - 2 * m) / 2;
    const T e = reach + T(k);
    const T f = e + T(1) < T(13) ? e + T(1) : T(13);
    const bool neg = (p - 2 * m) % 2 == 1;
    lo = neg ? -f : e;
    hi = neg ? -e : f;
  }
};

// The positive nodes and their weights of the 16-point Gauss-Legendre rule on [-1, 1]:
// in constant memory on the GPU (every thread of a warp reads the same node), a static
// array on the host; before, a local array per call (128 bytes of stack in every kernel
// that integrates).
#define TNTK_GL16_X {0.09501250983763744, 0.2816035507792589, 0.45801677765722737, \
                     0.6178762444026438,  0.755404408355003,  0.8656312023878318,  \
                     0.9445750230732326,  0.9894009349916499}
#define TNTK_GL16_W {0.18945061045506864, 0.18260341504492364, 0.16915651939500265, \
                     0.1495959888165767,  0.12462897125553407, 0.0951585116824926,  \
                     0.062253523938647456, 0.027152459411754176}
#ifdef __CUDACC__
static __constant__ double kGaussLegendre16XDevice[8] = TNTK_GL16_X;
static __constant__ double kGaussLegendre16WDevice[8] = TNTK_GL16_W;
#endif
static constexpr double kGaussLegendre16XHost[8] = TNTK_GL16_X;
static constexpr double kGaussLegendre16WHost[8] = TNTK_GL16_W;
#undef TNTK_GL16_X
#undef TNTK_GL16_W

// Gauss-Legendre node n < 16 of [lo, hi]: position and weight.
template <typename T>
TNTK_HD void gauss_legendre16(T lo, T hi, int n, T& z, T& w) {
  const int m = n < 8 ? 7 - n : n - 8;
#ifdef __CUDA_ARCH__
  const T x = T(kGaussLegendre16XDevice[m]), wm = T(kGaussLegendre16WDevice[m]);
#else
  const T x = T(kGaussLegendre16XHost[m]), wm = T(kGaussLegendre16WHost[m]);
#endif
  const T half = T(0.5) * (hi - lo), mid = T(0.5) * (hi + lo);
  z = mid + half * (n < 8 ? -x : x);
  w = half * wm;
}

// One panel [lo, hi] of the 1-D rule: adds w phi h_k and w phi' h_k to a[k stride] and
// b[k stride] (k < kmax) and w phi^2, w phi'^2 to the norms. The 16 nodes in groups of
// kHermiteNodeGroup, each group's sums added to a[k], b[k] in turn.
template <typename T>
TNTK_HD void hermite_panel(int id, T param, T sq, T lo, T hi, int kmax, T* a, T* b,
                           int64_t stride, T& norm_a2, T& norm_b2) {
  constexpr int G = kHermiteNodeGroup;
  for (int g0 = 0; g0 < 16; g0 += G) {
    T z[G], fw[G], dw[G], hm[G], hc[G];
    for (int n = 0; n < G; ++n) {
      T w;
      gauss_legendre16(lo, hi, g0 + n, z[n], w);
      const T wz = w * Constants<T>::inv_sqrt_two_pi * fexp(T(-0.5) * z[n] * z[n]);
      T phi, dphi;
      activation_and_derivative(id, param, sq * z[n], phi, dphi);
      fw[n] = wz * phi;
      dw[n] = wz * dphi;
      norm_a2 += fw[n] * phi;
      norm_b2 += dw[n] * dphi;
      hm[n] = T(1);
      hc[n] = z[n];
    }
    T sa = T(0), sb = T(0);
    for (int n = 0; n < G; ++n) {
      sa += fw[n];
      sb += dw[n];
    }
    a[0] += sa;
    b[0] += sb;
    for (int k = 1; k < kmax; ++k) {
      // hc = h_k; afterwards h_{k+1} = (z h_k - sqrt(k) h_{k-1}) / sqrt(k + 1).
      T ak = T(0), bk = T(0);
      for (int n = 0; n < G; ++n) {
        ak += fw[n] * hc[n];
        bk += dw[n] * hc[n];
      }
      a[k * stride] += ak;
      b[k * stride] += bk;
      const T sqrt_k = T(hermite_sqrt_k(k));
      const T inv_next = T(1) / T(hermite_sqrt_k(k + 1));
      for (int n = 0; n < G; ++n) {
        const T next = (z[n] * hc[n] - sqrt_k * hm[n]) * inv_next;
        hm[n] = hc[n];
        hc[n] = next;
      }
    }
  }
}

// a_k(q), b_k(q) for k < kmax (<= kHermiteMaxTerms) into a[k stride], b[k stride],
// E[phi(sqrt(q) z)^2] and E[phi'(sqrt(q) z)^2], all by the 1-D rule of the header comment.
template <typename T>
TNTK_HD void hermite_coefficients(int id, T param, T q, int kmax, T* a, T* b, int64_t stride,
                                  T& norm_a2, T& norm_b2) {
  for (int k = 0; k < kmax; ++k) a[k * stride] = b[k * stride] = T(0);
  norm_a2 = norm_b2 = T(0);
  const T sq = fsqrt(max0(q));
  const Panels<T> panels(hermite_scale(id, param) * sq);
  for (int p = 0; p < panels.count(); ++p) {
    T lo, hi;
    panels.get(p, lo, hi);
    hermite_panel(id, param, sq, lo, hi, kmax, a, b, stride, norm_a2, norm_b2);
  }
}

// E[phi(u) phi(v)] and E[phi'(u) phi'(v)] by a 2-D composite Gauss-Legendre rule: the
// panels of the 1-D rule for z1 (u = sqrt(q11) z1), and for z2 at each z1 those of the
// conditional v | z1 = sqrt(q22) (rho z1 + sqrt(1 - rho^2) z2), on its own scale (a single
// point when |rho| = 1). Accurate to ~1e-13 for smooth phi at any rho and q <= 1e4 where
// 2-D Gauss-Hermite is not (phi(sqrt(q) z) turns faster than its nodes are spaced), at
// ~4 10^5 evaluations of phi: the fallback for the pairs the series does not cover.
template <typename T>
TNTK_HD void composite_expectations(int id, T param, T q11, T q22, T q12, T& e_phi,
                                    T& e_dphi) {
  const T c = hermite_scale(id, param);
  const T s1 = fsqrt(max0(q11)), s2 = fsqrt(max0(q22));
  const T norm = s1 * s2;
  const T rho = norm > T(0) ? clamp(q12 / norm, T(-1), T(1)) : T(0);
  const T b = s2 * fsqrt(max0((T(1) - rho) * (T(1) + rho)));  // std of v given z1
  const Panels<T> outer(c * s1), inner(c * b);
  T acc = T(0), acc_d = T(0);
  for (int p = 0; p < outer.count(); ++p) {
    T lo, hi;
    outer.get(p, lo, hi);
    for (int n = 0; n < 16; ++n) {
      T z1, w1;
      gauss_legendre16(lo, hi, n, z1, w1);
      w1 *= Constants<T>::inv_sqrt_two_pi * fexp(T(-0.5) * z1 * z1);
      T fu, dfu;
      activation_and_derivative(id, param, s1 * z1, fu, dfu);
      const T center = s2 * rho * z1;
      T g = T(0), dg = T(0);
      if (b > T(0)) {
        for (int pp = 0; pp < inner.count(); ++pp) {
          T lo2, hi2;
          inner.get(pp, lo2, hi2);
          for (int nn = 0; nn < 16; ++nn) {
            T z2, w2;
            gauss_legendre16(lo2, hi2, nn, z2, w2);
            w2 *= Constants<T>::inv_sqrt_two_pi * fexp(T(-0.5) * z2 * z2);
            T fv, dfv;
            activation_and_derivative(id, param, center + b * z2, fv, dfv);
            g += w2 * fv;
            dg += w2 * dfv;
          }
        }
      } else {
        activation_and_derivative(id, param, center, g, dg);
      }
      acc += w1 * fu * g;
      acc_d += w1 * dfu * dg;
    }
  }
  e_phi = acc;
  e_dphi = acc_d;
}

// Where one sample's series tables go: per hidden layer l, a[(l K_max + k) n + s],
// b likewise, E[phi^2] and E[phi'^2] at na[l n + s], nb[l n + s], and the relative tails
// r_K of a and b at K = kHermiteStep (c + 1) in tails[((l 2 + 0|1) C + c) n + s].
template <typename T>
struct HermiteSampleTables {
  T* a;
  T* b;
  T* na;
  T* nb;
  double* tails;
};

// The series tables of sample s at variance q for hidden layer l (computed in double),
// the coefficients accumulated in work_a[k work_stride], work_b[k work_stride] (k <
// HermiteTerms<T>): on the GPU a column of a [K, n] table in global memory (the output
// table itself for T = double), so that no thread keeps 2 K doubles on its stack and the
// threads of a warp touch adjacent addresses; then the second pass over them writes the
// T tables and the tails. Returns E[phi(sqrt(q) z)^2].
template <typename T>
TNTK_HD double hermite_sample_into(int id, T param, T q, int64_t l, int64_t n, int64_t s,
                                   const HermiteSampleTables<T>& out, double* work_a,
                                   double* work_b, int64_t work_stride) {
  constexpr int kmax = HermiteTerms<T>::value;
  double na, nb;
  hermite_coefficients<double>(id, static_cast<double>(param), static_cast<double>(q), kmax,
                               work_a, work_b, work_stride, na, nb);
  double ca = 0, cb = 0;
  for (int k = 0; k < kmax; ++k) {
    const double ak = work_a[k * work_stride], bk = work_b[k * work_stride];
    out.a[(l * kHermiteMaxTerms + k) * n + s] = static_cast<T>(ak);
    out.b[(l * kHermiteMaxTerms + k) * n + s] = static_cast<T>(bk);
    ca += ak * ak;
    cb += bk * bk;
    if ((k + 1) % kHermiteStep == 0) {
      const int c = (k + 1) / kHermiteStep - 1;
      const double ra = na > 0 ? fsqrt(max0(na - ca) / na) : 0.0;
      const double rb = nb > 0 ? fsqrt(max0(nb - cb) / nb) : 0.0;
      out.tails[((l * 2 + 0) * kHermiteCheckpoints + c) * n + s] = ra;
      out.tails[((l * 2 + 1) * kHermiteCheckpoints + c) * n + s] = rb;
    }
  }
  for (int c = kmax / kHermiteStep; c < kHermiteCheckpoints; ++c) {  // not computed: as the last
    for (int ab = 0; ab < 2; ++ab) {
      out.tails[((l * 2 + ab) * kHermiteCheckpoints + c) * n + s] =
          out.tails[((l * 2 + ab) * kHermiteCheckpoints + kmax / kHermiteStep - 1) * n + s];
    }
  }
  out.na[l * n + s] = static_cast<T>(na);
  out.nb[l * n + s] = static_cast<T>(nb);
  return na;
}

// hermite_sample_into with the coefficients on the caller's stack (the CPU: one thread
// per sample, 2 K doubles in its cache).
template <typename T>
TNTK_HD double hermite_sample(int id, T param, T q, int64_t l, int64_t n, int64_t s,
                              const HermiteSampleTables<T>& out) {
  constexpr int kmax = HermiteTerms<T>::value;
  double a[kmax], b[kmax];
  return hermite_sample_into(id, param, q, l, n, s, out, a, b, 1);
}

// One pair's series expectations by Horner in rho, with coefficient k of sample i at
// a1[k * stride1] (and likewise for a2, b1, b2); K terms.
template <typename T>
TNTK_HD void hermite_pair(const T* a1, const T* b1, int64_t stride1, const T* a2, const T* b2,
                          int64_t stride2, int K, T rho, T& e_phi, T& e_dphi) {
  T ea = T(0), eb = T(0);
  for (int k = K - 1; k >= 0; --k) {
    ea = ea * rho + a1[k * stride1] * a2[k * stride2];
    eb = eb * rho + b1[k * stride1] * b2[k * stride2];
  }
  e_phi = ea;
  e_dphi = eb;
}

// rho^K for K a positive multiple of kHermiteStep.
template <typename T>
TNTK_HD T hermite_rho_power(T rho, int K) {
  const T r2 = rho * rho;
  const T r8 = (r2 * r2) * (r2 * r2);
  T p = r8;
  for (int c = kHermiteStep; c < K; c += kHermiteStep) p *= r8;
  return p;
}

}  // namespace math
}  // namespace torch_ntk
