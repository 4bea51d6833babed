// The backward of the infinite-width CNN recursion (csrc/math/cnn_recursion.h), one pair at
// a time on one thread (the CPU op; a CUDA thread runs the same code on its pair).
//
// The loss is L = sum_ij gN_ij nngp_ij + gT_ij ntk_ij. Per pair (x, x') the forward is rerun
// with a tape: each CONV/DENSE keeps its input planes (Sigma, Theta), each ACTIVATION its
// input planes and E[phi'phi'] (3 planes). Then the adjoints (dL/dSigma, dL/dTheta) sweep
// back through the layers:
//
//   CONV/DENSE   Sigma' = sw2 A(Sigma) + sb2,  Theta' = tw A(Sigma) + tb + sw2 A(Theta):
//                gSigma = sw2 A^T(gSigma') + tw A^T(gTheta'),  gTheta = sw2 A^T(gTheta'),
//                A^T the transposed tap sum (each output entry's adjoint added back to the
//                input entries its taps read, times 1/|Q|); the layer's floats:
//                d sw2 = <Sigma, A^T gSigma'> + <Theta, A^T gTheta'>, d sb2 = sum gSigma',
//                d tw = <Sigma, A^T gTheta'>, d tb = sum gTheta'.
//   ACTIVATION   Sigma' = E(q11, q22, q12), Theta' = Edot(q11, q22, q12) Theta, with
//                q12 = Sigma_{p,p'}, q11 = var(x)_p, q22 = var(x')_p':
//                gTheta = Edot gTheta',  and (gE, gEdot) = (gSigma', gTheta' Theta) give
//                g12 -> gSigma_{p,p'}, g11 -> var(x)_p, g22 -> var(x')_p' by the closed
//                forms (cnn_abrelu_adjoint, cnn_erf_adjoint: Price's theorem, NTK_MATH §9).
//   AVGPOOL      linear: each output entry's adjoint spread over its windows (1/r^4).
//   GLOBAL_AVGPOOL / GLOBAL_SUMPOOL / FLATTEN: the scalar's adjoint over every entry / the
//                diagonal, divided as in the forward.
//   input        Sigma_{p,p'} = (1/C0) sum_c x_{c,p} x'_{c,p'}:
//                gx_{c,p} += (1/C0) sum_p' gSigma_{p,p'} x'_{c,p'}, gx' likewise.
//
// The variances var(x) of an activation come from x's self pass (x, x), where they are the
// diagonal Sigma_{p,p} of the plane entering it. A pair's var adjoints are added to per-sample
// rows; the self pass of each sample is then swept back with those rows as its only input
// ("self" mode: its outputs are unused), the var adjoints of every activation (the row's and
// the self pass's own g11, g22) landing on the diagonal of the plane's adjoint.
//
// Supported layers: CONV, DENSE, ACTIVATION of the ReLU family (identity, relu, leaky_relu,
// abs) and erf in closed form, AVGPOOL, GLOBAL_AVGPOOL, GLOBAL_SUMPOOL, FLATTEN
// (cnn_backward_supports); the graph steps and quadrature activations are refused by the host.
// The ReLU family's conventions are those of torch_ntk.activations._ABReLUDual: where
// s = sqrt(q11 q22 - q12^2) <= 32 sqrt(eps) sqrt(q11 q22) (rho = +-1, a point paired with
// itself) the kink of E[phi'phi'] gets the symmetric subgradient 0; q = 0 gives 0 for the
// q-derivatives.
#pragma once

#include <cstdint>

#include "activations.h"
#include "angles.h"
#include "cnn_recursion.h"
#include "hostdevice.h"

// A sum over a loop that the C++ compiler may vectorize (reassociate): GCC vectorizes no
// floating-point reduction without it (OpenMP's simd reduction, the build has -fopenmp).
// Nothing under nvcc, where each thread's loops run scalar anyway.
#if defined(_OPENMP) && !defined(__CUDACC__)
#define TNTK_BWD_PRAGMA(x) _Pragma(#x)
#define TNTK_SIMD_SUM(...) TNTK_BWD_PRAGMA(omp simd reduction(+ : __VA_ARGS__))
#else
#define TNTK_SIMD_SUM(...)
#endif

