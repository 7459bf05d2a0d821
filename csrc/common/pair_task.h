// The unit of work every pairwise kernel (CPU or CUDA) performs: rows of a set A against up to two
// column sets B, per group g of G independent problems.
//
//   RowSums:  out[g, i, s] = sum_j k(a_i, b^s_j)                         (acc type, (G, n_rows [+ n_tail_rows], S))
//   Matrix:   out[g, i, j] = k(a_i, b^0_j)                               (acc type, (G, n_rows, n_0))
//   Gradient: out[g, i, :] = sum_s sum_j w^s[g, i, j] phi(a_i, b^s_j) (a_i - b^s_j)
//                                                                        (input type, (G, n_rows, D))
// RowSums may take tail rows t (G, n_tail_rows, D) after the rows, evaluated against the last set
// alone: out[g, n_rows + i, last] = sum_j k(t_i, b^last_j), its other slots zero. The MMD forward
// is then one task, x's rows against (x, y) and y's as tail rows against y, so that each group's y
// is read from memory once; its backward is Gradient with per-group weights, and the kernel matrix
// and its backward follow the same way.
//
// Kept distances (the wide layout only): RowSums writes the squared distances of its rows (not the
// tail rows) to every column of the sets, distances[g, i, c] (acc type, (G, n_rows, n_0 + n_1)),
// and a Gradient over the same rows and sets reads them instead of sweeping D to recompute them.
#pragma once

#include <cstdint>

#include "dtype.h"
#include "kernel_math.h"

namespace imm {

enum class PairMode : int { RowSums = 0, Matrix = 1, Gradient = 2 };

struct ColumnSet {
  const void* data = nullptr;  // (G, n, D) contiguous, input dtype
  int64_t n = 0;
  // Gradient weight w[g, i, j] = weight[g * stride_g + i * stride_i + j * stride_j] (acc dtype);
  // a per-group scalar has stride_i = stride_j = 0.
  const void* weight = nullptr;
  int64_t stride_g = 0, stride_i = 0, stride_j = 0;
};

struct PairTask {
  PairMode mode = PairMode::RowSums;
  DType dtype = DType::Float32;
  KernelKind kind = KernelKind::Laplace;
  int64_t groups = 0;
  int64_t dim = 0;
  const void* rows = nullptr;  // (G, n_rows, D) contiguous, input dtype
  int64_t n_rows = 0;
  const void* tail_rows = nullptr;  // RowSums only: (G, n_tail_rows, D) contiguous, input dtype
  int64_t n_tail_rows = 0;
  ColumnSet sets[2];
  int num_sets = 1;
  const void* bandwidth = nullptr;  // (G, K) acc dtype, positive (ignored by the energy kernel)
  int num_bandwidths = 1;
  double distance_scale = 1.0;
  double eps = 1e-8;
  void* out = nullptr;
  void* distances = nullptr;  // kept squared distances (see above), or none

  int64_t out_rows() const { return n_rows + n_tail_rows; }
};

}  // namespace imm
