// Argument checks shared by the CPU and CUDA implementations. Messages name the
// op, the argument, what was expected and what was received; type errors raise
// TypeError and value errors ValueError on the Python side.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace torch_ntk {

inline void check_floating(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ",
                   name, " must be float32 or float64; got ", t.scalar_type(),
                   ". Convert it with .float() or .double().");
}

inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim) {
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": ", name, " must have ", dim, " dimensions; got shape ",
                    t.sizes());
}

inline void check_nonempty_rows(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.size(0) > 0, op, ": ", name, " must hold at least one sample; got shape ",
                    t.sizes());
}

inline void check_finite(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(at::isfinite(t).all().item<bool>(), op, ": ", name,
                    " contains NaN or Inf; kernels of non-finite inputs are undefined.");
}

inline void check_same_dtype_device(const char* op, const char* name_a, const at::Tensor& a,
                                    const char* name_b, const at::Tensor& b) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), op, ": ", name_b, " must have the dtype of ",
                   name_a, " (", a.scalar_type(), "); got ", b.scalar_type());
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": ", name_b, " must be on the device of ",
                    name_a, " (", a.device(), "); got ", b.device());
}

// A [N, n0] batch of inputs: floating, 2-D, non-empty, finite.
inline void check_inputs(const char* op, const char* name, const at::Tensor& x) {
  check_floating(op, name, x);
  check_dim(op, name, x, 2);
  check_nonempty_rows(op, name, x);
  check_finite(op, name, x);
}

}  // namespace torch_ntk
