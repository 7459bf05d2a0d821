// CUDA interpolant kernels: grid-stride elementwise loops over the flat (B * per_sample) range.
#include "interpolant_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "../common/interpolant.h"
#include "launch.cuh"

namespace imm::cuda {
namespace {

constexpr int kThreads = 256;

template <class In>
__global__ void interpolant_pair_kernel(int64_t total, int64_t per_sample, int64_t particles,
                                        const In* __restrict__ x, const In* __restrict__ noise,
                                        const double* __restrict__ coef, In* __restrict__ x_t,
                                        In* __restrict__ x_r) {
  using T = acc_t<In>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const double* c = coef + (i / per_sample / particles) * 4;
    T vt, vr;
    interpolant_combine(load(x, i), load(noise, i), static_cast<T>(__ldg(c)), static_cast<T>(__ldg(c + 1)),
                        static_cast<T>(__ldg(c + 2)), static_cast<T>(__ldg(c + 3)), vt, vr);
    store(x_t, i, vt);
    store(x_r, i, vr);
  }
}

template <class S, class G, bool Guided>
__global__ void sampler_step_kernel(int64_t total, int64_t per_sample, const S* __restrict__ x,
                                    const G* __restrict__ g_cond, const G* __restrict__ g_uncond,
                                    const double* __restrict__ c_skip, const double* __restrict__ c_out,
                                    double guidance, S* __restrict__ out) {
  using T = acc_t<S>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t b = i / per_sample;
    T g = static_cast<T>(load(g_cond, i));
    if constexpr (Guided) g = guided_output(g, static_cast<T>(load(g_uncond, i)), static_cast<T>(guidance));
    store(out, i, sampler_combine(static_cast<T>(load(x, i)), g, static_cast<T>(__ldg(c_skip + b)),
                                  static_cast<T>(__ldg(c_out + b))));
  }
}

}  // namespace

void interpolant_pair(DType dtype, int64_t batch, int64_t per_sample, int64_t particles, const void* x,
                      const void* noise, const double* coefficients, void* x_t, void* x_r,
                      std::uintptr_t stream) {
  const int64_t total = batch * per_sample;
  if (total == 0) return;
  const cudaStream_t s = as_stream(stream);
  dispatch_dtype(dtype, [&](auto tag) {
    using In = decltype(tag);
    launch_kernel("interpolant_pair", interpolant_pair_kernel<In>, grid_stride_blocks(total, kThreads), kThreads, 0, s,
                  total, per_sample, particles, static_cast<const In*>(x), static_cast<const In*>(noise), coefficients,
                  static_cast<In*>(x_t), static_cast<In*>(x_r));
  });
  check_launch("interpolant_pair");
}

void sampler_step(DType state_dtype, DType g_dtype, int64_t batch, int64_t per_sample, const void* x,
                  const void* g_cond, const void* g_uncond, const double* c_skip, const double* c_out,
                  double guidance, void* out, std::uintptr_t stream) {
  const int64_t total = batch * per_sample;
  if (total == 0) return;
  const cudaStream_t s = as_stream(stream);
  const unsigned blocks = grid_stride_blocks(total, kThreads);
  dispatch_dtype(state_dtype, [&](auto state_tag) {
    using S = decltype(state_tag);
    dispatch_dtype(g_dtype, [&](auto g_tag) {
      using G = decltype(g_tag);
      const S* xs = static_cast<const S*>(x);
      const G* gc = static_cast<const G*>(g_cond);
      const G* gu = static_cast<const G*>(g_uncond);
      S* o = static_cast<S*>(out);
      if (gu != nullptr)
        launch_kernel("sampler_step", sampler_step_kernel<S, G, true>, blocks, kThreads, 0, s, total, per_sample, xs,
                      gc, gu, c_skip, c_out, guidance, o);
      else
        launch_kernel("sampler_step", sampler_step_kernel<S, G, false>, blocks, kThreads, 0, s, total, per_sample, xs,
                      gc, gu, c_skip, c_out, guidance, o);
    });
  });
  check_launch("sampler_step");
}

}  // namespace imm::cuda
