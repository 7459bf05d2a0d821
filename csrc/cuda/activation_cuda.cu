// CUDA kernels of the fused activations (math and entry points in common/activation.h): grid-stride
// elementwise loops, math in the accumulation type.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "../common/activation.h"
#include "launch.cuh"

namespace imm::cuda {
namespace {

constexpr int kThreads = 256;

template <class In>
__global__ void gelu_tanh_forward_kernel(int64_t n, const In* __restrict__ x, In* __restrict__ out) {
  using T = acc_t<In>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    store(out, i, gelu_tanh<T>(load(x, i)));
}

template <class In>
__global__ void gelu_tanh_backward_kernel(int64_t n, const In* __restrict__ grad, const In* __restrict__ x,
                                          In* __restrict__ grad_x) {
  using T = acc_t<In>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    store(grad_x, i, gelu_tanh_grad<T>(load(grad, i), load(x, i)));
}

}  // namespace

void gelu_tanh_forward(DType dtype, int64_t n, const void* x, void* out, std::uintptr_t stream) {
  if (n == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using In = decltype(tag);
    launch_kernel("gelu_tanh_forward", gelu_tanh_forward_kernel<In>, grid_stride_blocks(n, kThreads), kThreads, 0,
                  as_stream(stream), n, static_cast<const In*>(x), static_cast<In*>(out));
  });
  check_launch("gelu_tanh_forward");
}

void gelu_tanh_backward(DType dtype, int64_t n, const void* grad, const void* x, void* grad_x, std::uintptr_t stream) {
  if (n == 0) return;
  dispatch_dtype(dtype, [&](auto tag) {
    using In = decltype(tag);
    launch_kernel("gelu_tanh_backward", gelu_tanh_backward_kernel<In>, grid_stride_blocks(n, kThreads), kThreads, 0,
                  as_stream(stream), n, static_cast<const In*>(grad), static_cast<const In*>(x),
                  static_cast<In*>(grad_x));
  });
  check_launch("gelu_tanh_backward");
}

}  // namespace imm::cuda
