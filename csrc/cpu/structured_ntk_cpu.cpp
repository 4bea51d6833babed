// CPU implementation of structured_ntk.
//
// The output is cut into tiles of rows x columns (cpu_tiling in structured_spec.h);
// the threads of at::parallel_for take tiles from a shared counter. For each tile and
// each layer, single-threaded BLAS calls (the GEMMs run inside the parallel region, so
// MKL/OpenBLAS do not spawn threads of their own) fill two small per-thread buffers,
// the activation Gram <A1, A2> and the cotangent Gram <D1, D2>, and the Hadamard
// update (csrc/math/structured_tile.h) accumulates them into the output tile, which
// stays in cache across layers. No N x N intermediate exists; per-thread memory is two
// tile buffers, within the workspace limit together. The reduced precisions
// (structured_spec.h) run on rounded float32 copies of the operands. With x2 = x1 only
// tiles on or above the diagonal are computed, and their mirror images are
// written from them, so the result is exactly symmetric and the Gram work halves.
#include <algorithm>
#include <atomic>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../structured_spec.h"

namespace torch_ntk {
namespace {

// One GEMM of a Gram block, single-threaded BLAS (inside the parallel region).
void cpu_product(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate) {
  if (accumulate) {
    out.addmm_(a, b);
  } else {
    at::mm_out(out, a, b);
  }
}

template <typename T>
struct TileJob {
  const StructuredArgs& s;
  at::Tensor& out;  // [N1, N2, C] contiguous

  // Accumulates all layers into out[i0:i0+ni, j0:j0+nj, :].
  void run_tile(int64_t i0, int64_t ni, int64_t j0, int64_t nj, at::Tensor& ga_buf,
                at::Tensor& gd_buf) const {
    const int64_t L = static_cast<int64_t>(s.a1.size());
    const int64_t nl = s.n_out, C = s.channels;
    T* out_ptr = out.data_ptr<T>();
    bool first = true;
    for (int64_t l = 0; l < L; ++l) {
      const T cw = static_cast<T>(s.cw[l]), cb = static_cast<T>(s.cb[l]);
      if (cw == T(0) && cb == T(0)) continue;
      const T* ga = nullptr;
      if (cw != T(0)) {
        activation_gram_out(s, l, ga_buf, i0, ni, j0, nj, cpu_product);
        ga = ga_buf.data_ptr<T>();
      }
      cotangent_gram_out(s, l, gd_buf, i0, ni, j0, nj, cpu_product);
      const T* gd = gd_buf.data_ptr<T>();
      // distance between rows of the cotangent Gram buffer
      const int64_t d_stride = s.mode == math::kModeFull ? nj * nl : nj;
      for (int64_t i = 0; i < ni; ++i) {
        T* row = out_ptr + ((i0 + i) * s.n2 + j0) * C;
        const T* ga_row = ga != nullptr ? ga + i * nj : nullptr;
        if (s.mode == math::kModeTrace) {
          math::accumulate_trace_row(row, ga_row, gd + i * nj, nj, cw, cb, first);
        } else if (s.mode == math::kModeDiagonal) {
          math::accumulate_diagonal_row(row, ga_row, gd + i * nj, ni * nj, nj, nl, cw, cb, first);
        } else {
          math::accumulate_full_row(row, ga_row, gd + i * nl * d_stride, d_stride, nj, nl, cw,
                                    cb, first);
        }
      }
      first = false;
    }
    if (first) {  // every layer frozen: the kernel is zero
      for (int64_t i = 0; i < ni; ++i) {
        std::fill_n(out_ptr + ((i0 + i) * s.n2 + j0) * C, nj * C, T(0));
      }
    }
    if (s.symmetric) mirror_tile(i0, ni, j0, nj);
  }

  // Writes Theta(x', x) from Theta(x, x') for the tile's entries strictly above the
  // diagonal (and, on the diagonal x = x' in full mode, channel (k', k) from (k, k') with
  // k < k'), so out is exactly symmetric.
  void mirror_tile(int64_t i0, int64_t ni, int64_t j0, int64_t nj) const {
    T* o = out.data_ptr<T>();
    const int64_t C = s.channels, n2 = s.n2;
    for (int64_t i = i0; i < i0 + ni; ++i) {
      for (int64_t j = std::max(j0, i); j < j0 + nj; ++j) {
        const T* src = o + (i * n2 + j) * C;
        T* dst = o + (j * n2 + i) * C;
        if (i == j) {
          if (s.mode != math::kModeFull) continue;
          for (int64_t c = 0; c < C; ++c) {
            const int64_t t = math::mirror_channel(s.mode, c, s.n_out);
            if (t > c) dst[t] = src[c];
          }
        } else {
          for (int64_t c = 0; c < C; ++c) dst[math::mirror_channel(s.mode, c, s.n_out)] = src[c];
        }
      }
    }
  }
};

// The CPU backend of structured_ntk_op (csrc/structured_spec.h).
struct CpuStructured {
  static constexpr at::ScalarType kOperandStorage = at::kFloat;  // roundings emulated

  template <typename T>
  static void run(const StructuredArgs& s, at::Tensor& out) {
    const CpuTiling tiling =
        cpu_tiling(s, sizeof(T), s.workspace_limit, at::get_num_threads());
    const int64_t tile = tiling.tile;
    std::vector<std::pair<int64_t, int64_t>> tiles;  // (first row, first column)
    for (int64_t i0 = 0; i0 < s.n1; i0 += tile) {
      for (int64_t j0 = s.symmetric ? i0 : 0; j0 < s.n2; j0 += tile) tiles.emplace_back(i0, j0);
    }
    const TileJob<T> job{s, out};
    const auto opts = out.options();
    // Threads take tiles from a shared counter rather than fixed ranges: on a machine
    // where another process steals a core, the other threads pick up its share.
    const int64_t num_tiles = static_cast<int64_t>(tiles.size());
    std::atomic<int64_t> next{0};
    at::parallel_for(0, tiling.workers, 1, [&](int64_t begin, int64_t end) {
      at::Tensor ga_buf = at::empty({tile * tile}, opts);
      at::Tensor gd_buf = at::empty({tile * tile * s.channels}, opts);
      for (int64_t w = begin; w < end; ++w) {
        for (int64_t t = next.fetch_add(1); t < num_tiles; t = next.fetch_add(1)) {
          const int64_t i0 = tiles[t].first, j0 = tiles[t].second;
          job.run_tile(i0, std::min(tile, s.n1 - i0), j0, std::min(tile, s.n2 - j0), ga_buf,
                       gd_buf);
        }
      }
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(torch_ntk, CPU, m) {
  m.impl("structured_ntk", &structured_ntk_op<CpuStructured>);
}

}  // namespace torch_ntk
