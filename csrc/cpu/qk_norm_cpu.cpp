// CPU kernels of qk-norm (math and layout in common/qk_norm.h): OpenMP threads take tokens (forward)
// or chunks of rows (backward, one partial sum of grad_w per chunk); a row's loops over its head_dim
// values are vectorised with omp simd.
//
// CMake builds this file once per instruction set, in namespace imm::cpu::<IMM_CPU_ISA>.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../common/qk_norm.h"

#ifndef IMM_CPU_ISA
#error "IMM_CPU_ISA must name the instruction-set namespace"
#endif

namespace imm::cpu::IMM_CPU_ISA {
namespace {

constexpr int64_t kRowsPerThread = 64;  // fewer rows than this per thread run on one thread

int threads_for(int64_t items, int threads) {
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, items / kRowsPerThread)));
}

// Rows n, n + 1, ... of one part in qkv's (b, t, h) order, without a division per row (a row is only
// head_dim values): reading in memory order keeps the hardware prefetchers ahead.
struct RowCursor {
  const QkNormShape& shape;
  int p;
  int64_t n;
  QkRow r;
  RowCursor(const QkNormShape& shape_, int p_, int64_t n_) : shape(shape_), p(p_), n(n_), r(shape_.row(n_)) {}
  int64_t input_offset() const { return shape.input_offset(p, r); }
  int64_t output_row() const { return shape.output_row(r); }
  int64_t output_offset() const { return output_row() * shape.head_dim; }
  void next() {
    ++n;
    if (++r.h < shape.heads) return;
    r.h = 0;
    if (++r.t < shape.tokens) return;
    r.t = 0;
    ++r.b;
  }
};

// The rstd of the row at `source` (D values, each read into the accumulation type; a second pass
// over the row reads it from L1).
template <class In, class T = acc_t<In>>
T row_rstd(const In* source, int64_t D, T eps) {
  T squares = T(0);
#pragma omp simd reduction(+ : squares)
  for (int64_t c = 0; c < D; ++c) {
    const T x = load(source, c);
    squares += x * x;
  }
  if (is_finite(squares)) return inverse_std(squares, D, eps);
  T largest = T(0);  // the squares overflowed, or the row holds inf or NaN
  for (int64_t c = 0; c < D; ++c) largest = std::max(largest, std::fabs(static_cast<T>(load(source, c))));
  if (!is_finite(largest)) return inverse_std(squares, D, eps);
  const T s = statistics_scale(largest);
  T scaled = T(0);
#pragma omp simd reduction(+ : scaled)
  for (int64_t c = 0; c < D; ++c) {
    const T x = s * load(source, c);
    scaled += x * x;
  }
  return scaled_rstd(scaled, D, eps, s);
}

// f(std::integral_constant<int, kD>{}): kD is head_dim where it is a common width, so that the row
// loops unroll into whole vectors, and 0 (read the shape's) otherwise.
template <class F>
void with_head_dim(int64_t head_dim, F&& f) {
  switch (head_dim) {
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default: return f(std::integral_constant<int, 0>{});
  }
}

// Part p of every head of token t of sample b.
template <int kD, class In>
void forward_token(const QkNormShape& shape, acc_t<In> eps, const In* qkv, const In* weight, In* out,
                   acc_t<In>* stats, int p, int64_t b, int64_t t) {
  using T = acc_t<In>;
  const int64_t D = kD > 0 ? kD : shape.head_dim;
  for (int64_t h = 0; h < shape.heads; ++h) {
    const QkRow r{b, t, h};
    const In* source = qkv + shape.input_offset(p, r);
    const T rstd = row_rstd(source, D, eps);
    const int64_t row = shape.output_row(r);
    In* target = out + row * D;
#pragma omp simd
    for (int64_t c = 0; c < D; ++c) store(target, c, normalized(static_cast<T>(load(source, c)), T(0), rstd) * load(weight, c));
    stats[p * shape.rows() + row] = rstd;
  }
}

// The threads share q's tokens, then k's, in qkv's order.
template <class In>
void forward(QkNormShape shape, acc_t<In> eps, const In* qkv, const In* q_weight, const In* k_weight, In* out_q,
             In* out_k, acc_t<In>* stats, int threads) {
  const int64_t tokens = shape.batch * shape.tokens;
#pragma omp parallel num_threads(threads_for(2 * shape.rows(), threads))
  for (int p = 0; p < 2; ++p) {
    const int count = omp_get_num_threads(), me = omp_get_thread_num();
    const int64_t first = tokens * me / count, last = tokens * (me + 1) / count;
    with_head_dim(shape.head_dim, [&](auto head_dim) {
      for (int64_t bt = first; bt < last; ++bt)
        forward_token<decltype(head_dim)::value>(shape, eps, qkv, p == 0 ? q_weight : k_weight,
                                                 p == 0 ? out_q : out_k, stats, p, bt / shape.tokens, bt % shape.tokens);
    });
  }
}

