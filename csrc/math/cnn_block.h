// The work of one CUDA block of the cnn_kernels op (csrc/cuda/cnn_kernels_cuda.cu), written
// once for the GPU and for its emulation on the host (csrc/cpu/cnn_block_cpu.cpp, a test
// op: a block's threads as host threads with a barrier), so that the CPU test suite runs
// the team paths of csrc/math/cnn_recursion.h that the GPU runs, with the same indexing.
//
// A block is a Team (csrc/math/cnn_recursion.h): begin() its thread, step() its size,
// sync() its barrier, sum2 the fixed-order total of team_sum2 below.
#pragma once

#include <cstdint>

#include "cnn_recursion.h"
#include "hostdevice.h"

namespace torch_ntk {
namespace math {

// The arguments of one launch over `items` samples (self launch) or pairs.
template <typename T>
struct CnnLaunch {
  CnnProgram<T> prog;  // prog.layers in the launch's memory space
  const T* x1;         // [n1, dim]
  const T* x2;         // [n2, dim]
  int64_t dim;
  const T* var1;       // [n1, var_len]
  const T* var2;       // [n2, var_len]
  T* var_self;         // self launch: the rows to fill ([n1, var_len]); else nullptr
  int64_t n1, n2;
  bool symmetric;
  int64_t items;       // samples (self launch) or pairs
  T* nngp;             // [n1, n2] or nullptr
  T* ntk;              // [n1, n2] or nullptr
  T* scratch;          // global scratch [blocks, cnn_scratch_len], or nullptr: shared memory
};

// Totals of a and b over the team's n threads, given to every thread: each thread t puts
// its partial sums into red[t] and red[n + t] (red holds 2 n), thread 0 adds them in the
// order 0 .. n-1, every thread reads the totals. Three barriers; the last one keeps red
// from being overwritten (by the next call) before every thread has read it.
template <typename T, typename Team>
TNTK_HD void team_sum2(const Team& team, T* red, int t, int n, T& a, T& b) {
  red[t] = a;
  red[n + t] = b;
  team.sync();
  if (t == 0) {
    T sa = T(0), sb = T(0);
    for (int k = 0; k < n; ++k) {
      sa += red[k];
      sb += red[n + k];
    }
    red[0] = sa;
    red[n] = sb;
  }
  team.sync();
  a = red[0];
  b = red[n];
  team.sync();
}

// Item k of a launch on one team: the self pair (x1_k, x1_k), recording its variance row,
// or pair k ((i, j) row-major over n1 x n2, or the upper triangle j >= i when symmetric),
// whose results the team's first thread writes (both (i, j) and (j, i) when symmetric).
// scratch: the team's cnn_scratch_len(prog.plane, prog.num_slots) entries. Ends with a
// barrier: every thread has read the results before the next item reuses the planes.
template <typename T, typename Team>
TNTK_HD void cnn_block_item(const CnnLaunch<T>& a, const Team& team, T* scratch, int64_t k) {
  const int64_t var_len = a.prog.var_len;
  T s, t;
  if (a.var_self != nullptr) {
    T* row = a.var_self + k * var_len;
    cnn_pair(a.prog, team, a.x1 + k * a.dim, a.x1 + k * a.dim, row, row, row, scratch, s, t);
  } else {
    int64_t i, j;
    if (a.symmetric) {
      upper_triangle_pair(a.n1, k, i, j);
    } else {
      i = k / a.n2;  // once per pair
      j = k - i * a.n2;
    }
    cnn_pair(a.prog, team, a.x1 + i * a.dim, a.x2 + j * a.dim, a.var1 + i * var_len,
             a.var2 + j * var_len, static_cast<T*>(nullptr), scratch, s, t);
    if (team.begin() == 0) {
      if (a.nngp != nullptr) {
        a.nngp[i * a.n2 + j] = s;
        if (a.symmetric) a.nngp[j * a.n2 + i] = s;
      }
      if (a.ntk != nullptr) {
        a.ntk[i * a.n2 + j] = t;
        if (a.symmetric) a.ntk[j * a.n2 + i] = t;
      }
    }
  }
  team.sync();
}

}  // namespace math
}  // namespace torch_ntk
