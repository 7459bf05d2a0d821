// CUDA fused attention (common/attention.h): FlashAttention-2's tiling on the CUDA cores, accumulating
// in float32 (float64 for float64 inputs), with the softmax arithmetic the CPU kernels use.
//
// Thread layout of all three kernels: a block owns a tile of kTile rows (queries in the forward and
// dQ kernels, keys in the dK/dV kernel) with four threads per row, a "quad" of adjacent lanes. Quad
// lane c owns columns c, c + 4, c + 8, ... of its row: the row's vectors live in registers (Dh / 4
// values each), and a dot product is four partial sums joined by two shuffles. The interleaving makes
// the four lanes read adjacent shared-memory words (distinct banks) while the eight rows of a warp read
// the same words (a broadcast), so tile reads have no bank conflicts. The other operand streams
// through shared memory, kTile rows at a time, zero-padded past the sequence and past Dh.
//
//   forward:  block (b, h, query tile); per key tile: s = (scale q) . k, online softmax, o += p v.
//   dK, dV:   block (b, h, key tile); per query tile: p = exp(s - lse), dV += p dO, dP = dO . v,
//             dS = p (dP - D), dK += dS q, with D = dO . O of each query row computed on load.
//   dQ:       block (b, h, query tile); per key tile: the same p and dS, dQ += dS k.
// Every output element is written by one thread after sums in a fixed order (deterministic, no
// atomics). Head dims are padded up to 32, 64, 96 or 128 (kernel templates). Nothing is allocated.
// Every thread of a block runs every shuffle and barrier: rows past the sequence compute on zeros
// and only skip their stores.
#include "attention_cuda.h"

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "../common/attention.h"
#include "../common/dtype.h"
#include "launch.cuh"
#include "shared_memory.cuh"

