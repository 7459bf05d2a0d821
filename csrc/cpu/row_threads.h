// Helpers of the per-instruction-set CPU kernels of the per-token ops (norm, residual, embedding):
// how many OpenMP threads to wake, and the in-order sum of per-chunk partials. Included inside each
// build's namespace imm::cpu::<IMM_CPU_ISA>, like the kernels themselves.
#pragma once

#include <omp.h>

#include <algorithm>

#include "../common/kernel_math.h"
#include "../common/token_shape.h"

#ifndef IMM_CPU_ISA
#error "IMM_CPU_ISA must name the instruction-set namespace"
#endif

namespace imm::cpu::IMM_CPU_ISA {
namespace {


// Threads worth waking for `items` work items of about `work` element operations each: at least
// kGrain operations per thread (a small op, such as the time embedding of a batch, runs on one).
constexpr int64_t kGrain = int64_t(1) << 15;

int thread_count(int threads, int64_t items, int64_t work) {
  const int64_t useful = (items * work + kGrain - 1) / kGrain;
  const int64_t count = std::min<int64_t>(std::min<int64_t>(threads, items), useful);
  return count > 1 ? static_cast<int>(count) : 1;
}

// body(item, chunk) for every chunk of consecutive tokens of one sample (item = b * chunks + k; see
// token_chunk), in parallel over the chunks.
template <class Body>
void for_token_chunks(TokenShape shape, int64_t chunk_tokens, int threads, Body&& body) {
  const int64_t items = shape.batch * token_chunks(shape.tokens, chunk_tokens);
  const int nthreads = thread_count(threads, items, chunk_tokens * shape.channels);
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
  for (int64_t item = 0; item < items; ++item) body(item, token_chunk(shape, chunk_tokens, item));
}

// out_p[b, c] = sum over chunks k of partials[b, k, p, c], for every part p < parts.
template <class In, class T>
void sum_token_chunks(TokenShape shape, int64_t chunks, int parts, const T* partials, In* const* outs,
                      int threads) {
  const int64_t C = shape.channels;
  const int64_t items = shape.batch * parts;
  const int nthreads = thread_count(threads, items, chunks * C);
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t b = item / parts;
    const int p = static_cast<int>(item % parts);
    const T* first = partials + (b * chunks * parts + p) * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      T total = T(0);
      for (int64_t k = 0; k < chunks; ++k) total += first[k * parts * C + c];
      store(outs[p], b * C + c, total);
    }
  }
}

}  // namespace
}  // namespace imm::cpu::IMM_CPU_ISA
