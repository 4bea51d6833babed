// CUDA implementation of cnn_kernels, with the arithmetic of the CPU op
// (csrc/math/cnn_recursion.h).
//
// One block per pair (a grid of blocks loops over the pairs): the block's threads split
// every plane of the pair and synchronize between layers (csrc/math/cnn_block.h, the
// block's code, which csrc/cpu/cnn_block_cpu.cpp also runs on host threads for the tests;
// a CONV on full planes sums its taps separably, in the CPU's order). The 4 planes (and 2 per skip
// register of a graph program) live in dynamic
// shared memory when they fit (up to the device's opt-in limit), else in a global
// scratch buffer with one slice per block (the grid is then sized from the free device
// memory, to a few blocks per SM: scratch_blocks).
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
#include "../math/cnn_block.h"

namespace torch_ntk {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;
constexpr int64_t kScratchBlocksPerSm = 4;                 // global-scratch mode: blocks per SM
constexpr int64_t kScratchMin = int64_t(1) << 30;          // scratch allowed even if less is free
constexpr int64_t kScratchCap = int64_t(16) << 30;         // never more than this, bytes

// Blocks of a global-scratch launch over `items` pairs, each block owning a slice of
// slice_bytes: enough for kScratchBlocksPerSm blocks on every SM (e.g. 528 on an H100:
// CIFAR GAP planes of 16 MiB in float32 then take 8.3 GiB), limited to half the free
// device memory (cudaMemGetInfo; at least kScratchMin, at most kScratchCap). The old
// fixed 1 GiB budget gave 32-64 blocks on 132 SMs for full 32 x 32 planes.
inline int64_t scratch_blocks(int device, int64_t items, int64_t slice_bytes) {
  size_t free_bytes = 0, total_bytes = 0;
  C10_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  int sms = 1;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  const int64_t budget =
      std::min(kScratchCap, std::max(kScratchMin, static_cast<int64_t>(free_bytes / 2)));
  const int64_t want = std::min<int64_t>({items, kMaxBlocks, kScratchBlocksPerSm * sms});
  return std::max<int64_t>(1, std::min(want, budget / slice_bytes));
}

// The threads of one block sharing a pair (a Team of csrc/math/cnn_recursion.h); red
// [2 * kThreads] in shared memory.
template <typename T>
struct BlockTeam {
  static constexpr bool kSerial = false;  // the team paths of csrc/math/cnn_recursion.h
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
    math::team_sum2(*this, red, static_cast<int>(begin()), static_cast<int>(step()), a, b);
  }
};

// One block per item (a grid-stride loop over the items): csrc/math/cnn_block.h, which the
// host emulation of a block (csrc/cpu/cnn_block_cpu.cpp) runs too.
template <typename T>
__global__ void __launch_bounds__(kThreads) cnn_kernel(math::CnnLaunch<T> a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* red = reinterpret_cast<T*>(smem_raw);
  const int64_t per_block = math::cnn_scratch_len(a.prog.plane, a.prog.num_slots);
  T* scratch = a.scratch != nullptr ? a.scratch + blockIdx.x * per_block : red + 2 * blockDim.x;
  const BlockTeam<T> team{red};
  for (int64_t k = blockIdx.x; k < a.items; k += gridDim.x) {
    math::cnn_block_item(a, team, scratch, k);
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

    math::CnnLaunch<T> a{};  // value-initialized: no indeterminate pointer reaches a kernel
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
        blocks = scratch_blocks(p.x1.get_device(), items, static_cast<int64_t>(plane_bytes));
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
