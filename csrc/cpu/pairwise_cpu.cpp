// CPU kernels for PairTask (see common/pair_task.h), compiled once per instruction set.
//
// CMake builds this file several times with different -march flags and IMM_CPU_ISA naming the
// namespace (baseline, avx2, avx512); cpu/dispatch.cpp picks one at run time. The loops are written
// so that GCC/Clang vectorise them (no libm calls in hot loops: exp comes from kernel_math.h).
//
// Two layouts, chosen per task:
//  * narrow (D <= 64, column sets of >= 16 points: KeOps/GeomLoss territory): columns are staged
//    transposed, (D, n), and the inner loops run across columns, a block of rows at a time.
//  * wide (large D, small sets: IMM's groups of M particles): the inner loops run across D, one
//    (row, column) pair at a time; a group's data stays in cache between its pairs.
// Memory is O(inputs): no N x M matrix is ever formed (except the Matrix output itself).
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../common/pair_task.h"

#ifndef IMM_CPU_ISA
#error "IMM_CPU_ISA must name the instruction-set namespace"
#endif

namespace imm::cpu::IMM_CPU_ISA {
namespace {

constexpr int kRowBlock = 4;     // rows of A sharing each load of a column block (narrow layout)
constexpr int kColBlock = 64;    // columns per block (narrow layout)
constexpr int kNarrowMaxDim = 64;

template <class In, KernelKind K>
class PairRunner {
  using T = acc_t<In>;

 public:
  PairRunner(const PairTask& task, int threads) : task_(task), threads_(std::max(threads, 1)) {
    const int64_t min_cols =
        std::min(task.sets[0].n, task.num_sets > 1 ? task.sets[1].n : task.sets[0].n);
    narrow_ = task.dim <= kNarrowMaxDim && min_cols >= 16;
    bandwidth_ = static_cast<const T*>(task.bandwidth);
    inverse_bandwidth_.resize(static_cast<size_t>(task.groups * task.num_bandwidths));
    for (size_t i = 0; i < inverse_bandwidth_.size(); ++i) inverse_bandwidth_[i] = T(1) / bandwidth_[i];
  }

  void run() {
    stage_columns();
    const int64_t rows_per_item = narrow_ ? 16 * kRowBlock : (task_.n_rows <= 64 ? task_.n_rows : 16);
    const int64_t blocks_per_group = (task_.n_rows + rows_per_item - 1) / rows_per_item;
    const int64_t items = task_.groups * blocks_per_group;
#pragma omp parallel for schedule(static) num_threads(threads_) if (threads_ > 1 && items > 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t g = item / blocks_per_group;
      const int64_t i0 = (item % blocks_per_group) * rows_per_item;
      const int64_t i1 = std::min(task_.n_rows, i0 + rows_per_item);
      if (narrow_) {
        for (int64_t i = i0; i < i1; i += kRowBlock) narrow_rows(g, i, std::min<int64_t>(kRowBlock, i1 - i));
      } else {
        for (int64_t i = i0; i < i1; ++i) wide_row(g, i);
      }
    }
  }

 private:
  KernelParams<T> params(int64_t g) const {
    return KernelParams<T>{inverse_bandwidth_.data() + g * task_.num_bandwidths, task_.num_bandwidths,
                           static_cast<T>(task_.distance_scale), static_cast<T>(task_.eps)};
  }

  T weight(int s, int64_t g, int64_t i, int64_t j) const {
    const ColumnSet& set = task_.sets[s];
    return static_cast<const T*>(set.weight)[g * set.stride_g + i * set.stride_i + j * set.stride_j];
  }

  // Column sets in the accumulation type: transposed (G, D, n) for the narrow layout; as given
  // (G, n, D) for the wide layout, copied only when the input is a 16-bit type.
  void stage_columns() {
    const int64_t D = task_.dim;
    for (int s = 0; s < task_.num_sets; ++s) {
      const In* src = static_cast<const In*>(task_.sets[s].data);
      const int64_t n = task_.sets[s].n;
      if (!narrow_ && std::is_same_v<In, T>) {
        columns_[s] = reinterpret_cast<const T*>(src);
        continue;
      }
      staged_[s].resize(static_cast<size_t>(task_.groups * n * D));
      T* dst = staged_[s].data();
      const bool transpose = narrow_;
#pragma omp parallel for schedule(static) num_threads(threads_) if (threads_ > 1)
      for (int64_t g = 0; g < task_.groups; ++g) {
        for (int64_t j = 0; j < n; ++j)
          for (int64_t d = 0; d < D; ++d) {
            const int64_t from = (g * n + j) * D + d;
            dst[transpose ? (g * D + d) * n + j : from] = load(src, from);
          }
      }
      columns_[s] = dst;
    }
  }

