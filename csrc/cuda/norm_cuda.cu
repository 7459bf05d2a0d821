// CUDA kernels of norm + modulate (math in common/norm.h); every pointer is device memory, the
// kernels run on `stream` (a cudaStream_t as an integer) and allocate nothing.
//
//  * forward: one warp per row (lanes stride the channels, warp-shuffle sums).
//  * backward: one block per chunk of consecutive tokens of one sample: each row's two reductions (a
//    warp per row) into shared memory; then threads own channels and walk the chunk's rows, writing
//    grad_x and summing the per-sample gradients in registers into the chunk's partials, which a
//    second kernel sums in chunk order: deterministic (no atomics).
#include <cuda_runtime.h>

#include "../common/norm.h"
#include "launch.cuh"
#include "shared_memory.cuh"
#include "token_chunks.cuh"
#include "warp_reduce.cuh"

namespace imm::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / kWarp;

// mean and rstd of a row whose squares overflowed, from s x (see statistics_scale), by the warp
// that owns the row; a row holding inf keeps the non-finite statistics it has.
template <bool Rms, class In, class T>
__device__ void large_row_statistics(const In* row, int64_t C, int lane, T eps, T& mean, T& rstd) {
  T largest = T(0);
  for (int64_t c = lane; c < C; c += kWarp) {
    const T magnitude = fabs(static_cast<T>(load(row, c)));
    largest = magnitude > largest ? magnitude : largest;
  }
  largest = warp_max(largest);
  if (!is_finite(largest)) return;  // uniform across the warp
  const T s = statistics_scale(largest);
  T scaled_mean = T(0);
  if constexpr (!Rms) {
    const T pivot = s * load(row, 0);
    T deviations = T(0);
    for (int64_t c = lane; c < C; c += kWarp) deviations += s * load(row, c) - pivot;
    scaled_mean = row_mean(pivot, warp_sum(deviations), C);
  }
  T squares = T(0);
  for (int64_t c = lane; c < C; c += kWarp) {
    const T centered = s * load(row, c) - scaled_mean;
    squares += centered * centered;
  }
  mean = scaled_mean / s;
  rstd = inverse_std(warp_sum(squares), C, eps * s * s) * s;
}

template <class In, bool Rms>
__global__ void norm_modulate_forward_kernel(TokenShape shape, acc_t<In> eps, const In* __restrict__ x,
                                             const In* __restrict__ shift, const In* __restrict__ scale,
                                             In* __restrict__ out, acc_t<In>* __restrict__ stats) {
  using T = acc_t<In>;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (r >= shape.batch * shape.tokens) return;  // uniform across the warp
  const int lane = threadIdx.x % kWarp;
  const int64_t C = shape.channels;
  const In* row = x + r * C;
  const int64_t b = r / shape.tokens;
  T mean = T(0);
  if constexpr (!Rms) {
    const T pivot = load(row, 0);
    T deviations = T(0);
    for (int64_t c = lane; c < C; c += kWarp) deviations += load(row, c) - pivot;
    mean = row_mean(pivot, warp_sum(deviations), C);
  }
  T squares = T(0);
  for (int64_t c = lane; c < C; c += kWarp) {
    const T centered = load(row, c) - mean;
    squares += centered * centered;
  }
  squares = warp_sum(squares);
  T rstd = inverse_std(squares, C, eps);
  if (!is_finite(squares)) large_row_statistics<Rms>(row, C, lane, eps, mean, rstd);  // uniform across the warp
  for (int64_t c = lane; c < C; c += kWarp)
    store(out + r * C, c,
          modulate(normalized(load(row, c), mean, rstd), load(shift + b * C, c), load(scale + b * C, c)));
  if (lane == 0) {
    stats[2 * r] = mean;
    stats[2 * r + 1] = rstd;
  }
}

