// CUDA kernels of the DiT block's conditioning ops (see conditioning_cuda.h, common/conditioning.h).
//
//  * norm + modulate forward: one warp per row (lanes stride the channels, warp-shuffle sums).
//  * backwards: one block per chunk of consecutive tokens of one sample. Norm + modulate first
//    gets each row's two reductions (a warp per row) into shared memory; then threads own channels
//    and walk the chunk's rows, writing grad_x / grad_y and summing the per-sample gradients in
//    registers into the chunk's partials. A second kernel sums the partials in chunk order: the
//    per-sample gradients are deterministic (no atomics).
//  * gate + residual forward: a grid-stride elementwise loop.
//  * time embedding: a thread per (row, frequency) (forward), a warp per row (backward), float64.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "conditioning_cuda.h"
#include "launch.cuh"
#include "shared_memory.cuh"
#include "warp_reduce.cuh"

namespace imm::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / kWarp;

template <class F>
void dispatch_norm(bool rms, F&& f) {
  if (rms) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// out0[b, c] (and out1 when parts == 2) = sum over chunks k of partials[b, k, p, c].
template <class In, class T>
__global__ void sum_token_chunks_kernel(ConditioningShape shape, int64_t chunks, int parts,
                                        const T* __restrict__ partials, In* __restrict__ out0,
                                        In* __restrict__ out1) {
  const int64_t C = shape.channels;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= shape.batch * parts * C) return;
  const int64_t c = i % C, p = (i / C) % parts, b = i / (C * parts);
  const T* first = partials + (b * chunks * parts + p) * C + c;
  T total = T(0);
  for (int64_t k = 0; k < chunks; ++k) total += first[k * parts * C];
  store(p == 0 ? out0 : out1, b * C + c, total);
}

template <class In, class T>
void sum_token_chunks(ConditioningShape shape, int64_t chunks, int parts, const T* partials, In* out0, In* out1,
                      cudaStream_t stream) {
  launch_kernel("sum_token_chunks", sum_token_chunks_kernel<In, T>,
                blocks_of(shape.batch * parts * shape.channels, kThreads), kThreads, 0, stream, shape, chunks, parts,
                partials, out0, out1);
  check_launch("sum_token_chunks");
}

// ---- norm + modulate ------------------------------------------------------------------------

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
__global__ void norm_modulate_forward_kernel(ConditioningShape shape, acc_t<In> eps, const In* __restrict__ x,
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
__global__ void norm_modulate_backward_kernel(ConditioningShape shape, int64_t chunk_tokens,
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
  const int64_t chunks = token_chunks(shape.tokens, chunk_tokens);
  const int64_t item = blockIdx.x;
  const int64_t b = item / chunks;
  const int64_t t0 = (item % chunks) * chunk_tokens;
  const int64_t rows = shape.tokens - t0 < chunk_tokens ? shape.tokens - t0 : chunk_tokens;
  const In* sample_scale = scale + b * C;
  const int64_t first_row = b * shape.tokens + t0;

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

// ---- gate + residual ------------------------------------------------------------------------

template <class In>
__global__ void gate_residual_forward_kernel(ConditioningShape shape, const In* __restrict__ x,
                                             const In* __restrict__ gate, const In* __restrict__ y,
                                             In* __restrict__ out) {
  const int64_t C = shape.channels, per_sample = shape.tokens * C;
  const int64_t total = shape.batch * per_sample;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride)
    store(out, i, gate_residual(load(x, i), load(gate, (i / per_sample) * C + i % C), load(y, i)));
}

// Block = one chunk of tokens of one sample; a thread per channel walks the chunk's rows.
template <class In>
__global__ void gate_residual_backward_kernel(ConditioningShape shape, int64_t chunk_tokens,
                                              const In* __restrict__ grad, const In* __restrict__ gate,
                                              const In* __restrict__ y, In* __restrict__ grad_y,
                                              acc_t<In>* __restrict__ partials) {
  using T = acc_t<In>;
  const int64_t C = shape.channels;
  const int64_t chunks = token_chunks(shape.tokens, chunk_tokens);
  const int64_t item = blockIdx.x;
  const int64_t b = item / chunks;
  const int64_t t0 = (item % chunks) * chunk_tokens;
  const int64_t rows = shape.tokens - t0 < chunk_tokens ? shape.tokens - t0 : chunk_tokens;
  const int64_t first_row = b * shape.tokens + t0;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const T channel_gate = load(gate, b * C + c);
    T total = T(0);
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t offset = (first_row + i) * C + c;
      const T g = load(grad, offset);
      store(grad_y, offset, channel_gate * g);
      total += g * load(y, offset);
    }
    partials[item * C + c] = total;
  }
}

// ---- sinusoidal time embedding --------------------------------------------------------------

