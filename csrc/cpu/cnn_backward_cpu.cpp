// CPU implementation of cnn_kernels_backward (csrc/math/cnn_backward.h for the formulas).
//
// Three passes, each one thread per pair or sample: the self passes record the variance rows
// (by the backward's own taped pass, so that a self pair's kink sees the same roundings on
// both sides; csrc/math/cnn_backward.h); the pairs' backward (the forward rerun with a tape, then the sweep) runs
// over chunks of pairs, one chunk per thread, each chunk adding into its own gradient buffers
// (images' gradients and variance-row adjoints of every sample, the layers' float gradients),
// summed afterwards in chunk order (deterministic for a thread count, no atomics); then each
// sample's self pass is swept back from its summed variance-row adjoints into its image's
// gradient. Extra memory: chunks x (N1 + N2) x (C0 H0 W0 + var_len) numbers, and per thread
// a tape of the pair's planes (cnn_backward_scratch_len).
#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../cnn_backward_spec.h"
#include "clones.h"
#include "../math/cnn_backward.h"

namespace torch_ntk {
namespace {

struct SerialTeam {
  static constexpr bool kSerial = true;
  int64_t begin() const { return 0; }
  int64_t step() const { return 1; }
  void sync() const {}
  template <typename T>
  void sum2(T&, T&) const {}
};

// One pair's backward (math::cnn_pair_backward on one thread), compiled per x86-64 level.
TNTK_CPU_CLONES void pair_backward_float(const math::CnnProgram<float>& prog, const float* x,
                                         const float* xp, const float* var1, const float* var2,
                                         float* var_out, const float* gv_self, float g_nngp, float g_ntk,
                                         float* scratch, const math::CnnAdjointOut<float>& out) {
  math::cnn_pair_backward(prog, SerialTeam{}, x, xp, var1, var2, var_out, gv_self, g_nngp, g_ntk,
                          scratch, out);
}
TNTK_CPU_CLONES void pair_backward_double(const math::CnnProgram<double>& prog, const double* x,
                                          const double* xp, const double* var1,
                                          const double* var2, double* var_out,
                                          const double* gv_self,
                                          double g_nngp, double g_ntk, double* scratch,
                                          const math::CnnAdjointOut<double>& out) {
  math::cnn_pair_backward(prog, SerialTeam{}, x, xp, var1, var2, var_out, gv_self, g_nngp, g_ntk,
                          scratch, out);
}
inline void pair_backward(const math::CnnProgram<float>& prog, const float* x, const float* xp,
                          const float* var1, const float* var2, float* var_out,
                          const float* gv_self, float g_nngp, float g_ntk, float* scratch,
                          const math::CnnAdjointOut<float>& out) {
  pair_backward_float(prog, x, xp, var1, var2, var_out, gv_self, g_nngp, g_ntk, scratch, out);
}
inline void pair_backward(const math::CnnProgram<double>& prog, const double* x,
                          const double* xp, const double* var1, const double* var2,
                          double* var_out, const double* gv_self, double g_nngp, double g_ntk,
                          double* scratch, const math::CnnAdjointOut<double>& out) {
  pair_backward_double(prog, x, xp, var1, var2, var_out, gv_self, g_nngp, g_ntk, scratch, out);
}

struct CpuCnnBackward {
  template <typename T>
  static void run_backward(CnnProblem<T>& p, CnnGradients<T>& g) {
    math::CnnProgram<T> prog = p.prog;
    prog.layers = p.layers.data();
    const int64_t dim = p.x1.size(1);
    const int64_t var_len = prog.var_len;
    const int64_t n1 = p.n1, n2 = p.n2;
    const bool symmetric = p.symmetric;
    const int64_t bwd_len = math::cnn_backward_scratch_len(prog);
    const int64_t num_floats = static_cast<int64_t>(p.layers.size()) * math::kCnnFloatGrads;

    // 1. the variance rows: the self passes, by the backward's own compiled pass
    const math::CnnAdjointOut<T> none{nullptr, nullptr, nullptr, nullptr, nullptr};
    auto self_pass = [&](const at::Tensor& x, const at::Tensor& var) {
      const T* xs = x.data_ptr<T>();
      T* v = var.data_ptr<T>();
      at::parallel_for(0, x.size(0), 1, [&](int64_t begin, int64_t end) {
        std::vector<T> scratch(bwd_len);
        for (int64_t s = begin; s < end; ++s) {
          pair_backward(prog, xs + s * dim, xs + s * dim, nullptr, nullptr, v + s * var_len,
                        nullptr, T(0), T(0), scratch.data(), none);
        }
      });
    };
    self_pass(p.x1, p.var1);
    if (!symmetric) self_pass(p.x2, p.var2);

    // 2. the pairs' backward, chunk by chunk into per-chunk buffers
    const int64_t num_pairs = symmetric ? n1 * (n1 + 1) / 2 : n1 * n2;
    const int64_t chunks = std::max<int64_t>(
        1, std::min<int64_t>(num_pairs, at::get_num_threads()));
    // chunk layout: gx1 [n1, dim], gx2 [n2, dim] (absent when symmetric), gv1 [n1, var_len],
    // gv2 [n2, var_len] (absent when symmetric), gfloat [num_floats]
    const int64_t side2 = symmetric ? 0 : n2;
    const int64_t o_gx2 = n1 * dim;
    const int64_t o_gv1 = o_gx2 + side2 * dim;
    const int64_t o_gv2 = o_gv1 + n1 * var_len;
    const int64_t o_gf = o_gv2 + side2 * var_len;
    const int64_t chunk_len = o_gf + num_floats;
    at::Tensor acc = at::zeros({chunks, chunk_len}, p.x1.options());
    const T* x1 = p.x1.template data_ptr<T>();
    const T* x2 = p.x2.template data_ptr<T>();
    const T* var1 = p.var1.template data_ptr<T>();
    const T* var2 = p.var2.template data_ptr<T>();
    const T* gn = g.g_nngp.template data_ptr<T>();
    const T* gt = g.g_ntk.template data_ptr<T>();
    T* acc_ptr = acc.template data_ptr<T>();
    at::parallel_for(0, chunks, 1, [&](int64_t c_begin, int64_t c_end) {
      std::vector<T> scratch(bwd_len);
      for (int64_t c = c_begin; c < c_end; ++c) {
        T* buf = acc_ptr + c * chunk_len;
        T* gx1 = buf;
        T* gx2 = symmetric ? buf : buf + o_gx2;
        T* gv1 = buf + o_gv1;
        T* gv2 = symmetric ? gv1 : buf + o_gv2;
        T* gf = buf + o_gf;
        const int64_t begin = num_pairs * c / chunks, end = num_pairs * (c + 1) / chunks;
        int64_t i, j;
        if (symmetric) {
          math::upper_triangle_pair(n1, begin, i, j);
        } else {
          i = begin / n2;
          j = begin % n2;
        }
        for (int64_t k = begin; k < end; ++k) {
          T g_nngp = gn[i * n2 + j], g_ntk = gt[i * n2 + j];
          if (symmetric && j != i) {  // the mirrored entry (j, i) is this pair's value too
            g_nngp += gn[j * n2 + i];
            g_ntk += gt[j * n2 + i];
          }
          const math::CnnAdjointOut<T> out{gx1 + i * dim, gx2 + j * dim, gv1 + i * var_len,
                                           gv2 + j * var_len, gf};
          pair_backward(prog, x1 + i * dim, x2 + j * dim, var1 + i * var_len,
                        var2 + j * var_len, nullptr, nullptr, g_nngp, g_ntk, scratch.data(),
                        out);
          if (++j == n2) {
            ++i;
            j = symmetric ? i : 0;
          }
        }
      }
    });
    const at::Tensor total = acc.sum(0);  // in chunk order
    const T* tot = total.template data_ptr<T>();
    T* gx1 = g.gx1.template data_ptr<T>();
    T* gx2 = g.gx2.template data_ptr<T>();
    T* gfloat = g.gfloat.template data_ptr<T>();
    for (int64_t e = 0; e < n1 * dim; ++e) gx1[e] += tot[e];
    if (!symmetric) {
      for (int64_t e = 0; e < n2 * dim; ++e) gx2[e] += tot[o_gx2 + e];
    }
    for (int64_t e = 0; e < num_floats; ++e) gfloat[e] += tot[o_gf + e];

    // 3. each sample's self pass swept back from its variance-row adjoints
    auto self_backward = [&](const at::Tensor& x, const at::Tensor& var, const T* gv, T* gx) {
      const T* xs = x.data_ptr<T>();
      const T* v = var.data_ptr<T>();
      const int64_t n = x.size(0);
      const int64_t self_chunks = std::max<int64_t>(1, std::min<int64_t>(n, at::get_num_threads()));
      at::Tensor facc = at::zeros({self_chunks, num_floats}, x.options());
      T* facc_ptr = facc.template data_ptr<T>();
      at::parallel_for(0, self_chunks, 1, [&](int64_t c_begin, int64_t c_end) {
        std::vector<T> scratch(bwd_len);
        for (int64_t c = c_begin; c < c_end; ++c) {
          for (int64_t s = n * c / self_chunks; s < n * (c + 1) / self_chunks; ++s) {
            const math::CnnAdjointOut<T> out{gx + s * dim, gx + s * dim, nullptr, nullptr,
                                             facc_ptr + c * num_floats};
            pair_backward(prog, xs + s * dim, xs + s * dim, v + s * var_len, v + s * var_len,
                          nullptr, gv + s * var_len, T(0), T(0), scratch.data(), out);
          }
        }
      });
      const at::Tensor fsum = facc.sum(0);
      const T* fs = fsum.template data_ptr<T>();
      for (int64_t e = 0; e < num_floats; ++e) gfloat[e] += fs[e];
    };
    self_backward(p.x1, p.var1, tot + o_gv1, gx1);
    if (!symmetric) self_backward(p.x2, p.var2, tot + o_gv2, gx2);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(torch_ntk, CPU, m) {
  m.impl("cnn_kernels_backward", &cnn_kernels_backward_op<CpuCnnBackward>);
}

}  // namespace torch_ntk
