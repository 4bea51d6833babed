// The structured empirical NTK, one output tile at a time (Novak et al. 2022).
//
// For dense layer l with input activations A_l [N, n_l], output cotangents
// D_l [N, n_L, m_l] (D_l[x, k, :] = df_k(x)/dz_l) and coefficients (c_w, c_b):
//
//   Theta_kk'(x, x') = sum_l (c_w <A1_l(x), A2_l(x')> + c_b) * <D1_l(x, k), D2_l(x', k')>
//
// The output holds C "channels" per pair (x, x'):
//   full      C = n_L^2, channel c = k n_L + k'   -> Theta_kk'
//   trace     C = 1                               -> sum_k Theta_kk (a sum, not a mean)
//   diagonal  C = n_L,   channel c = k            -> Theta_kk
// Channel c = k n_L + k' of the full cotangent Gram is the dot product of D1 row (x, k)
// and D2 row (x', k') (diagonal: k = k'; trace: of the flattened n_L m_l rows).
//
// Both implementations fill blocks of the two Gram matrices with GEMMs. The CPU
// one accumulates them with the accumulate_* row functions below; the CUDA one
// with one thread per output entry, through cotangent_gram_offset and layer_term.
// Both write mirrored entries (x', x, mirror_channel(c)) when x2 = x1, so the
// result is exactly symmetric.
#pragma once

#include <cstdint>

#include "hostdevice.h"

namespace torch_ntk {
namespace math {

enum StructuredMode : int { kModeFull = 0, kModeTrace = 1, kModeDiagonal = 2 };

// One layer's contribution to one channel of one pair.
template <typename T>
TNTK_HD T layer_term(T cw, T cb, T gram_a, T gram_d) {
  return (cw * gram_a + cb) * gram_d;
}

TNTK_HD int64_t num_channels(int mode, int64_t n_out) {
  return mode == kModeFull ? n_out * n_out : (mode == kModeTrace ? 1 : n_out);
}

// Theta(x', x) channel that equals Theta(x, x') channel c: (k, k') -> (k', k).
TNTK_HD int64_t mirror_channel(int mode, int64_t c, int64_t n_out) {
  return mode == kModeFull ? (c % n_out) * n_out + c / n_out : c;
}

// Offset of channel c of pair (i, j) in a block's cotangent Gram of ni x nj pairs, laid
// out as the Gram products write it: trace [ni, nj]; diagonal [n_L, ni, nj] (one
// product per k); full [ni, n_L, nj, n_L] (one product of the [., n_L, m] row views).
// The accumulate_*_row functions below read the same layouts row by row.
TNTK_HD int64_t cotangent_gram_offset(int mode, int64_t i, int64_t j, int64_t c, int64_t ni,
                                      int64_t nj, int64_t n_out) {
  if (mode == kModeTrace) return i * nj + j;
  if (mode == kModeDiagonal) return (c * ni + i) * nj + j;
  const int64_t k = c / n_out, kp = c % n_out;
  return ((i * n_out + k) * nj + j) * n_out + kp;
}

// ---- CPU-side tile accumulation over one row x of a tile of columns x'_0..x'_{nj-1}.
// out_row: the output row segment [nj, C] (contiguous); gram_a: <A1(x), A2(x'_j)> for
// the nj columns, or nullptr when c_w = 0; first: assign instead of add.

// trace: gram_d[j] = <D1(x), D2(x'_j)> over the whole n_L m row.
template <typename T>
TNTK_HD void accumulate_trace_row(T* out_row, const T* gram_a, const T* gram_d, int64_t nj, T cw,
                                  T cb, bool first) {
  if (gram_a != nullptr) {
    if (first) {
      for (int64_t j = 0; j < nj; ++j) out_row[j] = layer_term(cw, cb, gram_a[j], gram_d[j]);
    } else {
      for (int64_t j = 0; j < nj; ++j) out_row[j] += layer_term(cw, cb, gram_a[j], gram_d[j]);
    }
  } else {
    if (first) {
      for (int64_t j = 0; j < nj; ++j) out_row[j] = cb * gram_d[j];
    } else {
      for (int64_t j = 0; j < nj; ++j) out_row[j] += cb * gram_d[j];
    }
  }
}

// diagonal: gram_d[k * d_stride + j] = <D1(x, k), D2(x'_j, k)> (one GEMM per k).
template <typename T>
TNTK_HD void accumulate_diagonal_row(T* out_row, const T* gram_a, const T* gram_d,
                                     int64_t d_stride, int64_t nj, int64_t n_out, T cw, T cb,
                                     bool first) {
  for (int64_t j = 0; j < nj; ++j) {
    const T scale = gram_a != nullptr ? cw * gram_a[j] + cb : cb;
    T* o = out_row + j * n_out;
    for (int64_t k = 0; k < n_out; ++k) {
      const T v = scale * gram_d[k * d_stride + j];
      o[k] = first ? v : o[k] + v;
    }
  }
}

// full: gram_d[k * d_stride + j n_L + k'] = <D1(x, k), D2(x'_j, k')> (one GEMM of the
// [.. n_L, m] views), i.e. rows k of the tile's cotangent Gram for sample x.
template <typename T>
TNTK_HD void accumulate_full_row(T* out_row, const T* gram_a, const T* gram_d, int64_t d_stride,
                                 int64_t nj, int64_t n_out, T cw, T cb, bool first) {
  const int64_t C = n_out * n_out;
  for (int64_t j = 0; j < nj; ++j) {
    const T scale = gram_a != nullptr ? cw * gram_a[j] + cb : cb;
    T* o = out_row + j * C;
    for (int64_t k = 0; k < n_out; ++k) {
      const T* g = gram_d + k * d_stride + j * n_out;
      for (int64_t kp = 0; kp < n_out; ++kp) {
        const T v = scale * g[kp];
        o[k * n_out + kp] = first ? v : o[k * n_out + kp] + v;
      }
    }
  }
}

}  // namespace math
}  // namespace torch_ntk
