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
  // begin and step: a team thread's index and the team's size (< 2^31), so the divisions
  // here are 32-bit too.
  TNTK_HD PlaneCursor(bool full_plane, int64_t n_positions, int64_t begin, int64_t step)
      : full(full_plane), positions(static_cast<int>(n_positions)) {
    const int b0 = static_cast<int>(begin), s0 = static_cast<int>(step);
    p = full ? b0 / positions : b0;
    pp = full ? b0 % positions : b0;
    dp = full ? s0 / positions : s0;
    dpp = full ? s0 % positions : s0;
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

// A PlaneCursor over the positions of an h x w image that also keeps the row and column
// of both positions, p = a w + b and p' = a2 w + b2 (diagonal planes: p' = p), so that the
// CONV and AVGPOOL steps find their taps without a division per entry: the steps of p and
// p' are split into rows and columns once, and each advance carries a column overflow
// into the row and a row overflow of p' into p. All 32-bit (positions < 2^31).
struct ImageCursor {
  bool full;
  int h, w, positions;
  int p, pp;          // the positions (PlaneCursor's), p < positions while valid
  int a, b, a2, b2;   // their rows and columns
  int da, db, da2, db2;
  // begin and step as PlaneCursor's (< 2^31): 32-bit divisions, once per thread and step.
  TNTK_HD ImageCursor(bool full_plane, int rows, int cols, int64_t begin, int64_t step)
      : full(full_plane), h(rows), w(cols), positions(rows * cols) {
    const int b0 = static_cast<int>(begin), s0 = static_cast<int>(step);
    const int dp = full ? s0 / positions : s0, dpp = full ? s0 % positions : s0;
    p = full ? b0 / positions : b0;
    pp = full ? b0 % positions : b0;
    a = p / w;
    b = p % w;
    a2 = pp / w;
    b2 = pp % w;
    da = dp / w;
    db = dp % w;
    da2 = dpp / w;
    db2 = dpp % w;
  }
  TNTK_HD bool valid() const { return p < positions; }
  TNTK_HD int64_t offset() const {
    return full ? static_cast<int64_t>(p) * positions + pp : p;
  }
  TNTK_HD void next() {
    int carry = 0;
    if (full) {
      b2 += db2;
      a2 += da2;
      if (b2 >= w) {
        b2 -= w;
        ++a2;
      }
      if (a2 >= h) {  // p' passed the last position: into the next row p
        a2 -= h;
        carry = 1;
      }
      pp = a2 * w + b2;
    }
    b += db + carry;
    a += da;
    if (b >= w) {
      b -= w;
      ++a;
    }
    p = a * w + b;
    if (!full) {
      a2 = a;
      b2 = b;
      pp = p;
    }
  }
};

}  // namespace math
}  // namespace torch_ntk
