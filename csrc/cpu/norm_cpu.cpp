// CPU kernels of norm + modulate (math in common/norm.h).
//
// Rows (one token's channels) are the unit of work: OpenMP threads take rows (forward) or chunks of
// consecutive tokens of one sample (backward); within a row every loop runs over the channels with
// `omp simd`, so reductions and conversions from 16-bit types vectorise. The backward's sums over
// tokens go to per-chunk partials, then to the output in chunk order: deterministic, no atomics.
// Measured on x (8, 256, 384) with one thread, the AVX-512 build runs norm + modulate forward and
// backward 1.5-1.6x faster in float32 and 2.2-2.6x in bfloat16 than a single baseline x86-64 build.
//
// CMake builds this file once per instruction set, in namespace imm::cpu::<IMM_CPU_ISA>. As in
// pairwise_cpu.cpp, nothing here instantiates a std:: container or algorithm, which the linker could
// share between the builds.
#include "../common/norm.h"
#include "memory_hints.h"
#include "row_threads.h"

#ifndef IMM_CPU_ISA
#error "IMM_CPU_ISA must name the instruction-set namespace"
#endif

namespace imm::cpu::IMM_CPU_ISA {
namespace {

// mean and rstd of a row whose squares overflowed, from s x (see statistics_scale); a row holding
// inf keeps the non-finite statistics it has.
template <bool Rms, class In, class T>
void large_row_statistics(const In* row, int64_t C, T eps, T& mean, T& rstd) {
  T largest = T(0);
  for (int64_t c = 0; c < C; ++c) {
    const T magnitude = load(row, c) < T(0) ? -load(row, c) : load(row, c);
    largest = magnitude > largest ? magnitude : largest;
  }
  if (!is_finite(largest)) return;
  const T s = statistics_scale(largest);
  T scaled_mean = T(0);
  if constexpr (!Rms) {
    const T pivot = s * load(row, 0);
    T deviations = T(0);
    for (int64_t c = 0; c < C; ++c) deviations += s * load(row, c) - pivot;
    scaled_mean = row_mean(pivot, deviations, C);
  }
  T squares = T(0);
  for (int64_t c = 0; c < C; ++c) {
    const T centered = s * load(row, c) - scaled_mean;
    squares += centered * centered;
  }
  mean = scaled_mean / s;
  rstd = inverse_std(squares, C, eps * s * s) * s;
}

template <class In, bool Rms>
void norm_modulate_forward_typed(TokenShape shape, double eps, const In* x, const In* shift,
                                 const In* scale, In* out, acc_t<In>* stats, int threads) {
  using T = acc_t<In>;
  const int64_t C = shape.channels, rows = shape.batch * shape.tokens;
  const T epsilon = static_cast<T>(eps);
  const int nthreads = thread_count(threads, rows, C);
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const In* row = x + r * C;
    const int64_t b = r / shape.tokens;
    const In* row_shift = shift + b * C;
    const In* row_scale = scale + b * C;
    T mean = T(0);
    if constexpr (!Rms) {
      const T pivot = load(row, 0);
      T deviations = T(0);
#pragma omp simd reduction(+ : deviations)
      for (int64_t c = 0; c < C; ++c) deviations += load(row, c) - pivot;
      mean = row_mean(pivot, deviations, C);
    }
    T squares = T(0);
#pragma omp simd reduction(+ : squares)
    for (int64_t c = 0; c < C; ++c) {
      const T centered = load(row, c) - mean;
      squares += centered * centered;
    }
    T rstd = inverse_std(squares, C, epsilon);
    if (!is_finite(squares)) large_row_statistics<Rms>(row, C, epsilon, mean, rstd);
    In* out_row = out + r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c)
      store(out_row, c, modulate(normalized(load(row, c), mean, rstd), load(row_shift, c), load(row_scale, c)));
    stats[2 * r] = mean;
    stats[2 * r + 1] = rstd;
  }
}