// Block = one chunk of tokens of one sample; dynamic shared memory: 4 * chunk_tokens values of T.
template <class In, bool Rms>
__global__ void norm_modulate_backward_kernel(TokenShape shape, int64_t chunk_tokens,
                                              const In* __restrict__ grad, const In* __restrict__ x,
                                              const acc_t<In>* __restrict__ stats, const In* __restrict__ scale,
                                              In* __restrict__ grad_x, acc_t<In>* __restrict__ partials) {
  using T = acc_t<In>;
  IMM_DYNAMIC_SHARED(shared_bytes);
  T* means = reinterpret_cast<T*>(shared_bytes);
  T* rstds = means + chunk_tokens;
  T* mean_dxhats = rstds + chunk_tokens;
  T* mean_dxhat_xhats = mean_dxhats + chunk_tokens;

  const int64_t C = shape.channels;
  const int64_t item = blockIdx.x;
  const TokenChunk chunk = token_chunk(shape, chunk_tokens, item);
  const int64_t b = chunk.b, rows = chunk.rows, first_row = chunk.first_row;
  const In* sample_scale = scale + b * C;

  // Phase 1: E[dxhat] and E[dxhat * xhat] of every row of the chunk, a warp per row.
  const int lane = threadIdx.x % kWarp;
  for (int64_t i = threadIdx.x / kWarp; i < rows; i += kWarpsPerBlock) {
    const int64_t r = first_row + i;
    const T mean = stats[2 * r], rstd = stats[2 * r + 1];
    T sum_dxhat = T(0), sum_dxhat_xhat = T(0);
    for (int64_t c = lane; c < C; c += kWarp) {
      const T dxhat = modulated_grad(load(grad + r * C, c), load(sample_scale, c));
      sum_dxhat += dxhat;
      sum_dxhat_xhat += dxhat * normalized(load(x + r * C, c), mean, rstd);
    }
    sum_dxhat = warp_sum(sum_dxhat);
    sum_dxhat_xhat = warp_sum(sum_dxhat_xhat);
    if (lane == 0) {
      means[i] = mean;
      rstds[i] = rstd;
      mean_dxhats[i] = Rms ? T(0) : sum_dxhat / static_cast<T>(C);
      mean_dxhat_xhats[i] = sum_dxhat_xhat / static_cast<T>(C);
    }
  }
  __syncthreads();

  // Phase 2: a thread per channel walks the chunk's rows.
  T* sum_grad = partials + item * 2 * C;  // -> grad_shift
  T* sum_grad_xhat = sum_grad + C;        // -> grad_scale
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const T channel_scale = load(sample_scale, c);
    T total_grad = T(0), total_grad_xhat = T(0);
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t offset = (first_row + i) * C + c;
      const T g = load(grad, offset);
      const T xhat = normalized(load(x, offset), means[i], rstds[i]);
      store(
          grad_x, offset,
          norm_input_grad(modulated_grad(g, channel_scale), xhat, rstds[i], mean_dxhats[i], mean_dxhat_xhats[i]));
      total_grad += g;
      total_grad_xhat += g * xhat;
    }
    sum_grad[c] = total_grad;
    sum_grad_xhat[c] = total_grad_xhat;
  }
}

}  // namespace

void norm_modulate_forward(DType dtype, TokenShape shape, bool rms, double eps, const void* x,
                           const void* shift, const void* scale, void* out, void* stats, std::uintptr_t stream) {
  const int64_t rows = shape.batch * shape.tokens;
  if (rows == 0 || shape.channels == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using In = decltype(tag);
    using T = acc_t<In>;
    dispatch_norm(rms, [&](auto is_rms) {
      launch_kernel("norm_modulate_forward", norm_modulate_forward_kernel<In, decltype(is_rms)::value>,
                    blocks_of(rows, kWarpsPerBlock), kThreads, 0, as_stream(stream), shape, static_cast<T>(eps),
                    static_cast<const In*>(x), static_cast<const In*>(shift), static_cast<const In*>(scale),
                    static_cast<In*>(out), static_cast<T*>(stats));
    });
  });
  check_launch("norm_modulate_forward");
}

void norm_modulate_backward(DType dtype, TokenShape shape, int64_t chunk_tokens, bool rms, const void* grad,
                            const void* x, const void* stats, const void* scale, void* grad_x, void* partials,
                            void* grad_shift, void* grad_scale, std::uintptr_t stream) {
  if (shape.batch == 0 || shape.tokens == 0 || shape.channels == 0) return;
  const int64_t chunks = token_chunks(shape.tokens, chunk_tokens);
  dispatch_dtype(dtype, [&](auto tag) {
    using In = decltype(tag);
    using T = acc_t<In>;
    const std::size_t shared = 4 * static_cast<std::size_t>(chunk_tokens) * sizeof(T);
    dispatch_norm(rms, [&](auto is_rms) {
      launch_kernel("norm_modulate_backward", norm_modulate_backward_kernel<In, decltype(is_rms)::value>,
                    static_cast<unsigned>(shape.batch * chunks), kThreads, shared, as_stream(stream), shape,
                    chunk_tokens, static_cast<const In*>(grad), static_cast<const In*>(x), static_cast<const T*>(stats),
                    static_cast<const In*>(scale), static_cast<In*>(grad_x), static_cast<T*>(partials));
    });
    check_launch("norm_modulate_backward");
    sum_token_chunks(shape, chunks, 2, static_cast<const T*>(partials), static_cast<In*>(grad_shift),
                     static_cast<In*>(grad_scale), as_stream(stream));
  });
}

}  // namespace imm::cuda
