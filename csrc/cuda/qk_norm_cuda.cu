// CUDA kernels of qk-norm (math and layout in common/qk_norm.h).
//
//  * forward: one warp per row (lanes stride head_dim, warp-shuffle sums).
//  * backward: one block per chunk of rows of one part: each row's E[dxhat * xhat] first (a warp per
//    row, into shared memory), then threads own channels and walk the chunk's rows, writing grad_x and
//    summing g * xhat into the chunk's partial of grad_w, in a fixed order (no atomics:
//    deterministic). The blocks of the q part also zero the v rows of their chunk.
#include <cuda_runtime.h>

#include "../common/qk_norm.h"
#include "launch.cuh"
#include "shared_memory.cuh"
#include "warp_reduce.cuh"

namespace imm::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / kWarp;

// The sum over the warp of (s x)^2 for the row's values x.
template <class In, class T>
__device__ T scaled_squares(const In* row, int64_t D, int lane, T s) {
  T scaled = T(0);
  for (int64_t c = lane; c < D; c += kWarp) {
    const T v = s * load(row, c);
    scaled += v * v;
  }
  return warp_sum(scaled);
}

template <class In>
__global__ void qk_norm_forward_kernel(QkNormShape shape, acc_t<In> eps, const In* __restrict__ qkv,
                                       const In* __restrict__ q_weight, const In* __restrict__ k_weight,
                                       In* __restrict__ out_q, In* __restrict__ out_k,
                                       acc_t<In>* __restrict__ stats) {
  using T = acc_t<In>;
  const int64_t rows = shape.rows(), D = shape.head_dim;
  const int64_t item = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (item >= 2 * rows) return;  // uniform across the warp
  const int lane = threadIdx.x % kWarp;
  const int p = static_cast<int>(item / rows);
  const QkRow r = shape.row(item % rows);
  const int64_t out_row = shape.output_row(r);
  const In* row = qkv + shape.input_offset(p, r);
  const In* weight = p == 0 ? q_weight : k_weight;
  T squares = T(0);
  for (int64_t c = lane; c < D; c += kWarp) {
    const T v = load(row, c);
    squares += v * v;
  }
  squares = warp_sum(squares);
  T rstd = inverse_std(squares, D, eps);
  if (!is_finite(squares)) {  // uniform across the warp: the squares overflowed, or the row holds inf or NaN
    T largest = T(0);
    for (int64_t c = lane; c < D; c += kWarp) {
      const T magnitude = fabs(static_cast<T>(load(row, c)));
      largest = magnitude > largest ? magnitude : largest;
    }
    largest = warp_max(largest);
    if (is_finite(largest)) {
      const T s = statistics_scale(largest);
      rstd = scaled_rstd(scaled_squares(row, D, lane, s), D, eps, s);
    }
  }
  In* target = (p == 0 ? out_q : out_k) + out_row * D;
  for (int64_t c = lane; c < D; c += kWarp)
    store(target, c, normalized(static_cast<T>(load(row, c)), T(0), rstd) * load(weight, c));
  if (lane == 0) stats[p * rows + out_row] = rstd;
}

