// CUDA implementation of analytic_kernels and activation.
//
// Same plan as the CPU op (csrc/cpu/analytic_ntk_cpu.cpp) and the same per-pair
// arithmetic (csrc/math/recursion.h): a GEMM for <x, x'> into an output buffer, a
// kernel for the per-sample variances, then a pair kernel in which each thread runs
// every layer of its pairs in registers (Hermite-series layers: the same per-sample tables
// and per-pair arithmetic as the CPU, csrc/math/hermite.h). When x2 is None only tiles on or above the
// diagonal run; each writes its tile and, through shared memory, the transposed
// tile, so both halves are written coalesced and the result is exactly symmetric. Pairs
// whose Hermite series misses its bound in some layer are marked in a bit mask and left to
// a second pass (fallback_kernel), which integrates them 32 to a warp.
#include <algorithm>
#include <type_traits>
#include <vector>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../analytic_spec.h"
#include "../math/hermite.h"
#include "../math/recursion.h"

namespace torch_ntk {
namespace {

constexpr int kTileDim = 32;     // output tile is kTileDim x kTileDim
constexpr int kBlockRows = 8;    // threads per block: kTileDim x kBlockRows

template <typename T>
struct DeviceProblem {
  const math::HiddenLayer<T>* layers;  // [num_layers] in global memory
  int num_layers;
  const T* gh_nodes;
  const T* gh_weights;
  int gh_degree;
  math::InputLayer<T> input;
  const T* var1;  // [num_layers, n1]
  const T* var2;  // [num_layers, n2]
  int64_t n1, n2;
  const T* gram;  // [n1, n2]
  T* nngp;        // [n1, n2] or nullptr
  T* ntk;         // [n1, n2] or nullptr
  // Hermite-series tables (AnalyticProblem::ha1 ...; nullptr when no layer is kHermite).
  const T *ha1, *hb1, *ha2, *hb2, *hna1, *hnb1, *hra1, *hrb1, *hra2, *hrb2;
  const int* hterms;  // [num_layers] K of each series layer
  // Whether the kernels stage the layer table and the quadrature rule in dynamic shared
  // memory (they fit the default per-block budget) or read them from global memory
  // (deep nets, large degrees: warp-uniform, L1-cached loads); see table_placement.
  bool tables_in_shared;
  // The pairs whose series bound failed in some layer (series layers only; else nullptr):
  // bit j % 32 of word i * mask_words + j / 32, set by the pair kernels, whose results for
  // those pairs fallback_kernel then overwrites.
  unsigned* fallback_mask;
  int64_t mask_words;  // words per row: ceil(n2 / 32)
};

// One pair's expectations in a Hermite-series layer l (csrc/math/hermite.h): the series,
// or the exact norms on the diagonal; as the CPU's series_layer. Where the series' bound
// exceeds the tolerance the CPU integrates the pair by composite 2-D quadrature (double,
// ~4 10^5 evaluations of phi): kFallback does the same (fallback_kernel), else the pair
// is only reported (returns true) and the pair kernels leave it to fallback_kernel, so
// that their warps never wait on one lane's quadrature.
template <bool kFallback, typename T>
__device__ bool series_pair(const DeviceProblem<T>& P, const math::HiddenLayer<T>& layer, int l,
                            int64_t i, int64_t j, bool diagonal, T q11, T q22, T q12, T& e,
                            T& ed) {
  if (diagonal) {
    e = P.hna1[l * P.n1 + i];
    ed = P.hnb1[l * P.n1 + i];
    return false;
  }
  const int K = P.hterms[l];
  const T prod = q11 * q22;
  const T rho = prod > T(0) ? math::clamp(q12 / math::fsqrt(prod), T(-1), T(1)) : T(0);
  const int64_t o1 = static_cast<int64_t>(l) * math::kHermiteMaxTerms * P.n1 + i;
  const int64_t o2 = static_cast<int64_t>(l) * math::kHermiteMaxTerms * P.n2 + j;
  math::hermite_pair(P.ha1 + o1, P.hb1 + o1, P.n1, P.ha2 + o2, P.hb2 + o2, P.n2, K, rho, e, ed);
  const T ba = P.hra1[l * P.n1 + i] * P.hra2[l * P.n2 + j];
  const T bb = P.hrb1[l * P.n1 + i] * P.hrb2[l * P.n2 + j];
  const T bound = (ba > bb ? ba : bb) * math::hermite_rho_power(rho, K);
  if (!(bound > T(math::HermiteTolerance<T>::value))) return false;
  if constexpr (kFallback) {
    double e64, ed64;
    math::composite_expectations<double>(layer.act, static_cast<double>(layer.param), q11, q22,
                                         q12, e64, ed64);
    e = static_cast<T>(e64);
    ed = static_cast<T>(ed64);
    return false;
  } else {
    return true;
  }
}

// The layer table and the quadrature rule: copied into dynamic shared memory when
// P.tables_in_shared, else read in place from global memory.
template <typename T>
struct SharedTables {
  const math::HiddenLayer<T>* layers;
  math::GaussHermite<T> gh;
};

template <typename T>
__device__ SharedTables<T> load_shared(const DeviceProblem<T>& P) {
  if (!P.tables_in_shared) {  // uniform over the launch: no barrier needed
    return {P.layers, {P.gh_nodes, P.gh_weights, P.gh_degree}};
  }
  extern __shared__ __align__(16) unsigned char smem_raw[];
  auto* layers = reinterpret_cast<math::HiddenLayer<T>*>(smem_raw);
  T* nodes = reinterpret_cast<T*>(layers + P.num_layers);
  T* weights = nodes + P.gh_degree;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const int nthreads = blockDim.x * blockDim.y;
  for (int l = tid; l < P.num_layers; l += nthreads) layers[l] = P.layers[l];
  for (int k = tid; k < P.gh_degree; k += nthreads) {
    nodes[k] = P.gh_nodes[k];
    weights[k] = P.gh_weights[k];
  }
  __syncthreads();
  return {layers, {nodes, weights, P.gh_degree}};
}

// One pair through every layer. kFallback = false (the pair kernels): returns true, with
// sigma and theta unfinished, as soon as a series layer needs the quadrature fallback;
// kFallback = true (fallback_kernel): the CPU's arithmetic throughout, returns false.
template <bool kFallback, typename T>
__device__ bool run_pair(const DeviceProblem<T>& P, const math::HiddenLayer<T>* layers,
                         const math::GaussHermite<T>& gh, int64_t i, int64_t j, bool diagonal,
                         T& sigma, T& theta) {
  const T g = P.gram[i * P.n2 + j];
  sigma = P.input.sigma(g);
  theta = P.input.theta(g);
  for (int l = 0; l < P.num_layers; ++l) {
    const T q11 = P.var1[l * P.n1 + i];
    const T q22 = P.var2[l * P.n2 + j];
    if (diagonal) sigma = q11;  // exact variance on the diagonal, as on the CPU
    T e, ed;
    if (layers[l].kind == math::kHermite) {
      if (series_pair<kFallback>(P, layers[l], l, i, j, diagonal, q11, q22, sigma, e, ed)) {
        return true;
      }
    } else {
      math::layer_expectations(layers[l], gh, q11, q22, sigma, e, ed);
    }
    math::apply_layer(layers[l], e, ed, sigma, theta);
  }
  return false;
}

// Records in the fallback mask the pairs (i, j0 + lane) of one warp for which `needs`
// holds: a ballot over the warp's 32 consecutive columns (j0 a multiple of 32) gives the
// mask word. Every lane of the warp must call it.
template <typename T>
__device__ void mark_fallback(const DeviceProblem<T>& P, int64_t i, int64_t word, bool needs) {
  if (P.fallback_mask == nullptr) return;  // uniform: no series layer
  const unsigned bits = __ballot_sync(0xffffffffu, needs);
  if (threadIdx.x == 0 && bits != 0u) P.fallback_mask[i * P.mask_words + word] = bits;
}

// The variances of one sample set; with series (hermite), the series tables too: layer by
// layer, the next variance of a series layer from its exact E[phi^2] (as on the CPU).
// The coefficients accumulate in global memory, column s of a [K, n] table
// (math::hermite_sample_into): for T = double the output tables themselves, for float
// `work` [2, K, n] (double). (A cap of 128 registers, __launch_bounds__(256, 2), made
// the float kernel spill 1.4 KB per thread under nvcc 13.0: left to the compiler.)
template <typename T>
__global__ void __launch_bounds__(kTileDim * kBlockRows)
    sample_variance_kernel(DeviceProblem<T> P, const T* sq_norms, int64_t n, T* var,
                           bool hermite, math::HermiteSampleTables<T> htables, double* work) {
  const SharedTables<T> tables = load_shared(P);
  const math::HiddenLayer<T>* layers = tables.layers;
  const math::GaussHermite<T>& gh = tables.gh;
  const int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x * blockDim.y +
                    threadIdx.y * blockDim.x + threadIdx.x;
  if (s >= n) return;
  if (!hermite) {
    math::sample_variances(P.input, layers, P.num_layers, gh, sq_norms[s], n, s, var);
    return;
  }
  T q = P.input.sigma(sq_norms[s]);
  for (int l = 0; l < P.num_layers; ++l) {
    var[static_cast<int64_t>(l) * n + s] = q;
    if (layers[l].kind == math::kHermite) {
      double *wa, *wb;
      if constexpr (std::is_same_v<T, double>) {
        wa = htables.a + l * math::kHermiteMaxTerms * n + s;
        wb = htables.b + l * math::kHermiteMaxTerms * n + s;
      } else {
        wa = work + s;
        wb = work + math::HermiteTerms<T>::value * n + s;
      }
      const double e = math::hermite_sample_into(layers[l].act, layers[l].param, q, l, n, s,
                                                 htables, wa, wb, n);
      q = layers[l].weight_var * static_cast<T>(e) + layers[l].bias_var;
    } else {
      q = math::next_variance(layers[l], gh, q);
    }
  }
}

// Rectangular case: one thread per pair (kBlockRows rows per pass), coalesced along j.
template <typename T>
__global__ void pair_kernel(DeviceProblem<T> P) {
  const SharedTables<T> tables = load_shared(P);
  const math::HiddenLayer<T>* layers = tables.layers;
  const math::GaussHermite<T>& gh = tables.gh;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kTileDim + threadIdx.x;
  for (int r = threadIdx.y; r < kTileDim; r += kBlockRows) {  // a warp: one row i
    const int64_t i = static_cast<int64_t>(blockIdx.y) * kTileDim + r;
    bool needs = false;
    if (i < P.n1 && j < P.n2) {
      T sigma, theta;
      needs = run_pair<false>(P, layers, gh, i, j, false, sigma, theta);
      if (!needs) {  // else gram[i, j] (which an output may overwrite) stays for fallback_kernel
        if (P.nngp) P.nngp[i * P.n2 + j] = sigma;
        if (P.ntk) P.ntk[i * P.n2 + j] = theta;
      }
    }
    if (i < P.n1) mark_fallback(P, i, blockIdx.x, needs);  // uniform over the warp
  }
}

// Symmetric case: tiles (bi, bj) with bj >= bi; pairs j >= i computed once, the
// transposed tile written from shared memory.
template <typename T>
__global__ void pair_kernel_symmetric(DeviceProblem<T> P) {
  const int bi = blockIdx.y, bj = blockIdx.x;
  if (bj < bi) return;
  const SharedTables<T> tables = load_shared(P);
  const math::HiddenLayer<T>* layers = tables.layers;
  const math::GaussHermite<T>& gh = tables.gh;
  __shared__ T tile_sigma[kTileDim][kTileDim + 1];
  __shared__ T tile_theta[kTileDim][kTileDim + 1];
  // Pairs left to fallback_kernel: neither (i, j) nor (j, i) is written, so that gram
  // (which an output may overwrite) keeps their entries.
  __shared__ bool tile_fallback[kTileDim][kTileDim + 1];

  const int64_t n = P.n1;
  const int c = threadIdx.x;
  const int64_t j = static_cast<int64_t>(bj) * kTileDim + c;
  for (int r = threadIdx.y; r < kTileDim; r += kBlockRows) {
    const int64_t i = static_cast<int64_t>(bi) * kTileDim + r;
    // Pairs below the diagonal inside a diagonal tile are filled from their mirror.
    bool needs = false;
    if (i < n && j < n && j >= i) {
      T sigma, theta;
      needs = run_pair<false>(P, layers, gh, i, j, i == j, sigma, theta);
      tile_sigma[r][c] = sigma;
      tile_theta[r][c] = theta;
    }
    tile_fallback[r][c] = needs;
    if (i < n) mark_fallback(P, i, bj, needs);  // uniform over the warp (one row i)
  }
  __syncthreads();
  for (int r = threadIdx.y; r < kTileDim; r += kBlockRows) {
    const int64_t i = static_cast<int64_t>(bi) * kTileDim + r;
    if (i < n && j < n) {
      const bool upper = j >= i;
      // Upper-tile entry (i, j): computed here, or mirrored from (j, i) in this tile.
      const T s = upper ? tile_sigma[r][c] : tile_sigma[c][r];
      const T t = upper ? tile_theta[r][c] : tile_theta[c][r];
      if (!(upper ? tile_fallback[r][c] : tile_fallback[c][r])) {
        if (P.nngp) P.nngp[i * n + j] = s;
        if (P.ntk) P.ntk[i * n + j] = t;
      }
    }
    // Transposed tile (bj, bi): entry (j', i') = (i', j') of this tile.
    const int64_t ti = static_cast<int64_t>(bj) * kTileDim + r;
    const int64_t tj = static_cast<int64_t>(bi) * kTileDim + c;
    if (bi != bj && ti < n && tj < n && !tile_fallback[c][r]) {
      if (P.nngp) P.nngp[ti * n + tj] = tile_sigma[c][r];
      if (P.ntk) P.ntk[ti * n + tj] = tile_theta[c][r];
    }
  }
}

constexpr int kFallbackThreads = 256;
constexpr int kFallbackWarps = kFallbackThreads / 32;

// The second pass over the pairs of the fallback mask: each warp walks its words of the
// mask (a grid stride), compacts the pairs they mark into a queue in shared memory and
// runs them 32 at a time, one per lane, with the quadrature fallback (run_pair<true>: the
// CPU's arithmetic), writing (i, j) and, when symmetric, (j, i). So the lanes of a warp
// all integrate, instead of one lane stalling 31 closed-form pairs in the pair kernels.
template <typename T>
__global__ void __launch_bounds__(kFallbackThreads)
    fallback_kernel(DeviceProblem<T> P, int64_t num_words, bool symmetric) {
  const SharedTables<T> tables = load_shared(P);
  __shared__ int64_t queue[kFallbackWarps][64];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int64_t* q = queue[warp];
  auto run = [&](int64_t k) {
    const int64_t i = k / P.n2, j = k - (k / P.n2) * P.n2;  // once per fallback pair
    T sigma, theta;
    run_pair<true>(P, tables.layers, tables.gh, i, j, false, sigma, theta);
    if (P.nngp) P.nngp[i * P.n2 + j] = sigma;
    if (P.ntk) P.ntk[i * P.n2 + j] = theta;
    if (symmetric) {
      if (P.nngp) P.nngp[j * P.n2 + i] = sigma;
      if (P.ntk) P.ntk[j * P.n2 + i] = theta;
    }
  };
  int queued = 0;  // the same in every lane
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kFallbackWarps;
  for (int64_t w = static_cast<int64_t>(blockIdx.x) * kFallbackWarps + warp; w < num_words;
       w += stride) {
    const unsigned bits = P.fallback_mask[w];
    if (bits == 0u) continue;  // uniform: the warp reads one word
    const int64_t first = (w / P.mask_words) * P.n2 + (w % P.mask_words) * 32;  // once per word
    if ((bits >> lane) & 1u) q[queued + __popc(bits & ((1u << lane) - 1u))] = first + lane;
    queued += __popc(bits);
    __syncwarp();
    if (queued >= 32) {
      run(q[lane]);
      __syncwarp();
      if (lane < queued - 32) q[lane] = q[32 + lane];
      queued -= 32;
      __syncwarp();
    }
  }
  if (lane < queued) run(q[lane]);
}

template <typename T>
size_t shared_bytes(const DeviceProblem<T>& P) {
  return sizeof(math::HiddenLayer<T>) * P.num_layers + 2 * sizeof(T) * P.gh_degree;
}

// Where a launch of `kernel` keeps the tables: the dynamic shared bytes to launch with
// (0 for global memory) and P.tables_in_shared. Shared memory only when the tables fit
// next to the kernel's static shared memory within the device's default per-block
// budget (48 KB), so no opt-in is needed; beyond it (about 500 hidden layers in float64)
// the tables stay in global memory, so any depth launches.
template <typename T, typename Kernel>
size_t table_placement(Kernel kernel, int device, DeviceProblem<T>& P) {
  cudaFuncAttributes attr{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
  int budget = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&budget, cudaDevAttrMaxSharedMemoryPerBlock, device));
  const size_t want = shared_bytes(P);
  P.tables_in_shared = want + attr.sharedSizeBytes <= static_cast<size_t>(budget);
  return P.tables_in_shared ? want : 0;
}

template <typename T>
__global__ void activation_kernel(const T* x, T* out, int64_t n, int id, T param,
                                  bool derivative) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= n) return;
  out[k] = derivative ? math::activation_derivative(id, param, x[k])
                      : math::activation(id, param, x[k]);
}

