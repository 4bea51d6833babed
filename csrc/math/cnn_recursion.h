// The infinite-width CNN recursion (Arora et al. 2019, Novak et al. 2019), one pair at a time.
//
// A pair (x, x') of images carries two position-position planes: Sigma_{p,p'}, the
// covariance of the current features at positions p of x and p' of x', and Theta_{p,p'},
// their NTK. The planes are "full" (P x P entries, row p, column p') or "diagonal" (the
// P entries p = p' only, enough when no pooling precedes the readout: the tap average A
// maps diagonal entries from diagonal entries only). Layers, on the planes of the pair:
//
//   input:      Sigma_{p,p'} = (1/C0) sum_c x_{c,p} x'_{c,p'},   Theta = 0
//   CONV:       Sigma' = sw2 A(Sigma) + sb2,   Theta' = tw A(Sigma) + tb + sw2 A(Theta)
//               A(M)_{p,p'} = (1/|Q|) sum_q M_{s p + d q - pad, s p' + d q - pad}
//               (0 outside the image with zero padding, wrapped with circular)
//   ACTIVATION: Sigma <- E[phi(u) phi(v)],   Theta <- E[phi'(u) phi'(v)] Theta   (entrywise)
//               with Var u = Sigma(x, x)_{p,p}, Var v = Sigma(x', x')_{p',p'}, Cov = Sigma_{p,p'}
//   AVGPOOL:    block averages over both indices (full planes only)
//   GLOBAL_AVGPOOL: the scalar (1/P^2) sum_{p,p'};  FLATTEN: the scalar (1/P) sum_p (.)_{p,p}
//   DENSE:      a CONV with a 1 x 1 kernel on the 1 x 1 "image" of a scalar.
// After an ACTIVATION the planes hold the covariance and NTK of the activations, so a
// linear layer directly after another one (no activation between) reads Sigma and Theta
// as they are (K = Sigma, Kdot = 1).
//
// The per-sample variances Sigma(x, x)_{p,p} entering each activation come from the
// same pass run on the pair (x, x) (a "self" pass), which records them.
//
// Every step takes a Team: the threads sharing one pair's planes. The CPU runs a pair on
// one thread (begin 0, step 1, sync a no-op, Team::kSerial true); a CUDA block splits each
// plane over its threads and synchronizes between steps (kSerial false).
#pragma once

#include <cstdint>

#include "activations.h"
#include "cnn_graph.h"
#include "hostdevice.h"
#include "plane_cursor.h"
#include "quadrature.h"
#include "recursion.h"

