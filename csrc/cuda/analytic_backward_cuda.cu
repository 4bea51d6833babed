// CUDA implementation of analytic_kernels_backward (csrc/analytic_backward_spec.h), with the
// per-pair arithmetic of the CPU op (csrc/math/recursion_backward.h).
//
// Kernels: the per-sample variances; the pair kernel, one thread per pair (x2 None: pairs
// j >= i), whose forward keeps each hidden layer's (Sigma, Theta, e, ed) in a local tape of
// kMaxTapeLayers entries (deeper networks are refused with a pointer to the CPU), then the
// reverse sweep: it writes its Gram gradient, adds the samples' variance gradients by
// float64 atomics and the coefficient gradients by a block reduction (one atomic per block
// and coefficient); last the sample kernel, each sample's variance chain backward.
#include <algorithm>
#include <vector>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../analytic_backward_spec.h"
#include "../math/recursion_backward.h"

namespace torch_ntk {
namespace {

constexpr int kMaxTapeLayers = 32;
constexpr int kThreads = 256;
constexpr int kMaxCoefRows = kMaxTapeLayers + 1;

template <typename T>
struct DeviceBackward {
  const math::HiddenLayer<T>* layers;  // [L] in global memory
  int num_layers;
  math::InputLayer<T> input;
  const T* var1;  // [L, n1]
  const T* var2;  // [L, n2]
  const T* gram;  // [n1, n2]
  const T* g_nngp;  // [n1, n2] or nullptr
  const T* g_ntk;
  int64_t n1, n2;
  bool symmetric;
  T* grad_gram;    // [n1, n2]
  double* g_var1;  // [L, n1]
  double* g_var2;  // [L, n2] (aliases g_var1 when symmetric)
  double* coef;    // [(L + 1) * 4]
};

template <typename T>
__global__ void backward_variance_kernel(const math::HiddenLayer<T>* layers, int num_layers,
                                         math::InputLayer<T> input, const T* sq_norms,
                                         int64_t n, T* var) {
  const int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s >= n) return;
  const math::GaussHermite<T> no_rule{nullptr, nullptr, 0};  // closed forms only
  math::sample_variances(input, layers, num_layers, no_rule, sq_norms[s], n, s, var);
}

// Sums v over the block into coef[k] with one atomic.
__device__ void block_add(double v, double* target, double* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) shared[threadIdx.x] += shared[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) atomicAdd(target, shared[0]);
  __syncthreads();
}

template <typename T>
__global__ void backward_pair_kernel(DeviceBackward<T> P) {
  __shared__ double shared[kThreads];
  const int64_t pair = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t i = pair / P.n2, j = pair % P.n2;
  const bool active = pair < P.n1 * P.n2 && (!P.symmetric || j >= i);
  const bool diagonal = P.symmetric && i == j;
  const int L = P.num_layers;
  T ts[kMaxTapeLayers], tt[kMaxTapeLayers], te[kMaxTapeLayers], ted[kMaxTapeLayers];
  T gs = T(0), gt = T(0), inner = T(0);
  if (active) {
    inner = P.gram[i * P.n2 + j];
    T sigma = P.input.sigma(inner), theta = P.input.theta(inner);
    for (int l = 0; l < L; ++l) {
      const math::HiddenLayer<T> layer = P.layers[l];
      const T q11 = P.var1[l * P.n1 + i], q22 = P.var2[l * P.n2 + j];
      if (diagonal) sigma = q11;
      T e, ed;
      math::closed_form_expectations(layer, q11, q22, sigma, e, ed);
      ts[l] = sigma;
      tt[l] = theta;
      te[l] = e;
      ted[l] = ed;
      math::apply_layer(layer, e, ed, sigma, theta);
    }
    gs = P.g_nngp ? P.g_nngp[i * P.n2 + j] : T(0);
    gt = P.g_ntk ? P.g_ntk[i * P.n2 + j] : T(0);
  }
  for (int l = L - 1; l >= 0; --l) {  // every thread of the block runs the reductions
    T coef[math::kNumCoefs] = {T(0), T(0), T(0), T(0)};
    if (active) {
      const math::HiddenLayer<T> layer = P.layers[l];
      const T q11 = P.var1[l * P.n1 + i], q22 = P.var2[l * P.n2 + j];
      T g11, g22;
      math::hidden_layer_backward(layer, q11, q22, ts[l], tt[l], te[l], ted[l], gs, gt, g11,
                                  g22, coef);
      if (diagonal) {  // Sigma^(l)(x, x) was the variance q11
        g11 += gs;
        gs = T(0);
      }
      atomicAdd(P.g_var1 + l * P.n1 + i, static_cast<double>(g11));
      atomicAdd(P.g_var2 + l * P.n2 + j, static_cast<double>(g22));
    }
    for (int k = 0; k < math::kNumCoefs; ++k) {
      block_add(static_cast<double>(coef[k]), P.coef + math::kNumCoefs * (l + 1) + k, shared);
    }
  }
  T coef[math::kNumCoefs] = {T(0), T(0), T(0), T(0)};
  if (active) P.grad_gram[i * P.n2 + j] = math::input_layer_backward(P.input, inner, gs, gt, coef);
  for (int k = 0; k < math::kNumCoefs; ++k) {
    block_add(static_cast<double>(coef[k]), P.coef + k, shared);
  }
}

