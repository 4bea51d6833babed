// PlaneCursor: a team thread's walk over the entries of a position-position plane
// (csrc/math/cnn_recursion.h) without a division per entry.
#pragma once

#include <cstdint>

#include "hostdevice.h"

namespace torch_ntk {
namespace math {

// A team thread's entries e = begin, begin + step, ... of a plane over `positions`
// positions, walked as (p, p') = (e / positions, e % positions) (full) or (e, e)
// (diagonal) without a division per entry: one at the start, then p' advances by
// step % positions with a carry into p. Rows and columns are 32-bit (positions < 2^31),
// the offset into the plane 64-bit.
struct PlaneCursor {
  bool full;
  int positions, p, pp, dp, dpp;
  TNTK_HD PlaneCursor(bool full_plane, int64_t n_positions, int64_t begin, int64_t step)
      : full(full_plane), positions(static_cast<int>(n_positions)) {
    p = static_cast<int>(full ? begin / n_positions : begin);
    pp = static_cast<int>(full ? begin % n_positions : begin);
    dp = static_cast<int>(full ? step / n_positions : step);
    dpp = static_cast<int>(full ? step % n_positions : step);
  }
  TNTK_HD bool valid() const { return p < positions; }
  TNTK_HD int64_t offset() const { return full ? static_cast<int64_t>(p) * positions + pp : p; }
  TNTK_HD void next() {
    p += dp;
    if (!full) {
      pp = p;
      return;
    }
    pp += dpp;
    if (pp >= positions) {
      pp -= positions;
      ++p;
    }
  }
};

}  // namespace math
}  // namespace torch_ntk
