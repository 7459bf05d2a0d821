// SIMD registers of the width this instruction-set build targets, as GCC vector extensions.
// IMM_CPU_VECTOR_BYTES is set per build by cmake/ImmExtCpuKernels.cmake (16, 32 or 64).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#ifndef IMM_CPU_VECTOR_BYTES
#error "IMM_CPU_VECTOR_BYTES must be defined by the build"
#endif

// Defined inside the per-ISA namespace: each build has its own width (see pairwise_cpu.cpp).
namespace imm::cpu::IMM_CPU_ISA {

template <class S>
struct Simd {
  static constexpr int bytes = IMM_CPU_VECTOR_BYTES;
  static constexpr int lanes = bytes / static_cast<int>(sizeof(S));
  typedef S V __attribute__((vector_size(bytes)));

  static V load(const S* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static void store(S* p, V v) { std::memcpy(p, &v, sizeof(V)); }
  // A store that bypasses the caches, so the line it fills is not first read from memory: for outputs
  // far larger than the caches. p must be aligned to `bytes`; other threads see the values after
  // fence_streams().
  static void stream(S* p, V v) {
#if defined(__x86_64__) || defined(__i386__)
    if constexpr (std::is_same_v<S, float> || std::is_same_v<S, double>) {
      constexpr bool single = std::is_same_v<S, float>;
#if IMM_CPU_VECTOR_BYTES == 64
      if constexpr (single) _mm512_stream_ps(p, (__m512)v); else _mm512_stream_pd(p, (__m512d)v);
#elif IMM_CPU_VECTOR_BYTES == 32
      if constexpr (single) _mm256_stream_ps(p, (__m256)v); else _mm256_stream_pd(p, (__m256d)v);
#else
      if constexpr (single) _mm_stream_ps(p, (__m128)v); else _mm_stream_pd(p, (__m128d)v);
#endif
      return;
    }
#endif
    store(p, v);
  }
  static V zero() { return V{}; }
  // Every lane equal to s, as one broadcast (or an FMA's embedded broadcast): s - (+0) is exactly s
  // for every s (-0 and NaN included), so the compiler drops the subtraction. splat() of
  // kernel_math.h computes s + (+0), which IEEE arithmetic may not drop (-0 + +0 = +0).
  static V broadcast(S s) { return s - V{}; }
  static S sum(V v) {
    S s = S(0);
    for (int l = 0; l < lanes; ++l) s += v[l];
    return s;
  }
  // Lanes p[0], p[stride], ... (stride 0 broadcasts).
  static V strided(const S* p, int64_t stride) {
    if (stride == 1) return load(p);
    V v;
    for (int l = 0; l < lanes; ++l) v[l] = p[l * stride];
    return v;
  }
  // The same for the first `count` lanes only (no read past them); the others are zero.
  static V strided_first(const S* p, int64_t stride, int count) {
    V v = zero();
    for (int l = 0; l < count; ++l) v[l] = p[l * stride];
    return v;
  }
  // v with lanes from `count` on set to zero (a select, so NaN there is dropped too).
  static V first_lanes(V v, int count) {
    if (count >= lanes) return v;
    using I = decltype(v < v);
    I index{};
    for (int l = 0; l < lanes; ++l) index[l] = l;
    return index < count ? v : zero();
  }
};

// Orders this thread's streamed stores (Simd::stream) before its later stores, such as the release
// of an OpenMP barrier.
inline void fence_streams() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_sfence();
#endif
}

}  // namespace imm::cpu::IMM_CPU_ISA
