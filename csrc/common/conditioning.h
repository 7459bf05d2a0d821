// Math of the DiT block's conditioning ops, shared by the CPU and CUDA kernels.
//
//   norm + modulate (adaLN):  y = xhat * (1 + scale) + shift,  xhat = (x - mean) * rstd over a row of C
//       channels; LayerNorm without affine: mean = E[x], rstd = 1 / sqrt(Var[x] + eps); RMSNorm:
//       mean = 0, rstd = 1 / sqrt(E[x^2] + eps). Backward, with dxhat = g * (1 + scale):
//       grad_x = rstd * (dxhat - E[dxhat] - xhat * E[dxhat * xhat])   (RMSNorm: without E[dxhat]),
//       grad_shift = sum over tokens of g,  grad_scale = sum over tokens of g * xhat.
//   gate + residual (adaLN-Zero):  out = x + gate * y;  grad_y = gate * g,  grad_gate = sum of g * y.
//   sinusoidal time embedding (imm-method.md §2.3): [cos(c f_k), sin(c f_k)], f_k = P^(-k / half),
//       arguments in float64; d/dc cos(c f) = -f sin(c f), d/dc sin(c f) = f cos(c f).
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

#include "kernel_math.h"

namespace imm {

// The layout every conditioning kernel sees: x (batch, tokens, channels) contiguous, per-sample
// vectors (shift, scale, gate) (batch, channels) contiguous, all of one storage type.
struct ConditioningShape {
  int64_t batch;
  int64_t tokens;
  int64_t channels;
};

// Partial sums over tokens come in chunks of `chunk_tokens` consecutive tokens of one sample:
// scratch (batch, chunks, parts, channels) in the accumulation type, then summed in chunk order, so
// the reductions are deterministic whatever the thread count or launch order. At most
// kMaxChunkTokens per chunk (the CUDA backward keeps a chunk's row statistics in shared memory).
constexpr int64_t kMaxChunkTokens = 1024;
IMM_HD int64_t token_chunks(int64_t tokens, int64_t chunk_tokens) {
  return (tokens + chunk_tokens - 1) / chunk_tokens;
}

// ---- norm + modulate ------------------------------------------------------------------------

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

// ---- gate + residual ------------------------------------------------------------------------

template <class T>
IMM_HD T gate_residual(T x, T gate, T y) {
  return x + gate * y;
}

// ---- sinusoidal time embedding (float64 throughout) ------------------------------------------

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

}  // namespace imm
