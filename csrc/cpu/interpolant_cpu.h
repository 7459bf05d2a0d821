// CPU interpolant kernels (see common/interpolant.h). Tensors are contiguous (B, per_sample).
#pragma once

#include <cstdint>

#include "../common/dtype.h"

namespace imm::cpu {

// x_t, x_r from x and noise (dtype); coefficients (B / particles, 4) float64:
// [alpha_t, sigma_t, alpha_r, sigma_r], sample b uses row b / particles.
void interpolant_pair(DType dtype, int64_t batch, int64_t per_sample, int64_t particles, const void* x,
                      const void* noise, const double* coefficients, void* x_t, void* x_r, int threads);

// out (state dtype) = c_skip x + c_out G; G = g_cond, or g_uncond + guidance (g_cond - g_uncond) when
// g_uncond is not null. g_cond/g_uncond have g_dtype; c_skip, c_out are (B,) float64.
void sampler_step(DType state_dtype, DType g_dtype, int64_t batch, int64_t per_sample, const void* x,
                  const void* g_cond, const void* g_uncond, const double* c_skip, const double* c_out,
                  double guidance, void* out, int threads);

}  // namespace imm::cpu
