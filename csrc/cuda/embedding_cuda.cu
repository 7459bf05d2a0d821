// CUDA kernels of the sinusoidal time embedding (math in common/embedding.h); every pointer is device
// memory, the kernels run on `stream` (a cudaStream_t as an integer) and allocate nothing.
//
//  * a thread per (row, frequency) (forward), a warp per row (backward), float64 arguments.
#include <cuda_runtime.h>

#include "../common/embedding.h"
#include "launch.cuh"
#include "warp_reduce.cuh"

namespace imm::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / kWarp;

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