namespace imm::cuda {
namespace {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kQuad = 4;  // threads per row
constexpr int64_t kMaxGridY = 65535;

// Rows per tile: two tiles of kTile x 128 values fill 32 KB of shared memory in either precision.
template <class T>
constexpr int tile_rows() {
  return sizeof(T) == 8 ? 16 : 32;
}
template <class In>
constexpr int block_threads() {
  return kQuad * tile_rows<acc_t<In>>();
}

template <class T>
__device__ __forceinline__ T quad_sum(T x) {
  x += __shfl_xor_sync(kFullMask, x, 1);
  x += __shfl_xor_sync(kFullMask, x, 2);
  return x;
}

template <class T>
__device__ __forceinline__ T larger(T a, T b) {  // a NaN in b is skipped, as on the CPU
  return b > a ? b : a;
}

// This lane's columns of row t of x, times factor; zero past dim and for a row outside [0, len).
template <class In, class T, int kCols>
__device__ __forceinline__ void load_columns(const HeadTensor& x, int64_t b, int64_t h, int64_t t, bool valid,
                                             int64_t dim, int lane, T factor, T (&out)[kCols]) {
  const In* row = x.row<const In>(b, h, valid ? t : 0);
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
    const int64_t d = lane + kQuad * c;
    out[c] = valid && d < dim ? factor * static_cast<T>(load(row, d)) : T(0);
  }
}

// Rows [t0, t0 + kTile) of x into tile (accumulation type), zero past len and past dim; the block's
// threads walk the tile along rows, so global reads are coalesced.
template <class In, class T, int kTile, int kDim>
__device__ __forceinline__ void load_tile(const HeadTensor& x, int64_t b, int64_t h, int64_t t0, int64_t len,
                                          int64_t dim, T (&tile)[kTile][kDim]) {
  for (int e = threadIdx.x; e < kTile * kDim; e += blockDim.x) {
    const int r = e / kDim, d = e % kDim;
    const int64_t t = t0 + r;
    tile[r][d] = t < len && d < dim ? static_cast<T>(load(x.row<const In>(b, h, t), d)) : T(0);
  }
}

// Sum over this lane's columns of u[c] * row[lane + 4 c], joined across the quad.
template <class T, int kCols, int kDim>
__device__ __forceinline__ T quad_dot(const T (&u)[kCols], const T (&row)[kDim], int lane) {
  T partial = T(0);
#pragma unroll
  for (int c = 0; c < kCols; ++c) partial += u[c] * row[lane + kQuad * c];
  return quad_sum(partial);
}

// ---------------------------------------------------------------------------------------------
// Forward: grid (B * H, query tiles).

template <class In, int kDim>
__global__ void __launch_bounds__(block_threads<In>()) attention_forward_kernel(AttentionForwardTask task) {
  using T = acc_t<In>;
  constexpr int kTile = tile_rows<T>(), kCols = kDim / kQuad;
  IMM_SHARED(T, keys, [kTile][kDim]);
  IMM_SHARED(T, values, [kTile][kDim]);
  const AttentionShape& shape = task.shape;
  const int64_t b = blockIdx.x / shape.heads, h = blockIdx.x % shape.heads;
  const int lane = threadIdx.x % kQuad;
  const int64_t i = static_cast<int64_t>(blockIdx.y) * kTile + threadIdx.x / kQuad;
  const bool valid = i < shape.q_len;

  T q[kCols], o[kCols];
  load_columns<In>(task.q, b, h, i, valid, shape.head_dim, lane, static_cast<T>(shape.scale), q);
#pragma unroll
  for (int c = 0; c < kCols; ++c) o[c] = T(0);
  T m = negative_infinity<T>(), l = T(0);

  for (int64_t j0 = 0; j0 < shape.kv_len; j0 += kTile) {
    __syncthreads();  // the previous tile is consumed
    load_tile<In>(task.k, b, h, j0, shape.kv_len, shape.head_dim, keys);
    load_tile<In>(task.v, b, h, j0, shape.kv_len, shape.head_dim, values);
    __syncthreads();
    const int n = static_cast<int>(min(static_cast<int64_t>(kTile), shape.kv_len - j0));
    T scores[kTile];
    T tile_max = negative_infinity<T>();
#pragma unroll
    for (int j = 0; j < kTile; ++j) {
      scores[j] = quad_dot(q, keys[j], lane);
      if (j < n) tile_max = larger(tile_max, scores[j]);
    }
    const T m_new = larger(m, tile_max);
    const T rescale = softmax_rescale(m, m_new);
    l *= rescale;
#pragma unroll
    for (int c = 0; c < kCols; ++c) o[c] *= rescale;
#pragma unroll
    for (int j = 0; j < kTile; ++j) {
      const T p = j < n ? softmax_numerator(scores[j], m_new) : T(0);
      l += p;
#pragma unroll
      for (int c = 0; c < kCols; ++c) o[c] += p * values[j][lane + kQuad * c];
    }
    m = m_new;
  }
  if (!valid) return;
  In* out = task.out.row<In>(b, h, i);
  const T inverse = T(1) / l;
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
    const int64_t d = lane + kQuad * c;
    if (d < shape.head_dim) store(out, d, o[c] * inverse);
  }
  if (lane == 0 && task.lse != nullptr)
    static_cast<T*>(task.lse)[(b * shape.heads + h) * shape.q_len + i] = softmax_log_sum_exp(m, l);
}

// ---------------------------------------------------------------------------------------------
// Backward, dK and dV: grid (B * H, key tiles).

