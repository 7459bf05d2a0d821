// Element types the core accepts, their accumulation types, and loads/stores between them.
//
// bfloat16 and float16 are plain 16-bit storage structs (same layout as torch / numpy / CUDA types);
// they are converted with bit arithmetic that compiles for host and device alike and vectorises on
// the host. Accumulation is float32 for the 16-bit types and float32/float64 otherwise.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernel_math.h"

namespace imm {

enum class DType : int { Float32 = 0, Float64 = 1, BFloat16 = 2, Float16 = 3 };

struct bfloat16 {
  uint16_t bits;
};
struct float16 {
  uint16_t bits;
};

template <class T>
struct AccumulateType {
  using type = float;
};
template <>
struct AccumulateType<double> {
  using type = double;
};
template <class T>
using acc_t = typename AccumulateType<T>::type;

IMM_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}
IMM_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

// ---- bfloat16: the top half of a float32; stores round to nearest even, NaN kept quiet.
IMM_HD float to_float(bfloat16 v) { return bits_to_float(static_cast<uint32_t>(v.bits) << 16); }
IMM_HD bfloat16 bfloat16_from_float(float f) {
  uint32_t u = float_to_bits(f);
  uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  bool is_nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  return bfloat16{static_cast<uint16_t>(is_nan ? ((u >> 16) | 0x40u) : rounded)};
}

// ---- float16 (IEEE binary16): exact widening; stores round to nearest even.
IMM_HD float to_float(float16 v) {
  uint32_t h = v.bits;
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp_mant = h & 0x7FFFu;
  // Normal and subnormal values: shift into place and rescale by 2^112 (exponent bias difference);
  // a float multiply handles subnormals exactly. Inf/NaN get the all-ones exponent.
  float magnitude = bits_to_float(exp_mant << 13) * bits_to_float(0x77800000u);  // 2^112
  uint32_t special = (exp_mant >= 0x7C00u) ? (0x7F800000u | (exp_mant & 0x3FFu) << 13) : 0u;
  uint32_t out = exp_mant >= 0x7C00u ? special : float_to_bits(magnitude);
  return bits_to_float(out | sign);
}
IMM_HD float16 float16_from_float(float f) {
  uint32_t u = float_to_bits(f);
  uint32_t sign = (u >> 16) & 0x8000u;
  uint32_t a = u & 0x7FFFFFFFu;
  uint16_t out;
  if (a > 0x7F800000u) {
    out = static_cast<uint16_t>(0x7E00u);  // NaN
  } else if (a >= 0x477FF000u) {
    out = static_cast<uint16_t>(0x7C00u);  // overflow (>= 65520 rounds to inf) and inf
  } else if (a < 0x38800000u) {
    // Subnormal or zero in half: add 0.5 (2^-1) so that the float adder rounds the mantissa to
    // nearest-even at the half-subnormal quantum 2^-24, then read the low bits.
    float shifted = bits_to_float(a) + 0.5f;
    out = static_cast<uint16_t>(float_to_bits(shifted) - 0x3F000000u);
  } else {
    uint32_t mant_odd = (a >> 13) & 1u;
    a += 0xC8000FFFu + mant_odd;  // rebias exponent (-112 << 23) and round to nearest even
    out = static_cast<uint16_t>(a >> 13);
  }
  return float16{static_cast<uint16_t>(out | sign)};
}

// ---- uniform access for kernels: load any storage type as its accumulation type, store back.
IMM_HD float load(const float* p, int64_t i) { return p[i]; }
IMM_HD double load(const double* p, int64_t i) { return p[i]; }
IMM_HD float load(const bfloat16* p, int64_t i) { return to_float(p[i]); }
IMM_HD float load(const float16* p, int64_t i) { return to_float(p[i]); }

IMM_HD void store(float* p, int64_t i, float v) { p[i] = v; }
IMM_HD void store(double* p, int64_t i, double v) { p[i] = v; }
IMM_HD void store(bfloat16* p, int64_t i, float v) { p[i] = bfloat16_from_float(v); }
IMM_HD void store(float16* p, int64_t i, float v) { p[i] = float16_from_float(v); }

// Calls f(T{}) with T the storage type named by dtype.
template <class F>
void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::Float32: f(float{}); break;
    case DType::Float64: f(double{}); break;
    case DType::BFloat16: f(bfloat16{}); break;
    case DType::Float16: f(float16{}); break;
  }
}

template <class F>
void dispatch_kernel(KernelKind kind, F&& f) {
  switch (kind) {
    case KernelKind::Laplace: f(std::integral_constant<KernelKind, KernelKind::Laplace>{}); break;
    case KernelKind::Gaussian: f(std::integral_constant<KernelKind, KernelKind::Gaussian>{}); break;
    case KernelKind::Energy: f(std::integral_constant<KernelKind, KernelKind::Energy>{}); break;
    case KernelKind::InverseMultiquadric:
      f(std::integral_constant<KernelKind, KernelKind::InverseMultiquadric>{});
      break;
  }
}

}  // namespace imm
