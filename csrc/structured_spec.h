// Host side of the structured_ntk op, shared by the CPU and CUDA implementations:
// argument checks, mode and precision parsing, the reduced-precision operands, the
// Gram-block products, the size of the Gram buffers (the op's workspace), the output
// shape and the op's entry function. A backend supplies its accumulation pass.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "checks.h"
#include "math/structured_tile.h"

namespace torch_ntk {

// The sizes of one structured_ntk call, which decide its output and its workspace.
struct StructuredShape {
  int64_t n1, n2, n_out;
  int64_t channels;  // per pair: full n_L^2, trace 1, diagonal n_L (math::num_channels)
  int mode;          // math::StructuredMode
  int precision;     // Precision
  bool symmetric;    // x2 = x1
};

// The checked, contiguous arguments of structured_ntk (see csrc/torch_ntk.cpp).
struct StructuredArgs : StructuredShape {
  std::vector<at::Tensor> a1, d1, a2, d2;  // a2/d2 alias a1/d1 when symmetric
  // kBF16x3 only: the low parts of the operands (split_precision_operands); a1..d2 then
  // hold the high parts.
  std::vector<at::Tensor> a1_lo, d1_lo, a2_lo, d2_lo;
  std::vector<double> cw, cb;
  int64_t workspace_limit;  // bytes of Gram buffers (resolve_workspace_limit)
};

// How the Gram products are computed. kHighest: in the inputs' dtype. kBF16 (float32
// inputs only): operands rounded to bfloat16, products accumulated in float32 (tensor
// cores on CUDA). kBF16x3: each operand split into a bfloat16 high part and a bfloat16
// low part (the rounding remainder), and X Y^T ~ Xh Yh^T + Xh Yl^T + Xl Yh^T, three
// tensor-core products with nearly float32 accuracy. On CPU the same roundings are
// emulated with float32 products, so both devices compute the same function.
enum Precision : int { kHighest = 0, kBF16 = 1, kBF16x3 = 2 };

inline int parse_precision(c10::string_view precision) {
  if (precision == "highest") return kHighest;
  if (precision == "bf16") return kBF16;
  if (precision == "bf16x3") return kBF16x3;
  TORCH_CHECK_VALUE(false, "structured_ntk: precision must be 'highest', 'bf16' or 'bf16x3'; "
                    "got '", std::string(precision), "'");
  return -1;
}

// The reduced-precision operands of one float32 tensor: its bfloat16 rounding and, for
// kBF16x3, the bfloat16 rounding of the remainder (undefined otherwise). `storage` is
// kBFloat16 (real bfloat16 tensors, for tensor-core products) or kFloat (the same values
// widened back to float32, for the CPU emulation).
inline std::pair<at::Tensor, at::Tensor> split_operand(const at::Tensor& t, int precision,
                                                      at::ScalarType storage) {
  const at::Tensor hi = t.to(at::kBFloat16);
  at::Tensor lo;
  if (precision == kBF16x3) lo = (t - hi.to(at::kFloat)).to(at::kBFloat16).to(storage);
  return {hi.to(storage), lo};
}

inline int parse_structured_mode(c10::string_view mode) {
  if (mode == "full") return math::kModeFull;
  if (mode == "trace") return math::kModeTrace;
  if (mode == "diagonal") return math::kModeDiagonal;
  TORCH_CHECK_VALUE(false, "structured_ntk: mode must be 'full', 'trace' or 'diagonal'; got '",
                    std::string(mode), "'");
  return -1;
}

// The limit on the Gram buffers of one call when workspace_bytes = 0.
constexpr int64_t kDefaultWorkspaceBytes = int64_t(1) << 30;

// The workspace_bytes argument as a limit in bytes: 0 asks for the default.
inline int64_t resolve_workspace_limit(int64_t workspace_bytes) {
  TORCH_CHECK_VALUE(workspace_bytes >= 0, "structured_ntk: workspace_bytes must be >= 0 (0 for ",
                    "the default, ", kDefaultWorkspaceBytes, " bytes); got ", workspace_bytes);
  return workspace_bytes > 0 ? workspace_bytes : kDefaultWorkspaceBytes;
}

inline StructuredArgs check_structured_args(at::TensorList a1, at::TensorList d1,
                                            at::TensorList a2, at::TensorList d2,
                                            at::ArrayRef<double> weight_coef,
                                            at::ArrayRef<double> bias_coef,
                                            c10::string_view mode, c10::string_view precision,
                                            int64_t workspace_bytes) {
  const char* op = "structured_ntk";
  StructuredArgs s;
  s.mode = parse_structured_mode(mode);
  s.precision = parse_precision(precision);
  s.workspace_limit = resolve_workspace_limit(workspace_bytes);
  const size_t L = a1.size();
  TORCH_CHECK_VALUE(L >= 1, op, ": a1 must hold one activation matrix per dense layer; got none");
  TORCH_CHECK_VALUE(d1.size() == L && weight_coef.size() == L && bias_coef.size() == L, op,
                    ": a1, d1, weight_coef and bias_coef must have one entry per dense layer; got ",
                    "lengths ", L, ", ", d1.size(), ", ", weight_coef.size(), ", ",
                    bias_coef.size());
  s.symmetric = a2.empty() && d2.empty();
  TORCH_CHECK_VALUE(s.symmetric || (a2.size() == L && d2.size() == L), op,
                    ": a2 and d2 must both be empty (x2 = x1) or both have ", L,
                    " entries like a1; got lengths ", a2.size(), " and ", d2.size());

  const at::Tensor& ref = a1[0];
  check_floating(op, "a1[0]", ref);
  check_dim(op, "a1[0]", ref, 2);
  TORCH_CHECK_VALUE(d1[0].dim() == 3, op, ": d1[0] must have shape [N1, n_L, m]; got ",
                    d1[0].sizes());
  TORCH_CHECK_TYPE(s.precision == kHighest || ref.scalar_type() == at::kFloat, op,
                   ": precision '", std::string(precision), "' needs float32 inputs; got ",
                   ref.scalar_type(), ". Use precision='highest' for float64.");
  s.n1 = ref.size(0);
  s.n_out = d1[0].size(1);
  TORCH_CHECK_VALUE(s.n_out >= 1, op, ": d1[0] must have n_L >= 1 outputs; got shape ",
                    d1[0].sizes());
  s.n2 = s.symmetric ? s.n1 : (a2[0].dim() >= 1 ? a2[0].size(0) : -1);

  auto check_side = [&](at::TensorList a, at::TensorList d, const char* an, const char* dn,
                        int64_t n) {
    for (size_t l = 0; l < L; ++l) {
      const std::string a_name = std::string(an) + "[" + std::to_string(l) + "]";
      const std::string d_name = std::string(dn) + "[" + std::to_string(l) + "]";
      check_same_dtype_device(op, "a1[0]", ref, a_name.c_str(), a[l]);
      check_same_dtype_device(op, "a1[0]", ref, d_name.c_str(), d[l]);
      TORCH_CHECK_VALUE(a[l].dim() == 2 && a[l].size(0) == n, op, ": ", a_name,
                        " must have shape [", n, ", n_l] (one row per sample); got ",
                        a[l].sizes());
      TORCH_CHECK_VALUE(d[l].dim() == 3 && d[l].size(0) == n && d[l].size(1) == s.n_out, op,
                        ": ", d_name, " must have shape [", n, ", ", s.n_out,
                        ", m_l] (samples, outputs, layer width); got ", d[l].sizes());
    }
  };
  check_side(a1, d1, "a1", "d1", s.n1);
  if (!s.symmetric) {
    TORCH_CHECK_VALUE(a2[0].dim() == 2, op, ": a2[0] must have shape [N2, n_0]; got ",
                      a2[0].sizes());
    check_side(a2, d2, "a2", "d2", s.n2);
    for (size_t l = 0; l < L; ++l) {
      TORCH_CHECK_VALUE(a2[l].size(1) == a1[l].size(1), op, ": a2[", l, "] must have ",
                        a1[l].size(1), " columns like a1[", l, "]; got shape ", a2[l].sizes());
      TORCH_CHECK_VALUE(d2[l].size(2) == d1[l].size(2), op, ": d2[", l, "] must have width ",
                        d1[l].size(2), " like d1[", l, "]; got shape ", d2[l].sizes());
    }
  }
  for (size_t l = 0; l < L; ++l) {
    TORCH_CHECK_VALUE(std::isfinite(weight_coef[l]) && std::isfinite(bias_coef[l]), op,
                      ": weight_coef and bias_coef must be finite; got ", weight_coef[l], " and ",
                      bias_coef[l], " at layer ", l);
    s.a1.push_back(a1[l].contiguous());
    s.d1.push_back(d1[l].contiguous());
    s.cw.push_back(weight_coef[l]);
    s.cb.push_back(bias_coef[l]);
  }
  if (s.symmetric) {
    s.a2 = s.a1;
    s.d2 = s.d1;
  } else {
    for (size_t l = 0; l < L; ++l) {
      s.a2.push_back(a2[l].contiguous());
      s.d2.push_back(d2[l].contiguous());
    }
  }
  s.channels = math::num_channels(s.mode, s.n_out);
  return s;
}

// Replaces the operands by their reduced-precision forms (split_operand) when the
// precision asks for it; `storage` as in split_operand.
inline void split_precision_operands(StructuredArgs& s, at::ScalarType storage) {
  if (s.precision == kHighest) return;
  auto split = [&](std::vector<at::Tensor>& hi, std::vector<at::Tensor>& lo) {
    for (at::Tensor& t : hi) {
      auto parts = split_operand(t, s.precision, storage);
      t = parts.first;
      if (parts.second.defined()) lo.push_back(parts.second);
    }
  };
  split(s.a1, s.a1_lo);
  split(s.d1, s.d1_lo);
  if (s.symmetric) {
    s.a2 = s.a1;
    s.d2 = s.d1;
    s.a2_lo = s.a1_lo;
    s.d2_lo = s.d1_lo;
  } else {
    split(s.a2, s.a2_lo);
    split(s.d2, s.d2_lo);
  }
}

// Element l of a list of low parts, or an undefined tensor when there are none.
inline at::Tensor low_part(const std::vector<at::Tensor>& lo, size_t l) {
  return lo.empty() ? at::Tensor() : lo[l];
}

// g = X Y^T with X = view_x(x), Y = view_y(y); when the low parts x_lo, y_lo are defined
// (precision kBF16x3), also the cross terms X Yl^T + Xl Y^T of the split operands.
// product(out, a, b, accumulate) writes a b into out, or adds it to out.
template <typename Product, typename ViewX, typename ViewY>
void gram_out(at::Tensor& g, const at::Tensor& x, const at::Tensor& x_lo, const at::Tensor& y,
              const at::Tensor& y_lo, Product product, ViewX view_x, ViewY view_y) {
  product(g, view_x(x), view_y(y).t(), false);
  if (x_lo.defined()) {
    product(g, view_x(x), view_y(y_lo).t(), true);
    product(g, view_x(x_lo), view_y(y).t(), true);
  }
}

// The block rows [i0, i0 + ni) x columns [j0, j0 + nj) of layer l's activation Gram
// <A1, A2> into buf [ni * nj] (row-major), by `product` as in gram_out.
template <typename Product>
void activation_gram_out(const StructuredArgs& s, size_t l, const at::Tensor& buf, int64_t i0,
                         int64_t ni, int64_t j0, int64_t nj, Product product) {
  at::Tensor g = buf.narrow(0, 0, ni * nj).view({ni, nj});
  gram_out(g, s.a1[l], low_part(s.a1_lo, l), s.a2[l], low_part(s.a2_lo, l), product,
           [&](const at::Tensor& t) { return t.narrow(0, i0, ni); },
           [&](const at::Tensor& t) { return t.narrow(0, j0, nj); });
}

// The same block of layer l's cotangent Gram into buf, in the layout of
// math::cotangent_gram_offset: trace [ni, nj], diagonal [n_L, ni, nj] (one product per
// k), full [ni, n_L, nj, n_L] (one product of the [., n_L, m] row views).
template <typename Product>
void cotangent_gram_out(const StructuredArgs& s, size_t l, const at::Tensor& buf, int64_t i0,
                        int64_t ni, int64_t j0, int64_t nj, Product product) {
  const at::Tensor &d1 = s.d1[l], &d2 = s.d2[l];
  const at::Tensor d1_lo = low_part(s.d1_lo, l), d2_lo = low_part(s.d2_lo, l);
  const int64_t nl = s.n_out, m = d1.size(2);
  if (s.mode == math::kModeTrace) {
    at::Tensor g = buf.narrow(0, 0, ni * nj).view({ni, nj});
    gram_out(g, d1, d1_lo, d2, d2_lo, product,
             [&](const at::Tensor& t) { return t.view({s.n1, nl * m}).narrow(0, i0, ni); },
             [&](const at::Tensor& t) { return t.view({s.n2, nl * m}).narrow(0, j0, nj); });
  } else if (s.mode == math::kModeDiagonal) {
    for (int64_t k = 0; k < nl; ++k) {
      at::Tensor g = buf.narrow(0, k * ni * nj, ni * nj).view({ni, nj});
      gram_out(g, d1, d1_lo, d2, d2_lo, product,
               [&](const at::Tensor& t) { return t.narrow(0, i0, ni).select(1, k); },
               [&](const at::Tensor& t) { return t.narrow(0, j0, nj).select(1, k); });
    }
  } else {
    at::Tensor g = buf.narrow(0, 0, ni * nl * nj * nl).view({ni * nl, nj * nl});
    gram_out(
        g, d1, d1_lo, d2, d2_lo, product,
        [&](const at::Tensor& t) { return t.view({s.n1 * nl, m}).narrow(0, i0 * nl, ni * nl); },
        [&](const at::Tensor& t) { return t.view({s.n2 * nl, m}).narrow(0, j0 * nl, nj * nl); });
  }
}

// ---- The workspace: Gram buffers sized against StructuredArgs::workspace_limit.

// Gram-buffer entries per pair of samples: the activation Gram (1), the cotangent Gram
// (channels, in the layout of math::cotangent_gram_offset) and, on CUDA with kBF16x3,
// a scratch of the cotangent Gram's size for the products that are added to it.
inline int64_t gram_entries_per_pair(const StructuredShape& s, bool cuda) {
  return 1 + s.channels * (cuda && s.precision == kBF16x3 ? 2 : 1);
}

// CUDA: rows of x1 per block, whose Gram buffers cover [rows, N2] pairs: as many as fit
// the limit (at least one). With x2 = x1 and many samples, at most a quarter (or half)
// of the rows, so the skipped lower-left part of the Gram products is worth having;
// blocks stay large enough for cuBLAS.
inline int64_t cuda_block_rows(const StructuredShape& s, int64_t element_size, int64_t limit) {
  const int64_t per_row =
      std::max<int64_t>(s.n2 * gram_entries_per_pair(s, true) * element_size, 1);
  int64_t rows = std::max<int64_t>(limit / per_row, 1);
  if (s.symmetric && s.n1 >= 2048) {
    const int64_t parts = s.n1 >= 4096 ? 4 : 2;
    rows = std::min<int64_t>(rows, ((s.n1 + parts - 1) / parts + 127) / 128 * 128);
  }
  return std::min(rows, s.n1);
}

// CPU: output tiles of `tile` x `tile` pairs, taken by `workers` threads that each hold
// the Gram buffers of one tile.
struct CpuTiling {
  int64_t tile, workers;
};

// The tile is large enough for BLAS to run near its peak on [tile, n_l] x [n_l, tile],
// small enough that the output tile and the two Gram buffers stay in L2/L3; halved
// (down to 64) until every thread gets several tiles, so small problems do not leave
// threads idle; no larger than the problem; halved further while the buffers of all
// workers exceed the limit (down to one pair).
inline CpuTiling cpu_tiling(const StructuredShape& s, int64_t element_size, int64_t limit,
                            int64_t threads) {
  int64_t tile = 256;
  if (s.mode == math::kModeFull) tile = std::max<int64_t>(32, 512 / s.n_out);
  if (s.mode == math::kModeDiagonal) tile = std::max<int64_t>(64, 1024 / s.n_out);
  tile = std::min<int64_t>(tile, 256);
  auto count = [&](int64_t t) {
    const int64_t a = (s.n1 + t - 1) / t, b = (s.n2 + t - 1) / t;
    return s.symmetric ? a * (a + 1) / 2 : a * b;
  };
  while (tile > 64 && count(tile) < 4 * threads) tile /= 2;
  tile = std::max<int64_t>(std::min(tile, std::max(s.n1, s.n2)), 1);
  auto workers = [&](int64_t t) { return std::min(threads, count(t)); };
  auto bytes = [&](int64_t t) {
    return workers(t) * t * t * gram_entries_per_pair(s, false) * element_size;
  };
  while (tile > 1 && bytes(tile) > limit) tile = (tile + 1) / 2;
  return {tile, workers(tile)};
}

// Bytes of Gram buffers that one call allocates (element_size: of the inputs' dtype;
// cpu_threads: at::get_num_threads() of the calling thread). A limit below the buffers
// of one row (CUDA) or of one pair per thread (CPU) is exceeded by those.
inline int64_t structured_workspace_bytes(const StructuredShape& s, int64_t element_size,
                                          int64_t limit, bool cuda, int64_t cpu_threads) {
  if (s.n1 <= 0 || s.n2 <= 0) return 0;
  if (cuda) {
    return cuda_block_rows(s, element_size, limit) * s.n2 * gram_entries_per_pair(s, true) *
           element_size;
  }
  const CpuTiling t = cpu_tiling(s, element_size, limit, cpu_threads);
  return t.workers * t.tile * t.tile * gram_entries_per_pair(s, false) * element_size;
}

// The output shape: full [N1, N2, n_L, n_L], trace [N1, N2], diagonal [N1, N2, n_L].
inline std::vector<int64_t> structured_output_shape(const StructuredArgs& s) {
  if (s.mode == math::kModeFull) return {s.n1, s.n2, s.n_out, s.n_out};
  if (s.mode == math::kModeTrace) return {s.n1, s.n2};
  return {s.n1, s.n2, s.n_out};
}

// The structured_ntk op (schema in csrc/torch_ntk.cpp) on one backend, which supplies
//   Backend::kOperandStorage: the dtype of the reduced-precision operands (split_operand),
//   Backend::run<T>(const StructuredArgs&, at::Tensor& out): out [N1, N2, C] for
//     N1, N2 >= 1, with Gram buffers of structured_workspace_bytes.
template <typename Backend>
at::Tensor structured_ntk_op(at::TensorList a1, at::TensorList d1, at::TensorList a2,
                             at::TensorList d2, at::ArrayRef<double> weight_coef,
                             at::ArrayRef<double> bias_coef, c10::string_view mode,
                             c10::string_view precision, int64_t workspace_bytes) {
  StructuredArgs s = check_structured_args(a1, d1, a2, d2, weight_coef, bias_coef, mode,
                                           precision, workspace_bytes);
  split_precision_operands(s, Backend::kOperandStorage);
  at::Tensor out = at::empty({s.n1, s.n2, s.channels}, a1[0].options());
  if (s.n1 > 0 && s.n2 > 0) {
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "structured_ntk",
                               [&] { Backend::template run<scalar_t>(s, out); });
  }
  return out.view(structured_output_shape(s));
}

}  // namespace torch_ntk
