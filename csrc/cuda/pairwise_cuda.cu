// CUDA kernels for PairTask (see common/pair_task.h): the GPU twin of cpu/pairwise_cpu.cpp, using
// the same kernel math (common/kernel_math.h) and the same storage types (common/dtype.h).
//
// Two layouts, chosen per task:
//  * narrow (D <= 64, or <= 16 for float64, with >= 32 rows or >= 32 columns in every set: KeOps
//    territory): a row a_i lives in the registers of P lanes (P = 1..32, a power of two picked so
//    that the GPU fills up); the block stages tiles of 64 columns in shared memory and lane p of a
//    row takes every P-th column of a tile; the P lanes of a row are summed by a shuffle butterfly.
//  * wide (everything else, e.g. IMM's groups of a few particles with D in the thousands): a block
//    owns 4 rows of one group and walks the columns of both sets in tiles of 8, its threads
//    striding over D, so each tile is read once for its 32 pairs; a warp-transpose reduction and a
//    sum over warps give the squared distances. The gradient keeps phi for a chunk of columns in
//    shared memory, then sweeps D again, each thread summing phi_ij (a_i[d] - b_j[d]) for its d.
// Every output element is written by exactly one thread, all sums run in a fixed order (results
// are deterministic), and nothing is allocated.
#include "pairwise_cuda.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "../common/dtype.h"
#include "../common/kernel_math.h"
#include "../common/pair_task.h"
#include "launch.cuh"
#include "shared_memory.cuh"

