// CUDA implementation of analytic_kernels and activation.
//
// Same plan as the CPU op (csrc/cpu/analytic_ntk_cpu.cpp) and the same per-pair
// arithmetic (csrc/math/recursion.h): a GEMM for <x, x'> into an output buffer, a
// kernel for the per-sample variances, then a pair kernel in which each thread runs
// every layer of its pairs in registers. When x2 is None only tiles on or above the
// diagonal run; each writes its tile and, through shared memory, the transposed
// tile, so both halves are written coalesced and the result is exactly symmetric.
#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../analytic_spec.h"
#include "../checks.h"
#include "../math/recursion.h"

namespace torch_ntk {
namespace {

constexpr int kTileDim = 32;     // output tile is kTileDim x kTileDim
constexpr int kBlockRows = 8;    // threads per block: kTileDim x kBlockRows
constexpr int kMaxGaussHermite = 256;

template <typename T>
struct DeviceProblem {
  const math::HiddenLayer<T>* layers;  // [num_layers] in global memory
  int num_layers;
  const T* gh_nodes;
  const T* gh_weights;
  int gh_degree;
  T w0, b0, tw0, tb0;
  const T* var1;  // [num_layers, n1]
  const T* var2;  // [num_layers, n2]
  int64_t n1, n2;
  const T* gram;  // [n1, n2]
  T* nngp;        // [n1, n2] or nullptr
  T* ntk;         // [n1, n2] or nullptr
};

// The layer table and the quadrature rule, copied into dynamic shared memory.
template <typename T>
struct SharedTables {
  const math::HiddenLayer<T>* layers;
  math::GaussHermite<T> gh;
};

template <typename T>
__device__ SharedTables<T> load_shared(const DeviceProblem<T>& P) {
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

template <typename T>
__device__ void run_pair(const DeviceProblem<T>& P, const math::HiddenLayer<T>* layers,
                         const math::GaussHermite<T>& gh, int64_t i, int64_t j, bool diagonal,
                         T& sigma, T& theta) {
  const T g = P.gram[i * P.n2 + j];
  sigma = P.w0 * g + P.b0;
  theta = P.tw0 * g + P.tb0;
  for (int l = 0; l < P.num_layers; ++l) {
    const T q11 = P.var1[l * P.n1 + i];
    const T q22 = P.var2[l * P.n2 + j];
    if (diagonal) sigma = q11;  // exact variance on the diagonal, as on the CPU
    T e, ed;
    math::layer_expectations(layers[l], gh, q11, q22, sigma, e, ed);
    math::apply_layer(layers[l], e, ed, sigma, theta);
  }
}

template <typename T>
__global__ void sample_variance_kernel(DeviceProblem<T> P, const T* sq_norms, int64_t n,
                                       T* var) {
  const SharedTables<T> tables = load_shared(P);
  const math::HiddenLayer<T>* layers = tables.layers;
  const math::GaussHermite<T>& gh = tables.gh;
  const int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x * blockDim.y +
                    threadIdx.y * blockDim.x + threadIdx.x;
  if (s >= n) return;
  T q = P.w0 * sq_norms[s] + P.b0;
  for (int l = 0; l < P.num_layers; ++l) {
    var[l * n + s] = q;
    q = math::next_variance(layers[l], gh, q);
  }
}

// Rectangular case: one thread per pair (kBlockRows rows per pass), coalesced along j.
template <typename T>
__global__ void pair_kernel(DeviceProblem<T> P) {
  const SharedTables<T> tables = load_shared(P);
  const math::HiddenLayer<T>* layers = tables.layers;
  const math::GaussHermite<T>& gh = tables.gh;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kTileDim + threadIdx.x;
  for (int r = threadIdx.y; r < kTileDim; r += kBlockRows) {
    const int64_t i = static_cast<int64_t>(blockIdx.y) * kTileDim + r;
    if (i >= P.n1 || j >= P.n2) continue;
    T sigma, theta;
    run_pair(P, layers, gh, i, j, false, sigma, theta);
    if (P.nngp) P.nngp[i * P.n2 + j] = sigma;
    if (P.ntk) P.ntk[i * P.n2 + j] = theta;
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

  const int64_t n = P.n1;
  const int c = threadIdx.x;
  const int64_t j = static_cast<int64_t>(bj) * kTileDim + c;
  for (int r = threadIdx.y; r < kTileDim; r += kBlockRows) {
    const int64_t i = static_cast<int64_t>(bi) * kTileDim + r;
    // Pairs below the diagonal inside a diagonal tile are filled from their mirror.
    if (i < n && j < n && j >= i) {
      T sigma, theta;
      run_pair(P, layers, gh, i, j, i == j, sigma, theta);
      tile_sigma[r][c] = sigma;
      tile_theta[r][c] = theta;
    }
  }
  __syncthreads();
  for (int r = threadIdx.y; r < kTileDim; r += kBlockRows) {
    const int64_t i = static_cast<int64_t>(bi) * kTileDim + r;
    if (i < n && j < n) {
      const bool upper = j >= i;
      // Upper-tile entry (i, j): computed here, or mirrored from (j, i) in this tile.
      const T s = upper ? tile_sigma[r][c] : tile_sigma[c][r];
      const T t = upper ? tile_theta[r][c] : tile_theta[c][r];
      if (P.nngp) P.nngp[i * n + j] = s;
      if (P.ntk) P.ntk[i * n + j] = t;
    }
    // Transposed tile (bj, bi): entry (j', i') = (i', j') of this tile.
    const int64_t ti = static_cast<int64_t>(bj) * kTileDim + r;
    const int64_t tj = static_cast<int64_t>(bi) * kTileDim + c;
    if (bi != bj && ti < n && tj < n) {
      if (P.nngp) P.nngp[ti * n + tj] = tile_sigma[c][r];
      if (P.ntk) P.ntk[ti * n + tj] = tile_theta[c][r];
    }
  }
}

template <typename T>
size_t shared_bytes(const DeviceProblem<T>& P) {
  return sizeof(math::HiddenLayer<T>) * P.num_layers + 2 * sizeof(T) * P.gh_degree;
}

template <typename T>
void run_analytic_cuda(const at::Tensor& x1, const at::Tensor& x2, bool symmetric,
                       const AnalyticArgs& args, const at::Tensor& gh_nodes,
                       const at::Tensor& gh_weights, const at::Tensor& gram, at::Tensor& nngp,
                       at::Tensor& ntk) {
  const auto host_layers = make_hidden_layers<T>(args);
  const int num_layers = static_cast<int>(host_layers.size());
  const int64_t n1 = x1.size(0), n2 = x2.size(0);
  auto stream = c10::cuda::getCurrentCUDAStream();

  at::Tensor layer_bytes = at::empty(
      {static_cast<int64_t>(sizeof(math::HiddenLayer<T>) * std::max(num_layers, 1))},
      x1.options().dtype(at::kByte));
  if (num_layers > 0) {
    at::Tensor host = at::from_blob(const_cast<math::HiddenLayer<T>*>(host_layers.data()),
                                    {static_cast<int64_t>(sizeof(math::HiddenLayer<T>) *
                                                          num_layers)},
                                    at::TensorOptions().dtype(at::kByte));
    layer_bytes.copy_(host);  // synchronous: host_layers outlives the copy
  }
  at::Tensor nodes = gh_nodes.to(x1.options()).contiguous();
  at::Tensor weights = gh_weights.to(x1.options()).contiguous();
  TORCH_CHECK_VALUE(nodes.numel() <= kMaxGaussHermite,
                    "analytic_kernels: the CUDA op supports quadrature degrees up to ",
                    kMaxGaussHermite, "; got ", nodes.numel());

  DeviceProblem<T> P;
  P.layers = reinterpret_cast<const math::HiddenLayer<T>*>(layer_bytes.data_ptr());
  P.num_layers = num_layers;
  P.gh_nodes = nodes.data_ptr<T>();
  P.gh_weights = weights.data_ptr<T>();
  P.gh_degree = static_cast<int>(nodes.numel());
  P.w0 = static_cast<T>(args.w0);
  P.b0 = static_cast<T>(args.b0);
  P.tw0 = static_cast<T>(args.tw0);
  P.tb0 = static_cast<T>(args.tb0);
  P.n1 = n1;
  P.n2 = n2;
  P.gram = gram.data_ptr<T>();
  P.nngp = nngp.defined() ? nngp.data_ptr<T>() : nullptr;
  P.ntk = ntk.defined() ? ntk.data_ptr<T>() : nullptr;
  const size_t smem = shared_bytes(P);
  const dim3 block(kTileDim, kBlockRows);

  at::Tensor sq1 = symmetric ? gram.diagonal().contiguous() : x1.mul(x1).sum(1);
  at::Tensor sq2 = symmetric ? sq1 : x2.mul(x2).sum(1);
  const int64_t rows = std::max(num_layers, 1);
  at::Tensor var1 = at::empty({rows, n1}, x1.options());
  at::Tensor var2 = symmetric ? var1 : at::empty({rows, n2}, x1.options());
  const int per_block = kTileDim * kBlockRows;
  sample_variance_kernel<T><<<(n1 + per_block - 1) / per_block, block, smem, stream>>>(
      P, sq1.data_ptr<T>(), n1, var1.data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!symmetric) {
    sample_variance_kernel<T><<<(n2 + per_block - 1) / per_block, block, smem, stream>>>(
        P, sq2.data_ptr<T>(), n2, var2.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  P.var1 = var1.data_ptr<T>();
  P.var2 = var2.data_ptr<T>();

  const dim3 grid((n2 + kTileDim - 1) / kTileDim, (n1 + kTileDim - 1) / kTileDim);
  TORCH_CHECK_VALUE(grid.y <= 65535, "analytic_kernels: x1 has too many rows for one launch (",
                    n1, "); split it into chunks of at most ", 65535LL * kTileDim);
  if (symmetric) {
    pair_kernel_symmetric<T><<<grid, block, smem, stream>>>(P);
  } else {
    pair_kernel<T><<<grid, block, smem, stream>>>(P);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor> analytic_kernels_cuda(
    const at::Tensor& x1_in, const c10::optional<at::Tensor>& x2_in, double w0, double b0,
    double tw0, double tb0, at::IntArrayRef act_ids, at::ArrayRef<double> act_params,
    at::ArrayRef<double> weight_var, at::ArrayRef<double> bias_var,
    at::ArrayRef<double> ntk_weight, at::ArrayRef<double> ntk_bias, const at::Tensor& gh_nodes,
    const at::Tensor& gh_weights, bool force_quadrature, bool want_nngp, bool want_ntk) {
  const AnalyticArgs args{w0,       b0,       tw0,        tb0,      act_ids,   act_params,
                          weight_var, bias_var, ntk_weight, ntk_bias, force_quadrature};
  check_analytic_args(x1_in, x2_in, args, gh_nodes, gh_weights, want_nngp, want_ntk);
  TORCH_INTERNAL_ASSERT(x1_in.device().is_cuda());
  c10::cuda::CUDAGuard guard(x1_in.device());

  const bool symmetric = !x2_in.has_value();
  const at::Tensor x1 = x1_in.contiguous();
  const at::Tensor x2 = symmetric ? x1 : x2_in->contiguous();
  // The pair kernels read the Gram matrix and write outputs tile by tile; a separate
  // Gram buffer keeps reads and writes of different blocks from overlapping.
  const at::Tensor gram = at::mm(x1, x2.t());
  at::Tensor nngp = want_nngp ? at::empty_like(gram) : at::Tensor();
  at::Tensor ntk = want_ntk ? at::empty_like(gram) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x1.scalar_type(), "analytic_kernels_cuda", [&] {
    run_analytic_cuda<scalar_t>(x1, x2, symmetric, args, gh_nodes, gh_weights, gram, nngp, ntk);
  });
  const auto empty = at::empty({0}, x1.options());
  return {want_nngp ? nngp : empty, want_ntk ? ntk : empty};
}

template <typename T>
__global__ void activation_kernel(const T* x, T* out, int64_t n, int id, T param,
                                  bool derivative) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= n) return;
  out[k] = derivative ? math::activation_derivative(id, param, x[k])
                      : math::activation(id, param, x[k]);
}

at::Tensor activation_cuda(const at::Tensor& x_in, int64_t act_id, double param,
                           bool derivative) {
  check_floating("activation", "x", x_in);
  TORCH_CHECK_VALUE(act_id >= 0 && act_id < math::kNumActivations, "activation: act_id = ",
                    act_id, " is not a registered activation id (0..",
                    math::kNumActivations - 1, ")");
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x);
  const int64_t n = x.numel();
  if (n == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "activation_cuda", [&] {
    const int threads = 256;
    const int64_t blocks = (n + threads - 1) / threads;
    activation_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
        x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), n, static_cast<int>(act_id),
        static_cast<scalar_t>(param), derivative);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(torch_ntk, CUDA, m) {
  m.impl("analytic_kernels", &analytic_kernels_cuda);
  m.impl("activation", &activation_cuda);
}

}  // namespace torch_ntk
