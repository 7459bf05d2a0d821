// The in-order sum of per-chunk partials that the backwards of the per-token CUDA kernels (norm +
// modulate, gate + residual) write: out[b, c] = sum over chunks of partials[b, k, p, c], no atomics.
#pragma once

#include <cuda_runtime.h>

#include "../common/kernel_math.h"
#include "../common/token_shape.h"
#include "launch.cuh"

namespace imm::cuda {
namespace {

constexpr int kSumThreads = 256;

// out0[b, c] (and out1 when parts == 2) = sum over chunks k of partials[b, k, p, c].
template <class In, class T>
__global__ void sum_token_chunks_kernel(TokenShape shape, int64_t chunks, int parts,
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
void sum_token_chunks(TokenShape shape, int64_t chunks, int parts, const T* partials, In* out0, In* out1,
                      cudaStream_t stream) {
  launch_kernel("sum_token_chunks", sum_token_chunks_kernel<In, T>,
                blocks_of(shape.batch * parts * shape.channels, kSumThreads), kSumThreads, 0, stream, shape, chunks, parts,
                partials, out0, out1);
  check_launch("sum_token_chunks");
}

}  // namespace
}  // namespace imm::cuda
