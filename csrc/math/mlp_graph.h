// The graph program of the analytic_kernels (MLP) op: residual blocks, concatenation and
// LayerNorm between its hidden layers (csrc/math/recursion.h for the chain).
//
// A program is a list of steps on the pair's (Sigma, Theta) of pre-activations, starting
// from the input layer's Sigma^(1), Theta^(1), with up to kMlpMaxSlots skip registers:
//
//   HIDDEN              the next hidden layer (activation, then dense), in order; right
//                       after an affine LAYERNORM (flag `affine`, set by the op's checks)
//                       the gain's term changes the activation's NTK to
//                       E[phi'phi'] (Theta - Sigma) + E[phi phi] (homogeneous phi only)
//   PUSH s / LOAD s     register s <- (Sigma, Theta) / (Sigma, Theta) <- register s
//   JOIN s | a, b       Sigma <- a Sigma + b Sigma_s, Theta likewise (an Add of
//                       coefficients c: c^2; a Concat of widths w: w / sum w)
//   LAYERNORM affine | eps
//                       Sigma <- Sigma / sqrt((q + eps) (q' + eps)), Theta likewise
//                       [+ Sigma' + 1 with affine]; q, q' the samples' Sigma(x, x),
//                       recorded by the sample pass (0 / 0 is 0)
//   LINEAR | wv, bv, tw, tb
//                       a dense layer on the current pre-activations (a projection
//                       shortcut): Sigma' = wv Sigma + bv, Theta' = tw Sigma + tb + wv Theta
//
// Every state is a zero-mean Gaussian's (a dense layer's output, or sums and
// normalizations of them), so each HIDDEN's activation is exact. The per-sample pass runs
// the same steps on q = Sigma(x, x) (mlp_graph_variances).
#pragma once

#include <cstdint>

#include "hostdevice.h"
#include "recursion.h"

namespace torch_ntk {
namespace math {

enum MlpGraphCode : int {
  kMlpHidden = 0,
  kMlpPush = 1,
  kMlpLoad = 2,
  kMlpJoin = 3,
  kMlpLayerNorm = 4,
  kMlpLinear = 5,
  kMlpNumCodes = 6,
};

constexpr int kMlpMaxSlots = 4;

// One validated step: its code, register or hidden layer / LayerNorm variance row, and
// floats (JOIN a, b; LAYERNORM eps; LINEAR wv, bv, tw, tb).
template <typename T>
struct MlpStep {
  int code;
  int index;   // PUSH/LOAD/JOIN: the register; HIDDEN: the hidden layer; LAYERNORM: its
               // row in the variance table
  int affine;  // LAYERNORM: a trained gain and bias; HIDDEN: right after such a LayerNorm
  T f[4];
};

// The LayerNorm factor 1 / sqrt((q1 + eps) (q2 + eps)); 0 where the product is 0.
template <typename T>
TNTK_HD T mlp_layernorm_scale(T q1, T q2, T eps) {
  const T d = (q1 + eps) * (q2 + eps);
  return d > T(0) ? T(1) / fsqrt(d) : T(0);
}

// The per-sample variances of x_s along the program: var[row * n + s] = q entering hidden
// layer row (HIDDEN) or LayerNorm row; next(l, q) gives Sigma(x, x) after hidden layer l.
template <typename T, typename Next>
TNTK_HD void mlp_graph_variances(const MlpStep<T>* steps, int num_steps, T q, int64_t n,
                                 int64_t s, T* var, const Next& next) {
  T slots[kMlpMaxSlots];
  for (int k = 0; k < num_steps; ++k) {
    const MlpStep<T>& st = steps[k];
    switch (st.code) {
      case kMlpHidden:
        var[st.index * n + s] = q;
        q = next(st.index, q);
        break;
      case kMlpPush: slots[st.index] = q; break;
      case kMlpLoad: q = slots[st.index]; break;
      case kMlpJoin: q = st.f[0] * q + st.f[1] * slots[st.index]; break;
      case kMlpLayerNorm:
        var[st.index * n + s] = q;
        q = q * mlp_layernorm_scale(q, q, st.f[0]);
        break;
      default:  // kMlpLinear
        q = st.f[0] * q + st.f[1];
        break;
    }
  }
}

// LINEAR on one pair.
template <typename T>
TNTK_HD void mlp_linear(const MlpStep<T>& st, T& sigma, T& theta) {
  theta = st.f[2] * sigma + st.f[3] + st.f[0] * theta;
  sigma = st.f[0] * sigma + st.f[1];
}

// LAYERNORM on one pair, given the samples' q.
template <typename T>
TNTK_HD void mlp_layernorm(const MlpStep<T>& st, T q1, T q2, T& sigma, T& theta) {
  const T s = mlp_layernorm_scale(q1, q2, st.f[0]);
  sigma *= s;
  theta = theta * s + (st.affine ? sigma + T(1) : T(0));
}

}  // namespace math
}  // namespace torch_ntk