namespace imm::cuda {
namespace {

constexpr int kMaxBandwidths = 16;
constexpr unsigned kFullMask = 0xffffffffu;

// The task with typed pointers. Unused second-set fields are zero (n[1] = 0 for one set).
template <class In>
struct Args {
  using T = acc_t<In>;
  const In* rows;
  const In* tail_rows;  // row sums only: rows after `rows`, against the last set alone
  int64_t groups, n_rows, n_tail_rows, dim;
  int num_sets;
  const In* cols[2];
  int64_t n[2];
  const T* weight[2];
  int64_t stride_g[2], stride_i[2], stride_j[2];
  const T* bandwidth;
  int num_bandwidths;
  T scale, eps;
  void* out;
  T* distances;  // kept squared distances (common/pair_task.h), or null
};

// The rows of a task in items of `per_item` rows, the tail rows' items after the rows' items.
struct RowItems {
  int64_t main, per_group;  // items of the rows, and of rows and tail rows, per group
  __host__ __device__ RowItems(int64_t n_rows, int64_t n_tail_rows, int64_t per_item)
      : main((n_rows + per_item - 1) / per_item), per_group(main + (n_tail_rows + per_item - 1) / per_item) {}
};

// Selects from the two-element arrays with a constant index, so that the kernel parameters stay in
// parameter space instead of being copied to local memory.
template <class V>
__device__ __forceinline__ V pick(const V (&v)[2], int s) {
  return s ? v[1] : v[0];
}

template <class In>
__device__ __forceinline__ acc_t<In> weight_at(const Args<In>& a, int s, int64_t g, int64_t i,
                                               int64_t j) {
  const int64_t at = g * pick(a.stride_g, s) + i * pick(a.stride_i, s) + j * pick(a.stride_j, s);
  return pick(a.weight, s)[at];
}

// The group's inverse bandwidths 1 / (p h), into shared memory, and its distance scale c p (see
// bandwidth_prescale; the energy kernel has no bandwidth: p = 1).
template <KernelKind K, class T>
__device__ __forceinline__ void load_group_bandwidths(const T* bandwidth, int num, int64_t g, T* ih,
                                                      KernelParams<T>& params, T distance_scale) {
  const T* group = bandwidth + g * num;
  const T prescale = bandwidth_prescale<K>(group, num);
  const int t = threadIdx.x;
  if (t < num) ih[t] = K == KernelKind::Energy ? T(1) : T(1) / (prescale * group[t]);
  params.scale = distance_scale * prescale;
}

// ---------------------------------------------------------------------------------------------
// Wide layout.

constexpr int kWideThreads = 256;
constexpr int kWideWarps = kWideThreads / 32;
constexpr int kTileRows = 4, kTileCols = 8;  // 32 pairs: one per lane after the transpose sum
constexpr int kSweep = 2;                    // gradient sweep: d values per thread per pass
template <class T>
constexpr int kPhiCols = 16384 / (kTileRows * static_cast<int>(sizeof(T)));  // 16 KB of phi
static_assert(kTileRows * kTileCols == 32, "one pair per lane");

// Column c of the concatenation of set 0 and set 1.
template <class In>
__device__ __forceinline__ const In* column(const Args<In>& a, int64_t g, int64_t c) {
  const int s = c >= a.n[0];
  const int64_t n = pick(a.n, s);
  return pick(a.cols, s) + (g * n + (s ? c - a.n[0] : c)) * a.dim;
}

// Lane l of a warp receives the warp's sum of v[l] (31 shuffles instead of 32 x 5): at step W a
// lane keeps the upper or lower W of its 2W live entries and adds the partner's copy of them.
template <int W, class T>
__device__ __forceinline__ T warp_transpose_sum(T (&v)[32]) {
  const bool upper = threadIdx.x & W;
#pragma unroll
  for (int k = 0; k < W; ++k) {
    const T send = upper ? v[k] : v[k + W];
    const T keep = upper ? v[k + W] : v[k];
    v[k] = keep + __shfl_xor_sync(kFullMask, send, W);
  }
  if constexpr (W > 1) {
    return warp_transpose_sum<W / 2>(v);
  } else {
    return v[0];
  }
}

// Squared distances of 4 rows x 8 columns, summed over D by the whole block: lane l of every warp
// returns pair (l / 8, l % 8). Its barriers come after every thread's work preceding the call, so
// once it returns, shared memory read before the call may be overwritten.
template <class In>
__device__ __forceinline__ acc_t<In> tile_distances(const In* const (&row)[kTileRows],
                                                    const In* const (&col)[kTileCols], int64_t D,
                                                    acc_t<In>* partial) {
  using T = acc_t<In>;
  T acc[kTileRows * kTileCols];
#pragma unroll
  for (int k = 0; k < kTileRows * kTileCols; ++k) acc[k] = T(0);
  for (int64_t d = threadIdx.x; d < D; d += kWideThreads) {
    T av[kTileRows], bv[kTileCols];
#pragma unroll
    for (int r = 0; r < kTileRows; ++r) av[r] = load(row[r], d);
#pragma unroll
    for (int c = 0; c < kTileCols; ++c) bv[c] = load(col[c], d);
#pragma unroll
    for (int r = 0; r < kTileRows; ++r)
#pragma unroll
      for (int c = 0; c < kTileCols; ++c) {
        const T diff = av[r] - bv[c];
        acc[r * kTileCols + c] += diff * diff;
      }
  }
  const T warp_sum = warp_transpose_sum<16>(acc);
  __syncthreads();  // the previous tile's partial sums have been read
  partial[threadIdx.x] = warp_sum;
  __syncthreads();
  T s2 = T(0);
  for (int w = 0; w < kWideWarps; ++w) s2 += partial[w * 32 + (threadIdx.x & 31)];
  return s2;
}

template <class In, KernelKind K, PairMode M>
__global__ void __launch_bounds__(kWideThreads) wide_kernel(const Args<In> a) {
  using T = acc_t<In>;
  constexpr int kChunk = M == PairMode::Gradient ? kPhiCols<T> : 1;
  IMM_SHARED(T, ih, [kMaxBandwidths]);
  IMM_SHARED(T, partial, [kWideThreads]);
  IMM_SHARED(T, phi, [kTileRows * kChunk]);  // gradient: phi * weight of (row, column in chunk)

  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int pr = lane / kTileCols, pc = lane % kTileCols;  // warp 0: this lane's pair in a tile
  const int64_t D = a.dim;
  const int64_t nc = M == PairMode::Matrix ? a.n[0] : a.n[0] + a.n[1];
  const RowItems tiles(a.n_rows, a.n_tail_rows, kTileRows);
  KernelParams<T> params{ih, a.num_bandwidths, a.scale, a.eps};

  for (int64_t item = blockIdx.x; item < a.groups * tiles.per_group; item += gridDim.x) {
    const int64_t g = item / tiles.per_group, tile = item % tiles.per_group;
    const bool tail = tile >= tiles.main;  // tail rows: against the last set's columns alone
    const In* rows = tail ? a.tail_rows : a.rows;
    const int64_t n_rows = tail ? a.n_tail_rows : a.n_rows;
    const int64_t i0 = (tail ? tile - tiles.main : tile) * kTileRows;
    const int64_t i = i0 + pr;
    const bool row_ok = i < n_rows;
    __syncthreads();  // the previous item is done with shared memory
    // ih is published by the barriers in tile_distances.
    load_group_bandwidths<K>(a.bandwidth, a.num_bandwidths, g, ih, params, a.scale);
    const In* row[kTileRows];  // rows past n_rows repeat the last one; their results are dropped
#pragma unroll
    for (int r = 0; r < kTileRows; ++r) row[r] = rows + (g * n_rows + std::min(i0 + r, n_rows - 1)) * D;
    auto tile_columns = [&](int64_t c0, const In* (&col)[kTileCols]) {
#pragma unroll
      for (int c = 0; c < kTileCols; ++c) col[c] = column(a, g, std::min(c0 + c, nc - 1));
    };

    if constexpr (M == PairMode::RowSums) {
      T total0 = T(0), total1 = T(0);  // warp 0, lanes with pc == 0: row pr's sums per set
      for (int64_t c0 = tail ? nc - pick(a.n, a.num_sets - 1) : 0; c0 < nc; c0 += kTileCols) {
        const In* col[kTileCols];
        tile_columns(c0, col);
        const T s2 = tile_distances(row, col, D, partial);
        if (warp == 0) {
          const int64_t c = c0 + pc;
          if (a.distances != nullptr && !tail && row_ok && c < nc) a.distances[(g * a.n_rows + i) * nc + c] = s2;
          const T v = c < nc ? pair_value<K, T>(s2, params) : T(0);
          T v0 = c < a.n[0] ? v : T(0), v1 = c < a.n[0] ? T(0) : v;
#pragma unroll
          for (int off = 1; off < kTileCols; off <<= 1) {
            v0 += __shfl_xor_sync(kFullMask, v0, off);
            v1 += __shfl_xor_sync(kFullMask, v1, off);
          }
          total0 += v0;
          total1 += v1;
        }
      }
      if (warp == 0 && pc == 0 && row_ok) {
        T* out = static_cast<T*>(a.out) + (g * (a.n_rows + a.n_tail_rows) + (tail ? a.n_rows : 0) + i) * a.num_sets;
        out[0] = total0;
        if (a.num_sets > 1) out[1] = total1;
      }
    } else if constexpr (M == PairMode::Matrix) {
      for (int64_t c0 = 0; c0 < nc; c0 += kTileCols) {
        const In* col[kTileCols];
        tile_columns(c0, col);
        const T s2 = tile_distances(row, col, D, partial);
        const int64_t c = c0 + pc;
        if (warp == 0 && row_ok && c < nc)
          static_cast<T*>(a.out)[(g * a.n_rows + i) * nc + c] = pair_value<K, T>(s2, params);
      }
    } else {
      // Sweeps of kWideThreads * kSweep values of d; phi is computed per chunk of columns, once if
      // all columns fit in one chunk, else again for every sweep.
      const int64_t chunks = (nc + kChunk - 1) / kChunk;
      for (int64_t d0 = 0; d0 < D; d0 += kWideThreads * kSweep) {
        T grad[kTileRows][kSweep];
#pragma unroll
        for (int r = 0; r < kTileRows; ++r)
#pragma unroll
          for (int k = 0; k < kSweep; ++k) grad[r][k] = T(0);
        for (int64_t chunk = 0; chunk < chunks; ++chunk) {
          const int64_t cc0 = chunk * kChunk;
          const int chunk_cols = static_cast<int>(std::min<int64_t>(kChunk, nc - cc0));
          if (chunks > 1 || d0 == 0) {
            for (int t0 = 0; t0 < chunk_cols; t0 += kTileCols) {
              const int64_t c = cc0 + t0 + pc;
              T s2;
              if (a.distances != nullptr) {  // kept by the row sums: no sweep over D
                __syncthreads();  // as in tile_distances: the previous chunk's phi has been read
                s2 = warp == 0 && row_ok && c < nc ? a.distances[(g * a.n_rows + i) * nc + c] : T(0);
              } else {
                const In* col[kTileCols];
                tile_columns(cc0 + t0, col);
                s2 = tile_distances(row, col, D, partial);  // its barrier orders phi's reuse
              }
              if (warp == 0) {
                T f = T(0);
                if (row_ok && c < nc) {
                  const int s = c >= a.n[0];
                  f = pair_phi<K, T>(s2, params) * weight_at(a, s, g, i, s ? c - a.n[0] : c);
                }
                phi[pr * kChunk + t0 + pc] = f;
              }
            }
            __syncthreads();  // phi of this chunk is complete
          }
          T av[kTileRows][kSweep];
#pragma unroll
          for (int k = 0; k < kSweep; ++k) {
            const int64_t d = d0 + k * kWideThreads + tid;
#pragma unroll
            for (int r = 0; r < kTileRows; ++r) av[r][k] = d < D ? load(row[r], d) : T(0);
          }
          for (int t0 = 0; t0 < chunk_cols; t0 += kTileCols) {  // a tile's loads in flight together
            const In* col[kTileCols];
            tile_columns(cc0 + t0, col);
            T bv[kTileCols][kSweep];
#pragma unroll
            for (int c = 0; c < kTileCols; ++c)
#pragma unroll
              for (int k = 0; k < kSweep; ++k) {
                const int64_t d = d0 + k * kWideThreads + tid;
                bv[c][k] = d < D ? load(col[c], d) : T(0);
              }
#pragma unroll
            for (int c = 0; c < kTileCols; ++c) {
              if (t0 + c >= chunk_cols) break;
#pragma unroll
              for (int r = 0; r < kTileRows; ++r) {
                const T f = phi[r * kChunk + t0 + c];
#pragma unroll
                for (int k = 0; k < kSweep; ++k) grad[r][k] += f * (av[r][k] - bv[c][k]);
              }
            }
          }
        }
        In* out = static_cast<In*>(a.out);
#pragma unroll
        for (int r = 0; r < kTileRows; ++r) {
          if (i0 + r >= a.n_rows) continue;
#pragma unroll
          for (int k = 0; k < kSweep; ++k) {
            const int64_t d = d0 + k * kWideThreads + tid;
            if (d < D) store(out, (g * a.n_rows + i0 + r) * D + d, grad[r][k]);
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Narrow layout.

constexpr int kNarrowThreads = 128;
constexpr int kNarrowCols = 64;                // columns per shared-memory tile
constexpr int64_t kNarrowTargetThreads = 1 << 17;  // grow lanes per row until this many threads
template <class T>
constexpr int kNarrowMaxDim = sizeof(T) == 4 ? 64 : 16;

// A staged column occupies `pitch` elements; 16-byte reads of different columns by 8 lanes then hit
// distinct banks (pitch in words is 4, or = 4 mod 32 and >= the row).
template <class T, int MAXD>
constexpr int narrow_pitch() {
  constexpr int words = MAXD * static_cast<int>(sizeof(T)) / 4;
  return (words == 4 ? 4 : words + 4) * 4 / static_cast<int>(sizeof(T));
}

template <class T>
using Vec16 = std::conditional_t<sizeof(T) == 4, float4, double2>;
__device__ __forceinline__ void unpack(const float4& v, float* o) {
  o[0] = v.x;
  o[1] = v.y;
  o[2] = v.z;
  o[3] = v.w;
}
__device__ __forceinline__ void unpack(const double2& v, double* o) {
  o[0] = v.x;
  o[1] = v.y;
}

// MAXD >= D is the register size of a row (padding is zero in both the row and the staged tile).
// P = 1 << lanes_log2 lanes per row; a block covers kNarrowThreads / P rows of one group.
template <class In, KernelKind K, PairMode M, int MAXD>
__global__ void __launch_bounds__(kNarrowThreads) narrow_kernel(const Args<In> a, int lanes_log2) {
  using T = acc_t<In>;
  constexpr int kPitch = narrow_pitch<T, MAXD>();
  constexpr int kVec = 16 / sizeof(T);
  IMM_SHARED(T, ih, [kMaxBandwidths]);
  IMM_SHARED_ALIGNED(T, tile, [kNarrowCols * kPitch], 16);

  const int P = 1 << lanes_log2;
  const int tid = threadIdx.x, p = tid & (P - 1);
  const int rows_per_block = kNarrowThreads >> lanes_log2;
  const int D = static_cast<int>(a.dim);
  const RowItems blocks(a.n_rows, a.n_tail_rows, rows_per_block);
  KernelParams<T> params{ih, a.num_bandwidths, a.scale, a.eps};

  for (int e = tid; e < kNarrowCols * kPitch; e += kNarrowThreads) tile[e] = T(0);

  for (int64_t item = blockIdx.x; item < a.groups * blocks.per_group; item += gridDim.x) {
    const int64_t g = item / blocks.per_group, block = item % blocks.per_group;
    const bool tail = block >= blocks.main;  // tail rows: against the last set alone
    const int64_t n_rows = tail ? a.n_tail_rows : a.n_rows;
    const int64_t i = (tail ? block - blocks.main : block) * rows_per_block + (tid >> lanes_log2);
    const bool row_ok = i < n_rows;
    const int64_t ic = row_ok ? i : n_rows - 1;  // idle lanes read a valid row, write nothing
    __syncthreads();  // the previous item is done with shared memory
    load_group_bandwidths<K>(a.bandwidth, a.num_bandwidths, g, ih, params, a.scale);  // published by tile barriers

    T av[MAXD];
    const In* src = (tail ? a.tail_rows : a.rows) + (g * n_rows + ic) * D;
#pragma unroll
    for (int d = 0; d < MAXD; ++d) av[d] = T(0);
#pragma unroll
    for (int d = 0; d < MAXD; ++d)
      if (d < D) av[d] = load(src, d);
    T grad[M == PairMode::Gradient ? MAXD : 1];
#pragma unroll
    for (int d = 0; d < (M == PairMode::Gradient ? MAXD : 1); ++d) grad[d] = T(0);

    const int sets = M == PairMode::Matrix ? 1 : a.num_sets;
    const int first_set = tail ? a.num_sets - 1 : 0;
    T* row_sums = static_cast<T*>(a.out) + (g * (a.n_rows + a.n_tail_rows) + (tail ? a.n_rows : 0) + ic) * a.num_sets;
    if (M == PairMode::RowSums && row_ok && p == 0)
      for (int s = 0; s < first_set; ++s) row_sums[s] = T(0);
    for (int s = first_set; s < sets; ++s) {
      const int64_t n = pick(a.n, s);
      const In* cols = pick(a.cols, s) + g * n * D;
      T total = T(0);
      for (int64_t j0 = 0; j0 < n; j0 += kNarrowCols) {
        const int nj = static_cast<int>(std::min<int64_t>(kNarrowCols, n - j0));
        __syncthreads();  // the previous tile has been consumed
        const In* tile_src = cols + j0 * D;
        for (int e = tid; e < nj * D; e += kNarrowThreads) {
          const int j = e / D;
          tile[j * kPitch + (e - j * D)] = load(tile_src, e);
        }
        __syncthreads();
        for (int j = p; j < nj; j += P) {
          const Vec16<T>* bj = reinterpret_cast<const Vec16<T>*>(tile + j * kPitch);
          T part[kVec];
#pragma unroll
          for (int v = 0; v < kVec; ++v) part[v] = T(0);
#pragma unroll
          for (int q = 0; q < MAXD / kVec; ++q) {
            T b[kVec];
            unpack(bj[q], b);
#pragma unroll
            for (int v = 0; v < kVec; ++v) {
              const T diff = av[q * kVec + v] - b[v];
              part[v] += diff * diff;
            }
          }
          T s2;
          if constexpr (kVec == 4) {
            s2 = (part[0] + part[1]) + (part[2] + part[3]);
          } else {
            s2 = part[0] + part[1];
          }
          if constexpr (M == PairMode::RowSums) {
            total += pair_value<K, T>(s2, params);
          } else if constexpr (M == PairMode::Matrix) {
            const T v = pair_value<K, T>(s2, params);
            if (row_ok) static_cast<T*>(a.out)[(g * a.n_rows + i) * n + j0 + j] = v;
          } else {
            const T f = pair_phi<K, T>(s2, params) * weight_at(a, s, g, ic, j0 + j);
#pragma unroll
            for (int q = 0; q < MAXD / kVec; ++q) {  // the column again, from shared memory
              T b[kVec];
              unpack(bj[q], b);
#pragma unroll
              for (int v = 0; v < kVec; ++v) grad[q * kVec + v] += f * (av[q * kVec + v] - b[v]);
            }
          }
        }
      }
      if constexpr (M == PairMode::RowSums) {
        for (int off = 1; off < P; off <<= 1) total += __shfl_xor_sync(kFullMask, total, off);
        if (row_ok && p == 0) row_sums[s] = total;
      }
    }

    if constexpr (M == PairMode::Gradient) {
      for (int off = 1; off < P; off <<= 1)
#pragma unroll
        for (int d = 0; d < MAXD; ++d) grad[d] += __shfl_xor_sync(kFullMask, grad[d], off);
      In* out = static_cast<In*>(a.out) + (g * a.n_rows + ic) * D;
#pragma unroll
      for (int d = 0; d < MAXD; ++d)
        if (row_ok && d < D && (d & (P - 1)) == p) store(out, d, grad[d]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

unsigned grid_for(int64_t items) {
  return static_cast<unsigned>(std::min<int64_t>(items, INT_MAX));
}

template <class In>
Args<In> make_args(const PairTask& task) {
  using T = acc_t<In>;
  Args<In> a{};
  a.rows = static_cast<const In*>(task.rows);
  a.groups = task.groups;
  a.n_rows = task.n_rows;
  a.tail_rows = static_cast<const In*>(task.tail_rows);
  a.n_tail_rows = task.n_tail_rows;
  a.dim = task.dim;
  a.num_sets = task.num_sets;
  for (int s = 0; s < task.num_sets; ++s) {
    const ColumnSet& set = task.sets[s];
    a.cols[s] = static_cast<const In*>(set.data);
    a.n[s] = set.n;
    a.weight[s] = static_cast<const T*>(set.weight);
    a.stride_g[s] = set.stride_g;
    a.stride_i[s] = set.stride_i;
    a.stride_j[s] = set.stride_j;
  }
  a.bandwidth = static_cast<const T*>(task.bandwidth);
  a.num_bandwidths = task.num_bandwidths;
  a.scale = static_cast<T>(task.distance_scale);
  a.eps = static_cast<T>(task.eps);
  a.out = task.out;
  a.distances = static_cast<T*>(task.distances);
  return a;
}

template <class In, KernelKind K, PairMode M>
void launch(const PairTask& task, cudaStream_t stream) {
  using T = acc_t<In>;
  const Args<In> a = make_args<In>(task);
  const int64_t n_max = M == PairMode::Matrix ? a.n[0] : std::max(a.n[0], a.n[1]);
  const int64_t n_min =
      M == PairMode::Matrix || a.num_sets == 1 ? a.n[0] : std::min(a.n[0], a.n[1]);

  if (a.dim <= kNarrowMaxDim<T> && (n_min >= 32 || a.n_rows >= 32)) {
    if (a.distances != nullptr)
      throw std::invalid_argument("pair_task: kept distances need the wide layout (D > 64)");
    // Lanes per row: the matrix wants a warp's worth of consecutive columns per row (coalesced
    // stores); row sums and gradients split columns only while rows alone leave the GPU idle.
    int lg = 0;
    while (lg < 5 && (int64_t(1) << lg) < n_max &&
           (M == PairMode::Matrix || (a.groups * a.n_rows << lg) < kNarrowTargetThreads ||
            (a.n_rows << lg) < kNarrowThreads))
      ++lg;
    const int64_t rows_per_block = kNarrowThreads >> lg;
    const unsigned grid = grid_for(a.groups * RowItems(a.n_rows, a.n_tail_rows, rows_per_block).per_group);
    if (a.dim <= 4) {
      launch_kernel("narrow", narrow_kernel<In, K, M, 4>, grid, kNarrowThreads, 0, stream, a, lg);
    } else if (a.dim <= 8) {
      launch_kernel("narrow", narrow_kernel<In, K, M, 8>, grid, kNarrowThreads, 0, stream, a, lg);
    } else if (a.dim <= 16) {
      launch_kernel("narrow", narrow_kernel<In, K, M, 16>, grid, kNarrowThreads, 0, stream, a, lg);
    } else if constexpr (kNarrowMaxDim<T> == 64) {
      if (a.dim <= 32) {
        launch_kernel("narrow", narrow_kernel<In, K, M, 32>, grid, kNarrowThreads, 0, stream, a, lg);
      } else {
        launch_kernel("narrow", narrow_kernel<In, K, M, 64>, grid, kNarrowThreads, 0, stream, a, lg);
      }
    }
  } else {
    const unsigned grid = grid_for(a.groups * RowItems(a.n_rows, a.n_tail_rows, kTileRows).per_group);
    launch_kernel("wide", wide_kernel<In, K, M>, grid, kWideThreads, 0, stream, a);
  }
  check_launch("pair_task");
}

}  // namespace

void run_pair_task(const PairTask& task, std::uintptr_t stream) {
  if (task.num_sets < 1 || task.num_sets > 2)
    throw std::invalid_argument("run_pair_task: one or two column sets");
  if (task.num_bandwidths < 1 || task.num_bandwidths > kMaxBandwidths)
    throw std::invalid_argument("run_pair_task: the CUDA kernels take 1 to 16 bandwidths");
  if (task.groups <= 0 || task.out_rows() <= 0) return;
  const cudaStream_t cuda_stream = as_stream(stream);
  dispatch_dtype(task.dtype, [&](auto in_tag) {
    using In = decltype(in_tag);
    dispatch_kernel(task.kind, [&](auto kind_tag) {
      constexpr KernelKind K = decltype(kind_tag)::value;
      switch (task.mode) {
        case PairMode::RowSums: launch<In, K, PairMode::RowSums>(task, cuda_stream); break;
        case PairMode::Matrix: launch<In, K, PairMode::Matrix>(task, cuda_stream); break;
        case PairMode::Gradient: launch<In, K, PairMode::Gradient>(task, cuda_stream); break;
      }
    });
  });
}

}  // namespace imm::cuda