template <class In>
__global__ void qk_norm_backward_kernel(QkNormShape shape, int64_t chunk_rows, const In* __restrict__ grad_q,
                                        const In* __restrict__ grad_k, const In* __restrict__ qkv, const In* __restrict__ q_weight,
                                        const In* __restrict__ k_weight, const acc_t<In>* __restrict__ stats,
                                        In* __restrict__ grad_qkv, acc_t<In>* __restrict__ partials) {
  using T = acc_t<In>;
  IMM_SHARED(T, mean_dxhat_xhats, [kQkNormMaxChunkRows]);
  const int64_t rows = shape.rows(), D = shape.head_dim, chunks = shape.chunks(chunk_rows);
  const int64_t item = blockIdx.x;
  const int p = static_cast<int>(item / chunks);
  const int64_t first = (item % chunks) * chunk_rows;
  const int64_t count = rows - first < chunk_rows ? rows - first : chunk_rows;
  const In* weight = p == 0 ? q_weight : k_weight;
  const In* grad = p == 0 ? grad_q : grad_k;

  // Phase 1: E[dxhat * xhat] of every row of the chunk, a warp per row.
  const int lane = threadIdx.x % kWarp;
  for (int64_t i = threadIdx.x / kWarp; i < count; i += kWarpsPerBlock) {
    const int64_t n = first + i;
    const QkRow r = shape.row(n);
    const int64_t out_row = shape.output_row(r);
    const T rstd = stats[p * rows + out_row];
    const In* x = qkv + shape.input_offset(p, r);
    const In* g = grad + out_row * D;
    T sum = T(0);
    for (int64_t c = lane; c < D; c += kWarp)
      sum += load(g, c) * load(weight, c) * normalized(static_cast<T>(load(x, c)), T(0), rstd);
    sum = warp_sum(sum);
    if (lane == 0) mean_dxhat_xhats[i] = sum / static_cast<T>(D);
  }
  __syncthreads();

  // Phase 2: threads own channels and walk the chunk's rows; with head_dim < the block, `groups` sets of
  // head_dim threads take every groups-th row and their sums are added in group order.
  const int groups = D >= kThreads ? 1 : kThreads / static_cast<int>(D);
  const int group = groups == 1 ? 0 : static_cast<int>(threadIdx.x / D);
  const int64_t first_channel = groups == 1 ? threadIdx.x : threadIdx.x % D;
  const int64_t channel_step = groups == 1 ? blockDim.x : D;
  IMM_SHARED(T, group_totals, [kThreads]);
  for (int64_t c = first_channel; c < D && group < groups; c += channel_step) {
    const T w = load(weight, c);
    T total = T(0);
    for (int64_t i = group; i < count; i += groups) {
      const QkRow r = shape.row(first + i);
      const int64_t out_row = shape.output_row(r);
      const T rstd = stats[p * rows + out_row];
      const int64_t offset = shape.input_offset(p, r) + c;
      const T g = load(grad + out_row * D, c);
      const T xhat = normalized(static_cast<T>(load(qkv, offset)), T(0), rstd);
      store(grad_qkv, offset, norm_input_grad(g * w, xhat, rstd, T(0), mean_dxhat_xhats[i]));
      total += g * xhat;
      if (p == 0) store(grad_qkv, shape.input_offset(2, r) + c, T(0));
    }
    if (groups == 1) {
      partials[item * D + c] = total;
    } else {
      group_totals[group * D + c] = total;
    }
  }
  if (groups == 1) return;  // uniform across the block
  __syncthreads();
  if (threadIdx.x < D) {
    T total = T(0);
    for (int k = 0; k < groups; ++k) total += group_totals[k * D + threadIdx.x];
    partials[item * D + threadIdx.x] = total;
  }
}

}  // namespace

void qk_norm_forward(DType dtype, QkNormShape shape, double eps, const void* qkv, const void* q_weight,
                     const void* k_weight, void* out_q, void* out_k, void* stats, std::uintptr_t stream) {
  if (shape.rows() == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using In = decltype(tag);
    using T = acc_t<In>;
    launch_kernel("qk_norm_forward", qk_norm_forward_kernel<In>, blocks_of(2 * shape.rows(), kWarpsPerBlock),
                  kThreads, 0, as_stream(stream), shape, static_cast<T>(eps), static_cast<const In*>(qkv),
                  static_cast<const In*>(q_weight), static_cast<const In*>(k_weight), static_cast<In*>(out_q),
                  static_cast<In*>(out_k), static_cast<T*>(stats));
  });
  check_launch("qk_norm_forward");
}

void qk_norm_backward(DType dtype, QkNormShape shape, int64_t chunk_rows, const void* grad_q, const void* grad_k,
                      const void* qkv, const void* q_weight, const void* k_weight, const void* stats, void* grad_qkv,
                      void* partials, std::uintptr_t stream) {
  if (shape.rows() == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using In = decltype(tag);
    using T = acc_t<In>;
    launch_kernel("qk_norm_backward", qk_norm_backward_kernel<In>,
                  static_cast<unsigned>(2 * shape.chunks(chunk_rows)), kThreads, 0, as_stream(stream), shape,
                  chunk_rows, static_cast<const In*>(grad_q), static_cast<const In*>(grad_k),
                  static_cast<const In*>(qkv),
                  static_cast<const In*>(q_weight), static_cast<const In*>(k_weight), static_cast<const T*>(stats),
                  static_cast<In*>(grad_qkv), static_cast<T*>(partials));
  });
  check_launch("qk_norm_backward");
}

}  // namespace imm::cuda