namespace torch_ntk {
namespace math {

// Layer codes of the cnn_kernels program (csrc/torch_ntk.cpp).
enum CnnCode : int {
  kCnnConv = 0,
  kCnnActivation = 1,
  kCnnAvgPool = 2,
  kCnnGlobalAvgPool = 3,
  kCnnFlatten = 4,
  kCnnDense = 5,
  kCnnPush = 6,            // the graph steps: csrc/math/cnn_graph.h
  kCnnLoad = 7,
  kCnnJoin = 8,
  kCnnLayerNorm = 9,
  kCnnAvgPoolPad = 10,
  kCnnGlobalSumPool = 11,
  kCnnNumCodes = 12,
};

// One layer of a validated program, with the geometry of its input and output (a
// scalar is a 1 x 1 image). DENSE is stored as a 1 x 1 CONV on a 1 x 1 image.
template <typename T>
struct CnnLayer {
  int code;
  int h_in, w_in, h_out, w_out;
  int kh, kw, sh, sw, dh, dw;  // CONV and AVGPOOL (dilation 1 for pools)
  int ph, pw;                  // CONV: padding before the first row / column
  int circular;                // CONV: 1 circular padding, 0 zeros
  int64_t var_offset;          // ACTIVATION, LAYERNORM: where its variances sit in a row
  int slot;                    // PUSH, LOAD, JOIN: the skip register
  int mode;                    // LAYERNORM: over (0 per position, 1 position mean);
                               // AVGPOOL_PAD: count_include_pad
  int affine;                  // LAYERNORM: 1 with a trained gain and bias; ACTIVATION: 1
                               // right after one (cnn_gain_term)
  T coef, coef_slot, eps;      // JOIN: Sigma <- coef Sigma + coef_slot Sigma_slot; LAYERNORM eps
  HiddenLayer<T> act;          // ACTIVATION: act, kind, param, slopes (weights unused);
                               // CONV/DENSE: weight_var, bias_var, ntk_weight, ntk_bias
};

template <typename T>
struct CnnProgram {
  const CnnLayer<T>* layers;
  int num_layers;
  bool full;         // full P x P planes, or diagonal planes of P entries
  int c0, h0, w0;    // input channels and image size
  int64_t plane;     // entries of the largest plane (max P^2 full, max P diagonal)
  int64_t var_len;   // stride of a sample's variance row (>= sum of P_in over activations)
  int num_slots;     // skip registers in use (2 planes each after the 4 working planes)
  GaussHermite<T> gh;
};

// Entries of a plane over P positions.
TNTK_HD int64_t cnn_plane_size(bool full, int64_t positions) {
  return full ? positions * positions : positions;
}

// Index of (p, p') in a plane: diagonal planes hold only p = p'.
TNTK_HD int64_t cnn_index(bool full, int64_t positions, int64_t p, int64_t pp) {
  return full ? p * positions + pp : p;
}

// Row (or column) of an input position read by output position `out` and tap `tap`:
// -1 when it falls in the zero padding.
TNTK_HD int cnn_source(int out, int tap, int stride, int dilation, int pad, int size,
                       int circular) {
  int i = out * stride + tap * dilation - pad;
  if (i >= 0 && i < size) return i;
  if (!circular) return -1;
  i %= size;
  return i < 0 ? i + size : i;
}

// Input planes of the pair (x, xp), each [C0, H0 * W0].
template <typename T, typename Team>
TNTK_HD void cnn_input(const CnnProgram<T>& prog, const Team& team, const T* x, const T* xp,
                       T* sigma, T* theta) {
  const int64_t P = static_cast<int64_t>(prog.h0) * prog.w0;
  const T inv_c = T(1) / T(prog.c0);
  for (PlaneCursor cur(prog.full, P, team.begin(), team.step()); cur.valid(); cur.next()) {
    const int64_t e = cur.offset();
    T acc = T(0);
    for (int c = 0; c < prog.c0; ++c) acc += x[c * P + cur.p] * xp[c * P + cur.pp];
    sigma[e] = acc * inv_c;
    theta[e] = T(0);
  }
}

// The last step of a CONV on one entry: sums of the taps' Sigma and Theta in, the
// layer's Sigma' and Theta' out.
template <typename T>
TNTK_HD void cnn_conv_finish(const HiddenLayer<T>& c, T inv_taps, T sum_s, T sum_t, T& sigma,
                             T& theta) {
  const T a_sigma = sum_s * inv_taps;
  sigma = c.weight_var * a_sigma + c.bias_var;
  theta = c.ntk_weight * a_sigma + c.ntk_bias + c.weight_var * (sum_t * inv_taps);
}

// CONV (and DENSE): out = the layer applied to the planes in, one entry per team thread
// (the CUDA path for the CONVs that cnn_conv_is_separable refuses, and every DENSE).
// The taps in the order of cnn_conv_rows: qh outer, qw inner.
template <typename T, typename Team>
TNTK_HD void cnn_conv_entries(const CnnProgram<T>& prog, const CnnLayer<T>& L, const Team& team,
                              const T* sigma_in, const T* theta_in, T* sigma_out,
                              T* theta_out) {
  const int64_t p_in = static_cast<int64_t>(L.h_in) * L.w_in;
  const T inv_taps = T(1) / T(L.kh * L.kw);
  for (ImageCursor cur(prog.full, L.h_out, L.w_out, team.begin(), team.step()); cur.valid();
       cur.next()) {
    T acc_s = T(0), acc_t = T(0);
    for (int qh = 0; qh < L.kh; ++qh) {
      const int r = cnn_source(cur.a, qh, L.sh, L.dh, L.ph, L.h_in, L.circular);
      const int r2 = cnn_source(cur.a2, qh, L.sh, L.dh, L.ph, L.h_in, L.circular);
      if (r < 0 || r2 < 0) continue;
      for (int qw = 0; qw < L.kw; ++qw) {
        const int s = cnn_source(cur.b, qw, L.sw, L.dw, L.pw, L.w_in, L.circular);
        const int s2 = cnn_source(cur.b2, qw, L.sw, L.dw, L.pw, L.w_in, L.circular);
        if (s < 0 || s2 < 0) continue;
        const int64_t k = cnn_index(prog.full, p_in, static_cast<int64_t>(r) * L.w_in + s,
                                    static_cast<int64_t>(r2) * L.w_in + s2);
        acc_s += sigma_in[k];
        acc_t += theta_in[k];
      }
    }
    const int64_t e = cur.offset();
    cnn_conv_finish(L.act, inv_taps, acc_s, acc_t, sigma_out[e], theta_out[e]);
  }
}

// Whether a CONV runs by separable taps (cnn_conv_separable on one thread,
// cnn_conv_separable_team on a team): full planes, more than one tap, at most 64 columns of
// taps (cnn_conv_separable's local arrays), and the temporary [h_in w_out]^2 plane within a
// working plane (cnn_spec.h sizes prog.plane so that it is for every CONV). One rule for
// both, so the CPU and the GPU form the same sums.
template <typename T>
TNTK_HD bool cnn_conv_is_separable(const CnnProgram<T>& prog, const CnnLayer<T>& L) {
  const int64_t tmp_side = static_cast<int64_t>(L.h_in) * L.w_out;
  return prog.full && L.kw <= 64 && L.kh * L.kw > 1 && tmp_side * tmp_side <= prog.plane;
}

// The W step of the separable CONV on one entry of the temporary plane:
//   Tmp_{(r,b),(r2,b2)} = sum_qw M_{(r, s(b,qw)), (r2, s(b2,qw))},
// the taps qw in increasing order, those reading the zero padding of either side skipped:
// the sums cnn_conv_separable's row loops form (it adds tap qw to the columns b2 of
// cnn_tap_range, which are those whose source is inside).
template <typename T>
TNTK_HD void cnn_separable_w_entry(const CnnLayer<T>& L, int64_t p_in, const T* sigma_in,
                                   const T* theta_in, int r, int b, int r2, int b2, T& out_s,
                                   T& out_t) {
  const int64_t row = static_cast<int64_t>(r) * L.w_in;
  const int64_t row2 = static_cast<int64_t>(r2) * L.w_in;
  T acc_s = T(0), acc_t = T(0);
  for (int qw = 0; qw < L.kw; ++qw) {
    const int s = cnn_source(b, qw, L.sw, L.dw, L.pw, L.w_in, L.circular);
    const int s2 = cnn_source(b2, qw, L.sw, L.dw, L.pw, L.w_in, L.circular);
    if (s < 0 || s2 < 0) continue;
    const int64_t k = (row + s) * p_in + row2 + s2;
    acc_s += sigma_in[k];
    acc_t += theta_in[k];
  }
  out_s = acc_s;
  out_t = acc_t;
}

// The H step of the separable CONV on one output entry, then the layer's finish:
//   out_{(a,b),(a2,b2)} = finish(sum_qh Tmp_{(r(a,qh), b), (r(a2,qh), b2)}),
// the taps qh in increasing order (cnn_conv_separable's H step; tmp_side = h_in w_out).
template <typename T>
TNTK_HD void cnn_separable_h_entry(const CnnLayer<T>& L, int64_t tmp_side, T inv_taps,
                                   const T* tmp_s, const T* tmp_t, int a, int b, int a2, int b2,
                                   T& out_s, T& out_t) {
  T acc_s = T(0), acc_t = T(0);
  for (int qh = 0; qh < L.kh; ++qh) {
    const int r = cnn_source(a, qh, L.sh, L.dh, L.ph, L.h_in, L.circular);
    const int r2 = cnn_source(a2, qh, L.sh, L.dh, L.ph, L.h_in, L.circular);
    if (r < 0 || r2 < 0) continue;
    const int64_t k = (static_cast<int64_t>(r) * L.w_out + b) * tmp_side +
                      static_cast<int64_t>(r2) * L.w_out + b2;
    acc_s += tmp_s[k];
    acc_t += tmp_t[k];
  }
  cnn_conv_finish(L.act, inv_taps, acc_s, acc_t, out_s, out_t);
}

// CONV on full planes by separable taps, for a team (the CUDA path): the two steps of
// cnn_conv_separable (below) one entry per team thread, with a barrier between them, so
// that every entry gets the same sums in the same order as on the CPU (kh + kw adds per
// entry instead of kh kw). Tmp [h_in w_out]^2 goes to tmp_*, the result to out_* (which
// may be the input planes: the H step reads Tmp only).
template <typename T, typename Team>
TNTK_HD void cnn_conv_separable_team(const CnnLayer<T>& L, const Team& team, const T* sigma_in,
                                     const T* theta_in, T* tmp_s, T* tmp_t, T* sigma_out,
                                     T* theta_out) {
  const int64_t p_in = static_cast<int64_t>(L.h_in) * L.w_in;
  const int64_t tmp_side = static_cast<int64_t>(L.h_in) * L.w_out;
  for (ImageCursor cur(true, L.h_in, L.w_out, team.begin(), team.step()); cur.valid();
       cur.next()) {
    const int64_t e = cur.offset();
    cnn_separable_w_entry(L, p_in, sigma_in, theta_in, cur.a, cur.b, cur.a2, cur.b2, tmp_s[e],
                          tmp_t[e]);
  }
  team.sync();
  const T inv_taps = T(1) / T(L.kh * L.kw);
  for (ImageCursor cur(true, L.h_out, L.w_out, team.begin(), team.step()); cur.valid();
       cur.next()) {
    const int64_t e = cur.offset();
    cnn_separable_h_entry(L, tmp_side, inv_taps, tmp_s, tmp_t, cur.a, cur.b, cur.a2, cur.b2,
                          sigma_out[e], theta_out[e]);
  }
}

// The output columns [lo, hi) of n_out whose tap reads inside an input of `size` under
// zero padding (column b reads b * stride + tap * dilation - pad); all of them when
// circular (wrapped reads).
TNTK_HD void cnn_tap_range(int tap, int stride, int dilation, int pad, int size, int n_out,
                           int circular, int& lo, int& hi) {
  if (circular) {
    lo = 0;
    hi = n_out;
    return;
  }
  const int off = tap * dilation - pad;
  lo = off >= 0 ? 0 : (-off + stride - 1) / stride;
  hi = size - 1 - off < 0 ? 0 : (size - 1 - off) / stride + 1;
  if (hi > n_out) hi = n_out;
  if (lo > hi) lo = hi;
}

// out[b] += in[source(b)] for the output columns b of one row that tap qw reads inside
// the input row `in` (two planes at once): a contiguous, vectorizable loop for stride 1.
template <typename T>
TNTK_HD void cnn_add_row(const CnnLayer<T>& L, int qw, int lo, int hi, const T* in_s,
                         const T* in_t, T* out_s, T* out_t) {
  if (L.circular) {
    for (int b = 0; b < L.w_out; ++b) {
      const int s = cnn_source(b, qw, L.sw, L.dw, L.pw, L.w_in, 1);
      out_s[b] += in_s[s];
      out_t[b] += in_t[s];
    }
    return;
  }
  const int off = qw * L.dw - L.pw;
  if (L.sw == 1) {
    const T* src_s = in_s + off;
    const T* src_t = in_t + off;
    for (int b = lo; b < hi; ++b) {
      out_s[b] += src_s[b];
      out_t[b] += src_t[b];
    }
  } else {
    for (int b = lo; b < hi; ++b) {
      out_s[b] += in_s[b * L.sw + off];
      out_t[b] += in_t[b * L.sw + off];
    }
  }
}

// out += the taps (qh, qw) of one plane row over all output positions: for every output
// row a2 whose tap row is inside, cnn_add_row on the input row it reads. in_* point at
// the input plane's row (full planes: the row of the first position's source), out_* at
// the output plane's row.
template <typename T>
TNTK_HD void cnn_add_tap(const CnnLayer<T>& L, int qh, int qw, const T* in_s, const T* in_t,
                         T* out_s, T* out_t) {
  int lo, hi;
  cnn_tap_range(qw, L.sw, L.dw, L.pw, L.w_in, L.w_out, L.circular, lo, hi);
  for (int a2 = 0; a2 < L.h_out; ++a2) {
    const int r2 = cnn_source(a2, qh, L.sh, L.dh, L.ph, L.h_in, L.circular);
    if (r2 < 0) continue;
    cnn_add_row(L, qw, lo, hi, in_s + static_cast<int64_t>(r2) * L.w_in,
                in_t + static_cast<int64_t>(r2) * L.w_in, out_s + static_cast<int64_t>(a2) * L.w_out,
                out_t + static_cast<int64_t>(a2) * L.w_out);
  }
}

// CONV (and DENSE) by plane rows, for a team of one thread (the CPU path): the same sums
// as cnn_conv_entries in the same order of taps, with the source indices found once per
// (row, tap) and the inner loops running over contiguous columns p'. Full planes: for
// each output row p and tap q, row p of out gathers row source(p, q) of in at the
// columns source(p', q); diagonal planes: entry p gathers in[source(p, q)].
template <typename T>
TNTK_HD void cnn_conv_rows(const CnnProgram<T>& prog, const CnnLayer<T>& L, const T* sigma_in,
                           const T* theta_in, T* sigma_out, T* theta_out) {
  const int64_t p_in = static_cast<int64_t>(L.h_in) * L.w_in;
  const int64_t p_out = static_cast<int64_t>(L.h_out) * L.w_out;
  const int64_t rows = prog.full ? p_out : 1;
  const T inv_taps = T(1) / T(L.kh * L.kw);
  for (int64_t p = 0; p < rows; ++p) {
    T* out_s = sigma_out + p * (prog.full ? p_out : 0);
    T* out_t = theta_out + p * (prog.full ? p_out : 0);
    for (int64_t e = 0; e < p_out; ++e) out_s[e] = out_t[e] = T(0);
    const int a = static_cast<int>(p / L.w_out), b = static_cast<int>(p % L.w_out);
    for (int qh = 0; qh < L.kh; ++qh) {
      const int r = prog.full ? cnn_source(a, qh, L.sh, L.dh, L.ph, L.h_in, L.circular) : 0;
      if (r < 0) continue;
      for (int qw = 0; qw < L.kw; ++qw) {
        const int s = prog.full ? cnn_source(b, qw, L.sw, L.dw, L.pw, L.w_in, L.circular) : 0;
        if (s < 0) continue;
        const int64_t row = prog.full ? (static_cast<int64_t>(r) * L.w_in + s) * p_in : 0;
        cnn_add_tap(L, qh, qw, sigma_in + row, theta_in + row, out_s, out_t);
      }
    }
    for (int64_t e = 0; e < p_out; ++e) {
      cnn_conv_finish(L.act, inv_taps, out_s[e], out_t[e], out_s[e], out_t[e]);
    }
  }
}

// CONV on full planes by separable taps, for a team of one thread (the CPU path). The sum
// over taps (qh, qw) of A factors, as padding and strides act on rows and columns apart:
//   W step:  Tmp_{(r,b),(r2,b2)} = sum_qw M_{(r, s(b,qw)), (r2, s(b2,qw))}
//            over every input row pair (r, r2) and output column pair (b, b2);
//   H step:  out_{(a,b),(a2,b2)} = sum_qh Tmp_{(r(a,qh), b), (r(a2,qh), b2)}
// (kh + kw adds per entry instead of kh kw). Tmp, a [h_in w_out]^2 plane, is written into
// tmp_*, and the result into out_* (which may be the input planes: the H step reads Tmp
// only). For stride 1 and zero padding the H step's inner loop runs over whole contiguous
// blocks of rows a2 of the output row.
template <typename T>
TNTK_HD void cnn_conv_separable(const CnnLayer<T>& L, const T* sigma_in, const T* theta_in,
                                T* tmp_s, T* tmp_t, T* sigma_out, T* theta_out) {
  const int64_t p_in = static_cast<int64_t>(L.h_in) * L.w_in;
  const int64_t p_out = static_cast<int64_t>(L.h_out) * L.w_out;
  const int64_t tmp_row = static_cast<int64_t>(L.h_in) * L.w_out;
  int lo_w[64], hi_w[64];  // per tap qw (kw <= 64 is checked by the caller)
  for (int qw = 0; qw < L.kw; ++qw) {
    cnn_tap_range(qw, L.sw, L.dw, L.pw, L.w_in, L.w_out, L.circular, lo_w[qw], hi_w[qw]);
  }
  for (int r = 0; r < L.h_in; ++r) {
    for (int b = 0; b < L.w_out; ++b) {
      T* ts = tmp_s + (static_cast<int64_t>(r) * L.w_out + b) * tmp_row;
      T* tt = tmp_t + (static_cast<int64_t>(r) * L.w_out + b) * tmp_row;
      for (int64_t e = 0; e < tmp_row; ++e) ts[e] = tt[e] = T(0);
      for (int qw = 0; qw < L.kw; ++qw) {
        const int s = cnn_source(b, qw, L.sw, L.dw, L.pw, L.w_in, L.circular);
        if (s < 0) continue;
        const int64_t row = (static_cast<int64_t>(r) * L.w_in + s) * p_in;
        for (int r2 = 0; r2 < L.h_in; ++r2) {
          cnn_add_row(L, qw, lo_w[qw], hi_w[qw], sigma_in + row + static_cast<int64_t>(r2) * L.w_in,
                      theta_in + row + static_cast<int64_t>(r2) * L.w_in,
                      ts + static_cast<int64_t>(r2) * L.w_out, tt + static_cast<int64_t>(r2) * L.w_out);
        }
      }
    }
  }
  const T inv_taps = T(1) / T(L.kh * L.kw);
  const bool contiguous = L.sh == 1 && !L.circular;
  for (int a = 0; a < L.h_out; ++a) {
    for (int b = 0; b < L.w_out; ++b) {
      T* out_s = sigma_out + (static_cast<int64_t>(a) * L.w_out + b) * p_out;
      T* out_t = theta_out + (static_cast<int64_t>(a) * L.w_out + b) * p_out;
      for (int64_t e = 0; e < p_out; ++e) out_s[e] = out_t[e] = T(0);
      for (int qh = 0; qh < L.kh; ++qh) {
        const int r = cnn_source(a, qh, L.sh, L.dh, L.ph, L.h_in, L.circular);
        if (r < 0) continue;
        const T* ts = tmp_s + (static_cast<int64_t>(r) * L.w_out + b) * tmp_row;
        const T* tt = tmp_t + (static_cast<int64_t>(r) * L.w_out + b) * tmp_row;
        if (contiguous) {
          int lo, hi;
          cnn_tap_range(qh, 1, L.dh, L.ph, L.h_in, L.h_out, 0, lo, hi);
          const int64_t off = static_cast<int64_t>(qh * L.dh - L.ph) * L.w_out;
          const int64_t end = static_cast<int64_t>(hi) * L.w_out;
          for (int64_t e = static_cast<int64_t>(lo) * L.w_out; e < end; ++e) {
            out_s[e] += ts[e + off];
            out_t[e] += tt[e + off];
          }
        } else {
          for (int a2 = 0; a2 < L.h_out; ++a2) {
            const int r2 = cnn_source(a2, qh, L.sh, L.dh, L.ph, L.h_in, L.circular);
            if (r2 < 0) continue;
            const T* src_s = ts + static_cast<int64_t>(r2) * L.w_out;
            const T* src_t = tt + static_cast<int64_t>(r2) * L.w_out;
            T* dst_s = out_s + static_cast<int64_t>(a2) * L.w_out;
            T* dst_t = out_t + static_cast<int64_t>(a2) * L.w_out;
            for (int b2 = 0; b2 < L.w_out; ++b2) {
              dst_s[b2] += src_s[b2];
              dst_t[b2] += src_t[b2];
            }
          }
        }
      }
      for (int64_t e = 0; e < p_out; ++e) {
        cnn_conv_finish(L.act, inv_taps, out_s[e], out_t[e], out_s[e], out_t[e]);
      }
    }
  }
}

// CONV (and DENSE): the layer applied to the planes (sigma, theta). Returns true when the
// result is in (sigma_next, theta_next), false when it was written back into (sigma,
// theta). cnn_conv_is_separable decides, alike for both: separable taps
// (cnn_conv_separable on one thread, cnn_conv_separable_team on a team; Tmp in the next
// planes, the result back in sigma, theta), else the taps of every entry (cnn_conv_rows on
// one thread, cnn_conv_entries on a team).
template <typename T, typename Team>
TNTK_HD bool cnn_conv(const CnnProgram<T>& prog, const CnnLayer<T>& L, const Team& team,
                      T* sigma, T* theta, T* sigma_next, T* theta_next) {
  const bool separable = cnn_conv_is_separable(prog, L);
  // Team::kSerial selects the path at compile time, so the one-thread paths (with their
  // local arrays) are not compiled into the CUDA kernel.
  if constexpr (!Team::kSerial) {
    if (separable) {
      cnn_conv_separable_team(L, team, sigma, theta, sigma_next, theta_next, sigma, theta);
      return false;
    }
    cnn_conv_entries(prog, L, team, sigma, theta, sigma_next, theta_next);
    return true;
  } else {
    if (separable) {
      cnn_conv_separable(L, sigma, theta, sigma_next, theta_next, sigma, theta);
      return false;
    }
    cnn_conv_rows(prog, L, sigma, theta, sigma_next, theta_next);
    return true;
  }
}

// The expectations of one activation kind, as a functor for cnn_activation_rows.
template <typename T>
struct AbReluExpectations {
  T a, b;
  TNTK_HD void operator()(T q11, T q22, T q12, T& e_phi, T& e_dphi) const {
    abrelu_expectations(a, b, q11, q22, q12, e_phi, e_dphi);
  }
};

template <typename T>
struct ErfExpectations {
  TNTK_HD void operator()(T q11, T q22, T q12, T& e_phi, T& e_dphi) const {
    erf_expectations(q11, q22, q12, e_phi, e_dphi);
  }
};

template <typename T>
struct LayerExpectations {
  const HiddenLayer<T>& layer;
  const GaussHermite<T>& gh;
  TNTK_HD void operator()(T q11, T q22, T q12, T& e_phi, T& e_dphi) const {
    layer_expectations(layer, gh, q11, q22, q12, e_phi, e_dphi);
  }
};

// ACTIVATION by plane rows for a team of one thread (the CPU path): the kind is chosen
// once per layer, so that the closed forms' inner loop over a row's columns is one
// branch-free body the compiler can vectorize.
template <typename T, typename Expect>
TNTK_HD void cnn_activation_rows(bool full, int64_t P, const T* var1, const T* var2, T* sigma,
                                 T* theta, const Expect& expect) {
  if (!full) {
    for (int64_t c = 0; c < P; ++c) {
      T e_phi, e_dphi;
      expect(var1[c], var2[c], sigma[c], e_phi, e_dphi);
      sigma[c] = e_phi;
      theta[c] = e_dphi * theta[c];
    }
    return;
  }
  for (int64_t p = 0; p < P; ++p) {
    T* s_row = sigma + p * P;
    T* t_row = theta + p * P;
    const T v1 = var1[p];
    for (int64_t c = 0; c < P; ++c) {
      T e_phi, e_dphi;
      expect(v1, var2[c], s_row[c], e_phi, e_dphi);
      s_row[c] = e_phi;
      t_row[c] = e_dphi * t_row[c];
    }
  }
}

// ACTIVATION, in place; var1 [P] and var2 [P] are the variances of x and x'.
template <typename T, typename Team>
TNTK_HD void cnn_activation(const CnnProgram<T>& prog, const CnnLayer<T>& L, const Team& team,
                            const T* var1, const T* var2, T* sigma, T* theta) {
  const int64_t P = static_cast<int64_t>(L.h_in) * L.w_in;
  if constexpr (Team::kSerial) {
    switch (L.act.kind) {
      case kAbRelu:
        cnn_activation_rows(prog.full, P, var1, var2, sigma, theta,
                            AbReluExpectations<T>{L.act.slope_neg, L.act.slope_pos});
        return;
      case kErfClosed:
        cnn_activation_rows(prog.full, P, var1, var2, sigma, theta, ErfExpectations<T>{});
        return;
      default:
        cnn_activation_rows(prog.full, P, var1, var2, sigma, theta,
                            LayerExpectations<T>{L.act, prog.gh});
        return;
    }
  }
  for (PlaneCursor cur(prog.full, P, team.begin(), team.step()); cur.valid(); cur.next()) {
    const int64_t e = cur.offset();
    T e_phi, e_dphi;
    layer_expectations(L.act, prog.gh, var1[cur.p], var2[cur.pp], sigma[e], e_phi, e_dphi);
    sigma[e] = e_phi;
    theta[e] = e_dphi * theta[e];
  }
}

// Copies the diagonal Sigma_{p,p} of a self pass into the variance row `var` [P].
template <typename T, typename Team>
TNTK_HD void cnn_record_variances(const CnnProgram<T>& prog, const CnnLayer<T>& L,
                                  const Team& team, const T* sigma, T* var) {
  const int64_t P = static_cast<int64_t>(L.h_in) * L.w_in;
  for (int64_t p = team.begin(); p < P; p += team.step()) {
    var[p] = sigma[cnn_index(prog.full, P, p, p)];
  }
}

// AVGPOOL (full planes): block averages over both indices, out = pool(in).
template <typename T, typename Team>
TNTK_HD void cnn_avgpool(const CnnLayer<T>& L, const Team& team, const T* sigma_in,
                         const T* theta_in, T* sigma_out, T* theta_out) {
  const int64_t p_in = static_cast<int64_t>(L.h_in) * L.w_in;
  const T inv = T(1) / (T(L.kh * L.kw) * T(L.kh * L.kw));
  for (ImageCursor cur(true, L.h_out, L.w_out, team.begin(), team.step()); cur.valid();
       cur.next()) {
    const int64_t e = cur.offset();
    const int a = cur.a * L.sh, b = cur.b * L.sw;
    const int a2 = cur.a2 * L.sh, b2 = cur.b2 * L.sw;
    T acc_s = T(0), acc_t = T(0);
    for (int i = 0; i < L.kh; ++i) {
      for (int j = 0; j < L.kw; ++j) {
        const int64_t row = (static_cast<int64_t>(a + i) * L.w_in + (b + j)) * p_in;
        for (int i2 = 0; i2 < L.kh; ++i2) {
          for (int j2 = 0; j2 < L.kw; ++j2) {
            const int64_t k = row + static_cast<int64_t>(a2 + i2) * L.w_in + (b2 + j2);
            acc_s += sigma_in[k];
            acc_t += theta_in[k];
          }
        }
      }
    }
    sigma_out[e] = acc_s * inv;
    theta_out[e] = acc_t * inv;
  }
}

// GLOBAL_AVGPOOL (mean over all entries) or FLATTEN (mean over the diagonal): the scalars
// of the next DENSE, written to sigma_out[0] and theta_out[0]. Team::sum2 adds the
// partial sums of all threads and gives every thread the totals.
template <typename T, typename Team>
TNTK_HD void cnn_reduce(const CnnProgram<T>& prog, const CnnLayer<T>& L, const Team& team,
                        const T* sigma_in, const T* theta_in, T* sigma_out, T* theta_out) {
  const int64_t P = static_cast<int64_t>(L.h_in) * L.w_in;
  const bool all = L.code == kCnnGlobalAvgPool || L.code == kCnnGlobalSumPool;
  const int64_t n = all ? P * P : P;
  const T divisor = L.code == kCnnGlobalSumPool ? T(1) : T(n);
  T acc_s = T(0), acc_t = T(0);
  for (int64_t e = team.begin(); e < n; e += team.step()) {
    const int64_t k = all ? e : cnn_index(prog.full, P, e, e);
    acc_s += sigma_in[k];
    acc_t += theta_in[k];
  }
  team.sum2(acc_s, acc_t);
  if (team.begin() == 0) {
    sigma_out[0] = acc_s / divisor;
    theta_out[0] = acc_t / divisor;
  }
}

// The pair (i, j) at row-major index k of the upper triangle j >= i of an n x n matrix
// (row i starts at index i n - i (i - 1) / 2): the pairs of x2 = None.
TNTK_HD void upper_triangle_pair(int64_t n, int64_t k, int64_t& i, int64_t& j) {
  const double b = 2.0 * static_cast<double>(n) + 1.0;
  i = static_cast<int64_t>((b - sqrt(b * b - 8.0 * static_cast<double>(k))) / 2.0);
  i = i < 0 ? 0 : (i > n - 1 ? n - 1 : i);
  while (i > 0 && i * n - i * (i - 1) / 2 > k) --i;
  while (i + 1 < n && (i + 1) * n - (i + 1) * i / 2 <= k) ++i;
  j = i + (k - (i * n - i * (i - 1) / 2));
}

// Runs the whole program on the pair (x, xp) [C0, H0 * W0] and returns its NNGP and NTK.
// scratch holds cnn_scratch_len(prog.plane, prog.num_slots) entries (the working planes,
// then the skip registers). var1/var2 are the samples' variance rows; a self
// pass (x = xp) passes var_out, into which it records them (var1 = var2 = var_out).
template <typename T, typename Team>
TNTK_HD void cnn_pair(const CnnProgram<T>& prog, const Team& team, const T* x, const T* xp,
                      const T* var1, const T* var2, T* var_out, T* scratch, T& nngp, T& ntk) {
  T* sigma = scratch;
  T* theta = scratch + prog.plane;
  T* sigma_next = scratch + 2 * prog.plane;
  T* theta_next = scratch + 3 * prog.plane;
  cnn_input(prog, team, x, xp, sigma, theta);
  team.sync();
  for (int l = 0; l < prog.num_layers; ++l) {
    const CnnLayer<T>& L = prog.layers[l];
    bool swap = true;
    switch (L.code) {
      case kCnnConv:
      case kCnnDense:
        swap = cnn_conv(prog, L, team, sigma, theta, sigma_next, theta_next);
        break;
      case kCnnActivation:
        if (L.affine) cnn_gain_term(prog, L, team, T(-1), sigma, theta);
        if (var_out != nullptr) {
          cnn_record_variances(prog, L, team, sigma, var_out + L.var_offset);
          team.sync();
          cnn_activation(prog, L, team, var_out + L.var_offset, var_out + L.var_offset, sigma,
                         theta);
        } else {
          cnn_activation(prog, L, team, var1 + L.var_offset, var2 + L.var_offset, sigma, theta);
        }
        if (L.affine) cnn_gain_term(prog, L, team, T(1), sigma, theta);
        swap = false;
        break;
      case kCnnAvgPool:
        cnn_avgpool(L, team, sigma, theta, sigma_next, theta_next);
        break;
      case kCnnAvgPoolPad:
        cnn_avgpool_padded(L, team, sigma, theta, sigma_next, theta_next);
        break;
      case kCnnPush:
      case kCnnLoad: {
        T* slot_s = cnn_slot_sigma(scratch, prog.plane, L.slot);
        T* slot_t = slot_s + prog.plane;
        const int64_t n = cnn_plane_size(prog.full, static_cast<int64_t>(L.h_in) * L.w_in);
        if (L.code == kCnnPush) {
          cnn_copy_planes(team, n, sigma, theta, slot_s, slot_t);
        } else {
          cnn_copy_planes(team, n, static_cast<const T*>(slot_s), static_cast<const T*>(slot_t),
                          sigma, theta);
        }
        swap = false;
        break;
      }
      case kCnnJoin: {
        const T* slot_s = cnn_slot_sigma(scratch, prog.plane, L.slot);
        const int64_t n = cnn_plane_size(prog.full, static_cast<int64_t>(L.h_in) * L.w_in);
        cnn_join(team, n, L.coef, L.coef_slot, slot_s, slot_s + prog.plane, sigma, theta);
        swap = false;
        break;
      }
      case kCnnLayerNorm: {
        const int64_t P = static_cast<int64_t>(L.h_in) * L.w_in;
        if (var_out != nullptr) {
          cnn_layernorm_record(prog.full, P, L.mode, team, sigma, var_out + L.var_offset);
          team.sync();
          cnn_layernorm(prog.full, P, L.mode, L.affine, L.eps, team, var_out + L.var_offset,
                        var_out + L.var_offset, sigma, theta);
        } else {
          cnn_layernorm(prog.full, P, L.mode, L.affine, L.eps, team, var1 + L.var_offset,
                        var2 + L.var_offset, sigma, theta);
        }
        swap = false;
        break;
      }
      default:  // kCnnGlobalAvgPool, kCnnGlobalSumPool, kCnnFlatten
        cnn_reduce(prog, L, team, sigma, theta, sigma_next, theta_next);
        break;
    }
    if (swap) {
      T* t = sigma; sigma = sigma_next; sigma_next = t;
      t = theta; theta = theta_next; theta_next = t;
    }
    team.sync();
  }
  nngp = sigma[0];
  ntk = theta[0];
}

}  // namespace math
}  // namespace torch_ntk
