// CUDA implementation of cnn_kernels, with the arithmetic of the CPU op
// (csrc/math/cnn_recursion.h).
//
// One block per pair (a grid of blocks loops over the pairs): the block's threads split
// every plane of the pair and synchronize between layers. The 4 planes (and 2 per skip
// register of a graph program) live in dynamic
// shared memory when they fit (up to the device's opt-in limit), else in a global
// scratch buffer with one slice per block (the grid is then sized to a memory budget).
// A first launch runs the self pairs (x, x) and records the variance rows; with
// x2 = None the pair launch covers j >= i only and writes both (i, j) and (j, i).
#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <cuda_runtime.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../cnn_spec.h"
#include "../math/cnn_recursion.h"

namespace torch_ntk {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kMaxBlocks = 4096;
constexpr int64_t kScratchBudget = int64_t(1) << 30;  // global scratch, bytes

// The threads of one block sharing a pair; red [2 * kThreads] in shared memory.
template <typename T>
struct BlockTeam {
  T* red;
  TNTK_HD int64_t begin() const {
#ifdef __CUDA_ARCH__
    return threadIdx.x;
#else
    return 0;
#endif
  }
  TNTK_HD int64_t step() const {
#ifdef __CUDA_ARCH__
    return blockDim.x;
#else
    return 1;
#endif
  }
  TNTK_HD void sync() const {
#ifdef __CUDA_ARCH__
    __syncthreads();
#endif
  }
  // Totals of a and b over the block's threads, in a fixed order, given to every thread.
  TNTK_HD void sum2(T& a, T& b) const {
#ifdef __CUDA_ARCH__
    const int t = threadIdx.x, n = blockDim.x;
    red[t] = a;
    red[n + t] = b;
    __syncthreads();
    if (t == 0) {
      T sa = T(0), sb = T(0);
      for (int k = 0; k < n; ++k) {
        sa += red[k];
        sb += red[n + k];
      }
      red[0] = sa;
      red[n] = sb;
    }
    __syncthreads();
    a = red[0];
    b = red[n];
    __syncthreads();
#endif
  }
};

template <typename T>
struct Launch {
  math::CnnProgram<T> prog;  // prog.layers points to device memory
  const T* x1;               // [n1, dim]
  const T* x2;               // [n2, dim]
  int64_t dim;
  const T* var1;             // [n1, var_len]
  const T* var2;             // [n2, var_len]
  T* var_self;               // self launch: the rows to fill ([n1, var_len]); else nullptr
  int64_t n1, n2;
  bool symmetric;
  int64_t items;             // samples (self launch) or pairs
  T* nngp;                   // [n1, n2] or nullptr
  T* ntk;                    // [n1, n2] or nullptr
  T* scratch;                // global scratch [gridDim.x, cnn_scratch_len], or nullptr: shared
};

template <typename T>
__global__ void __launch_bounds__(kThreads) cnn_kernel(Launch<T> a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* red = reinterpret_cast<T*>(smem_raw);
  const int64_t per_block = math::cnn_scratch_len(a.prog.plane, a.prog.num_slots);
  T* scratch = a.scratch != nullptr ? a.scratch + blockIdx.x * per_block : red + 2 * blockDim.x;
  const BlockTeam<T> team{red};
  const int64_t var_len = a.prog.var_len;
  for (int64_t k = blockIdx.x; k < a.items; k += gridDim.x) {
    T s, t;
    if (a.var_self != nullptr) {
      T* row = a.var_self + k * var_len;
      math::cnn_pair(a.prog, team, a.x1 + k * a.dim, a.x1 + k * a.dim, row, row, row, scratch, s,
                     t);
    } else {
      int64_t i, j;
      if (a.symmetric) {
        math::upper_triangle_pair(a.n1, k, i, j);
      } else {
        i = k / a.n2;
        j = k % a.n2;
      }
      math::cnn_pair(a.prog, team, a.x1 + i * a.dim, a.x2 + j * a.dim, a.var1 + i * var_len,
                     a.var2 + j * var_len, static_cast<T*>(nullptr), scratch, s, t);
      if (threadIdx.x == 0) {
        if (a.nngp != nullptr) {
          a.nngp[i * a.n2 + j] = s;
          if (a.symmetric) a.nngp[j * a.n2 + i] = s;
        }
        if (a.ntk != nullptr) {
          a.ntk[i * a.n2 + j] = t;
          if (a.symmetric) a.ntk[j * a.n2 + i] = t;
        }
      }
    }
    __syncthreads();  // every thread has read the result before the planes are reused
  }
}

// The CUDA backend of cnn_kernels_op (csrc/cnn_spec.h).
struct CudaCnn {
  template <typename T>
  static void run(CnnProblem<T>& p, at::Tensor& nngp, at::Tensor& ntk) {
    const c10::cuda::CUDAGuard guard(p.x1.device());
    auto stream = c10::cuda::getCurrentCUDAStream();
    const int64_t table_bytes = sizeof(math::CnnLayer<T>) * p.layers.size();
    at::Tensor layer_bytes = at::empty({table_bytes}, p.x1.options().dtype(at::kByte));
    at::Tensor host = at::from_blob(p.layers.data(), {table_bytes},
                                    at::TensorOptions().dtype(at::kByte));
    layer_bytes.copy_(host);  // synchronous: p.layers outlives the copy

    Launch<T> a;
    a.prog = p.prog;
    a.prog.layers = reinterpret_cast<const math::CnnLayer<T>*>(layer_bytes.data_ptr());
    a.prog.gh = {p.gh_nodes.template data_ptr<T>(), p.gh_weights.template data_ptr<T>(),
                 static_cast<int>(p.gh_nodes.numel())};
    a.dim = p.x1.size(1);
    a.n1 = p.n1;
    a.n2 = p.n2;
    a.symmetric = p.symmetric;
    a.nngp = nngp.defined() ? nngp.data_ptr<T>() : nullptr;
    a.ntk = ntk.defined() ? ntk.data_ptr<T>() : nullptr;

    // Shared memory: the reduction buffer, and the planes when they fit.
    const size_t red_bytes = 2 * kThreads * sizeof(T);
    const int64_t per_pair = math::cnn_scratch_len(p.prog.plane, p.prog.num_slots);
    const size_t plane_bytes = static_cast<size_t>(per_pair) * sizeof(T);
    int optin = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin,
                                          p.x1.get_device()));
    const bool in_shared = red_bytes + plane_bytes <= static_cast<size_t>(optin);
    const size_t smem = in_shared ? red_bytes + plane_bytes : red_bytes;
    if (smem > 48 * 1024) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(cnn_kernel<T>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(smem)));
    }
    at::Tensor scratch;
    auto launch = [&](int64_t items) {
      a.items = items;
      int64_t blocks = std::min<int64_t>(items, kMaxBlocks);
      if (!in_shared) {
        blocks = std::max<int64_t>(
            1, std::min<int64_t>(blocks, kScratchBudget / static_cast<int64_t>(plane_bytes)));
        if (!scratch.defined() || scratch.numel() < blocks * per_pair) {
          scratch = at::empty({blocks * per_pair}, p.x1.options());
        }
        a.scratch = scratch.template data_ptr<T>();
      } else {
        a.scratch = nullptr;
      }
      cnn_kernel<T><<<static_cast<unsigned>(blocks), kThreads, smem, stream>>>(a);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };

    // Self pairs: the variance rows of x1, then of x2.
    a.x1 = p.x1.template data_ptr<T>();
    a.var_self = p.var1.template data_ptr<T>();
    launch(p.n1);
    if (!p.symmetric) {
      a.x1 = p.x2.template data_ptr<T>();
      a.var_self = p.var2.template data_ptr<T>();
      launch(p.n2);
    }
    a.x1 = p.x1.template data_ptr<T>();
    a.x2 = p.x2.template data_ptr<T>();
    a.var1 = p.var1.template data_ptr<T>();
    a.var2 = p.var2.template data_ptr<T>();
    a.var_self = nullptr;
    launch(p.symmetric ? p.n1 * (p.n1 + 1) / 2 : p.n1 * p.n2);
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(torch_ntk, CUDA, m) {
  m.impl("cnn_kernels", &cnn_kernels_op<CudaCnn>);
}

}  // namespace torch_ntk
