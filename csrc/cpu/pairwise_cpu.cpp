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
//
// Everything here lives in the per-ISA namespace and uses no std:: container or algorithm: an
// out-of-line template instantiation compiled with -march=x86-64-v4 could otherwise be shared by
// the linker with the baseline build and run on a processor without AVX-512.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <type_traits>

#include "../common/pair_task.h"
#include "buffer.h"
#include "simd.h"

#ifndef IMM_CPU_ISA
#error "IMM_CPU_ISA must name the instruction-set namespace"
#endif

namespace imm::cpu::IMM_CPU_ISA {
namespace {

constexpr int kNarrowMaxDim = 64;
constexpr int R = 4;             // rows sharing each column load (both layouts)
constexpr int kWideCols = 4;     // columns per distance sweep (wide layout)
constexpr int64_t kPanelChunk = 8;  // panels whose phi is kept while the gradient is accumulated
// Wide gradients at least this large (bytes) bypass the caches as they are written: they could not
// stay in a last-level cache share anyway, and a cached store first reads every line it fills.
constexpr double kStreamBytes = 32.0 * (1 << 20);

template <class In, KernelKind K_>
class PairRunner {
  using T = acc_t<In>;

 public:
  PairRunner(const PairTask& task, int threads) : task_(task), threads_(threads > 1 ? threads : 1) {
    const int64_t min_cols = std::min<int64_t>(task.sets[0].n, task.num_sets > 1 ? task.sets[1].n : task.sets[0].n);
    narrow_ = task.dim <= kNarrowMaxDim && min_cols >= 16;
    const double out_bytes = static_cast<double>(task.groups) * task.n_rows * task.dim * sizeof(In);
    stream_gradient_ = !narrow_ && task.mode == PairMode::Gradient && std::is_same_v<In, T> &&
                       out_bytes >= kStreamBytes;
    if (narrow_ && task.distances != nullptr)
      throw std::invalid_argument("pair_task: kept distances need the wide layout (D > 64)");
    const int num = task.num_bandwidths;
    T* inverse = inverse_bandwidth_.reserve(task.groups * num);
    T* scale = distance_scale_.reserve(task.groups);
    for (int64_t g = 0; g < task.groups; ++g) {
      const T* bandwidth = static_cast<const T*>(task.bandwidth) + g * num;
      const T prescale = bandwidth_prescale<K_>(bandwidth, num);
      scale[g] = static_cast<T>(task.distance_scale) * prescale;
      for (int k = 0; k < num; ++k) inverse[g * num + k] = T(1) / (prescale * bandwidth[k]);
    }
  }

  void run() {
    stage_columns();
    const int64_t longest = std::max<int64_t>(task_.n_rows, task_.n_tail_rows);
    const int64_t rows_per_item = narrow_ ? 64 : (longest <= 64 ? longest : 16);
    const int64_t main_blocks = (task_.n_rows + rows_per_item - 1) / rows_per_item;
    const int64_t blocks_per_group = main_blocks + (task_.n_tail_rows + rows_per_item - 1) / rows_per_item;
    const int64_t items = task_.groups * blocks_per_group;
    const int team = team_size(threads_, items);
    // The wide layout's per-thread scratch: R staged rows (16-bit inputs), then R rows of squared
    // distances to every column (see wide_block).
    thread_local TeamScratch<T> scratch;
    const int64_t wide_scratch = size_sum(wide_rows_size(), size_product(R, wide_columns()));
    const Slices<T> slices = narrow_ ? Slices<T>{nullptr, 0} : scratch.reserve(team, wide_scratch);
    // A group's blocks are consecutive items, so its tail rows follow its rows on the same thread
    // while the group's columns are still in cache.
#pragma omp parallel for schedule(static) num_threads(team) if (team > 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t g = item / blocks_per_group, block = item % blocks_per_group;
      const bool tail = block >= main_blocks;
      const int64_t first = tail ? task_.n_rows : 0, end = tail ? task_.out_rows() : task_.n_rows;
      const int64_t i0 = first + (tail ? block - main_blocks : block) * rows_per_item;
      const int64_t i1 = std::min<int64_t>(end, i0 + rows_per_item);
      if (narrow_) {
        narrow_rows(g, i0, i1);
      } else {
        wide_rows(g, i0, i1, slices.of(omp_get_thread_num()));
      }
    }
  }

