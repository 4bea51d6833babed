// The CUDA CNN kernel's blocks emulated on the host, for tests (a private op, not API):
//
//   torch.ops.torch_ntk._cnn_kernels_blocks(<the cnn_kernels arguments>, threads, blocks)
//
// runs the cnn_kernels op with csrc/math/cnn_block.h, the code of one CUDA block
// (csrc/cuda/cnn_kernels_cuda.cu), on `blocks` teams of `threads` host threads each: the
// team paths of csrc/math/cnn_recursion.h (separable taps and entry walks of a team, the
// ImageCursor and PlaneCursor strides, team_sum2, the barriers between steps) that the
// CPU op's one-thread paths never take. Each team owns a scratch slice of the working
// planes, as a block does in the global-scratch mode, and takes items blockIdx,
// blockIdx + blocks, ... as the grid-stride loop does. A missing barrier shows as a race
// between host threads; a wrong index or stride as a wrong kernel; a barrier that not
// every thread reaches as a hang (as on the GPU).
#include <condition_variable>
#include <limits>
#include <mutex>
#include <thread>
#include <vector>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "../cnn_spec.h"
#include "../math/cnn_block.h"

namespace torch_ntk {
namespace {

// __syncthreads for n host threads: a reusable barrier (std::barrier would need a C++20
// library, GCC 11 or later; the mutex also orders the threads' memory accesses).
class HostBarrier {
 public:
  explicit HostBarrier(int n) : n_(n) {}
  void arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const long generation = generation_;
    if (++waiting_ == n_) {
      waiting_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return generation_ != generation; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int n_, waiting_ = 0;
  long generation_ = 0;
};

// One host thread of an emulated block: threadIdx.x = t of n, __syncthreads = the
// team's barrier.
template <typename T>
struct HostTeam {
  static constexpr bool kSerial = false;  // the team paths, as BlockTeam
  int t, n;
  HostBarrier* bar;
  T* red;  // [2 n]: team_sum2's partial sums
  int64_t begin() const { return t; }
  int64_t step() const { return n; }
  void sync() const { bar->arrive_and_wait(); }
  void sum2(T& a, T& b) const { math::team_sum2(*this, red, t, n, a, b); }
};

struct BlockShape {
  int threads = 1, blocks = 1;
};
thread_local BlockShape g_shape;  // set by the op for the backend it runs

// A backend of cnn_kernels_op (csrc/cnn_spec.h) running every launch of CudaCnn::run on
// emulated blocks.
struct EmulatedCnn {
  template <typename T>
  static void run(CnnProblem<T>& p, at::Tensor& nngp, at::Tensor& ntk) {
    const BlockShape shape = g_shape;
    math::CnnLaunch<T> a{};
    a.prog = p.prog;
    a.prog.layers = p.layers.data();
    a.prog.gh = {p.gh_nodes.template data_ptr<T>(), p.gh_weights.template data_ptr<T>(),
                 static_cast<int>(p.gh_nodes.numel())};
    a.dim = p.x1.size(1);
    a.n1 = p.n1;
    a.n2 = p.n2;
    a.symmetric = p.symmetric;
    a.nngp = nngp.defined() ? nngp.data_ptr<T>() : nullptr;
    a.ntk = ntk.defined() ? ntk.data_ptr<T>() : nullptr;
    const int64_t per_block = math::cnn_scratch_len(p.prog.plane, p.prog.num_slots);
    // Not zeroed, like the GPU's scratch (NaN-filled, so a read before a write shows).
    std::vector<T> scratch(static_cast<size_t>(per_block * shape.blocks),
                           std::numeric_limits<T>::quiet_NaN());
    auto launch = [&](int64_t items) {
      a.items = items;
      for (int blk = 0; blk < shape.blocks; ++blk) {  // blocks one after another
        HostBarrier bar(shape.threads);
        std::vector<T> red(2 * static_cast<size_t>(shape.threads));
        std::vector<std::thread> threads;
        for (int t = 0; t < shape.threads; ++t) {
          threads.emplace_back([&, t] {
            const HostTeam<T> team{t, shape.threads, &bar, red.data()};
            for (int64_t k = blk; k < a.items; k += shape.blocks) {
              math::cnn_block_item(a, team, scratch.data() + blk * per_block, k);
            }
          });
        }
        for (auto& th : threads) th.join();
      }
    };
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

std::tuple<at::Tensor, at::Tensor> cnn_kernels_blocks(
    const at::Tensor& x1, const c10::optional<at::Tensor>& x2, at::IntArrayRef codes,
    at::IntArrayRef ints, at::ArrayRef<double> floats, const at::Tensor& gh_nodes,
    const at::Tensor& gh_weights, bool force_quadrature, bool want_nngp, bool want_ntk,
    int64_t threads, int64_t blocks) {
  TORCH_CHECK_VALUE(threads >= 1 && threads <= 1024, "_cnn_kernels_blocks: threads must be in "
                    "[1, 1024]; got ", threads);
  TORCH_CHECK_VALUE(blocks >= 1 && blocks <= 64, "_cnn_kernels_blocks: blocks must be in "
                    "[1, 64]; got ", blocks);
  g_shape = {static_cast<int>(threads), static_cast<int>(blocks)};
  return cnn_kernels_op<EmulatedCnn>(x1, x2, codes, ints, floats, gh_nodes, gh_weights,
                                     force_quadrature, want_nngp, want_ntk);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(torch_ntk, m) {
  // Test support: cnn_kernels on `blocks` emulated CUDA blocks of `threads` host threads
  // (csrc/cpu/cnn_block_cpu.cpp). Not part of the API.
  m.def(
      "_cnn_kernels_blocks(Tensor x1, Tensor? x2, int[] layer_codes, int[] layer_ints, "
      "float[] layer_floats, Tensor gh_nodes, Tensor gh_weights, bool force_quadrature, "
      "bool want_nngp, bool want_ntk, int threads, int blocks) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(torch_ntk, CPU, m) {
  m.impl("_cnn_kernels_blocks", &cnn_kernels_blocks);
}

}  // namespace torch_ntk