template <typename T>
__global__ void backward_sample_kernel(const math::HiddenLayer<T>* layers, int num_layers,
                                       math::InputLayer<T> input, const T* sq_norms,
                                       const T* var, const double* g_var, int64_t n, T* grad_sq,
                                       double* coef_out) {
  const int64_t s = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s >= n) return;
  double coef[kMaxCoefRows * math::kNumCoefs];
  for (int k = 0; k < (num_layers + 1) * math::kNumCoefs; ++k) coef[k] = 0;
  grad_sq[s] = math::sample_variances_backward(
      input, layers, num_layers, sq_norms[s], [&](int64_t l) { return var[l * n + s]; },
      [&](int64_t l) { return static_cast<T>(g_var[l * n + s]); }, coef);
  for (int k = 0; k < (num_layers + 1) * math::kNumCoefs; ++k) {
    if (coef[k] != 0) atomicAdd(coef_out + k, coef[k]);
  }
}

struct CudaAnalyticBackward {
  template <typename T>
  static void run(const AnalyticProblem<T>& p, const T* g_nngp, const T* g_ntk,
                  at::Tensor& grad_gram, at::Tensor& grad_sq1, at::Tensor& grad_sq2,
                  at::Tensor& grad_coefs) {
    const c10::cuda::CUDAGuard guard(p.x1.device());
    const int L = static_cast<int>(p.layers.size());
    TORCH_CHECK_VALUE(L <= kMaxTapeLayers, "analytic_kernels_backward: on CUDA at most ",
                      kMaxTapeLayers, " hidden layers (the per-pair tape); got ", L,
                      ". Run the backward of deeper networks on the CPU.");
    auto stream = c10::cuda::getCurrentCUDAStream();
    const int64_t n1 = p.n1, n2 = p.n2;
    const int64_t table_bytes = sizeof(math::HiddenLayer<T>) * L;
    at::Tensor layer_bytes = at::empty({std::max<int64_t>(table_bytes, 1)},
                                       p.x1.options().dtype(at::kByte));
    if (L > 0) {
      at::Tensor host = at::from_blob(const_cast<math::HiddenLayer<T>*>(p.layers.data()),
                                      {table_bytes}, at::TensorOptions().dtype(at::kByte));
      layer_bytes.copy_(host);  // synchronous: p.layers outlives the copy
    }
    const auto* layers = reinterpret_cast<const math::HiddenLayer<T>*>(layer_bytes.data_ptr());
    for (int set = 1; set <= (p.symmetric ? 1 : 2); ++set) {
      const int64_t n = set == 1 ? n1 : n2;
      backward_variance_kernel<T><<<(n + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
          layers, L, p.input, (set == 1 ? p.sq1 : p.sq2).template data_ptr<T>(), n,
          (set == 1 ? p.var1 : p.var2).template data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const auto f64 = p.x1.options().dtype(at::kDouble);
    at::Tensor g_var1 = at::zeros({std::max(L, 1), n1}, f64);
    at::Tensor g_var2 = p.symmetric ? g_var1 : at::zeros({std::max(L, 1), n2}, f64);
    DeviceBackward<T> P{};
    P.layers = layers;
    P.num_layers = L;
    P.input = p.input;
    P.var1 = p.var1.template data_ptr<T>();
    P.var2 = p.var2.template data_ptr<T>();
    P.gram = p.gram.template data_ptr<T>();
    P.g_nngp = g_nngp;
    P.g_ntk = g_ntk;
    P.n1 = n1;
    P.n2 = n2;
    P.symmetric = p.symmetric;
    P.grad_gram = grad_gram.data_ptr<T>();
    P.g_var1 = g_var1.data_ptr<double>();
    P.g_var2 = g_var2.data_ptr<double>();
    P.coef = grad_coefs.data_ptr<double>();
    const int64_t pairs = n1 * n2;
    if (pairs > 0) {
      backward_pair_kernel<T><<<(pairs + kThreads - 1) / kThreads, kThreads, 0, stream>>>(P);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    for (int set = 1; set <= (p.symmetric ? 1 : 2); ++set) {
      const int64_t n = set == 1 ? n1 : n2;
      backward_sample_kernel<T><<<(n + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
          layers, L, p.input, (set == 1 ? p.sq1 : p.sq2).template data_ptr<T>(),
          (set == 1 ? p.var1 : p.var2).template data_ptr<T>(),
          (set == 1 ? g_var1 : g_var2).template data_ptr<double>(), n,
          (set == 1 ? grad_sq1 : grad_sq2).template data_ptr<T>(), P.coef);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(torch_ntk, CUDA, m) {
  m.impl("analytic_kernels_backward", &analytic_kernels_backward_op<CudaAnalyticBackward>);
}

}  // namespace torch_ntk