 private:
  KernelParams<T> params(int64_t g) const {
    return KernelParams<T>{inverse_bandwidth_.data() + g * task_.num_bandwidths, task_.num_bandwidths,
                           distance_scale_.data()[g], static_cast<T>(task_.eps)};
  }

  // Where row i of group g (i counting the tail rows after the rows) is read, and the first set it is
  // evaluated against: the tail rows meet the last set only.
  struct RowSource {
    const In* data;
    int first_set;
  };
  RowSource row_source(int64_t g, int64_t i) const {
    if (i < task_.n_rows) return {static_cast<const In*>(task_.rows) + (g * task_.n_rows + i) * task_.dim, 0};
    const int64_t t = i - task_.n_rows;
    return {static_cast<const In*>(task_.tail_rows) + (g * task_.n_tail_rows + t) * task_.dim, task_.num_sets - 1};
  }

  // RowSums of row i: the sums against the sets from first_set on, zero before it.
  void store_row_sums(int64_t g, int64_t i, int first_set, const T* totals) const {
    T* out = static_cast<T*>(task_.out) + (g * task_.out_rows() + i) * task_.num_sets;
    for (int s = 0; s < task_.num_sets; ++s) out[s] = s < first_set ? T(0) : totals[s];
  }

  T weight(int s, int64_t g, int64_t i, int64_t j) const {
    const ColumnSet& set = task_.sets[s];
    return static_cast<const T*>(set.weight)[g * set.stride_g + i * set.stride_i + j * set.stride_j];
  }

  // Column sets in the accumulation type. Narrow layout: panels of L = SIMD-lanes columns, each
  // panel (D, L) contiguous, the last one zero-padded: (G, panels, D, L). Wide layout: as given,
  // (G, n, D), copied only when the input is a 16-bit type.
  void stage_columns() {
    const int64_t D = task_.dim;
    constexpr int64_t L = Simd<T>::lanes;
    for (int s = 0; s < task_.num_sets; ++s) {
      const In* src = static_cast<const In*>(task_.sets[s].data);
      const int64_t n = task_.sets[s].n;
      if (!narrow_ && std::is_same_v<In, T>) {
        columns_[s] = reinterpret_cast<const T*>(src);
        continue;
      }
      const int64_t padded = narrow_ ? panels(n) * L : n;
      T* dst = staged_[s].reserve(task_.groups * padded * D);
      const bool panelled = narrow_;
#pragma omp parallel for schedule(static) num_threads(threads_) if (threads_ > 1)
      for (int64_t g = 0; g < task_.groups; ++g) {
        T* group = dst + g * padded * D;
        for (int64_t j = 0; j < padded; ++j)
          for (int64_t d = 0; d < D; ++d) {
            const T value = j < n ? load(src, (g * n + j) * D + d) : T(0);
            group[panelled ? ((j / L) * D + d) * L + j % L : j * D + d] = value;
          }
      }
      columns_[s] = dst;
    }
  }

  static int64_t panels(int64_t n) { return (n + Simd<T>::lanes - 1) / Simd<T>::lanes; }

