// CUDA interpolant kernels (see common/interpolant.h and cpu/interpolant_cpu.h for the contract);
// every pointer is device memory, the kernels run on `stream` (a cudaStream_t as an integer).
#pragma once

#include <cstdint>

#include "../common/dtype.h"

namespace imm::cuda {

void interpolant_pair(DType dtype, int64_t batch, int64_t per_sample, int64_t particles, const void* x,
                      const void* noise, const double* coefficients, void* x_t, void* x_r,
                      std::uintptr_t stream);

void sampler_step(DType state_dtype, DType g_dtype, int64_t batch, int64_t per_sample, const void* x,
                  const void* g_cond, const void* g_uncond, const double* c_skip, const double* c_out,
                  double guidance, void* out, std::uintptr_t stream);

}  // namespace imm::cuda