template <class In, bool Rms>
void norm_modulate_backward_typed(TokenShape shape, int64_t chunk_tokens, const In* grad, const In* x,
                                  const acc_t<In>* stats, const In* scale, In* grad_x, acc_t<In>* partials,
                                  In* grad_shift, In* grad_scale, int threads) {
  using T = acc_t<In>;
  const int64_t C = shape.channels;
  for_token_chunks(shape, chunk_tokens, threads, [&](int64_t item, TokenChunk chunk) {
    const In* sample_scale = scale + chunk.b * C;
    T* sum_grad = partials + item * 2 * C;  // -> grad_shift
    T* sum_grad_xhat = sum_grad + C;        // -> grad_scale
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) sum_grad[c] = sum_grad_xhat[c] = T(0);
    for (int64_t r = chunk.first_row; r < chunk.first_row + chunk.rows; ++r) {
      const In* g = grad + r * C;
      const In* row = x + r * C;
      const T mean = stats[2 * r], rstd = stats[2 * r + 1];
      T sum_dxhat = T(0), sum_dxhat_xhat = T(0);
#pragma omp simd reduction(+ : sum_dxhat, sum_dxhat_xhat)
      for (int64_t c = 0; c < C; ++c) {
        const T dxhat = modulated_grad(load(g, c), load(sample_scale, c));
        sum_dxhat += dxhat;
        sum_dxhat_xhat += dxhat * normalized(load(row, c), mean, rstd);
      }
      const T mean_dxhat = Rms ? T(0) : sum_dxhat / static_cast<T>(C);
      const T mean_dxhat_xhat = sum_dxhat_xhat / static_cast<T>(C);
      In* grad_row = grad_x + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const T gc = load(g, c);
        const T xhat = normalized(load(row, c), mean, rstd);
        const T dxhat = modulated_grad(gc, load(sample_scale, c));
        store(grad_row, c, norm_input_grad(dxhat, xhat, rstd, mean_dxhat, mean_dxhat_xhat));
        sum_grad[c] += gc;
        sum_grad_xhat[c] += gc * xhat;
      }
    }
  });
  In* const outs[2] = {grad_shift, grad_scale};
  sum_token_chunks(shape, token_chunks(shape.tokens, chunk_tokens), 2, partials, outs, threads);
}

}  // namespace

void norm_modulate_forward(DType dtype, TokenShape shape, bool rms, double eps, const void* x,
                           const void* shift, const void* scale, void* out, void* stats, int threads) {
  dispatch_dtype(dtype, [&](auto tag) {
    using In = decltype(tag);
    advise_huge_pages(out, shape.elements() * sizeof(In));
    dispatch_norm(rms, [&](auto is_rms) {
      norm_modulate_forward_typed<In, decltype(is_rms)::value>(
          shape, eps, static_cast<const In*>(x), static_cast<const In*>(shift), static_cast<const In*>(scale),
          static_cast<In*>(out), static_cast<acc_t<In>*>(stats), threads);
    });
  });
}

void norm_modulate_backward(DType dtype, TokenShape shape, int64_t chunk_tokens, bool rms, const void* grad,
                            const void* x, const void* stats, const void* scale, void* grad_x, void* partials,
                            void* grad_shift, void* grad_scale, int threads) {
  dispatch_dtype(dtype, [&](auto tag) {
    using In = decltype(tag);
    advise_huge_pages(grad_x, shape.elements() * sizeof(In));
    dispatch_norm(rms, [&](auto is_rms) {
      norm_modulate_backward_typed<In, decltype(is_rms)::value>(
          shape, chunk_tokens, static_cast<const In*>(grad), static_cast<const In*>(x),
          static_cast<const acc_t<In>*>(stats), static_cast<const In*>(scale), static_cast<In*>(grad_x),
          static_cast<acc_t<In>*>(partials), static_cast<In*>(grad_shift), static_cast<In*>(grad_scale), threads);
    });
  });
}

}  // namespace imm::cpu::IMM_CPU_ISA