  // ---- wide layout: a block of R rows against every column, SIMD across D ---------------------
  // Pass 1 computes all squared distances of the block, R x kWideCols pairs per sweep over D (16
  // independent accumulators); Gradient adds pass 2, out_r = sum_j phi_rj (a_r - b_j), one sweep
  // over D that loads each column once for all R rows.
  void wide_block(int64_t g, int64_t i0, int rows, T* scratch) {
    using SV = Simd<T>;
    using V = typename SV::V;
    constexpr int64_t L = SV::lanes;
    const int64_t D = task_.dim;
    const int64_t D_vec = D - D % L;
    const int64_t columns = wide_columns();

    const int first_set = row_source(g, i0).first_set;
    const T* a[R];
    T* row_buffer = scratch;
    for (int r = 0; r < R; ++r) {
      const In* src = row_source(g, i0 + (r < rows ? r : 0)).data;
      if constexpr (std::is_same_v<In, T>) {
        a[r] = src;
      } else {
        for (int64_t d = 0; d < D; ++d) row_buffer[r * D + d] = load(src, d);
        a[r] = row_buffer + r * D;
      }
    }
    auto column = [&](int s, int64_t j) { return columns_[s] + (g * task_.sets[s].n + j) * D; };

    // Pass 1: s2[r * columns + c], c running over the sets' columns in order (a gradient
    // whose row sums kept them reads them instead). Where a set is the rows themselves (x against
    // x), the tile of the block's own rows takes its pairs above the diagonal only, in the same sweep
    // over D as the next tile of columns (x against y's first columns), so that the block's rows
    // come from memory once for both.
    const bool tail = i0 >= task_.n_rows;
    const void* row_set = tail ? task_.tail_rows : task_.rows;
    const int64_t own_j0 = tail ? i0 - task_.n_rows : i0;
    T* s2 = scratch + wide_rows_size();
    if (!read_kept_distances(g, i0, rows, s2)) {
      T* own = nullptr;  // the own tile's place in s2, until a tile of columns takes it along
      for (int64_t s = first_set, c0 = 0; s < task_.num_sets; c0 += task_.sets[s].n, ++s) {
        const int64_t n = task_.sets[s].n;
        const bool rows_set = task_.sets[s].data == row_set;
        for (int64_t j0 = 0; j0 < n; j0 += kWideCols) {
          const int cols = static_cast<int>(std::min<int64_t>(kWideCols, n - j0));
          if (rows_set && j0 == own_j0 && rows == R && cols == R) {
            if (own != nullptr) own_tile(a, own, columns);  // y is x itself: a second own tile
            own = s2 + c0 + j0;
            continue;
          }
          const T* b[kWideCols];
          for (int c = 0; c < kWideCols; ++c) b[c] = column(s, j0 + (c < cols ? c : 0));
          if (own != nullptr) {
            tile_sweep<true>(a, b, cols, own, s2 + c0 + j0, columns);
            own = nullptr;
          } else {
            tile_sweep<false>(a, b, cols, nullptr, s2 + c0 + j0, columns);
          }
        }
      }
      if (own != nullptr) own_tile(a, own, columns);
      keep_distances(g, i0, rows, s2);
    }

    const KernelParams<T> p = params(g);
    if (task_.mode != PairMode::Gradient) {
      for (int r = 0; r < rows; ++r) {
        const int64_t i = i0 + r;
        T totals[2] = {T(0), T(0)};
        for (int64_t s = first_set, c0 = 0; s < task_.num_sets; c0 += task_.sets[s].n, ++s) {
          const int64_t n = task_.sets[s].n;
          for (int64_t j = 0; j < n; ++j) {
            const T v = pair_value<K_, T>(s2[r * columns + c0 + j], p);
            if (task_.mode == PairMode::Matrix) static_cast<T*>(task_.out)[(g * task_.n_rows + i) * n + j] = v;
            totals[s] += v;
          }
        }
        if (task_.mode == PairMode::RowSums) store_row_sums(g, i, first_set, totals);
      }
      return;
    }

    // Gradient: phi in place of s2, then pass 2.
    T phi_total[R] = {};
    for (int r = 0; r < R; ++r)
      for (int64_t s = 0, c0 = 0; s < task_.num_sets; c0 += task_.sets[s].n, ++s)
        for (int64_t j = 0; j < task_.sets[s].n; ++j) {
          T& phi = s2[r * columns + c0 + j];
          phi = r < rows ? pair_phi<K_, T>(phi, p) * weight(s, g, i0 + r, j) : T(0);
          phi_total[r] += phi;
        }
    In* out[R];
    bool aligned = true;
    for (int r = 0; r < R; ++r) {
      out[r] = static_cast<In*>(task_.out) + (g * task_.n_rows + i0 + (r < rows ? r : 0)) * D;
      aligned = aligned && reinterpret_cast<std::uintptr_t>(out[r]) % SV::bytes == 0;
    }
    const bool stream = aligned && stream_gradient_;
    auto sweep = [&](int64_t d, auto zero) {  // one SIMD vector (V) or one element (T) of every output row
      using W = decltype(zero);
      auto load_w = [](const T* ptr) {
        if constexpr (std::is_same_v<W, T>) return *ptr; else return SV::load(ptr);
      };
      W acc[R];
      for (int r = 0; r < R; ++r) acc[r] = phi_total[r] * load_w(a[r] + d);
      for (int64_t s = 0, c0 = 0; s < task_.num_sets; c0 += task_.sets[s].n, ++s)
        for (int64_t j = 0; j < task_.sets[s].n; ++j) {
          const W b = load_w(column(s, j) + d);
          for (int r = 0; r < R; ++r) acc[r] -= s2[r * columns + c0 + j] * b;
        }
      for (int r = 0; r < rows; ++r) {
        if constexpr (std::is_same_v<W, T>) {
          store(out[r], d, acc[r]);
        } else if constexpr (std::is_same_v<In, T>) {
          if (stream) SV::stream(out[r] + d, acc[r]); else SV::store(out[r] + d, acc[r]);
        } else {
          for (int l = 0; l < L; ++l) store(out[r], d + l, acc[r][l]);
        }
      }
    };
    for (int64_t d = 0; d < D_vec; d += L) sweep(d, SV::zero());
    for (int64_t d = D_vec; d < D; ++d) sweep(d, T(0));
  }

