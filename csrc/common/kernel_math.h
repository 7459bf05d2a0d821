// Pairwise-kernel math shared by the CPU and CUDA paths.
//
// A kernel is evaluated on the scaled distance d = c * max(||a - b||, eps), where c is the distance
// scale (IMM uses c = 1/D, paper Sec. 3.6 / Eq. 67) and eps keeps the norm's derivative finite.
// For a set of K bandwidths the kernels are summed. The gradient of k(a, b) with respect to a is
//     dk/da = phi(a, b) * (a - b),   phi = c * k'(d) / ||a - b||   (phi = 0 where ||a - b|| <= eps),
// so every backward pass is a weighted sum of differences and never forms a (.., D) difference tensor.
//
// Every positive float is a valid bandwidth. The kernels are functions of u = d / h, evaluated with
// a finite ih = 1 / h (see bandwidth_prescale), and every product is ordered so that nothing
// overflows into inf * 0: where a kernel underflows to 0 its slope is exactly 0, never NaN.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__CUDACC__)
#define IMM_HD __host__ __device__ __forceinline__
#else
#define IMM_HD inline __attribute__((always_inline))
#endif

namespace imm {

enum class KernelKind : int { Laplace = 0, Gaussian = 1, Energy = 2, InverseMultiquadric = 3 };

// A value of type V (scalar, or GCC vector with every lane) equal to s.
template <class V, class S>
IMM_HD V splat(S s) {
  if constexpr (std::is_arithmetic_v<V>) {
    return static_cast<V>(s);
  } else {
    return V{} + s;
  }
}

// ---------------------------------------------------------------------------------------------
// exp and sqrt. The device uses the CUDA library. The host uses a branch-free Cephes-style
// polynomial (max error ~2 ulp) written once for scalars and for GCC vector types, so the CPU
// kernels can evaluate it on whole SIMD registers: a libm call would keep their loops scalar.
// Template parameters: V is the value type (scalar or vector), S its element type.

#if defined(__CUDACC__)
template <class V, class S = V>
IMM_HD V exp_fast(V x) {
  if constexpr (std::is_same_v<V, float>) {
    return ::expf(x);
  } else {
    return ::exp(x);
  }
}
template <class V, class S = V>
IMM_HD V sqrt_(V x) {
  if constexpr (std::is_same_v<V, float>) {
    return ::sqrtf(x);
  } else {
    return ::sqrt(x);
  }
}
#else
namespace detail {
template <class S>
struct ExpConstants;
// lo rounds to n = -bias, whose 2^n has an all-zero exponent field: +0.0 (see exp_fast).
template <>
struct ExpConstants<float> {
  using Int = int32_t;
  static constexpr float lo = -88.0f, hi = 88.72283f, log2e = 1.44269504088896341f;
  static constexpr float round_magic = 12582912.0f;  // 1.5 * 2^23: (v + m) - m rounds v to an integer
  static constexpr int mantissa_bits = 23, bias = 127;
};
template <>
struct ExpConstants<double> {
  using Int = int64_t;
  static constexpr double lo = -709.0, hi = 709.78, log2e = 1.4426950408889634074;
  static constexpr double round_magic = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr int mantissa_bits = 52, bias = 1023;
};

template <class To, class From>
inline __attribute__((always_inline)) To bit_cast(const From& from) {
  static_assert(sizeof(To) == sizeof(From));
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

// The integer type with the lanes (and lane width) of V, and a value conversion to it.
template <class V, class S>
struct IntLanes {
  using type = decltype(V{} < V{});
  static inline __attribute__((always_inline)) type convert(V v) { return __builtin_convertvector(v, type); }
};
template <class S>
struct IntLanes<S, S> {
  using type = typename ExpConstants<S>::Int;
  static inline __attribute__((always_inline)) type convert(S v) { return static_cast<type>(v); }
};

template <class V, class S>
inline __attribute__((always_inline)) V polynomial_exp(V x, float) {
  using C = ExpConstants<float>;
  V n = (x * C::log2e + C::round_magic) - C::round_magic;
  V t = x - n * 0.693359375f + n * 2.12194440e-4f;
  V p = t * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * t + 8.3334519073e-3f;
  p = p * t + 4.1665795894e-2f;
  p = p * t + 1.6666665459e-1f;
  p = p * t + 5.0000001201e-1f;
  p = p * t * t + t + 1.0f;
  using I = IntLanes<V, S>;
  auto bits = (I::convert(n) + C::bias) << C::mantissa_bits;
  return p * bit_cast<V>(bits);
}

template <class V, class S>
inline __attribute__((always_inline)) V polynomial_exp(V x, double) {
  using C = ExpConstants<double>;
  V n = (x * C::log2e + C::round_magic) - C::round_magic;
  V t = x - n * 6.93145751953125e-1 - n * 1.42860682030941723212e-6;
  V tt = t * t;
  V p = t * ((tt * 1.26177193074810590878e-4 + 3.02994407707441961300e-2) * tt + 9.99999999999999999910e-1);
  V q = ((tt * 3.00198505138664455042e-6 + 2.52448340349684104192e-3) * tt + 2.27265548208155028766e-1) * tt +
        2.00000000000000000009e0;
  V e = 2.0 * p / (q - p) + 1.0;
  using I = IntLanes<V, S>;
  auto bits = (I::convert(n) + C::bias) << C::mantissa_bits;
  return e * bit_cast<V>(bits);
}
}  // namespace detail

// Arguments are clamped to [lo, hi]. Below about lo the result is exactly 0 (exp(-inf) = 0, and
// results in the subnormal range flush to 0), so a product of the result with a large factor
// stays 0; above hi it saturates at a finite value. NaN propagates.
template <class V, class S = V>
inline __attribute__((always_inline)) V exp_fast(V x) {
  using C = detail::ExpConstants<S>;
  x = x < C::lo ? splat<V>(C::lo) : x;
  x = x > C::hi ? splat<V>(C::hi) : x;
  return detail::polynomial_exp<V, S>(x, S{});
}

template <class V, class S = V>
inline __attribute__((always_inline)) V sqrt_(V x) {
  if constexpr (std::is_same_v<V, S>) {
    return __builtin_sqrt(x);
  } else {
    V r;
    for (int l = 0; l < static_cast<int>(sizeof(V) / sizeof(S)); ++l) r[l] = sqrt_<S, S>(x[l]);
    return r;
  }
}
template <>
inline __attribute__((always_inline)) float sqrt_<float, float>(float x) {
  return __builtin_sqrtf(x);
}
#endif

// ---------------------------------------------------------------------------------------------
// One kernel at scaled distance d with inverse bandwidth ih: its value and its slope dk/dd.
// V is a scalar or (host only) a GCC vector of S.

// v with +inf replaced by the largest finite S (NaN stays NaN): the slopes multiply u or d by
// factors that underflow to 0 where they are large, and the largest finite value gives 0 where inf
// gives NaN.
template <class V, class S>
IMM_HD V finite_or_largest(V v) {
  constexpr S largest = std::numeric_limits<S>::max();
  return v > largest ? splat<V>(largest) : v;
}

template <KernelKind K, class V, class S = V>
struct KernelProfile;

// The slopes are ih * g(u) with g = dk/du bounded (|g| <= 1), multiplied in an order that cannot
// overflow, so they are finite; g(u) = 0 where k underflows.

template <class V, class S>
struct KernelProfile<KernelKind::Laplace, V, S> {  // exp(-u)
  IMM_HD static V value(V d, S ih) { return exp_fast<V, S>(-d * ih); }
  IMM_HD static V slope(V d, S ih) { return -ih * exp_fast<V, S>(-d * ih); }
};

template <class V, class S>
struct KernelProfile<KernelKind::Gaussian, V, S> {  // exp(-u^2 / 2); ih^2 is finite (bandwidth_prescale)
  IMM_HD static V value(V d, S ih) { return exp_fast<V, S>(S(-0.5) * ih * ih * d * d); }
  // -ih^2 d k as -ih^2 (d k): d k <= 1 / ih (and 0, not NaN, where d is inf), so ih^2 (d k) is finite.
  IMM_HD static V slope(V d, S ih) {
    return -ih * ih * (finite_or_largest<V, S>(d) * exp_fast<V, S>(S(-0.5) * ih * ih * d * d));
  }
};

template <class V, class S>
struct KernelProfile<KernelKind::Energy, V, S> {  // -d (bandwidth unused)
  IMM_HD static V value(V d, S) { return -d; }
  IMM_HD static V slope(V, S) { return splat<V>(S(-1)); }
};

// sqrt(1 + u^2) without overflow: u itself where 1 is lost in the rounding of u^2 (u > 2^32 in float
// and in double), which is before u^2 can overflow; so 1 / it is about 1 / u, not 0, for large u.
template <class V, class S>
IMM_HD V one_hypot(V u) {
  constexpr S large = S(4294967296.0);
  return u > large ? u : sqrt_<V, S>(S(1) + u * u);
}

template <class V, class S>
struct KernelProfile<KernelKind::InverseMultiquadric, V, S> {  // (1 + u^2)^(-1/2)
  IMM_HD static V value(V d, S ih) { return S(1) / one_hypot<V, S>(d * ih); }
  // -ih u w^3 with w = k(u), as (ih w) (u w) w: ih w <= ih and u w <= 1 cannot overflow, and no
  // partial product is much smaller than the result (w^3 alone underflows long before it).
  IMM_HD static V slope(V d, S ih) {
    const V u = finite_or_largest<V, S>(d * ih);
    const V w = S(1) / one_hypot<V, S>(u);
    return (-ih * w) * (u * w) * w;
  }
};

// ---------------------------------------------------------------------------------------------
// Bandwidths. The kernels need ih = 1 / h finite, and the Gaussian ih^2 too: 1 / h overflows for a
// subnormal h, ih^2 for h below the square root of the smallest normal. A group whose bandwidths are
// that small has them multiplied by a power of two p, and its distance scale c with them: scaling c
// and h alike leaves every u = c ||a - b|| / h and every phi = c k'(d) / ||a - b|| unchanged.

// The smallest p h allowed: the smallest normal S, or for the Gaussian its square root.
template <KernelKind K, class S>
constexpr S smallest_scaled_bandwidth() {
  S floor = std::numeric_limits<S>::min();
  if (K == KernelKind::Gaussian) {
    floor = S(1);
    for (int e = 0; e < (1 - std::numeric_limits<S>::min_exponent) / 2; ++e) floor *= S(0.5);
  }
  return floor;
}

// The power of two p >= 1 for a group's `num` bandwidths h (p = 1, without a loop iteration, unless
// one of them is below the floor; always 1 for the energy kernel, which has no bandwidth).
template <KernelKind K, class S>
IMM_HD S bandwidth_prescale(const S* h, int num) {
  if (K == KernelKind::Energy) return S(1);
  S smallest = h[0];
  for (int k = 1; k < num; ++k) smallest = h[k] < smallest ? h[k] : smallest;
  constexpr S floor = smallest_scaled_bandwidth<K, S>();
  S p = S(1);
  for (int e = 0; e < std::numeric_limits<S>::max_exponent && smallest * p < floor; ++e) p *= S(2);
  return p;
}

// ---------------------------------------------------------------------------------------------
// Pair response from the squared Euclidean distance s2 = ||a - b||^2, summed over K bandwidths.

template <class S>
struct KernelParams {
  const S* inv_bandwidth;  // K values 1 / (p h) for the current group (p: bandwidth_prescale)
  int num_bandwidths;
  S scale;  // distance scale c, times p
  S eps;    // lower clamp of the unscaled norm
};

// The scaled, clamped distance d = c * max(||a - b||, eps); NaN stays NaN.
template <class V, class S>
IMM_HD V scaled_distance(V norm, const KernelParams<S>& p) {
  return p.scale * (norm < p.eps ? splat<V>(p.eps) : norm);
}

// phi = c * sum_k k'(d) / ||a - b||; zero inside the eps clamp (where d is constant), NaN for NaN.
template <class V, class S>
IMM_HD V phi_from_slope(V slope_sum, V norm, const KernelParams<S>& p) {
  V phi = p.scale * slope_sum / norm;
  return norm <= p.eps ? splat<V>(S(0)) : phi;
}

// Sum over bandwidths of k(c * max(||a-b||, eps)).
template <KernelKind K, class V, class S = V>
IMM_HD V pair_value(V s2, const KernelParams<S>& p) {
  V d = scaled_distance(sqrt_<V, S>(s2), p);
  V v = KernelProfile<K, V, S>::value(d, p.inv_bandwidth[0]);
  for (int k = 1; k < p.num_bandwidths; ++k) v += KernelProfile<K, V, S>::value(d, p.inv_bandwidth[k]);
  return v;
}

// phi(a, b) such that d k(a, b) / d a = phi * (a - b), summed over bandwidths.
template <KernelKind K, class V, class S = V>
IMM_HD V pair_phi(V s2, const KernelParams<S>& p) {
  V norm = sqrt_<V, S>(s2);
  V d = p.scale * norm;
  V slope = KernelProfile<K, V, S>::slope(d, p.inv_bandwidth[0]);
  for (int k = 1; k < p.num_bandwidths; ++k) slope += KernelProfile<K, V, S>::slope(d, p.inv_bandwidth[k]);
  return phi_from_slope(slope, norm, p);
}

}  // namespace imm