// Rows [first, last) of part p: their grad_qkv rows (and v's zero rows), and their sum of g * xhat
// into `partial`; row and dxhat are a thread's buffers of head_dim values.
template <int kD, class In>
void backward_chunk(const QkNormShape& shape, int p, int64_t first, int64_t last, const In* grad, const In* qkv,
                    const In* weight, const acc_t<In>* stats, In* grad_qkv, acc_t<In>* partial, acc_t<In>* row,
                    acc_t<In>* dxhat) {
  using T = acc_t<In>;
  const int64_t D = kD > 0 ? kD : shape.head_dim;
  std::fill(partial, partial + D, T(0));
  for (RowCursor at(shape, p, first); at.n < last; at.next()) {
    const T rstd = stats[p * shape.rows() + at.output_row()];
    const In* source = qkv + at.input_offset();
    const In* g = grad + at.output_offset();
    T sum_dxhat_xhat = T(0);
#pragma omp simd reduction(+ : sum_dxhat_xhat)
    for (int64_t c = 0; c < D; ++c) {
      const T gc = load(g, c);
      row[c] = normalized(static_cast<T>(load(source, c)), T(0), rstd);  // xhat
      dxhat[c] = gc * load(weight, c);
      sum_dxhat_xhat += dxhat[c] * row[c];
      partial[c] += gc * row[c];
    }
    const T mean_dxhat_xhat = sum_dxhat_xhat / static_cast<T>(D);
    In* target = grad_qkv + at.input_offset();
#pragma omp simd
    for (int64_t c = 0; c < D; ++c) store(target, c, norm_input_grad(dxhat[c], row[c], rstd, T(0), mean_dxhat_xhat));
    if (p == 0) {  // the v row of the same (b, t, h): zero
      In* v_row = target + 2 * shape.heads * D;
#pragma omp simd
      for (int64_t c = 0; c < D; ++c) store(v_row, c, T(0));
    }
  }
}

template <class In>
void backward(QkNormShape shape, int64_t chunk_rows, const In* grad_q, const In* grad_k, const In* qkv,
              const In* q_weight, const In* k_weight, const acc_t<In>* stats, In* grad_qkv, acc_t<In>* partials,
              int threads) {
  using T = acc_t<In>;
  const int64_t rows = shape.rows(), D = shape.head_dim, chunks = shape.chunks(chunk_rows);
#pragma omp parallel num_threads(threads_for(2 * rows, threads))
  {
    std::vector<T> buffers(2 * D);
    with_head_dim(D, [&](auto head_dim) {
#pragma omp for schedule(static)
      for (int64_t item = 0; item < 2 * chunks; ++item) {
        const int p = static_cast<int>(item / chunks);
        const int64_t first = (item % chunks) * chunk_rows;
        backward_chunk<decltype(head_dim)::value>(shape, p, first, std::min(rows, first + chunk_rows),
                                                  p == 0 ? grad_q : grad_k, qkv, p == 0 ? q_weight : k_weight, stats,
                                                  grad_qkv, partials + item * D, buffers.data(), buffers.data() + D);
      }
    });
  }
}

}  // namespace

void qk_norm_forward(DType dtype, QkNormShape shape, double eps, const void* qkv, const void* q_weight,
                     const void* k_weight, void* out_q, void* out_k, void* stats, int threads) {
  dispatch_dtype(dtype, [&](auto tag) {
    using In = decltype(tag);
    using T = acc_t<In>;
    forward(shape, static_cast<T>(eps), static_cast<const In*>(qkv), static_cast<const In*>(q_weight),
            static_cast<const In*>(k_weight), static_cast<In*>(out_q), static_cast<In*>(out_k), static_cast<T*>(stats),
            threads);
  });
}

void qk_norm_backward(DType dtype, QkNormShape shape, int64_t chunk_rows, const void* grad_q, const void* grad_k,
                      const void* qkv, const void* q_weight, const void* k_weight, const void* stats, void* grad_qkv,
                      void* partials, int threads) {
  dispatch_dtype(dtype, [&](auto tag) {
    using In = decltype(tag);
    using T = acc_t<In>;
    backward(shape, chunk_rows, static_cast<const In*>(grad_q), static_cast<const In*>(grad_k),
             static_cast<const In*>(qkv),
             static_cast<const In*>(q_weight), static_cast<const In*>(k_weight), static_cast<const T*>(stats),
             static_cast<In*>(grad_qkv), static_cast<T*>(partials), threads);
  });
}

}  // namespace imm::cpu::IMM_CPU_ISA
