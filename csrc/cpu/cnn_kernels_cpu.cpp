// CPU implementation of cnn_kernels (csrc/math/cnn_recursion.h for the formulas).
//
// One thread runs one pair at a time through every layer, with the pair's planes in a
// per-thread scratch buffer of 4 planes (Sigma, Theta and the next layer's two) and 2
// per skip register of a graph program. A
// parallel pass over the samples first runs each pair (x, x) and records its variance
// row; then a parallel pass over the pairs (j >= i only when x2 is None, mirrored, so
// the result is exactly symmetric) writes the [N1, N2] outputs.
#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../cnn_spec.h"
#include "clones.h"
#include "../math/cnn_recursion.h"

namespace torch_ntk {
namespace {

// One thread per pair: every step runs over the whole plane.
struct SerialTeam {
  int64_t begin() const { return 0; }
  int64_t step() const { return 1; }
  void sync() const {}
  template <typename T>
  void sum2(T&, T&) const {}
};

// One pair through the whole program (math::cnn_pair on one thread), compiled once per
// x86-64 level so that the row loops use the CPU's widest vectors.
TNTK_CPU_CLONES void cnn_pair_float(const math::CnnProgram<float>& prog, const float* x,
                                    const float* xp, const float* var1, const float* var2,
                                    float* var_out, float* scratch, float& nngp, float& ntk) {
  math::cnn_pair(prog, SerialTeam{}, x, xp, var1, var2, var_out, scratch, nngp, ntk);
}
TNTK_CPU_CLONES void cnn_pair_double(const math::CnnProgram<double>& prog, const double* x,
                                     const double* xp, const double* var1, const double* var2,
                                     double* var_out, double* scratch, double& nngp,
                                     double& ntk) {
  math::cnn_pair(prog, SerialTeam{}, x, xp, var1, var2, var_out, scratch, nngp, ntk);
}
inline void cnn_pair_cpu(const math::CnnProgram<float>& prog, const float* x, const float* xp,
                         const float* var1, const float* var2, float* var_out, float* scratch,
                         float& nngp, float& ntk) {
  cnn_pair_float(prog, x, xp, var1, var2, var_out, scratch, nngp, ntk);
}
inline void cnn_pair_cpu(const math::CnnProgram<double>& prog, const double* x,
                         const double* xp, const double* var1, const double* var2,
                         double* var_out, double* scratch, double& nngp, double& ntk) {
  cnn_pair_double(prog, x, xp, var1, var2, var_out, scratch, nngp, ntk);
}

// The CPU backend of cnn_kernels_op (csrc/cnn_spec.h).
struct CpuCnn {
  template <typename T>
  static void run(CnnProblem<T>& p, at::Tensor& nngp, at::Tensor& ntk) {
    math::CnnProgram<T> prog = p.prog;
    prog.layers = p.layers.data();
    prog.gh = {p.gh_nodes.template data_ptr<T>(), p.gh_weights.template data_ptr<T>(),
               static_cast<int>(p.gh_nodes.numel())};
    const int64_t dim = p.x1.size(1);
    const int64_t var_len = prog.var_len;
    const int64_t scratch_len = math::cnn_scratch_len(prog.plane, prog.num_slots);

    auto self_pass = [&](const at::Tensor& x, const at::Tensor& var) {
      const T* xs = x.data_ptr<T>();
      T* v = var.data_ptr<T>();
      at::parallel_for(0, x.size(0), 1, [&](int64_t begin, int64_t end) {
        std::vector<T> scratch(scratch_len);
        for (int64_t s = begin; s < end; ++s) {
          T* row = v + s * var_len;
          T unused_nngp, unused_ntk;
          cnn_pair_cpu(prog, xs + s * dim, xs + s * dim, row, row, row, scratch.data(),
                       unused_nngp, unused_ntk);
        }
      });
    };
    self_pass(p.x1, p.var1);
    if (!p.symmetric) self_pass(p.x2, p.var2);

    const T* x1 = p.x1.template data_ptr<T>();
    const T* x2 = p.x2.template data_ptr<T>();
    const T* var1 = p.var1.template data_ptr<T>();
    const T* var2 = p.var2.template data_ptr<T>();
    T* out_nngp = nngp.defined() ? nngp.data_ptr<T>() : nullptr;
    T* out_ntk = ntk.defined() ? ntk.data_ptr<T>() : nullptr;
    const int64_t n1 = p.n1, n2 = p.n2;
    const bool symmetric = p.symmetric;
    // Pairs in row-major order: all of them, or with x2 = None the upper triangle j >= i
    // (row i holds n1 - i of them), so that equal ranges of k are equal work.
    const int64_t num_pairs = symmetric ? n1 * (n1 + 1) / 2 : n1 * n2;
    at::parallel_for(0, num_pairs, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch(scratch_len);
      int64_t i, j;
      if (symmetric) {
        math::upper_triangle_pair(n1, begin, i, j);
      } else {
        i = begin / n2;
        j = begin % n2;
      }
      for (int64_t k = begin; k < end; ++k) {
        T s, t;
        cnn_pair_cpu(prog, x1 + i * dim, x2 + j * dim, var1 + i * var_len, var2 + j * var_len,
                     static_cast<T*>(nullptr), scratch.data(), s, t);
        if (out_nngp != nullptr) {
          out_nngp[i * n2 + j] = s;
          if (symmetric) out_nngp[j * n2 + i] = s;
        }
        if (out_ntk != nullptr) {
          out_ntk[i * n2 + j] = t;
          if (symmetric) out_ntk[j * n2 + i] = t;
        }
        if (++j == n2) {
          ++i;
          j = symmetric ? i : 0;
        }
      }
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(torch_ntk, CPU, m) {
  m.impl("cnn_kernels", &cnn_kernels_op<CpuCnn>);
}

}  // namespace torch_ntk
