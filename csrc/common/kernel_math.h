// Pairwise-kernel math shared by the CPU and CUDA paths.
//
// A kernel is evaluated on the scaled distance d = c * max(||a - b||, eps), where c is the distance
// scale (IMM uses c = 1/D, paper Sec. 3.6 / Eq. 67) and eps keeps the norm's derivative finite.
// For a set of K bandwidths the kernels are summed. The gradient of k(a, b) with respect to a is
//     dk/da = phi(a, b) * (a - b),   phi = c * k'(d) / ||a - b||   (phi = 0 where ||a - b|| <= eps),
// so every backward pass is a weighted sum of differences and never forms a (.., D) difference tensor.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define IMM_HD __host__ __device__ __forceinline__
#else
#define IMM_HD inline __attribute__((always_inline))
#endif

namespace imm {

enum class KernelKind : int { Laplace = 0, Gaussian = 1, Energy = 2, InverseMultiquadric = 3 };

// ---------------------------------------------------------------------------------------------
// exp: the device uses the CUDA library; the host uses a branch-free Cephes-style polynomial that
// the compiler vectorises inside loops (a libm call would keep the loop scalar). Max error ~2 ulp.

#if defined(__CUDA_ARCH__)
IMM_HD float exp_fast(float x) { return ::expf(x); }
IMM_HD double exp_fast(double x) { return ::exp(x); }
#else
inline __attribute__((always_inline)) float exp_fast(float x) {
  // NaN passes both comparisons and propagates.
  x = x < -87.33654f ? -87.33654f : x;
  x = x > 88.72283f ? 88.72283f : x;
  float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline __attribute__((always_inline)) double exp_fast(double x) {
  x = x < -708.39 ? -708.39 : x;
  x = x > 709.78 ? 709.78 : x;
  double n = __builtin_floor(x * 1.4426950408889634074 + 0.5);
  double r = x - n * 6.93145751953125e-1 - n * 1.42860682030941723212e-6;
  double rr = r * r;
  double p = r * ((1.26177193074810590878e-4 * rr + 3.02994407707441961300e-2) * rr +
                  9.99999999999999999910e-1);
  double q = ((3.00198505138664455042e-6 * rr + 2.52448340349684104192e-3) * rr +
              2.27265548208155028766e-1) * rr + 2.00000000000000000009e0;
  double e = 1.0 + 2.0 * p / (q - p);
  int64_t bits = (static_cast<int64_t>(n) + 1023) << 52;
  double scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return e * scale;
}
#endif

template <class T>
IMM_HD T sqrt_(T x) {
#if defined(__CUDA_ARCH__)
  return ::sqrt(x);
#else
  return __builtin_sqrt(x);
#endif
}
template <>
IMM_HD float sqrt_<float>(float x) {
#if defined(__CUDA_ARCH__)
  return ::sqrtf(x);
#else
  return __builtin_sqrtf(x);
#endif
}

// ---------------------------------------------------------------------------------------------
// One kernel at scaled distance d with inverse bandwidth ih = 1/h: its value and its slope dk/dd.

template <KernelKind K, class T>
struct KernelProfile;

template <class T>
struct KernelProfile<KernelKind::Laplace, T> {  // exp(-d / h)
  IMM_HD static T value(T d, T ih) { return exp_fast(-d * ih); }
  IMM_HD static T slope(T d, T ih) { return -ih * exp_fast(-d * ih); }
};

template <class T>
struct KernelProfile<KernelKind::Gaussian, T> {  // exp(-d^2 / (2 h^2))
  IMM_HD static T value(T d, T ih) { return exp_fast(T(-0.5) * d * d * ih * ih); }
  IMM_HD static T slope(T d, T ih) { return -d * ih * ih * exp_fast(T(-0.5) * d * d * ih * ih); }
};

template <class T>
struct KernelProfile<KernelKind::Energy, T> {  // -d (bandwidth unused)
  IMM_HD static T value(T d, T) { return -d; }
  IMM_HD static T slope(T, T) { return T(-1); }
};

template <class T>
struct KernelProfile<KernelKind::InverseMultiquadric, T> {  // (1 + d^2 / h^2)^(-1/2)
  IMM_HD static T value(T d, T ih) { return T(1) / sqrt_(T(1) + d * d * ih * ih); }
  IMM_HD static T slope(T d, T ih) {
    T u = T(1) / sqrt_(T(1) + d * d * ih * ih);
    return -d * ih * ih * u * u * u;
  }
};

// ---------------------------------------------------------------------------------------------
// Pair response from the squared Euclidean distance s2 = ||a - b||^2, summed over K bandwidths.

template <class T>
struct KernelParams {
  const T* inv_bandwidth;  // K values for the current group
  int num_bandwidths;
  T scale;  // distance scale c
  T eps;    // lower clamp of the unscaled norm
};

// The scaled, clamped distance d = c * max(||a - b||, eps).
template <class T>
IMM_HD T scaled_distance(T norm, const KernelParams<T>& p) {
  return p.scale * (norm < p.eps ? p.eps : norm);  // NaN stays NaN
}

// phi = c * sum_k k'(d) / ||a - b||; zero inside the eps clamp (where d is constant), NaN for NaN.
template <class T>
IMM_HD T phi_from_slope(T slope_sum, T norm, const KernelParams<T>& p) {
  T phi = p.scale * slope_sum / norm;
  return norm <= p.eps ? T(0) : phi;
}

// Sum over bandwidths of k(c * max(||a-b||, eps)).
template <KernelKind K, class T>
IMM_HD T pair_value(T s2, const KernelParams<T>& p) {
  T d = scaled_distance(sqrt_(s2), p);
  T v = T(0);
  for (int k = 0; k < p.num_bandwidths; ++k) v += KernelProfile<K, T>::value(d, p.inv_bandwidth[k]);
  return v;
}

// phi(a, b) such that d k(a, b) / d a = phi * (a - b).
template <KernelKind K, class T>
IMM_HD T pair_phi(T s2, const KernelParams<T>& p) {
  T norm = sqrt_(s2);
  T d = p.scale * norm;
  T slope = T(0);
  for (int k = 0; k < p.num_bandwidths; ++k) slope += KernelProfile<K, T>::slope(d, p.inv_bandwidth[k]);
  return phi_from_slope(slope, norm, p);
}

}  // namespace imm
