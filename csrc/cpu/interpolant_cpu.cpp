// CPU interpolant kernels: the flat (B * per_sample) range is cut into fixed-size chunks run in
// parallel with OpenMP; within a chunk each per-sample segment is one simple loop with constant
// coefficients, which the compiler vectorises.
#include "interpolant_cpu.h"

#include <omp.h>

#include <algorithm>

#include "../common/interpolant.h"
#include "memory_hints.h"

namespace imm::cpu {
namespace {

constexpr int64_t kChunk = 1 << 14;

// Calls segment(b, begin, end) for every per-sample segment [begin, end) of the flat range, b the
// sample, in parallel over chunks of kChunk elements.
template <class F>
void for_each_segment(int64_t batch, int64_t per_sample, int threads, F&& segment) {
  const int64_t total = batch * per_sample;
  if (total == 0) return;
  const int64_t chunks = (total + kChunk - 1) / kChunk;
  const int nthreads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, chunks)));
#pragma omp parallel for schedule(static) num_threads(nthreads)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t lo = c * kChunk, hi = std::min(total, lo + kChunk);
    for (int64_t begin = lo; begin < hi;) {
      const int64_t b = begin / per_sample;
      const int64_t end = std::min(hi, (b + 1) * per_sample);
      segment(b, begin, end);
      begin = end;
    }
  }
}

template <class In>
void interpolant_pair_typed(int64_t batch, int64_t per_sample, int64_t particles, const In* x,
                            const In* noise, const double* coef, In* x_t, In* x_r, int threads) {
  using T = acc_t<In>;
  for_each_segment(batch, per_sample, threads, [&](int64_t b, int64_t begin, int64_t end) {
    const double* c = coef + (b / particles) * 4;
    const T at = static_cast<T>(c[0]), st = static_cast<T>(c[1]);
    const T ar = static_cast<T>(c[2]), sr = static_cast<T>(c[3]);
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      T vt, vr;
      interpolant_combine(load(x, i), load(noise, i), at, st, ar, sr, vt, vr);
      store(x_t, i, vt);
      store(x_r, i, vr);
    }
  });
}

template <class S, class G>
void sampler_step_typed(int64_t batch, int64_t per_sample, const S* x, const G* g_cond,
                        const G* g_uncond, const double* c_skip, const double* c_out, double guidance,
                        S* out, int threads) {
  using T = acc_t<S>;
  const T w = static_cast<T>(guidance);
  for_each_segment(batch, per_sample, threads, [&](int64_t b, int64_t begin, int64_t end) {
    const T skip = static_cast<T>(c_skip[b]), scale = static_cast<T>(c_out[b]);
    if (g_uncond == nullptr) {
#pragma omp simd
      for (int64_t i = begin; i < end; ++i)
        store(out, i, sampler_combine(static_cast<T>(load(x, i)), static_cast<T>(load(g_cond, i)), skip, scale));
    } else {
#pragma omp simd
      for (int64_t i = begin; i < end; ++i) {
        const T g = guided_output(static_cast<T>(load(g_cond, i)), static_cast<T>(load(g_uncond, i)), w);
        store(out, i, sampler_combine(static_cast<T>(load(x, i)), g, skip, scale));
      }
    }
  });
}

}  // namespace

void interpolant_pair(DType dtype, int64_t batch, int64_t per_sample, int64_t particles, const void* x,
                      const void* noise, const double* coefficients, void* x_t, void* x_r, int threads) {
  dispatch_dtype(dtype, [&](auto tag) {
    using In = decltype(tag);
    advise_huge_pages(x_t, static_cast<std::size_t>(batch * per_sample) * sizeof(In));
    advise_huge_pages(x_r, static_cast<std::size_t>(batch * per_sample) * sizeof(In));
    interpolant_pair_typed(batch, per_sample, particles, static_cast<const In*>(x),
                           static_cast<const In*>(noise), coefficients, static_cast<In*>(x_t),
                           static_cast<In*>(x_r), threads);
  });
}

void sampler_step(DType state_dtype, DType g_dtype, int64_t batch, int64_t per_sample, const void* x,
                  const void* g_cond, const void* g_uncond, const double* c_skip, const double* c_out,
                  double guidance, void* out, int threads) {
  dispatch_dtype(state_dtype, [&](auto state_tag) {
    using S = decltype(state_tag);
    advise_huge_pages(out, static_cast<std::size_t>(batch * per_sample) * sizeof(S));
    dispatch_dtype(g_dtype, [&](auto g_tag) {
      using G = decltype(g_tag);
      sampler_step_typed(batch, per_sample, static_cast<const S*>(x), static_cast<const G*>(g_cond),
                         static_cast<const G*>(g_uncond), c_skip, c_out, guidance, static_cast<S*>(out),
                         threads);
    });
  });
}

}  // namespace imm::cpu