  // The squared distances of a block's R rows to a tile of `cols` columns b (cross[r * columns + c]),
  // and with Own those among the rows themselves too (own, see own_tile), in one sweep over D.
  template <bool Own>
  void tile_sweep(const T* const (&a)[R], const T* const (&b)[kWideCols], int cols, T* own, T* cross,
                  int64_t columns) const {
    using SV = Simd<T>;
    using V = typename SV::V;
    constexpr int64_t L = SV::lanes;
    const int64_t D = task_.dim;
    const int64_t D_vec = D - D % L;
    V own_acc[kOwnPairs];
    V acc[R][kWideCols];
    for (int k = 0; k < kOwnPairs; ++k) own_acc[k] = SV::zero();
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < kWideCols; ++c) acc[r][c] = SV::zero();
    for (int64_t d = 0; d < D_vec; d += L) {
      V av[R], bv[kWideCols];
      for (int r = 0; r < R; ++r) av[r] = SV::load(a[r] + d);
      for (int c = 0; c < kWideCols; ++c) bv[c] = SV::load(b[c] + d);
      if constexpr (Own) own_pairs(av, own_acc);
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < kWideCols; ++c) {
          const V diff = av[r] - bv[c];
          acc[r][c] += diff * diff;
        }
    }
    if constexpr (Own) store_own(a, own_acc, own, columns);
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < cols; ++c) {
        T total = SV::sum(acc[r][c]);
        for (int64_t d = D_vec; d < D; ++d) {
          const T diff = a[r][d] - b[c][d];
          total += diff * diff;
        }
        cross[r * columns + c] = total;
      }
  }

  // The squared distances among a block's own R rows (a tile of the rows' own set): the pairs above
  // the diagonal in one sweep over D, mirrored, and zero on it. The same sums in the same order as
  // the full tile's ((a - b)^2 = (b - a)^2 exactly), for under half of its work.
  static constexpr int kOwnPairs = R * (R - 1) / 2;
  static_assert(kWideCols == R, "the block's own tile is square");

  void own_tile(const T* const (&a)[R], T* s2, int64_t columns) const {
    using SV = Simd<T>;
    using V = typename SV::V;
    constexpr int64_t L = SV::lanes;
    const int64_t D_vec = task_.dim - task_.dim % L;
    V acc[kOwnPairs];
    for (int k = 0; k < kOwnPairs; ++k) acc[k] = SV::zero();
    for (int64_t d = 0; d < D_vec; d += L) {
      V av[R];
      for (int r = 0; r < R; ++r) av[r] = SV::load(a[r] + d);
      own_pairs(av, acc);
    }
    store_own(a, acc, s2, columns);
  }

  static void own_pairs(const typename Simd<T>::V (&av)[R], typename Simd<T>::V (&acc)[kOwnPairs]) {
    for (int r = 0, k = 0; r < R; ++r)
      for (int c = r + 1; c < R; ++c, ++k) {
        const auto diff = av[r] - av[c];
        acc[k] += diff * diff;
      }
  }

  void store_own(const T* const (&a)[R], const typename Simd<T>::V (&acc)[kOwnPairs], T* s2, int64_t columns) const {
    using SV = Simd<T>;
    const int64_t D = task_.dim;
    const int64_t D_vec = D - D % SV::lanes;
    for (int r = 0, k = 0; r < R; ++r) {
      s2[r * columns + r] = T(0);
      for (int c = r + 1; c < R; ++c, ++k) {
        T total = SV::sum(acc[k]);
        for (int64_t d = D_vec; d < D; ++d) {
          const T diff = a[r][d] - a[c][d];
          total += diff * diff;
        }
        s2[r * columns + c] = s2[c * columns + r] = total;
      }
    }
  }

  // Kept distances (common/pair_task.h), rows i0 .. i0 + rows of group g, R rows of s2: a gradient
  // reads them (rows past `rows` repeat the first, their phi is zeroed), the row sums of the rows
  // (not the tail rows) write them.
  bool read_kept_distances(int64_t g, int64_t i0, int rows, T* s2) const {
    if (task_.distances == nullptr || task_.mode != PairMode::Gradient) return false;
    const int64_t columns = wide_columns();
    for (int r = 0; r < R; ++r) {
      const T* kept = static_cast<const T*>(task_.distances) + (g * task_.n_rows + i0 + (r < rows ? r : 0)) * columns;
      for (int64_t c = 0; c < columns; ++c) s2[r * columns + c] = kept[c];
    }
    return true;
  }

  void keep_distances(int64_t g, int64_t i0, int rows, const T* s2) const {
    if (task_.distances == nullptr || task_.mode != PairMode::RowSums || i0 >= task_.n_rows) return;
    const int64_t columns = wide_columns();
    for (int r = 0; r < rows; ++r) {
      T* kept = static_cast<T*>(task_.distances) + (g * task_.n_rows + i0 + r) * columns;
      for (int64_t c = 0; c < columns; ++c) kept[c] = s2[r * columns + c];
    }
  }

  void wide_rows(int64_t g, int64_t i0, int64_t i1, T* scratch) {
    for (int64_t i = i0; i < i1; i += R) wide_block(g, i, static_cast<int>(std::min<int64_t>(R, i1 - i)), scratch);
    if (stream_gradient_) fence_streams();
  }

  // Columns of all sets, and the staged rows' share of a thread's scratch (rounded to whole SIMD
  // vectors, so that the squared distances after it start on one).
  int64_t wide_columns() const { return task_.sets[0].n + (task_.num_sets > 1 ? task_.sets[1].n : 0); }
  int64_t wide_rows_size() const {
    constexpr int64_t L = Simd<T>::lanes;
    return std::is_same_v<In, T> ? 0 : size_product(R, (task_.dim + L - 1) / L * L);
  }

  // ---- narrow layout: a block of R rows against column panels, SIMD across columns -------------
  // DIM > 0 fixes D at compile time (loops unrolled, accumulators in registers).

  template <int DIM>
  void narrow_block(int64_t g, int64_t i0, int rows) {
    using SV = Simd<T>;
    using V = typename SV::V;
    constexpr int L = SV::lanes;
    constexpr int kMaxDim = DIM > 0 ? DIM : kNarrowMaxDim;
    const int64_t D = DIM > 0 ? DIM : task_.dim;
    const int first_set = row_source(g, i0).first_set;
    T a[R][kMaxDim];  // rows past `rows` repeat the first row; their results are dropped
    for (int r = 0; r < R; ++r) {
      const In* src = row_source(g, i0 + (r < rows ? r : 0)).data;
      for (int64_t d = 0; d < D; ++d) a[r][d] = load(src, d);
    }
    const KernelParams<T> p = params(g);

    // s2[r] = squared distances from row r to the L columns of a (D, L) panel.
    auto panel_distances = [&](const T* panel, V (&s2)[R]) {
      for (int r = 0; r < R; ++r) s2[r] = SV::zero();
      for (int64_t d = 0; d < D; ++d) {
        const V b = SV::load(panel + d * L);
        for (int r = 0; r < R; ++r) {
          const V diff = a[r][d] - b;
          s2[r] += diff * diff;
        }
      }
    };

    if (task_.mode == PairMode::Gradient) {
      narrow_gradient<DIM>(g, i0, rows, a, p, panel_distances);
      return;
    }
    const bool matrix = task_.mode == PairMode::Matrix;
    T totals[R][2] = {};
    for (int s = first_set; s < task_.num_sets; ++s) {
      const int64_t n = task_.sets[s].n;
      const T* base = columns_[s] + g * panels(n) * D * L;
      V total[R];
      for (int r = 0; r < R; ++r) total[r] = SV::zero();
      for (int64_t q = 0; q < panels(n); ++q) {
        V s2[R];
        panel_distances(base + q * D * L, s2);
        const int valid = static_cast<int>(std::min<int64_t>(L, n - q * L));
        for (int r = 0; r < rows; ++r) {
          const V v = pair_value<K_, V, T>(s2[r], p);
          if (matrix) {
            T* out = static_cast<T*>(task_.out) + (g * task_.n_rows + i0 + r) * n + q * L;
            if (valid == L) SV::store(out, v); else for (int l = 0; l < valid; ++l) out[l] = v[l];
          } else {
            total[r] += SV::first_lanes(v, valid);
          }
        }
      }
      if (!matrix)
        for (int r = 0; r < rows; ++r) totals[r][s] = SV::sum(total[r]);
    }
    if (!matrix)
      for (int r = 0; r < rows; ++r) store_row_sums(g, i0 + r, first_set, totals[r]);
  }

  // Gradient rows: out_r = sum_j w_rj phi_rj (a_r - b_j), in chunks of kPanelChunk panels: first
  // phi for the chunk, then sum_j phi_rj b_j one coordinate at a time (each panel load feeds R rows).
  template <int DIM, class PanelDistances>
  void narrow_gradient(int64_t g, int64_t i0, int rows, const T (&a)[R][DIM > 0 ? DIM : kNarrowMaxDim],
                       const KernelParams<T>& p, PanelDistances& panel_distances) {
    using SV = Simd<T>;
    using V = typename SV::V;
    constexpr int L = SV::lanes;
    constexpr int kMaxDim = DIM > 0 ? DIM : kNarrowMaxDim;
    const int64_t D = DIM > 0 ? DIM : task_.dim;
    V acc[R][kMaxDim];
    V phi_total[R];
    for (int r = 0; r < R; ++r) {
      phi_total[r] = SV::zero();
      for (int64_t d = 0; d < D; ++d) acc[r][d] = SV::zero();
    }
    for (int s = 0; s < task_.num_sets; ++s) {
      const ColumnSet& set = task_.sets[s];
      const int64_t n = set.n;
      const T* base = columns_[s] + g * panels(n) * D * L;
      for (int64_t q0 = 0; q0 < panels(n); q0 += kPanelChunk) {
        const int chunk = static_cast<int>(std::min<int64_t>(kPanelChunk, panels(n) - q0));
        V phi[R][kPanelChunk];
        for (int c = 0; c < chunk; ++c) {
          const int64_t j0 = (q0 + c) * L;
          const int valid = static_cast<int>(std::min<int64_t>(L, n - j0));
          V s2[R];
          panel_distances(base + (q0 + c) * D * L, s2);
          for (int r = 0; r < R; ++r) {
            const T* w = static_cast<const T*>(set.weight) + g * set.stride_g +
                         (i0 + (r < rows ? r : 0)) * set.stride_i + j0 * set.stride_j;
            const V weight = valid == L ? SV::strided(w, set.stride_j) : SV::strided_first(w, set.stride_j, valid);
            phi[r][c] = SV::first_lanes(pair_phi<K_, V, T>(s2[r], p) * weight, valid);
            phi_total[r] += phi[r][c];
          }
        }
        for (int64_t d = 0; d < D; ++d) {
          V dot[R];
          for (int r = 0; r < R; ++r) dot[r] = SV::zero();
          for (int c = 0; c < chunk; ++c) {
            const V b = SV::load(base + ((q0 + c) * D + d) * L);
            for (int r = 0; r < R; ++r) dot[r] += phi[r][c] * b;
          }
          for (int r = 0; r < R; ++r) acc[r][d] += dot[r];
        }
      }
    }
    for (int r = 0; r < rows; ++r) {
      In* out = static_cast<In*>(task_.out) + (g * task_.n_rows + i0 + r) * D;
      const T phi_sum = SV::sum(phi_total[r]);
      for (int64_t d = 0; d < D; ++d) store(out, d, phi_sum * a[r][d] - SV::sum(acc[r][d]));
    }
  }

  template <int DIM>
  void narrow_blocks(int64_t g, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i += R) narrow_block<DIM>(g, i, static_cast<int>(std::min<int64_t>(R, i1 - i)));
  }

  void narrow_rows(int64_t g, int64_t i0, int64_t i1) {
    switch (task_.dim) {
      case 1: narrow_blocks<1>(g, i0, i1); break;
      case 2: narrow_blocks<2>(g, i0, i1); break;
      case 3: narrow_blocks<3>(g, i0, i1); break;
      case 4: narrow_blocks<4>(g, i0, i1); break;
      default: narrow_blocks<0>(g, i0, i1); break;
    }
  }

  const PairTask& task_;
  int threads_;
  bool narrow_ = false;
  bool stream_gradient_ = false;  // the wide gradient's rows written with streamed stores
  Buffer<T> inverse_bandwidth_;  // (G, K), and the distance scale per group: see bandwidth_prescale
  Buffer<T> distance_scale_;
  Buffer<T> staged_[2];
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
