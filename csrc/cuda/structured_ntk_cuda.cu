// CUDA implementation of structured_ntk: cuBLAS Gram products and one fused update
// kernel per layer.
//
// The rows of x1 are cut into blocks sized so that the Gram buffers stay under the
// workspace limit (cuda_block_rows in structured_spec.h). Layer by layer, for each block, cuBLAS computes the block of the
// activation Gram <A1, A2> and of the cotangent Gram <D1, D2> (activation_gram_out and
// cotangent_gram_out of csrc/structured_spec.h, shared with the CPU), and accumulate_layer_kernel adds
// layer_term(c_w, c_b, ., .) into the output, one thread per output entry. With
// x2 = x1 a block computes only the columns from its first row on, and
// mirror_lower_kernel finally writes every entry below the diagonal from its mirror
// image above it, so the result is exactly symmetric and large inputs do a bit more
// than half the Gram work. Reduced precisions (structured_spec.h) run the products on
// bfloat16 operands with float32 outputs (tensor cores).
#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../structured_spec.h"

namespace torch_ntk {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxGridX = 1 << 16;
constexpr int kMaxGridY = 65535;

// out[i * out_stride + j * C + c] (+)= layer_term(c_w, c_b, ga[i, j], gd(i, j, c)) for the
// ni x nj pairs of one block; ga == nullptr stands for c_w = 0; first: assign.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    accumulate_layer_kernel(T* __restrict__ out, int64_t out_stride, const T* __restrict__ ga,
                            const T* __restrict__ gd, int64_t ni, int64_t nj, int64_t n_out,
                            int64_t channels, int mode, T cw, T cb, bool first) {
  const int64_t row_len = nj * channels;
  for (int64_t i = blockIdx.y; i < ni; i += gridDim.y) {
    for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < row_len;
         e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t j = e / channels, c = e - j * channels;
      const T gram_a = ga != nullptr ? ga[i * nj + j] : T(0);
      const T gram_d = gd[math::cotangent_gram_offset(mode, i, j, c, ni, nj, n_out)];
      const T v = math::layer_term(cw, cb, gram_a, gram_d);
      T* o = out + i * out_stride + e;
      *o = first ? v : *o + v;
    }
  }
}

constexpr int kDiagTile = 32;

// accumulate_layer_kernel for mode "diagonal", whose cotangent Gram is [C, ni, nj] (one
// product per channel k) while the output row is [nj, C]: adjacent output entries are
// adjacent channels, kept ni nj apart in gd. A block moves a tile of 32 columns j x 32
// channels c through shared memory: read along j (adjacent threads, adjacent j), written
// along (j, c) (adjacent threads, adjacent output entries); the same sums as
// accumulate_layer_kernel. Grid: x column tiles, y rows (grid stride), z channel tiles.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    accumulate_diagonal_kernel(T* __restrict__ out, int64_t out_stride,
                               const T* __restrict__ ga, const T* __restrict__ gd, int64_t ni,
                               int64_t nj, int64_t channels, T cw, T cb, bool first) {
  __shared__ T tile[kDiagTile][kDiagTile + 1];  // [c][j]; +1: no bank conflicts either way
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * kDiagTile;
  const int64_t c0 = static_cast<int64_t>(blockIdx.z) * kDiagTile;
  const int jn = static_cast<int>(nj - j0 < kDiagTile ? nj - j0 : kDiagTile);
  const int cn = static_cast<int>(channels - c0 < kDiagTile ? channels - c0 : kDiagTile);
  for (int64_t i = blockIdx.y; i < ni; i += gridDim.y) {
    for (int e = threadIdx.x; e < kDiagTile * kDiagTile; e += blockDim.x) {
      const int cl = e / kDiagTile, jl = e % kDiagTile;  // constant divisor: shifts
      if (cl < cn && jl < jn) tile[cl][jl] = gd[((c0 + cl) * ni + i) * nj + j0 + jl];
    }
    __syncthreads();
    T* row = out + i * out_stride + j0 * channels + c0;
    for (int e = threadIdx.x; e < jn * cn; e += blockDim.x) {
      const int jl = e / cn, cl = e - jl * cn;  // 32-bit, once per entry of the tile
      const T gram_a = ga != nullptr ? ga[i * nj + j0 + jl] : T(0);
      const T v = math::layer_term(cw, cb, gram_a, tile[cl][jl]);
      T* o = row + static_cast<int64_t>(jl) * channels + cl;
      *o = first ? v : *o + v;
    }
    __syncthreads();  // the tile is reloaded for the next row
  }
}

// out [n, n, C]: Theta(x_i, x_j) for j < i from Theta(x_j, x_i), and on the diagonal
// channel (k', k) from (k, k') for k < k'. Reads and writes disjoint entries.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    mirror_lower_kernel(T* __restrict__ out, int64_t n, int64_t n_out, int64_t channels,
                        int mode) {
  for (int64_t i = blockIdx.y; i < n; i += gridDim.y) {
    const int64_t row_len = (i + 1) * channels;  // entries (i, j <= i, c)
    for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < row_len;
         e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t j = e / channels, c = e - j * channels;
      const int64_t mc = math::mirror_channel(mode, c, n_out);
      if (j < i) {
        out[(i * n + j) * channels + c] = out[(j * n + i) * channels + mc];
      } else if (mc < c) {
        out[(i * n + i) * channels + c] = out[(i * n + i) * channels + mc];
      }
    }
  }
}

