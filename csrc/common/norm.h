// Norm + modulate (adaLN), the DiT block's normalisation, shared by the CPU and CUDA kernels, which this
// header also declares (buffers owned by the caller; threads: the OpenMP thread count; stream: a
// cudaStream_t as an integer):
//
//   y = xhat * (1 + scale) + shift,  xhat = (x - mean) * rstd over a row of C channels; LayerNorm
//       without affine: mean = E[x], rstd = 1 / sqrt(Var[x] + eps); RMSNorm: mean = 0,
//       rstd = 1 / sqrt(E[x^2] + eps). Backward, with dxhat = g * (1 + scale):
//       grad_x = rstd * (dxhat - E[dxhat] - xhat * E[dxhat * xhat])   (RMSNorm: without E[dxhat]),
//       grad_shift = sum over tokens of g,  grad_scale = sum over tokens of g * xhat.
//
// The row statistics are numerically safe for large activations: the mean is taken of deviations
// from the row's first element (a row with mean 1e4 and std 1 sums values of size 1, not 1e4), and
// the variance of deviations from that mean (two passes; no E[x^2] - E[x]^2 cancellation). A row
// whose squares overflow (|x| near the top of the float range) has its statistics recomputed from
// s x with a power of two s (statistics_scale): exact, and finite for every finite row.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "dtype.h"
#include "kernel_math.h"
#include "token_shape.h"

namespace imm {

// Row mean from the sum of deviations from the pivot (the row's first element).
template <class T>
IMM_HD T row_mean(T pivot, T sum_of_deviations, int64_t channels) {
  return pivot + sum_of_deviations / static_cast<T>(channels);
}

// 1 / sqrt(sum_of_squares / C + eps): the variance (LayerNorm) or mean square (RMSNorm) of a row.
template <class T>
IMM_HD T inverse_std(T sum_of_squares, int64_t channels, T eps) {
  return T(1) / sqrt_<T>(sum_of_squares / static_cast<T>(channels) + eps);
}

// (x - mean) rstd as (x / 2 - mean / 2) (2 rstd): the halves of finite values cannot overflow where
// x - mean can, and halving and doubling are exact, so the result is that of (x - mean) rstd.
template <class T>
IMM_HD T normalized(T x, T mean, T rstd) {
  return (x * T(0.5) - mean * T(0.5)) * (rstd * T(2));
}

// Whether v is finite (false for inf and NaN).
template <class T>
IMM_HD bool is_finite(T v) {
  return v - v == T(0);
}

// The power of two s with s * max_magnitude in [0.5, 1), for a finite positive max_magnitude: the
// statistics of s x (the mean and rstd of x are mean / s and s rstd) cannot overflow.
template <class T>
IMM_HD T statistics_scale(T max_magnitude) {
  int exponent = 0;
  if constexpr (std::is_same_v<T, float>) {
    ::frexpf(max_magnitude, &exponent);
    return ::ldexpf(1.0f, -exponent);
  } else {
    ::frexp(max_magnitude, &exponent);
    return ::ldexp(1.0, -exponent);
  }
}

template <class T>
IMM_HD T modulate(T xhat, T shift, T scale) {
  return xhat * (T(1) + scale) + shift;
}

// d loss / d xhat from d loss / d y.
template <class T>
IMM_HD T modulated_grad(T grad, T scale) {
  return grad * (T(1) + scale);
}

// d loss / d x of one element; mean_dxhat = E[dxhat] over the row (0 for RMSNorm) and
// mean_dxhat_xhat = E[dxhat * xhat].
template <class T>
IMM_HD T norm_input_grad(T dxhat, T xhat, T rstd, T mean_dxhat, T mean_dxhat_xhat) {
  return rstd * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
}

// f(std::true_type{}) for RMSNorm, f(std::false_type{}) for LayerNorm: the kernels' Rms parameter.
template <class F>
void dispatch_norm(bool rms, F&& f) {
  if (rms) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

namespace cpu {
// out = norm(x) * (1 + scale) + shift; stats (batch * tokens, 2) [mean, rstd] in the accumulation type,
// written for the backward. rms: RMSNorm, else LayerNorm.
void norm_modulate_forward(DType dtype, TokenShape shape, bool rms, double eps, const void* x, const void* shift,
                           const void* scale, void* out, void* stats, int threads);
// grad_x, grad_shift, grad_scale from grad = d loss / d out; partials (batch, chunks, 2, channels).
void norm_modulate_backward(DType dtype, TokenShape shape, int64_t chunk_tokens, bool rms, const void* grad,
                            const void* x, const void* stats, const void* scale, void* grad_x, void* partials,
                            void* grad_shift, void* grad_scale, int threads);
}  // namespace cpu

namespace cuda {
void norm_modulate_forward(DType dtype, TokenShape shape, bool rms, double eps, const void* x, const void* shift,
                           const void* scale, void* out, void* stats, std::uintptr_t stream);
void norm_modulate_backward(DType dtype, TokenShape shape, int64_t chunk_tokens, bool rms, const void* grad,
                            const void* x, const void* stats, const void* scale, void* grad_x, void* partials,
                            void* grad_shift, void* grad_scale, std::uintptr_t stream);
}  // namespace cuda

}  // namespace imm