namespace torch_ntk {
namespace math {

template <typename T>
struct SqrtEps;
template <>
struct SqrtEps<float> {
  static constexpr float value = 3.4526698300124393e-04f;  // sqrt(2^-23)
};
template <>
struct SqrtEps<double> {
  static constexpr double value = 1.4901161193847656e-08;  // sqrt(2^-52)
};

// Number of per-layer float gradients: weight_var, bias_var, ntk_weight, ntk_bias.
constexpr int kCnnFloatGrads = 4;

// Whether the backward handles layer L.
template <typename T>
TNTK_HD bool cnn_backward_supports(const CnnLayer<T>& L) {
  switch (L.code) {
    case kCnnConv:
    case kCnnDense:
    case kCnnAvgPool:
    case kCnnGlobalAvgPool:
    case kCnnGlobalSumPool:
    case kCnnFlatten:
      return true;
    case kCnnActivation:
      return !L.affine && (L.act.kind == kAbRelu || L.act.kind == kErfClosed);
    default:
      return false;
  }
}

// Entries of layer L's input plane.
template <typename T>
TNTK_HD int64_t cnn_input_plane(const CnnProgram<T>& prog, const CnnLayer<T>& L) {
  return cnn_plane_size(prog.full, static_cast<int64_t>(L.h_in) * L.w_in);
}

// Planes of layer L's input size the tape keeps for it.
template <typename T>
TNTK_HD int cnn_tape_planes(const CnnLayer<T>& L) {
  if (L.code == kCnnActivation) return 3;  // Sigma, Theta, E[phi'phi']
  if (L.code == kCnnConv || L.code == kCnnDense) return 2;  // Sigma, Theta
  return 0;
}

// Entries of one pair's tape.
template <typename T>
TNTK_HD int64_t cnn_tape_len(const CnnProgram<T>& prog) {
  int64_t n = 0;
  for (int l = 0; l < prog.num_layers; ++l) {
    n += cnn_tape_planes(prog.layers[l]) * cnn_input_plane(prog, prog.layers[l]);
  }
  return n;
}

// Entries of one thread's backward scratch: 4 working planes, a row of var adjoints (self
// mode), three rows for cnn_activation_adjoint and the tape.
template <typename T>
TNTK_HD int64_t cnn_backward_scratch_len(const CnnProgram<T>& prog) {
  return 8 * prog.plane + cnn_tape_len(prog);
}

// ---- the activations' adjoints -----------------------------------------------------------

// ReLU family phi = a min(x, 0) + b max(x, 0), c = (b - a)^2, s = sqrt(q11 q22 - q12^2):
//   dE/dq12 = Edot,  dE/dq11 = c s / (4 pi q11),  dEdot/dq12 = c / (2 pi s),
//   dEdot/dq11 = -c q12 / (4 pi q11 s)   (q22 like q11).
// Given the adjoints g_phi of E and g_dphi of Edot, and Edot itself: g11, g22, g12. The
// per-sample factors r = row_factor(q) (here 1/q, 0 for q = 0) are computed once per row
// and column of a plane, so that the entries' loop divides only once (by s).
template <typename T>
struct AbReluAdjoint {
  T a, b;
  TNTK_HD T row_factor(T q) const { return q > T(0) ? T(1) / (q > T(0) ? q : T(1)) : T(0); }
  TNTK_HD void operator()(T q11, T q22, T r11, T r22, T q12, T e_dphi, T g_phi, T g_dphi,
                          T& g11, T& g22, T& g12) const {
    const T c = (b - a) * (b - a);
    const T norm = fsqrt(q11 * q22);
    const T s = fsqrt(max0((norm - q12) * (norm + q12)));
    const bool resolved = s > T(32) * SqrtEps<T>::value * norm;
    const T inv_s = resolved ? T(1) / (resolved ? s : T(1)) : T(0);
    const T gd = g_dphi * c * Constants<T>::inv_two_pi * inv_s;
    const T common = g_phi * c * s * (T(0.5) * Constants<T>::inv_two_pi) - gd * T(0.5) * q12;
    g11 = common * r11;
    g22 = common * r22;
    g12 = g_phi * e_dphi + gd;
  }
};

// erf: d = (1 + 2 q11)(1 + 2 q22), D = d - 4 q12^2, Edot = (4/pi)/sqrt(D):
//   dE/dq12 = Edot, dE/dq11 = -Edot q12 / (1 + 2 q11),
//   dEdot/dq12 = 4 q12 Edot / D, dEdot/dq11 = -(1 + 2 q22) Edot / D.
// row_factor(q) = 1 / (1 + 2 q).
template <typename T>
struct ErfAdjoint {
  TNTK_HD T row_factor(T q) const { return T(1) / (T(1) + T(2) * q); }
  TNTK_HD void operator()(T q11, T q22, T r11, T r22, T q12, T e_dphi, T g_phi, T g_dphi,
                          T& g11, T& g22, T& g12) const {
    const T a1 = T(1) + T(2) * q11, a2 = T(1) + T(2) * q22;
    const T k = g_dphi * e_dphi / (a1 * a2 - T(4) * q12 * q12);
    const T h = g_phi * e_dphi * q12;
    g12 = g_phi * e_dphi + T(4) * q12 * k;
    g11 = -h * r11 - a2 * k;
    g22 = -h * r22 - a1 * k;
  }
};

// ---- forward with a tape -------------------------------------------------------------

// ACTIVATION in place like cnn_activation_rows, keeping E[phi'phi'] in `e_dphi_out`.
template <typename T, typename Expect>
TNTK_HD void cnn_activation_taped(bool full, int64_t P, const T* var1, const T* var2, T* sigma,
                                  T* theta, T* e_dphi_out, const Expect& expect) {
  // one branch-free loop body per plane kind, over distinct buffers (restrict): it vectorizes
  const T* __restrict__ v2 = var2;
  if (!full) {
    const T* __restrict__ v1 = var1;
    T* __restrict__ s_row = sigma;
    T* __restrict__ t_row = theta;
    T* __restrict__ d_row = e_dphi_out;
    for (int64_t c = 0; c < P; ++c) {
      T e_phi, e_dphi;
      expect(v1[c], v2[c], s_row[c], e_phi, e_dphi);
      s_row[c] = e_phi;
      t_row[c] = e_dphi * t_row[c];
      d_row[c] = e_dphi;
    }
    return;
  }
  for (int64_t p = 0; p < P; ++p) {
    T* __restrict__ s_row = sigma + p * P;
    T* __restrict__ t_row = theta + p * P;
    T* __restrict__ d_row = e_dphi_out + p * P;
    const T v1 = var1[p];
    for (int64_t c = 0; c < P; ++c) {
      T e_phi, e_dphi;
      expect(v1, v2[c], s_row[c], e_phi, e_dphi);
      s_row[c] = e_phi;
      t_row[c] = e_dphi * t_row[c];
      d_row[c] = e_dphi;
    }
  }
}

// The pair (x, xp) through the program (as cnn_pair, on one thread) with the variance rows
// var1, var2 given, recording the tape. work: 4 planes. var_out != nullptr: a self pass
// (x = xp) that records its variance row there and uses it (var1, var2 unused). The
// backward takes its variance rows from this function, not from cnn_pair: the ReLU
// family's adjoint at a self pair's diagonal (q11 = q22 = q12, the kink) needs the very
// same roundings on both sides (s = 0 exactly), which another compiled copy of the
// arithmetic (other contractions into fused multiply-adds) does not guarantee.
template <typename T, typename Team>
TNTK_HD void cnn_pair_taped(const CnnProgram<T>& prog, const Team& team, const T* x,
                            const T* xp, const T* var1, const T* var2, T* var_out, T* work,
                            T* tape) {
  T* sigma = work;
  T* theta = work + prog.plane;
  T* sigma_next = work + 2 * prog.plane;
  T* theta_next = work + 3 * prog.plane;
  cnn_input(prog, team, x, xp, sigma, theta);
  int64_t off = 0;
  for (int l = 0; l < prog.num_layers; ++l) {
    const CnnLayer<T>& L = prog.layers[l];
    const int64_t n = cnn_input_plane(prog, L);
    T* tp = tape + off;
    off += cnn_tape_planes(L) * n;
    if (cnn_tape_planes(L) > 0) {
      for (int64_t e = 0; e < n; ++e) {
        tp[e] = sigma[e];
        tp[n + e] = theta[e];
      }
    }
    bool swap = true;
    switch (L.code) {
      case kCnnConv:
      case kCnnDense:
        swap = cnn_conv(prog, L, team, sigma, theta, sigma_next, theta_next);
        break;
      case kCnnActivation: {
        const int64_t P = static_cast<int64_t>(L.h_in) * L.w_in;
        const T* v1 = var1 + L.var_offset;
        const T* v2 = var2 + L.var_offset;
        if (var_out != nullptr) {
          for (int64_t p = 0; p < P; ++p) var_out[L.var_offset + p] = sigma[cnn_index(prog.full, P, p, p)];
          v1 = v2 = var_out + L.var_offset;
        }
        if (L.act.kind == kAbRelu) {
          cnn_activation_taped(prog.full, P, v1, v2, sigma, theta, tp + 2 * n,
                               AbReluExpectations<T>{L.act.slope_neg, L.act.slope_pos});
        } else {
          cnn_activation_taped(prog.full, P, v1, v2, sigma, theta, tp + 2 * n,
                               ErfExpectations<T>{});
        }
        swap = false;
        break;
      }
      case kCnnAvgPool:
        cnn_avgpool(L, team, sigma, theta, sigma_next, theta_next);
        break;
      default:  // kCnnGlobalAvgPool, kCnnGlobalSumPool, kCnnFlatten
        cnn_reduce(prog, L, team, sigma, theta, sigma_next, theta_next);
        break;
    }
    if (swap) {
      T* t = sigma; sigma = sigma_next; sigma_next = t;
      t = theta; theta = theta_next; theta_next = t;
    }
  }
}

// ---- the adjoints of the linear layers ---------------------------------------------------

// in[source(b)] += out[b] over the output columns b of one row that tap qw reads inside the
// input row (two planes at once): the transpose of cnn_add_row.
template <typename T>
TNTK_HD void cnn_add_row_adjoint(const CnnLayer<T>& L, int qw, int lo, int hi, const T* out_s,
                                 const T* out_t, T* in_s, T* in_t) {
  if (L.circular) {
    for (int b = 0; b < L.w_out; ++b) {
      const int s = cnn_source(b, qw, L.sw, L.dw, L.pw, L.w_in, 1);
      in_s[s] += out_s[b];
      in_t[s] += out_t[b];
    }
    return;
  }
  const int off = qw * L.dw - L.pw;
  if (L.sw == 1) {
    T* dst_s = in_s + off;
    T* dst_t = in_t + off;
    for (int b = lo; b < hi; ++b) {
      dst_s[b] += out_s[b];
      dst_t[b] += out_t[b];
    }
  } else {
    for (int b = lo; b < hi; ++b) {
      in_s[b * L.sw + off] += out_s[b];
      in_t[b * L.sw + off] += out_t[b];
    }
  }
}

// The transpose of cnn_add_tap: the output plane row's adjoints back to the input rows.
template <typename T>
TNTK_HD void cnn_add_tap_adjoint(const CnnLayer<T>& L, int qh, int qw, const T* out_s,
                                 const T* out_t, T* in_s, T* in_t) {
  int lo, hi;
  cnn_tap_range(qw, L.sw, L.dw, L.pw, L.w_in, L.w_out, L.circular, lo, hi);
  for (int a2 = 0; a2 < L.h_out; ++a2) {
    const int r2 = cnn_source(a2, qh, L.sh, L.dh, L.ph, L.h_in, L.circular);
    if (r2 < 0) continue;
    cnn_add_row_adjoint(L, qw, lo, hi, out_s + static_cast<int64_t>(a2) * L.w_out,
                        out_t + static_cast<int64_t>(a2) * L.w_out,
                        in_s + static_cast<int64_t>(r2) * L.w_in,
                        in_t + static_cast<int64_t>(r2) * L.w_in);
  }
}

// (in_s, in_t) = |Q| A^T (out_s, out_t): the transpose of cnn_conv_rows' tap sums (without
// the 1/|Q| and the layer's coefficients), input planes zeroed first.
template <typename T>
TNTK_HD void cnn_conv_adjoint(const CnnProgram<T>& prog, const CnnLayer<T>& L, const T* out_s,
                              const T* out_t, T* in_s, T* in_t) {
  const int64_t p_in = static_cast<int64_t>(L.h_in) * L.w_in;
  const int64_t p_out = static_cast<int64_t>(L.h_out) * L.w_out;
  const int64_t n_in = cnn_plane_size(prog.full, p_in);
  for (int64_t e = 0; e < n_in; ++e) in_s[e] = in_t[e] = T(0);
  const int64_t rows = prog.full ? p_out : 1;
  for (int64_t p = 0; p < rows; ++p) {
    const T* o_s = out_s + p * (prog.full ? p_out : 0);
    const T* o_t = out_t + p * (prog.full ? p_out : 0);
    const int a = static_cast<int>(p / L.w_out), b = static_cast<int>(p % L.w_out);
    for (int qh = 0; qh < L.kh; ++qh) {
      const int r = prog.full ? cnn_source(a, qh, L.sh, L.dh, L.ph, L.h_in, L.circular) : 0;
      if (r < 0) continue;
      for (int qw = 0; qw < L.kw; ++qw) {
        const int s = prog.full ? cnn_source(b, qw, L.sw, L.dw, L.pw, L.w_in, L.circular) : 0;
        if (s < 0) continue;
        const int64_t row = prog.full ? (static_cast<int64_t>(r) * L.w_in + s) * p_in : 0;
        cnn_add_tap_adjoint(L, qh, qw, o_s, o_t, in_s + row, in_t + row);
      }
    }
  }
}

// AVGPOOL's transpose: each output entry's adjoint / (kh kw)^2 added over its windows.
template <typename T>
TNTK_HD void cnn_avgpool_adjoint(const CnnLayer<T>& L, const T* out_s, const T* out_t, T* in_s,
                                 T* in_t) {
  const int64_t p_in = static_cast<int64_t>(L.h_in) * L.w_in;
  const int64_t p_out = static_cast<int64_t>(L.h_out) * L.w_out;
  const T inv = T(1) / (T(L.kh * L.kw) * T(L.kh * L.kw));
  for (int64_t e = 0; e < p_in * p_in; ++e) in_s[e] = in_t[e] = T(0);
  for (int64_t p = 0; p < p_out; ++p) {
    for (int64_t pp = 0; pp < p_out; ++pp) {
      const T vs = out_s[p * p_out + pp] * inv, vt = out_t[p * p_out + pp] * inv;
      const int a = static_cast<int>(p / L.w_out) * L.sh, b = static_cast<int>(p % L.w_out) * L.sw;
      const int a2 = static_cast<int>(pp / L.w_out) * L.sh;
      const int b2 = static_cast<int>(pp % L.w_out) * L.sw;
      for (int i = 0; i < L.kh; ++i) {
        for (int j = 0; j < L.kw; ++j) {
          const int64_t row = (static_cast<int64_t>(a + i) * L.w_in + (b + j)) * p_in;
          for (int i2 = 0; i2 < L.kh; ++i2) {
            T* ds = in_s + row + static_cast<int64_t>(a2 + i2) * L.w_in + b2;
            T* dt = in_t + row + static_cast<int64_t>(a2 + i2) * L.w_in + b2;
            for (int j2 = 0; j2 < L.kw; ++j2) {
              ds[j2] += vs;
              dt[j2] += vt;
            }
          }
        }
      }
    }
  }
}

// ACTIVATION's transpose, in place on the adjoint planes (gs, gt), from its tape tp (Sigma,
// Theta, E[phi'phi'] of its input): gs <- g12, gt <- Edot gt; the var adjoints added to
// acc1[p] (x) and acc2[p'] (x'), which may be the same row (self mode).
// rows_buf: 3 P entries (the per-sample factors, a row of g11 before its sum).
template <typename T, typename Adjoint>
TNTK_HD void cnn_activation_adjoint(bool full, int64_t P, const T* var1, const T* var2,
                                    const T* tp, T* gs, T* gt, T* acc1, T* acc2, T* rows_buf,
                                    const Adjoint adjoint) {  // by value: its fields stay in
                                                              // registers (the loops vectorize)
  const int64_t n = full ? P * P : P;
  const T* q12 = tp;
  const T* theta = tp + n;
  const T* e_dphi = tp + 2 * n;
  T* r1 = rows_buf;
  T* r2 = rows_buf + P;
  T* g11_row = rows_buf + 2 * P;
  for (int64_t p = 0; p < P; ++p) {
    r1[p] = adjoint.row_factor(var1[p]);
    r2[p] = adjoint.row_factor(var2[p]);
  }
  if (!full) {  // diagonal planes: entry c is the pair of positions (c, c)
    for (int64_t c = 0; c < P; ++c) {
      T g11, g22, g12;
      adjoint(var1[c], var2[c], r1[c], r2[c], q12[c], e_dphi[c], gs[c], gt[c] * theta[c], g11,
              g22, g12);
      gs[c] = g12;
      gt[c] = gt[c] * e_dphi[c];
      acc1[c] += g11;
      acc2[c] += g22;
    }
    return;
  }
  // distinct buffers (working planes, tape, rows): restrict lets the loop vectorize
  // without run-time alias checks
  T* __restrict__ g11_out = g11_row;
  T* __restrict__ acc_col = acc2;
  const T* __restrict__ v2 = var2;
  const T* __restrict__ f2 = r2;
  for (int64_t p = 0; p < P; ++p) {
    T* __restrict__ gs_row = gs + p * P;
    T* __restrict__ gt_row = gt + p * P;
    const T* __restrict__ q_row = q12 + p * P;
    const T* __restrict__ t_row = theta + p * P;
    const T* __restrict__ d_row = e_dphi + p * P;
    const T v1 = var1[p], f1 = r1[p];
    for (int64_t c = 0; c < P; ++c) {  // no reduction in the loop: it vectorizes
      T g11, g22, g12;
      adjoint(v1, v2[c], f1, f2[c], q_row[c], d_row[c], gs_row[c], gt_row[c] * t_row[c], g11,
              g22, g12);
      gs_row[c] = g12;
      gt_row[c] = gt_row[c] * d_row[c];
      g11_out[c] = g11;
      acc_col[c] += g22;
    }
    T row_acc = T(0);
    TNTK_SIMD_SUM(row_acc)
    for (int64_t c = 0; c < P; ++c) row_acc += g11_out[c];
    acc1[p] += row_acc;
  }
}

// ---- the sweep ---------------------------------------------------------------------------

// Where a pair's adjoints go. gx, gxp [C0 * H0 * W0]: the images' gradients (the same row for
// a self pass); gvar1, gvar2 [var_len]: the variance rows' adjoints (cross pairs; unused in
// self mode); gfloat [num_layers * kCnnFloatGrads]: each CONV/DENSE's (weight_var, bias_var,
// ntk_weight, ntk_bias) gradients. All are added to.
template <typename T>
struct CnnAdjointOut {
  T* gx;
  T* gxp;
  T* gvar1;
  T* gvar2;
  T* gfloat;
};

// The pair (x, xp) backward: the forward rerun with a tape, then the sweep from the output
// adjoints (g_nngp, g_ntk). Self mode (gv_self != nullptr: x = xp, var1 = var2 = x's row):
// the outputs' adjoints are normally 0, and gv_self [var_len] holds the adjoints of x's
// variance row from the cross pairs; the var adjoints land on the planes' diagonals.
// scratch: cnn_backward_scratch_len(prog) entries. var_out != nullptr: only x's self pass,
// recording its variance row there (cnn_pair_taped), no sweep.
template <typename T, typename Team>
TNTK_HD void cnn_pair_backward(const CnnProgram<T>& prog, const Team& team, const T* x,
                               const T* xp, const T* var1, const T* var2, T* var_out,
                               const T* gv_self, T g_nngp, T g_ntk, T* scratch,
                               const CnnAdjointOut<T>& out) {
  T* tape = scratch + 8 * prog.plane;
  cnn_pair_taped(prog, team, x, xp, var1, var2, var_out, scratch, tape);
  if (var_out != nullptr) return;
  T* gs = scratch;
  T* gt = scratch + prog.plane;
  T* gs_next = scratch + 2 * prog.plane;
  T* gt_next = scratch + 3 * prog.plane;
  T* acc = scratch + 4 * prog.plane;  // self mode: a row of var adjoints
  T* rows_buf = scratch + 5 * prog.plane;  // 3 planes: cnn_activation_adjoint's rows
  const bool self = gv_self != nullptr;
  gs[0] = g_nngp;
  gt[0] = g_ntk;
  int64_t off = cnn_tape_len(prog);
  for (int l = prog.num_layers - 1; l >= 0; --l) {
    const CnnLayer<T>& L = prog.layers[l];
    const int64_t n = cnn_input_plane(prog, L);
    const int64_t P = static_cast<int64_t>(L.h_in) * L.w_in;
    off -= cnn_tape_planes(L) * n;
    const T* tp = tape + off;
    bool swap = true;
    switch (L.code) {
      case kCnnConv:
      case kCnnDense: {
        const int64_t n_out = cnn_plane_size(prog.full, static_cast<int64_t>(L.h_out) * L.w_out);
        T* gf = out.gfloat + static_cast<int64_t>(l) * kCnnFloatGrads;
        T sum_s = T(0), sum_t = T(0);
        TNTK_SIMD_SUM(sum_s, sum_t)
        for (int64_t e = 0; e < n_out; ++e) {
          sum_s += gs[e];
          sum_t += gt[e];
        }
        cnn_conv_adjoint(prog, L, gs, gt, gs_next, gt_next);
        const T inv_taps = T(1) / T(L.kh * L.kw);
        const T wv = L.act.weight_var, tw = L.act.ntk_weight;
        T d_wv = T(0), d_tw = T(0);
        TNTK_SIMD_SUM(d_wv, d_tw)
        for (int64_t e = 0; e < n; ++e) {
          const T a_s = gs_next[e] * inv_taps, a_t = gt_next[e] * inv_taps;
          d_wv += tp[e] * a_s + tp[n + e] * a_t;
          d_tw += tp[e] * a_t;
          gs_next[e] = wv * a_s + tw * a_t;
          gt_next[e] = wv * a_t;
        }
        gf[0] += d_wv;
        gf[1] += sum_s;
        gf[2] += d_tw;
        gf[3] += sum_t;
        break;
      }
      case kCnnActivation: {
        const T* v1 = var1 + L.var_offset;
        const T* v2 = var2 + L.var_offset;
        T* a1 = self ? acc : out.gvar1 + L.var_offset;
        T* a2 = self ? acc : out.gvar2 + L.var_offset;
        if (self) {
          for (int64_t p = 0; p < P; ++p) acc[p] = gv_self[L.var_offset + p];
        }
        if (L.act.kind == kAbRelu) {
          cnn_activation_adjoint(prog.full, P, v1, v2, tp, gs, gt, a1, a2, rows_buf,
                                 AbReluAdjoint<T>{L.act.slope_neg, L.act.slope_pos});
        } else {
          cnn_activation_adjoint(prog.full, P, v1, v2, tp, gs, gt, a1, a2, rows_buf,
                                 ErfAdjoint<T>{});
        }
        if (self) {  // var_p = Sigma_{p,p}: its adjoint joins the diagonal's
          for (int64_t p = 0; p < P; ++p) gs[cnn_index(prog.full, P, p, p)] += acc[p];
        }
        swap = false;
        break;
      }
      case kCnnAvgPool:
        cnn_avgpool_adjoint(L, gs, gt, gs_next, gt_next);
        break;
      default: {  // kCnnGlobalAvgPool, kCnnGlobalSumPool, kCnnFlatten
        const bool all = L.code != kCnnFlatten;
        const T divisor = L.code == kCnnGlobalSumPool ? T(1) : T(all ? P * P : P);
        const T vs = gs[0] / divisor, vt = gt[0] / divisor;
        for (int64_t e = 0; e < n; ++e) gs_next[e] = gt_next[e] = T(0);
        const int64_t m = all ? P * P : P;
        for (int64_t e = 0; e < m; ++e) {
          const int64_t k = all ? e : cnn_index(prog.full, P, e, e);
          gs_next[k] = vs;
          gt_next[k] = vt;
        }
        break;
      }
    }
    if (swap) {
      T* t = gs; gs = gs_next; gs_next = t;
      t = gt; gt = gt_next; gt_next = t;
    }
  }
  // the input planes: Sigma = x x'^T / C0 per position pair (Theta = 0 has no inputs)
  const int64_t P0 = static_cast<int64_t>(prog.h0) * prog.w0;
  const T inv_c = T(1) / T(prog.c0);
  for (int c = 0; c < prog.c0; ++c) {
    const T* xc = x + c * P0;
    const T* xpc = xp + c * P0;
    T* gxc = out.gx + c * P0;
    T* gxpc = out.gxp + c * P0;
    if (!prog.full) {
      for (int64_t p = 0; p < P0; ++p) {
        const T g = gs[p] * inv_c;
        gxc[p] += g * xpc[p];
        gxpc[p] += g * xc[p];
      }
      continue;
    }
    for (int64_t p = 0; p < P0; ++p) {
      const T* row = gs + p * P0;
      const T xv = xc[p] * inv_c;
      T acc_row = T(0);
      TNTK_SIMD_SUM(acc_row)
      for (int64_t pp = 0; pp < P0; ++pp) {
        acc_row += row[pp] * xpc[pp];
        gxpc[pp] += row[pp] * xv;
      }
      gxc[p] += acc_row * inv_c;
    }
  }
}

}  // namespace math
}  // namespace torch_ntk
