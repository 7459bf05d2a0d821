// CUDA kernels of gate + residual (math in common/residual.h); every pointer is device memory, the
// kernels run on `stream` (a cudaStream_t as an integer) and allocate nothing.
//
//  * forward: a grid-stride elementwise loop.
//  * backward: one block per chunk of consecutive tokens of one sample, a thread per channel walking the
//    chunk's rows; a second kernel sums the partials in chunk order.
#include <cuda_runtime.h>

#include "../common/residual.h"
#include "launch.cuh"
#include "token_chunks.cuh"

namespace imm::cuda {
namespace {

constexpr int kThreads = 256;

template <class In>
__global__ void gate_residual_forward_kernel(TokenShape shape, const In* __restrict__ x,
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
__global__ void gate_residual_backward_kernel(TokenShape shape, int64_t chunk_tokens,
                                              const In* __restrict__ grad, const In* __restrict__ gate,
                                              const In* __restrict__ y, In* __restrict__ grad_y,
                                              acc_t<In>* __restrict__ partials) {
  using T = acc_t<In>;
  const int64_t C = shape.channels;
  const int64_t item = blockIdx.x;
  const TokenChunk chunk = token_chunk(shape, chunk_tokens, item);
  const int64_t b = chunk.b, rows = chunk.rows, first_row = chunk.first_row;
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

}  // namespace

void gate_residual_forward(DType dtype, TokenShape shape, const void* x, const void* gate, const void* y,
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

void gate_residual_backward(DType dtype, TokenShape shape, int64_t chunk_tokens, const void* grad,
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

}  // namespace imm::cuda
