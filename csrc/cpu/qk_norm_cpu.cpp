// CPU kernels of qk-norm (math and layout in common/qk_norm.h): OpenMP threads take rows (forward)
// or chunks of rows (backward, one partial sum of grad_w per chunk); a row of head_dim values is
// read once into the accumulation type, its loops vectorised with omp simd.
//
// CMake builds this file once per instruction set, in namespace imm::cpu::<IMM_CPU_ISA>.
#include <omp.h>

#include <algorithm>
#include <cmath>
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

// The row at `source` widened into `row`; returns its rstd.
template <class In, class T>
T load_row(const In* source, int64_t D, T eps, T* row) {
  T squares = T(0);
#pragma omp simd reduction(+ : squares)
  for (int64_t c = 0; c < D; ++c) {
    row[c] = load(source, c);
    squares += row[c] * row[c];
  }
  if (is_finite(squares)) return inverse_std(squares, D, eps);
  T largest = T(0);  // the squares overflowed, or the row holds inf or NaN
  for (int64_t c = 0; c < D; ++c) largest = std::max(largest, std::fabs(row[c]));
  if (!is_finite(largest)) return inverse_std(squares, D, eps);
  const T s = statistics_scale(largest);
  T scaled = T(0);
#pragma omp simd reduction(+ : scaled)
  for (int64_t c = 0; c < D; ++c) scaled += (s * row[c]) * (s * row[c]);
  return scaled_rstd(scaled, D, eps, s);
}

// Rows [first, last) of part p; a thread's share of the forward.
template <class In>
void forward_rows(const QkNormShape& shape, acc_t<In> eps, const In* qkv, const In* weight, In* out,
                  acc_t<In>* stats, int p, int64_t first, int64_t last, acc_t<In>* row) {
  using T = acc_t<In>;
  const int64_t D = shape.head_dim;
  for (RowCursor at(shape, p, first); at.n < last; at.next()) {
    const T rstd = load_row(qkv + at.input_offset(), D, eps, row);
    In* target = out + at.output_offset();
#pragma omp simd
    for (int64_t c = 0; c < D; ++c) store(target, c, normalized(row[c], T(0), rstd) * load(weight, c));
    stats[p * shape.rows() + at.output_row()] = rstd;
  }
}

template <class In>
void forward(QkNormShape shape, acc_t<In> eps, const In* qkv, const In* q_weight, const In* k_weight, In* out_q,
             In* out_k, acc_t<In>* stats, int threads) {
  using T = acc_t<In>;
  const int64_t rows = shape.rows(), blocks = 2 * ((rows + kRowsPerThread - 1) / kRowsPerThread);
#pragma omp parallel num_threads(threads_for(2 * rows, threads))
  {
    std::vector<T> row(shape.head_dim);
#pragma omp for schedule(static)
    for (int64_t block = 0; block < blocks; ++block) {
      const int p = static_cast<int>(block / (blocks / 2));
      const int64_t first = (block % (blocks / 2)) * kRowsPerThread;
      forward_rows(shape, eps, qkv, p == 0 ? q_weight : k_weight, p == 0 ? out_q : out_k, stats, p, first,
                   std::min(rows, first + kRowsPerThread), row.data());
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
    T* row = buffers.data();
    T* dxhat = row + D;
#pragma omp for schedule(static)
    for (int64_t item = 0; item < 2 * chunks; ++item) {
      const int p = static_cast<int>(item / chunks);
      const int64_t first = (item % chunks) * chunk_rows, last = std::min(rows, first + chunk_rows);
      const In* weight = p == 0 ? q_weight : k_weight;
      const In* grad = p == 0 ? grad_q : grad_k;
      T* partial = partials + item * D;
      std::fill(partial, partial + D, T(0));
      for (RowCursor at(shape, p, first); at.n < last; at.next()) {
        const T rstd = stats[p * rows + at.output_row()];
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
        for (int64_t c = 0; c < D; ++c)
          store(target, c, norm_input_grad(dxhat[c], row[c], rstd, T(0), mean_dxhat_xhat));
        if (p == 0) {  // the v row of the same (b, t, h): zero
          In* v_row = grad_qkv + at.input_offset() + 2 * shape.heads * D;
#pragma omp simd
          for (int64_t c = 0; c < D; ++c) store(v_row, c, T(0));
        }
      }
    }
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