template <class In, int kDim>
__global__ void __launch_bounds__(block_threads<In>()) attention_key_gradient_kernel(AttentionBackwardTask task) {
  using T = acc_t<In>;
  constexpr int kTile = tile_rows<T>(), kCols = kDim / kQuad;
  IMM_SHARED(T, queries, [kTile][kDim]);
  IMM_SHARED(T, grads, [kTile][kDim]);  // dO
  IMM_SHARED(T, lse, [kTile]);
  IMM_SHARED(T, delta, [kTile]);
  const AttentionShape& shape = task.shape;
  const int64_t b = blockIdx.x / shape.heads, h = blockIdx.x % shape.heads;
  const int row = threadIdx.x / kQuad, lane = threadIdx.x % kQuad;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * kTile + row;
  const bool valid = j < shape.kv_len;
  const T scale = static_cast<T>(shape.scale);
  const T* saved_lse = static_cast<const T*>(task.lse) + (b * shape.heads + h) * shape.q_len;

  T k[kCols], v[kCols], dk[kCols], dv[kCols];
  load_columns<In>(task.k, b, h, j, valid, shape.head_dim, lane, scale, k);
  load_columns<In>(task.v, b, h, j, valid, shape.head_dim, lane, T(1), v);
#pragma unroll
  for (int c = 0; c < kCols; ++c) dk[c] = dv[c] = T(0);

  for (int64_t i0 = 0; i0 < shape.q_len; i0 += kTile) {
    __syncthreads();  // the previous tile is consumed
    load_tile<In>(task.q, b, h, i0, shape.q_len, shape.head_dim, queries);
    load_tile<In>(task.grad_out, b, h, i0, shape.q_len, shape.head_dim, grads);
    __syncthreads();
    // Quad `row` prepares query i0 + row: its lse and D = dO . O.
    const int64_t i = i0 + row;
    T o[kCols];
    load_columns<In>(task.out, b, h, i, i < shape.q_len, shape.head_dim, lane, T(1), o);
    const T row_delta = quad_dot(o, grads[row], lane);
    if (lane == 0) {
      lse[row] = i < shape.q_len ? saved_lse[i] : T(0);
      delta[row] = row_delta;
    }
    __syncthreads();
    const int n = static_cast<int>(min(static_cast<int64_t>(kTile), shape.q_len - i0));
    for (int r = 0; r < n; ++r) {
      // Every lane shuffles (quad_dot) before the key's validity is applied: no divergent shuffles.
      const T s = quad_dot(k, queries[r], lane), dp = quad_dot(v, grads[r], lane);
      const T p = valid ? softmax_numerator(s, lse[r]) : T(0);
      const T ds = softmax_backward(p, dp, delta[r]);
#pragma unroll
      for (int c = 0; c < kCols; ++c) {
        dv[c] += p * grads[r][lane + kQuad * c];
        dk[c] += ds * queries[r][lane + kQuad * c];
      }
    }
  }
  if (!valid) return;
  In* grad_k = task.grad_k.row<In>(b, h, j);
  In* grad_v = task.grad_v.row<In>(b, h, j);
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
    const int64_t d = lane + kQuad * c;
    if (d < shape.head_dim) {
      store(grad_k, d, scale * dk[c]);
      store(grad_v, d, dv[c]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward, dQ: grid (B * H, query tiles).

template <class In, int kDim>
__global__ void __launch_bounds__(block_threads<In>()) attention_query_gradient_kernel(AttentionBackwardTask task) {
  using T = acc_t<In>;
  constexpr int kTile = tile_rows<T>(), kCols = kDim / kQuad;
  IMM_SHARED(T, keys, [kTile][kDim]);
  IMM_SHARED(T, values, [kTile][kDim]);
  const AttentionShape& shape = task.shape;
  const int64_t b = blockIdx.x / shape.heads, h = blockIdx.x % shape.heads;
  const int lane = threadIdx.x % kQuad;
  const int64_t i = static_cast<int64_t>(blockIdx.y) * kTile + threadIdx.x / kQuad;
  const bool valid = i < shape.q_len;
  const T scale = static_cast<T>(shape.scale);

  T q[kCols], g[kCols], o[kCols], dq[kCols];
  load_columns<In>(task.q, b, h, i, valid, shape.head_dim, lane, scale, q);
  load_columns<In>(task.grad_out, b, h, i, valid, shape.head_dim, lane, T(1), g);
  load_columns<In>(task.out, b, h, i, valid, shape.head_dim, lane, T(1), o);
  T delta = T(0);
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
    delta += g[c] * o[c];
    dq[c] = T(0);
  }
  delta = quad_sum(delta);
  const T row_lse = valid ? static_cast<const T*>(task.lse)[(b * shape.heads + h) * shape.q_len + i] : T(0);

  for (int64_t j0 = 0; j0 < shape.kv_len; j0 += kTile) {
    __syncthreads();  // the previous tile is consumed
    load_tile<In>(task.k, b, h, j0, shape.kv_len, shape.head_dim, keys);
    load_tile<In>(task.v, b, h, j0, shape.kv_len, shape.head_dim, values);
    __syncthreads();
    const int n = static_cast<int>(min(static_cast<int64_t>(kTile), shape.kv_len - j0));
    for (int j = 0; j < n; ++j) {
      const T p = softmax_numerator(quad_dot(q, keys[j], lane), row_lse);
      const T ds = softmax_backward(p, quad_dot(g, values[j], lane), delta);
#pragma unroll
      for (int c = 0; c < kCols; ++c) dq[c] += ds * keys[j][lane + kQuad * c];
    }
  }
  if (!valid) return;
  In* grad_q = task.grad_q.row<In>(b, h, i);
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
    const int64_t d = lane + kQuad * c;
    if (d < shape.head_dim) store(grad_q, d, scale * dq[c]);
  }
}

// ---------------------------------------------------------------------------------------------
// Launches

// Grid (B * H, tiles of `len` rows) for element type In.
template <class In>
dim3 grid_for(const AttentionShape& shape, int64_t len) {
  const int64_t tiles = (len + tile_rows<acc_t<In>>() - 1) / tile_rows<acc_t<In>>();
  if (tiles > kMaxGridY || shape.batch * shape.heads > INT32_MAX)
    throw std::invalid_argument("imm_ext: CUDA attention: sequence or batch * heads too large for one launch");
  return dim3(static_cast<unsigned>(shape.batch * shape.heads), static_cast<unsigned>(tiles));
}

// Calls f(In{}, std::integral_constant<int, kDim>{}) for the task's dtype and padded head dim.
template <class F>
void dispatch(const AttentionShape& shape, F&& f) {
  dispatch_dtype(shape.dtype, [&](auto tag) {
    const int64_t dim = shape.head_dim;
    if (dim <= 32) {
      f(tag, std::integral_constant<int, 32>{});
    } else if (dim <= 64) {
      f(tag, std::integral_constant<int, 64>{});
    } else if (dim <= 96) {
      f(tag, std::integral_constant<int, 96>{});
    } else {
      f(tag, std::integral_constant<int, kAttentionMaxHeadDim>{});
    }
  });
}

}  // namespace

void attention_forward(const AttentionForwardTask& task, std::uintptr_t stream) {
  const cudaStream_t s = as_stream(stream);
  dispatch(task.shape, [&](auto tag, auto dim) {
    using In = decltype(tag);
    launch_kernel("attention_forward", attention_forward_kernel<In, decltype(dim)::value>,
                  grid_for<In>(task.shape, task.shape.q_len), block_threads<In>(), 0, s, task);
    check_launch("attention forward");
  });
}

void attention_backward(const AttentionBackwardTask& task, std::uintptr_t stream) {
  const cudaStream_t s = as_stream(stream);
  dispatch(task.shape, [&](auto tag, auto dim) {
    using In = decltype(tag);
    launch_kernel("attention_key_gradient", attention_key_gradient_kernel<In, decltype(dim)::value>,
                  grid_for<In>(task.shape, task.shape.kv_len), block_threads<In>(), 0, s, task);
    check_launch("attention dK/dV");
    launch_kernel("attention_query_gradient", attention_query_gradient_kernel<In, decltype(dim)::value>,
                  grid_for<In>(task.shape, task.shape.q_len), block_threads<In>(), 0, s, task);
    check_launch("attention dQ");
  });
}

}  // namespace imm::cuda