dim3 rows_grid(int64_t rows, int64_t row_len) {
  const int64_t x = std::min<int64_t>((row_len + kThreads - 1) / kThreads, kMaxGridX);
  const int64_t y = std::min<int64_t>(rows, kMaxGridY);
  return dim3(static_cast<unsigned>(std::max<int64_t>(x, 1)),
              static_cast<unsigned>(std::max<int64_t>(y, 1)));
}

// out (float32) = a @ b for bfloat16 a, b: tensor-core products accumulated and
// returned in float32. Looked up at run time so the extension also builds against a
// torch without aten::mm.dtype_out (then only precision "highest" works).
at::Tensor& mm_bf16_to_float_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  using Signature = at::Tensor&(const at::Tensor&, const at::Tensor&, at::ScalarType, at::Tensor&);
  static const auto op = [] {
    const auto handle = c10::Dispatcher::singleton().findSchema({"aten::mm", "dtype_out"});
    TORCH_CHECK(handle.has_value(),
                "structured_ntk: precision 'bf16'/'bf16x3' needs aten::mm.dtype_out (torch >= "
                "2.8); use precision='highest' with this torch");
    return handle->typed<Signature>();
  }();
  return op.call(a, b, at::kFloat, out);
}

// One GEMM of a Gram block: bfloat16 operands give float32 products (tensor cores);
// an accumulating one goes through the front of `scratch` (flat, large enough).
auto cuda_product(const at::Tensor& scratch) {
  return [scratch](at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
    if (a.scalar_type() != at::kBFloat16) {
      at::mm_out(out, a, b);  // "highest": accumulate is never asked for
    } else if (accumulate) {
      at::Tensor tmp = scratch.narrow(0, 0, out.numel()).view(out.sizes());
      out.add_(mm_bf16_to_float_out(tmp, a, b));
    } else {
      mm_bf16_to_float_out(out, a, b);
    }
  };
}

// The CUDA backend of structured_ntk_op (csrc/structured_spec.h).
struct CudaStructured {
  static constexpr at::ScalarType kOperandStorage = at::kBFloat16;  // for tensor cores

  template <typename T>
  static void run(const StructuredArgs& s, at::Tensor& out) {
    const c10::cuda::CUDAGuard guard(out.device());
    const int64_t nl = s.n_out, C = s.channels;
    // Gram buffers of one block of rows x N2 pairs, structured_workspace_bytes in all.
    const int64_t rows = cuda_block_rows(s, sizeof(T), s.workspace_limit);
    const int64_t pairs = rows * s.n2;
    const auto opts = out.options();
    at::Tensor ga_buf = at::empty({pairs}, opts);
    at::Tensor gd_buf = at::empty({pairs * C}, opts);
    at::Tensor scratch_buf;
    if (s.precision == kBF16x3) scratch_buf = at::empty({pairs * C}, opts);
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    T* out_ptr = out.data_ptr<T>();
    const auto product = cuda_product(scratch_buf);

    bool first = true;
    for (size_t l = 0; l < s.a1.size(); ++l) {
      const T cw = static_cast<T>(s.cw[l]), cb = static_cast<T>(s.cb[l]);
      if (cw == T(0) && cb == T(0)) continue;
      for (int64_t i0 = 0; i0 < s.n1; i0 += rows) {
        const int64_t ni = std::min(rows, s.n1 - i0);
        const int64_t j0 = s.symmetric ? i0 : 0;
        const int64_t nj = s.n2 - j0;
        const T* ga = nullptr;
        if (cw != T(0)) {
          activation_gram_out(s, l, ga_buf, i0, ni, j0, nj, product);
          ga = ga_buf.data_ptr<T>();
        }
        cotangent_gram_out(s, l, gd_buf, i0, ni, j0, nj, product);
        if (s.mode == math::kModeDiagonal) {
          const dim3 grid(static_cast<unsigned>((nj + kDiagTile - 1) / kDiagTile),
                          static_cast<unsigned>(std::min<int64_t>(ni, kMaxGridY)),
                          static_cast<unsigned>((C + kDiagTile - 1) / kDiagTile));
          TORCH_CHECK(grid.z <= 65535, "structured_ntk: ", C, " output channels in mode "
                      "'diagonal' exceed one launch (at most ", 65535 * kDiagTile, ")");
          accumulate_diagonal_kernel<T><<<grid, kThreads, 0, stream>>>(
              out_ptr + (i0 * s.n2 + j0) * C, s.n2 * C, ga, gd_buf.data_ptr<T>(), ni, nj, C,
              cw, cb, first);
        } else {
          accumulate_layer_kernel<T><<<rows_grid(ni, nj * C), kThreads, 0, stream>>>(
              out_ptr + (i0 * s.n2 + j0) * C, s.n2 * C, ga, gd_buf.data_ptr<T>(), ni, nj, nl,
              C, s.mode, cw, cb, first);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      first = false;
    }
    if (first) {  // every layer frozen: the kernel is zero
      out.zero_();
    } else if (s.symmetric) {
      mirror_lower_kernel<T><<<rows_grid(s.n1, s.n1 * C), kThreads, 0, stream>>>(
          out_ptr, s.n1, nl, C, s.mode);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(torch_ntk, CUDA, m) {
  m.impl("structured_ntk", &structured_ntk_op<CudaStructured>);
}

}  // namespace torch_ntk