  // ---- wide layout: one row against every column, vectorised across D -------------------------
  void wide_row(int64_t g, int64_t i) {
    const int64_t D = task_.dim;
    const In* row_src = static_cast<const In*>(task_.rows) + (g * task_.n_rows + i) * D;
    std::vector<T>& a = thread_buffer(0, D);
    for (int64_t d = 0; d < D; ++d) a[d] = load(row_src, d);
    const KernelParams<T> p = params(g);

    if (task_.mode == PairMode::Gradient) {
      std::vector<T>& acc = thread_buffer(1, D);
      std::fill(acc.begin(), acc.end(), T(0));
      T phi_total = T(0);
      for (int s = 0; s < task_.num_sets; ++s) {
        const int64_t n = task_.sets[s].n;
        for (int64_t j = 0; j < n; ++j) {
          const T* b = columns_[s] + (g * n + j) * D;
          const T phi = pair_phi<K, T>(squared_distance(a.data(), b, D), p) * weight(s, g, i, j);
          phi_total += phi;
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) acc[d] -= phi * b[d];
        }
      }
      In* out = static_cast<In*>(task_.out) + (g * task_.n_rows + i) * D;
      for (int64_t d = 0; d < D; ++d) store(out, d, phi_total * a[d] + acc[d]);
      return;
    }
    for (int s = 0; s < task_.num_sets; ++s) {
      const int64_t n = task_.sets[s].n;
      T total = T(0);
      for (int64_t j = 0; j < n; ++j) {
        const T v = pair_value<K, T>(squared_distance(a.data(), columns_[s] + (g * n + j) * D, D), p);
        if (task_.mode == PairMode::Matrix) {
          static_cast<T*>(task_.out)[(g * task_.n_rows + i) * n + j] = v;
        } else {
          total += v;
        }
      }
      if (task_.mode == PairMode::RowSums)
        static_cast<T*>(task_.out)[(g * task_.n_rows + i) * task_.num_sets + s] = total;
    }
  }

  static T squared_distance(const T* a, const T* b, int64_t D) {
    T s2 = T(0);
#pragma omp simd reduction(+ : s2)
    for (int64_t d = 0; d < D; ++d) {
      const T diff = a[d] - b[d];
      s2 += diff * diff;
    }
    return s2;
  }