// A thread per (row, frequency): both cos and sin; an odd dim's zero column gets the extra index.
template <class Out>
__global__ void timestep_embedding_forward_kernel(int64_t rows, int64_t dim, double log_max_period,
                                                  const double* __restrict__ c, Out* __restrict__ out) {
  const int64_t half = dim / 2, per_row = half + dim % 2;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * per_row) return;
  const int64_t n = i / per_row, k = i % per_row;
  Out* row = out + n * dim;
  if (k == half) {
    store(row, dim - 1, acc_t<Out>(0));
    return;
  }
  double sin_value, cos_value;
  embedding_sin_cos(__ldg(c + n), embedding_frequency(k, half, log_max_period), &sin_value, &cos_value);
  store(row, k, static_cast<acc_t<Out>>(cos_value));
  store(row, half + k, static_cast<acc_t<Out>>(sin_value));
}

template <class G>
__global__ void timestep_embedding_backward_kernel(int64_t rows, int64_t dim, double log_max_period,
                                                   const double* __restrict__ c, const G* __restrict__ grad,
                                                   double* __restrict__ grad_c) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (n >= rows) return;  // uniform across the warp
  const int lane = threadIdx.x % kWarp;
  const int64_t half = dim / 2;
  const G* row = grad + n * dim;
  double total = 0.0;
  for (int64_t k = lane; k < half; k += kWarp) {
    const double frequency = embedding_frequency(k, half, log_max_period);
    double sin_value, cos_value;
    embedding_sin_cos(c[n], frequency, &sin_value, &cos_value);
    total += embedding_argument_grad(frequency, sin_value, cos_value, load(row, k), load(row, half + k));
  }
  total = warp_sum(total);
  if (lane == 0) grad_c[n] = total;
}

}  // namespace

void norm_modulate_forward(DType dtype, ConditioningShape shape, bool rms, double eps, const void* x,
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

void norm_modulate_backward(DType dtype, ConditioningShape shape, int64_t chunk_tokens, bool rms, const void* grad,
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

void gate_residual_forward(DType dtype, ConditioningShape shape, const void* x, const void* gate, const void* y,
                           void* out, std::uintptr_t stream) {
  const int64_t total = shape.batch * shape.tokens * shape.channels;
  if (total == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using In = decltype(tag);
    launch_kernel("gate_residual_forward", gate_residual_forward_kernel<In>, grid_stride_blocks(total, kThreads),
                  kThreads, 0, as_stream(stream), shape, static_cast<const In*>(x), static_cast<const In*>(gate),
                  static_cast<const In*>(y), static_cast<In*>(out));
  });
  check_launch("gate_residual_forward");
}

void gate_residual_backward(DType dtype, ConditioningShape shape, int64_t chunk_tokens, const void* grad,
                            const void* gate, const void* y, void* grad_y, void* partials, void* grad_gate,
                            std::uintptr_t stream) {
  if (shape.batch == 0 || shape.tokens == 0 || shape.channels == 0) return;
  const int64_t chunks = token_chunks(shape.tokens, chunk_tokens);
  dispatch_dtype(dtype, [&](auto tag) {
    using In = decltype(tag);
    using T = acc_t<In>;
    launch_kernel("gate_residual_backward", gate_residual_backward_kernel<In>,
                  static_cast<unsigned>(shape.batch * chunks), kThreads, 0, as_stream(stream), shape, chunk_tokens,
                  static_cast<const In*>(grad), static_cast<const In*>(gate), static_cast<const In*>(y),
                  static_cast<In*>(grad_y), static_cast<T*>(partials));
    check_launch("gate_residual_backward");
    sum_token_chunks(shape, chunks, 1, static_cast<const T*>(partials), static_cast<In*>(grad_gate),
                     static_cast<In*>(nullptr), as_stream(stream));
  });
}

void timestep_embedding_forward(DType out_dtype, int64_t rows, int64_t dim, double log_max_period, const double* c,
                                void* out, std::uintptr_t stream) {
  if (rows == 0 || dim == 0) return;
  dispatch_dtype(out_dtype, [&](auto tag) {
    using Out = decltype(tag);
    const int64_t threads = rows * (dim / 2 + dim % 2);
    launch_kernel("timestep_embedding_forward", timestep_embedding_forward_kernel<Out>, blocks_of(threads, kThreads),
                  kThreads, 0, as_stream(stream), rows, dim, log_max_period, c, static_cast<Out*>(out));
  });
  check_launch("timestep_embedding_forward");
}

void timestep_embedding_backward(DType grad_dtype, int64_t rows, int64_t dim, double log_max_period,
                                 const double* c, const void* grad, double* grad_c, std::uintptr_t stream) {
  if (rows == 0) return;
  dispatch_dtype(grad_dtype, [&](auto tag) {
    using G = decltype(tag);
    launch_kernel("timestep_embedding_backward", timestep_embedding_backward_kernel<G>, blocks_of(rows, kWarpsPerBlock),
                  kThreads, 0, as_stream(stream), rows, dim, log_max_period, c, static_cast<const G*>(grad), grad_c);
  });
  check_launch("timestep_embedding_backward");
}

}  // namespace imm::cuda
