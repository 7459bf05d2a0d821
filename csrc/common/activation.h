// Math of the fused GELU (tanh approximation), shared by the CPU and CUDA kernels.
//
//   gelu(x) = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//
// evaluated as x * s with s = (1 + tanh(u)) / 2 = 1 / (1 + exp(-2u)): one exp and one division, and
// no cancellation in 1 + tanh(u) for negative x. The derivative is
//
//   gelu'(x) = s + x * 2 u'(x) * s (1 - s),  u'(x) = sqrt(2/pi) (1 + 3 * 0.044715 x^2),
//
// with s (1 - s) = e s^2 for e = exp(-2u), formed as (e s) s so that neither factor over- nor
// underflows early. Beyond |x| > kGeluSaturation the function is x (above) or -0 (below) and its
// derivative 1 or 0 to every bit of float32 and float64 (exp(-2u) < 1e-37 there); the formulas run on
// x clamped to that range, so exp never overflows and +-inf give the limits +inf / -0 (slopes 1 / 0)
// instead of inf * 0 = NaN. NaN propagates.
//
// Templates take V, a scalar or (host only) a GCC vector of S, so the CPU kernels evaluate whole
// SIMD registers (exp_fast of kernel_math.h is vectorisable on the host, expf / exp on the device).
#pragma once

#include <cstdint>

#include "dtype.h"
#include "kernel_math.h"

namespace imm {

constexpr double kGeluSqrt2OverPi = 0.79788456080286535588;  // sqrt(2 / pi)
constexpr double kGeluCubic = 0.044715;
constexpr double kGeluSaturation = 10.0;

namespace detail {
// x clamped to [-kGeluSaturation, kGeluSaturation]; NaN stays NaN.
template <class V, class S>
IMM_HD V gelu_clamped(V x) {
  x = x < S(-kGeluSaturation) ? splat<V>(S(-kGeluSaturation)) : x;
  return x > S(kGeluSaturation) ? splat<V>(S(kGeluSaturation)) : x;
}

// exp(-2u) for the clamped input.
template <class V, class S>
IMM_HD V gelu_exp_minus_2u(V xc) {
  const V u = S(kGeluSqrt2OverPi) * (xc + S(kGeluCubic) * xc * xc * xc);
  return exp_fast<V, S>(S(-2) * u);
}
}  // namespace detail

// gelu(x) with tanh's approximation.
template <class V, class S = V>
IMM_HD V gelu_tanh(V x) {
  const V xc = detail::gelu_clamped<V, S>(x);
  const V s = S(1) / (S(1) + detail::gelu_exp_minus_2u<V, S>(xc));
  V y = xc * s;
  y = x > S(kGeluSaturation) ? x : y;
  return x < S(-kGeluSaturation) ? splat<V>(S(-0.0)) : y;
}

// d gelu / d x, times the incoming gradient g.
template <class V, class S = V>
IMM_HD V gelu_tanh_grad(V g, V x) {
  const V xc = detail::gelu_clamped<V, S>(x);
  const V e = detail::gelu_exp_minus_2u<V, S>(xc);
  const V s = S(1) / (S(1) + e);
  const V du = S(2 * kGeluSqrt2OverPi) * (S(1) + S(3 * kGeluCubic) * xc * xc);
  V slope = s + xc * du * ((e * s) * s);
  slope = x < S(-kGeluSaturation) ? splat<V>(S(0)) : slope;
  return g * slope;
}

// The kernels: every buffer holds n contiguous elements of `dtype`, owned by the caller; threads is the
// OpenMP thread count, stream a cudaStream_t as an integer (device memory, nothing allocated).
namespace cpu {
// out = gelu_tanh(x).
void gelu_tanh_forward(DType dtype, int64_t n, const void* x, void* out, int threads);
// grad_x = grad * gelu_tanh'(x).
void gelu_tanh_backward(DType dtype, int64_t n, const void* grad, const void* x, void* grad_x, int threads);
}  // namespace cpu

namespace cuda {
void gelu_tanh_forward(DType dtype, int64_t n, const void* x, void* out, std::uintptr_t stream);
void gelu_tanh_backward(DType dtype, int64_t n, const void* grad, const void* x, void* grad_x, std::uintptr_t stream);
}  // namespace cuda

}  // namespace imm
