// The graph steps of the cnn_kernels program: skip registers, LayerNorm, padded average
// pooling (csrc/math/cnn_recursion.h for the planes and the chain steps).
//
// A DAG of layers runs as one program over the pair's current planes (Sigma, Theta) and
// up to kCnnMaxSlots skip registers, each holding a copy of a pair of planes:
//
//   PUSH s:       slot s <- (Sigma, Theta)              (the state at a fork)
//   LOAD s:       (Sigma, Theta) <- slot s              (start another branch at the fork)
//   JOIN s, a, b: Sigma <- a Sigma + b Sigma_s,  Theta <- a Theta + b Theta_s
//                 (z = c1 u + c2 v of independent branches: a = c1^2, b = c2^2; a concat
//                 of widths w1, w2: a = w1 / (w1 + w2), b = w2 / (w1 + w2))
//   LAYERNORM:    Sigma_{p,p'} <- Sigma_{p,p'} / sqrt((q_p(x) + eps) (q_p'(x') + eps))
//                 Theta_{p,p'} <- Theta_{p,p'} / sqrt(...) [+ Sigma'_{p,p'} + 1 if affine]
//                 with q_p(x) = Sigma(x, x)_{p,p} (over = 0: per position, LayerNorm over
//                 the channels or an MLP's features) or its mean over the positions
//                 (over = 1: GroupNorm(1, C), over channels and positions), recorded by
//                 the self pass like an activation's variances; 0 / 0 (q = eps = 0) is 0,
//                 the limit eps -> 0+ of a zero feature vector.
//   AVGPOOL_PAD:  AVGPOOL with zero padding (ph, pw): out_{p,p'} = sum over the valid
//                 positions i of window p and j of window p' of in_{i,j} / (n_p n_p'),
//                 n_p = kh kw (count_include_pad) or the valid positions of window p.
//   GLOBAL_SUMPOOL: the scalar sum_{p,p'} (cnn_reduce).
// An ACTIVATION right after an affine LAYERNORM (flagged by the plan) sees the gain's NTK
// term u u' (whose mean is Sigma): Theta <- E[phi'phi'] (Theta - Sigma) + E[phi phi], exact
// for the positively homogeneous activations (phi'(u) u = phi(u)): cnn_gain_term
// subtracts Sigma before the activation and adds the new Sigma after it.
#pragma once

#include <cstdint>

#include "hostdevice.h"
#include "plane_cursor.h"