// The CUDA backend of analytic_kernels_op and activation_op (csrc/analytic_spec.h).
struct CudaAnalytic {
  // The Gram matrix may be overwritten by the first output: in pair_kernel each thread
  // reads gram[i, j] before it writes (i, j), and nothing else touches that entry; in
  // pair_kernel_symmetric block (bi, bj >= bi) reads only its own tile, before its
  // barrier, and the mirrored tile (bj, bi) belongs to a block that exits at once; the
  // pairs left to fallback_kernel are written by it alone, after it has read their entry.
  static constexpr bool kGramIsOutput = true;
  static constexpr bool kHermiteSeries = true;

  template <typename T>
  static void run(const AnalyticProblem<T>& p, at::Tensor& nngp, at::Tensor& ntk) {
    const c10::cuda::CUDAGuard guard(p.x1.device());
    const int num_layers = static_cast<int>(p.layers.size());
    const int64_t n1 = p.n1, n2 = p.n2;
    auto stream = c10::cuda::getCurrentCUDAStream();

    const int64_t table_bytes = sizeof(math::HiddenLayer<T>) * num_layers;
    at::Tensor layer_bytes = at::empty({std::max<int64_t>(table_bytes, 1)},
                                       p.x1.options().dtype(at::kByte));
    if (num_layers > 0) {
      at::Tensor host = at::from_blob(const_cast<math::HiddenLayer<T>*>(p.layers.data()),
                                      {table_bytes}, at::TensorOptions().dtype(at::kByte));
      layer_bytes.copy_(host);  // synchronous: p.layers outlives the copy
    }
    DeviceProblem<T> P{};  // value-initialized: no indeterminate pointer reaches a kernel
    P.layers = reinterpret_cast<const math::HiddenLayer<T>*>(layer_bytes.data_ptr());
    P.num_layers = num_layers;
    P.gh_nodes = p.gh_nodes.template data_ptr<T>();
    P.gh_weights = p.gh_weights.template data_ptr<T>();
    P.gh_degree = static_cast<int>(p.gh_nodes.numel());
    P.input = p.input;
    P.n1 = n1;
    P.n2 = n2;
    P.gram = p.gram.template data_ptr<T>();
    P.nngp = nngp.defined() ? nngp.data_ptr<T>() : nullptr;
    P.ntk = ntk.defined() ? ntk.data_ptr<T>() : nullptr;
    const int device = p.x1.get_device();
    const dim3 block(kTileDim, kBlockRows);

    const int per_block = kTileDim * kBlockRows;
    const math::HermiteSampleTables<T> none{nullptr, nullptr, nullptr, nullptr, nullptr};
    // float: the series coefficients' double accumulators, [2, K, n] (both launches).
    at::Tensor work;
    if (p.hermite && !std::is_same_v<T, double>) {
      work = at::empty({2 * math::HermiteTerms<T>::value * std::max(n1, n2)},
                       p.x1.options().dtype(at::kDouble));
    }
    double* work_ptr = work.defined() ? work.data_ptr<double>() : nullptr;
    size_t smem = table_placement(sample_variance_kernel<T>, device, P);
    sample_variance_kernel<T><<<(n1 + per_block - 1) / per_block, block, smem, stream>>>(
        P, p.sq1.template data_ptr<T>(), n1, p.var1.template data_ptr<T>(), p.hermite,
        p.hermite ? hermite_tables(p, 1) : none, work_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (!p.symmetric) {
      sample_variance_kernel<T><<<(n2 + per_block - 1) / per_block, block, smem, stream>>>(
          P, p.sq2.template data_ptr<T>(), n2, p.var2.template data_ptr<T>(), p.hermite,
          p.hermite ? hermite_tables(p, 2) : none, work_ptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    P.var1 = p.var1.template data_ptr<T>();
    P.var2 = p.var2.template data_ptr<T>();
    at::Tensor hterms;
    P.ha1 = P.hb1 = P.ha2 = P.hb2 = P.hna1 = P.hnb1 = P.hra1 = P.hrb1 = P.hra2 = P.hrb2 = nullptr;
    P.hterms = nullptr;
    if (p.hermite) {
      AnalyticProblem<T>& pm = const_cast<AnalyticProblem<T>&>(p);
      finish_hermite(pm);  // K per layer (synchronizes: a [L, C] max comes to the host)
      hterms = at::tensor(std::vector<int>(p.hermite_terms), at::TensorOptions().dtype(at::kInt))
                   .to(p.x1.device());
      P.hterms = hterms.data_ptr<int>();
      P.ha1 = p.ha1.template data_ptr<T>();
      P.hb1 = p.hb1.template data_ptr<T>();
      P.ha2 = p.ha2.template data_ptr<T>();
      P.hb2 = p.hb2.template data_ptr<T>();
      P.hna1 = p.hna1.template data_ptr<T>();
      P.hnb1 = p.hnb1.template data_ptr<T>();
      P.hra1 = p.hra1.template data_ptr<T>();
      P.hrb1 = p.hrb1.template data_ptr<T>();
      P.hra2 = p.hra2.template data_ptr<T>();
      P.hrb2 = p.hrb2.template data_ptr<T>();
    }

    const dim3 grid((n2 + kTileDim - 1) / kTileDim, (n1 + kTileDim - 1) / kTileDim);
    TORCH_CHECK_VALUE(grid.y <= 65535, "analytic_kernels: x1 has too many rows for one launch (",
                      n1, "); split it into chunks of at most ", 65535LL * kTileDim);
    // Series layers: the mask of the pairs that need the quadrature fallback (zeros: the
    // pair kernels write only the words with a bit set).
    at::Tensor mask;
    P.mask_words = (n2 + 31) / 32;
    if (p.hermite) {
      mask = at::zeros({n1 * P.mask_words}, p.x1.options().dtype(at::kInt));
      P.fallback_mask = reinterpret_cast<unsigned*>(mask.data_ptr<int>());
    }
    if (p.symmetric) {
      smem = table_placement(pair_kernel_symmetric<T>, device, P);
      pair_kernel_symmetric<T><<<grid, block, smem, stream>>>(P);
    } else {
      smem = table_placement(pair_kernel<T>, device, P);
      pair_kernel<T><<<grid, block, smem, stream>>>(P);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (p.hermite) {
      const int64_t words = n1 * P.mask_words;
      const int64_t blocks =
          std::min<int64_t>(4096, (words + 32 * kFallbackWarps - 1) / (32 * kFallbackWarps));
      smem = table_placement(fallback_kernel<T>, device, P);
      fallback_kernel<T><<<static_cast<unsigned>(blocks), kFallbackThreads, smem, stream>>>(
          P, words, p.symmetric);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }

  template <typename T>
  static void activation(const at::Tensor& x, at::Tensor& out, int act_id, T param,
                         bool derivative) {
    const c10::cuda::CUDAGuard guard(x.device());
    const int64_t n = x.numel();
    const int threads = 256;
    const int64_t blocks = (n + threads - 1) / threads;
    activation_kernel<T><<<blocks, threads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<T>(), out.data_ptr<T>(), n, act_id, param, derivative);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(torch_ntk, CUDA, m) {
  m.impl("analytic_kernels", &analytic_kernels_op<CudaAnalytic>);
  m.impl("activation", &activation_op<CudaAnalytic>);
}

}  // namespace torch_ntk
