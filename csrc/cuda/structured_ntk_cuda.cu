// CUDA implementation of structured_ntk.
//
// One thread block owns a kTile x kTile tile of sample pairs for one output channel
// (blockIdx.z; csrc/math/structured_tile.h for the channel map). For each layer it
// computes the tile of the activation Gram <A1, A2> and of the cotangent Gram
// <D1, D2> in registers, staging kDepth-wide slices of the operands in shared
// memory, and accumulates layer_term(c_w, c_b, ., .) into registers; the output tile
// is written once, after the last layer. No N x N intermediate, no atomics: each
// output entry has exactly one writer, so results are deterministic. With x2 = x1
// only tiles on or above the diagonal run and write their mirror images, so the
// result is exactly symmetric. In "full" and "diagonal" modes each channel's block
// recomputes its tile of <A1, A2> (n_L^2 or n_L times in all): the price of keeping
// every accumulator in registers; "trace" has one channel.
#include <algorithm>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../structured_spec.h"

namespace torch_ntk {
namespace {

constexpr int kTile = 64;                 // pairs per tile side
constexpr int kThreads = 16;              // kThreads x kThreads threads per block
constexpr int kMicro = kTile / kThreads;  // each thread owns kMicro x kMicro pairs
constexpr int kDepth = 16;                // reduction slice staged in shared memory
constexpr int kMaxLayers = 16;            // layers per launch; deeper models take more launches

template <typename T>
struct LayerArgs {
  const T* a1;  // [N1, n]
  const T* a2;  // [N2, n]
  const T* d1;  // [N1, n_L, m]
  const T* d2;  // [N2, n_L, m]
  int64_t n, m;
  T cw, cb;
};

template <typename T>
struct KernelArgs {
  LayerArgs<T> layers[kMaxLayers];
  int num_layers;
  int mode;
  int64_t n1, n2, n_out, channels;
  bool symmetric;
  bool accumulate;  // add to out instead of overwriting it (launches after the first)
  T* out;           // [N1, N2, channels]
};

// acc[r][c] += sum_{t < len} X[row0 + ty kMicro + r, t] * Y[col0 + tx kMicro + c, t], with
// X rows of stride sx (nx rows) and Y rows of stride sy (ny rows). Out-of-range rows and
// the tail of the last slice read as zero.
template <typename T>
__device__ __forceinline__ void tile_dot(const T* __restrict__ x, int64_t sx, int64_t nx,
                                         int64_t row0, const T* __restrict__ y, int64_t sy,
                                         int64_t ny, int64_t col0, int64_t len,
                                         T (*xs)[kTile + 1], T (*ys)[kTile + 1],
                                         T acc[kMicro][kMicro]) {
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int tid = ty * kThreads + tx;
  for (int64_t t0 = 0; t0 < len; t0 += kDepth) {
    for (int e = tid; e < kTile * kDepth; e += kThreads * kThreads) {
      const int r = e / kDepth, t = e % kDepth;  // a warp reads two rows of 16 contiguous entries
      const int64_t gt = t0 + t;
      const int64_t gx = row0 + r, gy = col0 + r;
      xs[t][r] = (gx < nx && gt < len) ? x[gx * sx + gt] : T(0);
      ys[t][r] = (gy < ny && gt < len) ? y[gy * sy + gt] : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int t = 0; t < kDepth; ++t) {
      T xv[kMicro], yv[kMicro];
#pragma unroll
      for (int r = 0; r < kMicro; ++r) xv[r] = xs[t][ty * kMicro + r];
#pragma unroll
      for (int c = 0; c < kMicro; ++c) yv[c] = ys[t][tx * kMicro + c];
#pragma unroll
      for (int r = 0; r < kMicro; ++r) {
#pragma unroll
        for (int c = 0; c < kMicro; ++c) acc[r][c] += xv[r] * yv[c];
      }
    }
    __syncthreads();
  }
}

template <typename T>
__device__ __forceinline__ void store(T* p, T v, bool accumulate) {
  *p = accumulate ? *p + v : v;
}

template <typename T>
__global__ void __launch_bounds__(kThreads* kThreads)
    structured_ntk_kernel(const KernelArgs<T> args) {
  const int64_t bi = blockIdx.y, bj = blockIdx.x, c = blockIdx.z;
  if (args.symmetric && bj < bi) return;  // the mirror of tile (bj, bi) covers it
  __shared__ T xs[kDepth][kTile + 1];
  __shared__ T ys[kDepth][kTile + 1];
  const int64_t row0 = bi * kTile, col0 = bj * kTile;

  T acc[kMicro][kMicro];
#pragma unroll
  for (int r = 0; r < kMicro; ++r) {
#pragma unroll
    for (int q = 0; q < kMicro; ++q) acc[r][q] = T(0);
  }
  for (int l = 0; l < args.num_layers; ++l) {
    const LayerArgs<T> L = args.layers[l];
    T gd[kMicro][kMicro], ga[kMicro][kMicro];
#pragma unroll
    for (int r = 0; r < kMicro; ++r) {
#pragma unroll
      for (int q = 0; q < kMicro; ++q) gd[r][q] = ga[r][q] = T(0);
    }
    int64_t off1, off2, len;
    math::channel_rows(args.mode, c, args.n_out, L.m, off1, off2, len);
    const int64_t dstride = args.n_out * L.m;
    tile_dot(L.d1 + off1, dstride, args.n1, row0, L.d2 + off2, dstride, args.n2, col0, len, xs,
             ys, gd);
    if (L.cw != T(0)) {
      tile_dot(L.a1, L.n, args.n1, row0, L.a2, L.n, args.n2, col0, L.n, xs, ys, ga);
    }
#pragma unroll
    for (int r = 0; r < kMicro; ++r) {
#pragma unroll
      for (int q = 0; q < kMicro; ++q) acc[r][q] += math::layer_term(L.cw, L.cb, ga[r][q], gd[r][q]);
    }
  }

  const int64_t C = args.channels;
  const int64_t mc = math::mirror_channel(args.mode, c, args.n_out);
#pragma unroll
  for (int r = 0; r < kMicro; ++r) {
    const int64_t i = row0 + threadIdx.y * kMicro + r;
    if (i >= args.n1) continue;
#pragma unroll
    for (int q = 0; q < kMicro; ++q) {
      const int64_t j = col0 + threadIdx.x * kMicro + q;
      if (j >= args.n2) continue;
      const T v = acc[r][q];
      if (!args.symmetric) {
        store(args.out + (i * args.n2 + j) * C + c, v, args.accumulate);
      } else if (i < j) {
        store(args.out + (i * args.n2 + j) * C + c, v, args.accumulate);
        store(args.out + (j * args.n2 + i) * C + mc, v, args.accumulate);
      } else if (i == j && c <= mc) {
        // Theta_kk'(x, x) and Theta_k'k(x, x) get one writer: this block.
        store(args.out + (i * args.n2 + i) * C + c, v, args.accumulate);
        if (mc != c) store(args.out + (i * args.n2 + i) * C + mc, v, args.accumulate);
      }
    }
  }
}

template <typename T>
void launch_structured(const StructuredArgs& s, at::Tensor& out) {
  const int64_t L = static_cast<int64_t>(s.a1.size());
  const int64_t tiles1 = (s.n1 + kTile - 1) / kTile, tiles2 = (s.n2 + kTile - 1) / kTile;
  TORCH_CHECK_VALUE(tiles1 <= 65535 && tiles2 <= 2147483647LL && s.channels <= 65535,
                    "structured_ntk: too large for one launch (N1 = ", s.n1, ", ", s.channels,
                    " output channels); split x1 into chunks (empirical_ntk does) or use mode "
                    "'trace'/'diagonal'");
  const dim3 grid(static_cast<unsigned>(tiles2), static_cast<unsigned>(tiles1),
                  static_cast<unsigned>(s.channels));
  const dim3 block(kThreads, kThreads);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  bool first = true;
  for (int64_t l0 = 0; l0 < L; l0 += kMaxLayers) {
    KernelArgs<T> args;
    args.num_layers = 0;
    for (int64_t l = l0; l < std::min(L, l0 + kMaxLayers); ++l) {
      LayerArgs<T>& la = args.layers[args.num_layers++];
      la.a1 = s.a1[l].data_ptr<T>();
      la.a2 = s.a2[l].data_ptr<T>();
      la.d1 = s.d1[l].data_ptr<T>();
      la.d2 = s.d2[l].data_ptr<T>();
      la.n = s.a1[l].size(1);
      la.m = s.d1[l].size(2);
      la.cw = static_cast<T>(s.cw[l]);
      la.cb = static_cast<T>(s.cb[l]);
    }
    args.mode = s.mode;
    args.n1 = s.n1;
    args.n2 = s.n2;
    args.n_out = s.n_out;
    args.channels = s.channels;
    args.symmetric = s.symmetric;
    args.accumulate = !first;
    args.out = out.data_ptr<T>();
    structured_ntk_kernel<T><<<grid, block, 0, stream>>>(args);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    first = false;
  }
}

at::Tensor structured_ntk_cuda(at::TensorList a1, at::TensorList d1, at::TensorList a2,
                               at::TensorList d2, at::ArrayRef<double> weight_coef,
                               at::ArrayRef<double> bias_coef, c10::string_view mode) {
  const StructuredArgs s = check_structured_args(a1, d1, a2, d2, weight_coef, bias_coef, mode);
  TORCH_INTERNAL_ASSERT(s.a1[0].device().is_cuda());
  const c10::cuda::CUDAGuard guard(s.a1[0].device());
  at::Tensor out = at::empty({s.n1, s.n2, s.channels}, s.a1[0].options());
  if (s.n1 > 0 && s.n2 > 0) {
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "structured_ntk_cuda",
                               [&] { launch_structured<scalar_t>(s, out); });
  }
  return out.view(structured_output_shape(s));
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_ntk, CUDA, m) { m.impl("structured_ntk", &structured_ntk_cuda); }

}  // namespace torch_ntk