namespace torch_ntk {
namespace math {

constexpr int kCnnMaxSlots = 8;

// Where slot s keeps its planes in the pair's scratch (after the 4 working planes).
template <typename T>
TNTK_HD T* cnn_slot_sigma(T* scratch, int64_t plane, int slot) {
  return scratch + (4 + 2 * static_cast<int64_t>(slot)) * plane;
}

// Entries of one pair's scratch: 4 working planes and 2 per slot.
TNTK_HD int64_t cnn_scratch_len(int64_t plane, int num_slots) {
  return (4 + 2 * static_cast<int64_t>(num_slots)) * plane;
}

// dst <- src for both planes of n entries (PUSH, LOAD).
template <typename T, typename Team>
TNTK_HD void cnn_copy_planes(const Team& team, int64_t n, const T* src_s, const T* src_t,
                             T* dst_s, T* dst_t) {
  for (int64_t e = team.begin(); e < n; e += team.step()) {
    dst_s[e] = src_s[e];
    dst_t[e] = src_t[e];
  }
}

// Theta += sign Sigma over the layer's plane (the gain term around an ACTIVATION).
template <typename T, typename Prog, typename Layer, typename Team>
TNTK_HD void cnn_gain_term(const Prog& prog, const Layer& L, const Team& team, T sign,
                           const T* sigma, T* theta) {
  const int64_t P = static_cast<int64_t>(L.h_in) * L.w_in;
  const int64_t n = prog.full ? P * P : P;
  team.sync();
  for (int64_t e = team.begin(); e < n; e += team.step()) theta[e] += sign * sigma[e];
  team.sync();
}

// JOIN: (sigma, theta) <- a (sigma, theta) + b (slot planes), n entries.
template <typename T, typename Team>
TNTK_HD void cnn_join(const Team& team, int64_t n, T a, T b, const T* slot_s, const T* slot_t,
                      T* sigma, T* theta) {
  for (int64_t e = team.begin(); e < n; e += team.step()) {
    sigma[e] = a * sigma[e] + b * slot_s[e];
    theta[e] = a * theta[e] + b * slot_t[e];
  }
}

// LAYERNORM, per position (over = 0): a self pass records q_p = Sigma_{p,p} into `var_out`
// [P]; over = 1 records their mean into var_out[0]. Team::sum2 adds the threads' sums.
template <typename T, typename Team>
TNTK_HD void cnn_layernorm_record(bool full, int64_t P, int over, const Team& team,
                                  const T* sigma, T* var_out) {
  if (over == 0) {
    for (int64_t p = team.begin(); p < P; p += team.step()) {
      var_out[p] = sigma[full ? p * P + p : p];
    }
    return;
  }
  T acc = T(0), unused = T(0);
  for (int64_t p = team.begin(); p < P; p += team.step()) acc += sigma[full ? p * P + p : p];
  team.sum2(acc, unused);
  if (team.begin() == 0) var_out[0] = acc / T(P);
}

// 1 / sqrt((q1 + eps) (q2 + eps)), 0 where the product is 0.
template <typename T>
TNTK_HD T cnn_layernorm_scale(T q1, T q2, T eps) {
  const T d = (q1 + eps) * (q2 + eps);
  return d > T(0) ? T(1) / fsqrt(d) : T(0);
}

// LAYERNORM on the planes, in place; var1, var2: the recorded q of x and x' ([P] for
// over = 0, [1] for over = 1).
template <typename T, typename Team>
TNTK_HD void cnn_layernorm(bool full, int64_t P, int over, int affine, T eps, const Team& team,
                           const T* var1, const T* var2, T* sigma, T* theta) {
  for (PlaneCursor cur(full, P, team.begin(), team.step()); cur.valid(); cur.next()) {
    const int64_t e = cur.offset();
    const T s = cnn_layernorm_scale(var1[over == 0 ? cur.p : 0], var2[over == 0 ? cur.pp : 0],
                                    eps);
    sigma[e] *= s;
    theta[e] = theta[e] * s + (affine ? sigma[e] + T(1) : T(0));
  }
}

// The valid input rows [lo, hi) of pooling window `out` (start out * stride - pad), and
// its divisor: the window's size (count_include_pad) or its valid rows.
TNTK_HD void cnn_pad_window(int out, int k, int stride, int pad, int size, int include_pad,
                            int& lo, int& hi, int& count) {
  const int start = out * stride - pad;
  lo = start < 0 ? 0 : start;
  hi = start + k > size ? size : start + k;
  count = include_pad ? k : hi - lo;
}

// AVGPOOL_PAD (full planes): out = the padded block averages of in over both indices.
template <typename T, typename Layer, typename Team>
TNTK_HD void cnn_avgpool_padded(const Layer& L, const Team& team, const T* sigma_in,
                                const T* theta_in, T* sigma_out, T* theta_out) {
  const int64_t p_in = static_cast<int64_t>(L.h_in) * L.w_in;
  for (ImageCursor cur(true, L.h_out, L.w_out, team.begin(), team.step()); cur.valid();
       cur.next()) {
    const int64_t e = cur.offset();
    int r0, r1, nr, c0, c1, nc, r0b, r1b, nrb, c0b, c1b, ncb;
    cnn_pad_window(cur.a, L.kh, L.sh, L.ph, L.h_in, L.mode, r0, r1, nr);
    cnn_pad_window(cur.b, L.kw, L.sw, L.pw, L.w_in, L.mode, c0, c1, nc);
    cnn_pad_window(cur.a2, L.kh, L.sh, L.ph, L.h_in, L.mode, r0b, r1b, nrb);
    cnn_pad_window(cur.b2, L.kw, L.sw, L.pw, L.w_in, L.mode, c0b, c1b, ncb);
    T acc_s = T(0), acc_t = T(0);
    for (int i = r0; i < r1; ++i) {
      for (int j = c0; j < c1; ++j) {
        const int64_t row = (static_cast<int64_t>(i) * L.w_in + j) * p_in;
        for (int i2 = r0b; i2 < r1b; ++i2) {
          for (int j2 = c0b; j2 < c1b; ++j2) {
            const int64_t k = row + static_cast<int64_t>(i2) * L.w_in + j2;
            acc_s += sigma_in[k];
            acc_t += theta_in[k];
          }
        }
      }
    }
    const T inv = T(1) / (T(nr * nc) * T(nrb * ncb));
    sigma_out[e] = acc_s * inv;
    theta_out[e] = acc_t * inv;
  }
}

}  // namespace math
}  // namespace torch_ntk
