// CUDA implementation of cnn_kernels_backward, with the arithmetic of the CPU op
// (csrc/math/cnn_backward.h).
//
// One thread per pair (or sample) runs the one-thread code of the header on its own slice
// of a global scratch buffer (the tape of its planes). Deterministic, without atomics: each
// pair writes its contributions (both images' gradients, both variance rows' adjoints, the
// layers' float gradients) into its own row of a buffer covering whole rows i of pairs, and
// torch sums them over j (for x1's side) and over i (for x2's side). Three launches, as on
// the CPU: the self passes record the variance rows, the pairs' backward (chunks of rows),
// then each sample's self pass swept back from its summed variance-row adjoints.
// This is the simple mapping (no team of threads per pair, no shared memory): correct and
// deterministic; a block-per-pair version like cnn_kernels_cuda.cu's is future work.
#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <cuda_runtime.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../cnn_backward_spec.h"
#include "../math/cnn_backward.h"

namespace torch_ntk {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kScratchBytes = int64_t(1) << 30;  // the threads' tapes, at most
constexpr int64_t kBufferBytes = int64_t(1) << 29;   // one chunk's contributions, at most

// One thread runs a whole pair: the one-thread paths of csrc/math/cnn_recursion.h.
struct ThreadTeam {
  static constexpr bool kSerial = true;
  TNTK_HD int64_t begin() const { return 0; }
  TNTK_HD int64_t step() const { return 1; }
  TNTK_HD void sync() const {}
  template <typename T>
  TNTK_HD void sum2(T&, T&) const {}
};

enum Mode : int { kRecord = 0, kPairs = 1, kSelfBackward = 2 };

template <typename T>
struct BackwardLaunch {
  math::CnnProgram<T> prog;  // prog.layers in device memory
  int mode;
  const T* x1;               // [n1, dim] (kRecord, kSelfBackward: the samples)
  const T* x2;               // [n2, dim]
  int64_t dim, var_len, n1, n2;
  bool symmetric;
  const T* var1;             // [n1, var_len]
  const T* var2;             // [n2, var_len]
  T* var_out;                // kRecord: [items, var_len]
  const T* g_nngp;           // [n1, n2]
  const T* g_ntk;
  int64_t i0;                // kPairs: the chunk's first row
  T* contrib;                // kPairs: [items, row_len]; kSelfBackward: [items, num_floats]
  int64_t row_len;
  const T* gv;               // kSelfBackward: [items, var_len]
  T* gx;                     // kSelfBackward: [items, dim]
  T* scratch;                // [threads, scratch_len]
  int64_t scratch_len;
  int64_t items;
};

template <typename T>
__global__ void __launch_bounds__(kThreads) cnn_backward_kernel(BackwardLaunch<T> a) {
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t threads = static_cast<int64_t>(gridDim.x) * blockDim.x;
  T* scratch = a.scratch + thread * a.scratch_len;
  const ThreadTeam team{};
  const math::CnnAdjointOut<T> none{nullptr, nullptr, nullptr, nullptr, nullptr};
  const int64_t nf = static_cast<int64_t>(a.prog.num_layers) * math::kCnnFloatGrads;
  for (int64_t k = thread; k < a.items; k += threads) {
    if (a.mode == kRecord) {
      const T* x = a.x1 + k * a.dim;
      math::cnn_pair_backward(a.prog, team, x, x, static_cast<const T*>(nullptr),
                              static_cast<const T*>(nullptr), a.var_out + k * a.var_len,
                              static_cast<const T*>(nullptr), T(0), T(0), scratch, none);
    } else if (a.mode == kPairs) {
      const int64_t i = a.i0 + k / a.n2, j = k % a.n2;
      if (a.symmetric && j < i) continue;  // the lower triangle: its row stays zero
      T gn = a.g_nngp[i * a.n2 + j], gt = a.g_ntk[i * a.n2 + j];
      if (a.symmetric && j != i) {
        gn += a.g_nngp[j * a.n2 + i];
        gt += a.g_ntk[j * a.n2 + i];
      }
      T* c = a.contrib + k * a.row_len;
      const math::CnnAdjointOut<T> out{c, c + a.dim, c + 2 * a.dim, c + 2 * a.dim + a.var_len,
                                       c + 2 * a.dim + 2 * a.var_len};
      math::cnn_pair_backward(a.prog, team, a.x1 + i * a.dim, a.x2 + j * a.dim,
                              a.var1 + i * a.var_len, a.var2 + j * a.var_len,
                              static_cast<T*>(nullptr), static_cast<const T*>(nullptr), gn, gt,
                              scratch, out);
    } else {
      const T* x = a.x1 + k * a.dim;
      const T* v = a.var1 + k * a.var_len;
      const math::CnnAdjointOut<T> out{a.gx + k * a.dim, a.gx + k * a.dim, nullptr, nullptr,
                                       a.contrib + k * nf};
      math::cnn_pair_backward(a.prog, team, x, x, v, v, static_cast<T*>(nullptr),
                              a.gv + k * a.var_len, T(0), T(0), scratch, out);
    }
  }
}

// The CUDA backend of cnn_kernels_backward_op (csrc/cnn_backward_spec.h).
struct CudaCnnBackward {
  template <typename T>
  static void run_backward(CnnProblem<T>& p, CnnGradients<T>& g) {
    const c10::cuda::CUDAGuard guard(p.x1.device());
    auto stream = c10::cuda::getCurrentCUDAStream();
    const int64_t table_bytes = sizeof(math::CnnLayer<T>) * p.layers.size();
    at::Tensor layer_bytes = at::empty({table_bytes}, p.x1.options().dtype(at::kByte));
    at::Tensor host = at::from_blob(p.layers.data(), {table_bytes},
                                    at::TensorOptions().dtype(at::kByte));
    layer_bytes.copy_(host);  // synchronous: p.layers outlives the copy

    // the header's length functions read the layer table: run them on the host copy
    math::CnnProgram<T> host_prog = p.prog;
    host_prog.layers = p.layers.data();
    const int64_t scratch_len = math::cnn_backward_scratch_len(host_prog);

    BackwardLaunch<T> a{};
    a.prog = p.prog;
    a.prog.layers = reinterpret_cast<const math::CnnLayer<T>*>(layer_bytes.data_ptr());
    a.dim = p.x1.size(1);
    a.var_len = p.prog.var_len;
    a.n1 = p.n1;
    a.n2 = p.n2;
    a.symmetric = p.symmetric;
    a.scratch_len = scratch_len;
    const int64_t nf = static_cast<int64_t>(p.layers.size()) * math::kCnnFloatGrads;
    const int64_t max_threads = std::max<int64_t>(
        kThreads, kScratchBytes / (scratch_len * static_cast<int64_t>(sizeof(T))));
    at::Tensor scratch;
    auto launch = [&](int64_t items) {
      a.items = items;
      const int64_t threads = std::min<int64_t>(std::max<int64_t>(items, 1), max_threads);
      const int64_t blocks = (threads + kThreads - 1) / kThreads;
      if (!scratch.defined() || scratch.numel() < blocks * kThreads * scratch_len) {
        scratch = at::empty({blocks * kThreads * scratch_len}, p.x1.options());
      }
      a.scratch = scratch.template data_ptr<T>();
      cnn_backward_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };

    // 1. the variance rows
    a.mode = kRecord;
    a.x1 = p.x1.template data_ptr<T>();
    a.var_out = p.var1.template data_ptr<T>();
    launch(p.n1);
    if (!p.symmetric) {
      a.x1 = p.x2.template data_ptr<T>();
      a.var_out = p.var2.template data_ptr<T>();
      launch(p.n2);
    }

    // 2. the pairs, by chunks of whole rows; their contributions summed by torch
    at::Tensor gv1 = at::zeros({p.n1, a.var_len}, p.x1.options());
    at::Tensor gv2 = p.symmetric ? gv1 : at::zeros({p.n2, a.var_len}, p.x1.options());
    const int64_t dim = a.dim, vl = a.var_len;
    a.row_len = 2 * dim + 2 * vl + nf;
    const int64_t row_bytes = p.n2 * a.row_len * static_cast<int64_t>(sizeof(T));
    const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(p.n1, kBufferBytes / row_bytes));
    a.mode = kPairs;
    a.x1 = p.x1.template data_ptr<T>();
    a.x2 = p.x2.template data_ptr<T>();
    a.var1 = p.var1.template data_ptr<T>();
    a.var2 = p.var2.template data_ptr<T>();
    a.g_nngp = g.g_nngp.template data_ptr<T>();
    a.g_ntk = g.g_ntk.template data_ptr<T>();
    for (int64_t i0 = 0; i0 < p.n1; i0 += rows) {
      const int64_t r = std::min(rows, p.n1 - i0);
      at::Tensor contrib = at::zeros({r, p.n2, a.row_len}, p.x1.options());
      a.i0 = i0;
      a.contrib = contrib.template data_ptr<T>();
      launch(r * p.n2);
      g.gx1.narrow(0, i0, r).add_(contrib.narrow(2, 0, dim).sum(1));
      g.gx2.add_(contrib.narrow(2, dim, dim).sum(0));
      gv1.narrow(0, i0, r).add_(contrib.narrow(2, 2 * dim, vl).sum(1));
      gv2.add_(contrib.narrow(2, 2 * dim + vl, vl).sum(0));
      g.gfloat.view({-1}).add_(contrib.narrow(2, 2 * dim + 2 * vl, nf).sum({0, 1}));
    }

    // 3. each sample's self pass swept back
    auto self_backward = [&](const at::Tensor& x, const at::Tensor& var, const at::Tensor& gv,
                             at::Tensor& gx) {
      at::Tensor floats = at::zeros({x.size(0), nf}, x.options());
      a.mode = kSelfBackward;
      a.x1 = x.template data_ptr<T>();
      a.var1 = var.template data_ptr<T>();
      a.gv = gv.template data_ptr<T>();
      a.gx = gx.template data_ptr<T>();
      a.contrib = floats.template data_ptr<T>();
      launch(x.size(0));
      g.gfloat.view({-1}).add_(floats.sum(0));
    };
    self_backward(p.x1, p.var1, gv1, g.gx1);
    if (!p.symmetric) self_backward(p.x2, p.var2, gv2, g.gx2);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(torch_ntk, CUDA, m) {
  m.impl("cnn_kernels_backward", &cnn_kernels_backward_op<CudaCnnBackward>);
}

}  // namespace torch_ntk