  // ---- narrow layout: a block of rows against blocks of columns, vectorised across columns -----
  void narrow_rows(int64_t g, int64_t i0, int rows) {
    const int64_t D = task_.dim;
    T a[kRowBlock][kNarrowMaxDim];
    const In* src = static_cast<const In*>(task_.rows) + (g * task_.n_rows + i0) * D;
    for (int r = 0; r < kRowBlock; ++r)
      for (int64_t d = 0; d < D; ++d) a[r][d] = r < rows ? load(src, r * D + d) : T(0);
    const KernelParams<T> p = params(g);

    T grad[kRowBlock][kNarrowMaxDim] = {};
    T phi_total[kRowBlock] = {};
    for (int s = 0; s < task_.num_sets; ++s) {
      const int64_t n = task_.sets[s].n;
      const T* bt = columns_[s] + g * D * n;  // (D, n)
      T row_total[kRowBlock] = {};
      for (int64_t j0 = 0; j0 < n; j0 += kColBlock) {
        const int nj = static_cast<int>(std::min<int64_t>(kColBlock, n - j0));
        T s2[kRowBlock][kColBlock] = {};
        for (int64_t d = 0; d < D; ++d) {
          const T* b = bt + d * n + j0;
          for (int r = 0; r < kRowBlock; ++r) {
            const T ad = a[r][d];
#pragma omp simd
            for (int j = 0; j < nj; ++j) {
              const T diff = ad - b[j];
              s2[r][j] += diff * diff;
            }
          }
        }
        for (int r = 0; r < rows; ++r) {
          const int64_t i = i0 + r;
          if (task_.mode == PairMode::Gradient) {
            T phi[kColBlock];
            column_phi(s2[r], nj, p, phi);
            T total = T(0);
            for (int j = 0; j < nj; ++j) {
              phi[j] *= weight(s, g, i, j0 + j);
              total += phi[j];
            }
            phi_total[r] += total;
            for (int64_t d = 0; d < D; ++d) {
              const T* b = bt + d * n + j0;
              T dot = T(0);
#pragma omp simd reduction(+ : dot)
              for (int j = 0; j < nj; ++j) dot += phi[j] * b[j];
              grad[r][d] -= dot;
            }
          } else {
            T v[kColBlock];
            column_values(s2[r], nj, p, v);
            if (task_.mode == PairMode::Matrix) {
              T* out = static_cast<T*>(task_.out) + (g * task_.n_rows + i) * n + j0;
              std::copy(v, v + nj, out);
            } else {
              T total = T(0);
#pragma omp simd reduction(+ : total)
              for (int j = 0; j < nj; ++j) total += v[j];
              row_total[r] += total;
            }
          }
        }
      }
      if (task_.mode == PairMode::RowSums)
        for (int r = 0; r < rows; ++r)
          static_cast<T*>(task_.out)[(g * task_.n_rows + i0 + r) * task_.num_sets + s] = row_total[r];
    }
    if (task_.mode == PairMode::Gradient) {
      In* out = static_cast<In*>(task_.out) + (g * task_.n_rows + i0) * D;
      for (int r = 0; r < rows; ++r)
        for (int64_t d = 0; d < D; ++d) store(out, r * D + d, phi_total[r] * a[r][d] + grad[r][d]);
    }
  }

  // Kernel values / phi for a block of squared distances, bandwidth loop outside the column loop
  // so that the column loop vectorises.
  static void column_values(const T* s2, int nj, const KernelParams<T>& p, T* v) {
    T dist[kColBlock];
#pragma omp simd
    for (int j = 0; j < nj; ++j) {
      dist[j] = scaled_distance(sqrt_(s2[j]), p);
      v[j] = T(0);
    }
    for (int k = 0; k < p.num_bandwidths; ++k) {
      const T ih = p.inv_bandwidth[k];
#pragma omp simd
      for (int j = 0; j < nj; ++j) v[j] += KernelProfile<K, T>::value(dist[j], ih);
    }
  }

  static void column_phi(const T* s2, int nj, const KernelParams<T>& p, T* phi) {
    T norm[kColBlock], slope[kColBlock];
#pragma omp simd
    for (int j = 0; j < nj; ++j) {
      norm[j] = sqrt_(s2[j]);
      slope[j] = T(0);
    }
    for (int k = 0; k < p.num_bandwidths; ++k) {
      const T ih = p.inv_bandwidth[k];
#pragma omp simd
      for (int j = 0; j < nj; ++j) slope[j] += KernelProfile<K, T>::slope(p.scale * norm[j], ih);
    }
#pragma omp simd
    for (int j = 0; j < nj; ++j) phi[j] = phi_from_slope(slope[j], norm[j], p);
  }

  static std::vector<T>& thread_buffer(int which, int64_t size) {
    thread_local std::vector<T> buffers[2];
    if (static_cast<int64_t>(buffers[which].size()) < size) buffers[which].resize(static_cast<size_t>(size));
    return buffers[which];
  }

  const PairTask& task_;
  int threads_;
  bool narrow_ = false;
  const T* bandwidth_ = nullptr;
  std::vector<T> inverse_bandwidth_;
  std::vector<T> staged_[2];
  const T* columns_[2] = {nullptr, nullptr};
};

}  // namespace

void run_pair_task(const PairTask& task, int threads) {
  dispatch_dtype(task.dtype, [&](auto in_tag) {
    using In = decltype(in_tag);
    dispatch_kernel(task.kind, [&](auto kind_tag) {
      PairRunner<In, decltype(kind_tag)::value> runner(task, threads);
      runner.run();
    });
  });
}

}  // namespace imm::cpu::IMM_CPU_ISA
