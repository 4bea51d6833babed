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

// Gauss-Legendre node n < 16 of [lo, hi]: position and weight.
template <typename T>
TNTK_HD void gauss_legendre16(T lo, T hi, int n, T& z, T& w) {
  const T gl_x[8] = {0.09501250983763744, 0.2816035507792589, 0.45801677765722737,
                     0.6178762444026438,  0.755404408355003,  0.8656312023878318,
                     0.9445750230732326,  0.9894009349916499};
  const T gl_w[8] = {0.18945061045506864, 0.18260341504492364, 0.16915651939500265,
                     0.1495959888165767,  0.12462897125553407, 0.0951585116824926,
                     0.062253523938647456, 0.027152459411754176};
  const T half = T(0.5) * (hi - lo), mid = T(0.5) * (hi + lo);
  z = mid + half * (n < 8 ? -gl_x[7 - n] : gl_x[n - 8]);
  w = half * (n < 8 ? gl_w[7 - n] : gl_w[n - 8]);
}

// One panel [lo, hi] of the 1-D rule: adds w phi h_k and w phi' h_k to a[k] and b[k]
// (k < kmax) and w phi^2, w phi'^2 to the norms.
template <typename T>
TNTK_HD void hermite_panel(int id, T param, T sq, T lo, T hi, int kmax, const T* sqrt_k,
                           T* a, T* b, T& norm_a2, T& norm_b2) {
  T z[16], fw[16], dw[16], hm[16], hc[16];
  for (int n = 0; n < 16; ++n) {
    T w;
    gauss_legendre16(lo, hi, n, z[n], w);
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
  for (int n = 0; n < 16; ++n) {
    sa += fw[n];
    sb += dw[n];
  }
  a[0] += sa;
  b[0] += sb;
  for (int k = 1; k < kmax; ++k) {
    // hc = h_k; afterwards h_{k+1} = (z h_k - sqrt(k) h_{k-1}) / sqrt(k + 1).
    T ak = T(0), bk = T(0);
    for (int n = 0; n < 16; ++n) {
      ak += fw[n] * hc[n];
      bk += dw[n] * hc[n];
    }
    a[k] += ak;
    b[k] += bk;
    const T inv_next = T(1) / sqrt_k[k + 1];
    for (int n = 0; n < 16; ++n) {
      const T next = (z[n] * hc[n] - sqrt_k[k] * hm[n]) * inv_next;
      hm[n] = hc[n];
      hc[n] = next;
    }
  }
}

// a_k(q), b_k(q) for k < kmax (<= kHermiteMaxTerms), E[phi(sqrt(q) z)^2] and
// E[phi'(sqrt(q) z)^2], all by the 1-D rule of the header comment.
template <typename T>
TNTK_HD void hermite_coefficients(int id, T param, T q, int kmax, T* a, T* b, T& norm_a2,
                                  T& norm_b2) {
  T sqrt_k[kHermiteMaxTerms + 1];
  for (int k = 0; k <= kmax; ++k) sqrt_k[k] = fsqrt(T(k));
  for (int k = 0; k < kmax; ++k) a[k] = b[k] = T(0);
  norm_a2 = norm_b2 = T(0);
  const T sq = fsqrt(max0(q));
  const Panels<T> panels(hermite_scale(id, param) * sq);
  for (int p = 0; p < panels.count(); ++p) {
    T lo, hi;
    panels.get(p, lo, hi);
    hermite_panel(id, param, sq, lo, hi, kmax, sqrt_k, a, b, norm_a2, norm_b2);
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

// The series tables of sample s at variance q for hidden layer l (computed in double).
// Returns E[phi(sqrt(q) z)^2].
template <typename T>
TNTK_HD double hermite_sample(int id, T param, T q, int64_t l, int64_t n, int64_t s,
                              const HermiteSampleTables<T>& out) {
  constexpr int kmax = HermiteTerms<T>::value;
  double a[kmax], b[kmax], na, nb;
  hermite_coefficients<double>(id, static_cast<double>(param), static_cast<double>(q), kmax, a,
                               b, na, nb);
  double ca = 0, cb = 0;
  for (int k = 0; k < kmax; ++k) {
    out.a[(l * kHermiteMaxTerms + k) * n + s] = static_cast<T>(a[k]);
    out.b[(l * kHermiteMaxTerms + k) * n + s] = static_cast<T>(b[k]);
    ca += a[k] * a[k];
    cb += b[k] * b[k];
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
