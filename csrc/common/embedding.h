// The sinusoidal time embedding (imm-method.md §2.3), shared by the CPU and CUDA kernels, which this
// header also declares:
//
//   [cos(c f_k), sin(c f_k)] (+ a zero column for odd dim), f_k = P^(-k / half), arguments in float64;
//   d/dc cos(c f) = -f sin(c f), d/dc sin(c f) = f cos(c f).
#pragma once

#include <cmath>
#include <cstdint>

#include "dtype.h"
#include "kernel_math.h"

namespace imm {

// f_k = exp(-log(P) k / half), evaluated in the order of the PyTorch reference.
IMM_HD double embedding_frequency(int64_t k, int64_t half, double log_max_period) {
  return ::exp(-log_max_period * static_cast<double>(k) / static_cast<double>(half));
}

// sin(c f) and cos(c f), sharing one argument reduction.
IMM_HD void embedding_sin_cos(double c, double frequency, double* sin_value, double* cos_value) {
  ::sincos(c * frequency, sin_value, cos_value);
}

// d/dc of the pair (cos(c f), sin(c f)) contracted with its cotangents (g_cos, g_sin), from the
// pair's values.
IMM_HD double embedding_argument_grad(double frequency, double sin_value, double cos_value, double g_cos,
                                      double g_sin) {
  return frequency * (g_sin * cos_value - g_cos * sin_value);
}

namespace cpu {
// out (rows, dim) in out_dtype for c (rows,) float64; log_max_period = log(P).
void timestep_embedding_forward(DType out_dtype, int64_t rows, int64_t dim, double log_max_period, const double* c,
                                void* out, int threads);
// grad_c (rows,) float64 = d loss / d c from grad (rows, dim) in grad_dtype.
void timestep_embedding_backward(DType grad_dtype, int64_t rows, int64_t dim, double log_max_period,
                                 const double* c, const void* grad, double* grad_c, int threads);
}  // namespace cpu

namespace cuda {
void timestep_embedding_forward(DType out_dtype, int64_t rows, int64_t dim, double log_max_period, const double* c,
                                void* out, std::uintptr_t stream);
void timestep_embedding_backward(DType grad_dtype, int64_t rows, int64_t dim, double log_max_period,
                                 const double* c, const void* grad, double* grad_c, std::uintptr_t stream);
}  // namespace cuda

}  // namespace imm
