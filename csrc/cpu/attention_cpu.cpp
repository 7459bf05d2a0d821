// CPU fused attention (see common/attention.h), compiled once per instruction set.
//
// CMake builds this file several times with different -march flags and IMM_CPU_ISA naming the
// namespace (baseline, avx2, avx512); cpu/dispatch.cpp picks one at run time. Like
// pairwise_cpu.cpp it uses no std:: container or algorithm (see the note there).
//
// Every matrix product is one of two register-blocked micro-kernels on GCC vector types:
//  * panel_products: S = A B^T for kRows rows of A against a panel of kVectors * lanes columns
//    of B stored transposed, (Dh, panel): each step over d broadcasts one element of each row and
//    loads the panel's vectors once for all rows. S = Q K^T and dP = dO V^T.
//  * accumulate_rows: C += A B for kRows rows of C and up to kVectors vectors of its columns, B in
//    natural (rows, Dh) layout: each step broadcasts A[r][s] and loads row s of B once for all rows.
//    O += P V, dQ += dS K, and (A read transposed) dV += P^T dO, dK += dS^T Q.
// K, V (and in the backward Q, dO) are first packed per head into the accumulation type: K^T and
// V^T in panels, K and V with Dh padded to a whole number of vectors (72 -> 80 with AVX-512), K
// pre-multiplied by the scale. Packing costs O(T Dh) per head against O(T^2 Dh) of products.
//
// Forward: parallel over heads (cut into query ranges when there are fewer heads than threads can
// share); kRows query rows at a time run through the keys in blocks with the online-softmax update,
// their output rows in a local tile.
// Backward: parallel over (batch, head); per head, key blocks outer and query blocks inner, dK and
// dV of the key block in local tiles, dQ in a per-head buffer: deterministic, no atomics.
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "../common/attention.h"
#include "buffer.h"
#include "simd.h"

#ifndef IMM_CPU_ISA
#error "IMM_CPU_ISA must name the instruction-set namespace"
#endif

namespace imm::cpu::IMM_CPU_ISA {
namespace {

// Register blocking: kRows * kVectors accumulators and kVectors loaded vectors fit the register
// file (32 vector registers with AVX-512, 16 otherwise).
constexpr int kRows = 6;
constexpr int kVectors = IMM_CPU_VECTOR_BYTES == 64 ? 4 : 2;
constexpr int64_t kForwardKeyBlock = 256;   // keys per online-softmax step
constexpr int64_t kItemsPerThread = 4;      // forward work items per thread, at least (load balance)
constexpr int64_t kBackwardKeyBlock = 64;   // keys whose dK and dV tiles stay in cache
constexpr int64_t kBackwardQueryBlock = 8 * kRows;  // queries per dK, dV update

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Packed sizes for one head in accumulation type T.
template <class T>
struct HeadLayout {
  static constexpr int lanes = Simd<T>::lanes;
  static constexpr int panel = kVectors * lanes;  // keys per transposed panel
  static_assert(kForwardKeyBlock % panel == 0 && kBackwardKeyBlock % panel == 0, "blocks hold whole panels");

  int64_t dim, padded_dim, kv_len, panels;

  HeadLayout(int64_t head_dim, int64_t keys)
      : dim(head_dim), padded_dim(ceil_div(head_dim, lanes) * lanes), kv_len(keys), panels(ceil_div(keys, panel)) {}
  // Sizes checked for overflow: expanded (stride 0) inputs can have any number of keys.
  int64_t transposed_size() const { return size_product(size_product(panels, panel), dim); }  // (panels, dim, panel)
  int64_t rows_size(int64_t rows) const { return size_product(rows, padded_dim); }  // (rows, padded_dim)
};

// ---------------------------------------------------------------------------------------------
// Micro-kernels. Row pointers are clamped to the last valid row (rows < kRows at the edges); only
// valid rows are stored.

// s[r * lds + j] = sum_{d < dim} a[r * lda + d] * panel[d * P + j] for r < rows, j < P = kVectors * lanes.
template <class T>
inline void panel_products(const T* a, int64_t lda, int rows, const T* panel, int64_t dim, T* s, int64_t lds) {
  using SV = Simd<T>;
  using V = typename SV::V;
  constexpr int L = SV::lanes, P = kVectors * L;
  const T* row[kRows];
  for (int r = 0; r < kRows; ++r) row[r] = a + (r < rows ? r : rows - 1) * lda;
  V acc[kRows][kVectors];
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < kVectors; ++c) acc[r][c] = SV::zero();
  for (int64_t d = 0; d < dim; ++d) {
    V b[kVectors];
    for (int c = 0; c < kVectors; ++c) b[c] = SV::load(panel + d * P + c * L);
    for (int r = 0; r < kRows; ++r) {
      const V x = SV::broadcast(row[r][d]);
      for (int c = 0; c < kVectors; ++c) acc[r][c] += x * b[c];
    }
  }
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < kVectors; ++c) SV::store(s + r * lds + c * L, acc[r][c]);
}

// c[r * ldc + w] += sum_{s < n} a[r * a_row + s * a_step] * b[s * ldb + w] for r < rows,
// w < NV * lanes.
template <class T, int NV>
inline void accumulate_rows_block(const T* a, int64_t a_row, int64_t a_step, int rows, int64_t n, const T* b,
                                  int64_t ldb, T* c, int64_t ldc) {
  using SV = Simd<T>;
  using V = typename SV::V;
  constexpr int L = SV::lanes;
  const T* a_rows[kRows];
  T* c_rows[kRows];
  for (int r = 0; r < kRows; ++r) {
    const int row = r < rows ? r : rows - 1;
    a_rows[r] = a + row * a_row;
    c_rows[r] = c + row * ldc;
  }
  V acc[kRows][NV];
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = SV::load(c_rows[r] + v * L);
  for (int64_t s = 0; s < n; ++s) {
    V bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = SV::load(b + s * ldb + v * L);
    for (int r = 0; r < kRows; ++r) {
      const V x = SV::broadcast(a_rows[r][s * a_step]);
      for (int v = 0; v < NV; ++v) acc[r][v] += x * bv[v];
    }
  }
  for (int r = 0; r < rows; ++r)
    for (int v = 0; v < NV; ++v) SV::store(c_rows[r] + v * L, acc[r][v]);
}

// The same over `width` columns (a multiple of the lanes), cut into near-equal chunks of at most
// kVectors vectors (80 floats with AVX-512: 3 + 2 vectors, not 4 + 1).
template <class T>
inline void accumulate_rows(const T* a, int64_t a_row, int64_t a_step, int rows, int64_t n, const T* b, int64_t ldb,
                            T* c, int64_t ldc, int64_t width) {
  constexpr int L = Simd<T>::lanes;
  const int vectors = static_cast<int>(width / L);
  const int chunks = (vectors + kVectors - 1) / kVectors;
  for (int chunk = 0, v0 = 0; chunk < chunks; ++chunk) {
    const int nv = vectors / chunks + (chunk < vectors % chunks ? 1 : 0);
    const T* bc = b + v0 * L;
    T* cc = c + v0 * L;
    switch (nv) {
      case 1: accumulate_rows_block<T, 1>(a, a_row, a_step, rows, n, bc, ldb, cc, ldc); break;
      case 2: accumulate_rows_block<T, 2>(a, a_row, a_step, rows, n, bc, ldb, cc, ldc); break;
#if IMM_CPU_VECTOR_BYTES == 64
      case 3: accumulate_rows_block<T, 3>(a, a_row, a_step, rows, n, bc, ldb, cc, ldc); break;
      case 4: accumulate_rows_block<T, 4>(a, a_row, a_step, rows, n, bc, ldb, cc, ldc); break;
#endif
      default: break;
    }
    v0 += nv;
  }
}

// ---------------------------------------------------------------------------------------------
// Packing (storage type In -> accumulation type T).

// Keys [0, kv_len) of one head, times `scale`, into (panels, dim, P) panels; padding keys are zero.
// One panel at a time, written in order: its P source rows (P * dim values) stay in L1 while they
// are read down the columns.
template <class In, class T>
void pack_transposed(const HeadTensor& x, int64_t b, int64_t h, const HeadLayout<T>& layout, T scale, T* dst) {
  constexpr int P = HeadLayout<T>::panel;
  const In* keys = x.row<const In>(b, h, 0);
  for (int64_t j0 = 0; j0 < layout.kv_len; j0 += P) {
    const int valid = static_cast<int>(std::min<int64_t>(P, layout.kv_len - j0));
    T* panel = dst + (j0 / P) * layout.dim * P;
    for (int64_t d = 0; d < layout.dim; ++d) {
      T* out = panel + d * P;
      for (int j = 0; j < valid; ++j) out[j] = scale * static_cast<T>(load(keys, (j0 + j) * x.stride_t + d));
      for (int j = valid; j < P; ++j) out[j] = T(0);
    }
  }
}

// Rows [0, rows) of one head, times `scale`, into (rows, padded_dim), the padding columns zero.
template <class In, class T>
void pack_rows(const HeadTensor& x, int64_t b, int64_t h, int64_t rows, const HeadLayout<T>& layout, T scale,
               T* dst) {
  for (int64_t t = 0; t < rows; ++t) {
    const In* src = x.row<const In>(b, h, t);
    T* out = dst + t * layout.padded_dim;
    for (int64_t d = 0; d < layout.dim; ++d) out[d] = scale * static_cast<T>(load(src, d));
    for (int64_t d = layout.dim; d < layout.padded_dim; ++d) out[d] = T(0);
  }
}

// The first `count` lanes of v, the others set to `fill`.
template <class T>
inline typename Simd<T>::V lanes_below(typename Simd<T>::V v, int count, T fill) {
  using V = typename Simd<T>::V;
  using I = decltype(v < v);
  I index{};
  for (int l = 0; l < Simd<T>::lanes; ++l) index[l] = l;
  return index < count ? v : splat<V>(fill);
}

// ---------------------------------------------------------------------------------------------
// Forward

template <class In>
class ForwardRunner {
  using T = acc_t<In>;
  using SV = Simd<T>;
  using V = typename SV::V;
  static constexpr int L = SV::lanes;
  static constexpr int P = HeadLayout<T>::panel;

 public:
  ForwardRunner(const AttentionForwardTask& task, int threads)
      : task_(task), shape_(task.shape), layout_(shape_.head_dim, shape_.kv_len), threads_(threads > 1 ? threads : 1) {}

  // Work items are whole heads when there are enough of them to share among the threads, else heads
  // cut into ranges of queries. Each item packs its head's K^T and V into its thread's scratch (which
  // stays in L2 while its queries run) and then runs its queries kRows at a time; a head cut into n
  // items is packed n times, O(T Dh) against O(T^2 Dh / n) of products.
  void run() {
    const int64_t heads = shape_.batch * shape_.heads;
    const int64_t groups = ceil_div(shape_.q_len, kRows);
    const int64_t parts = std::min<int64_t>(groups, ceil_div(kItemsPerThread * threads_, heads));
    const int64_t items = heads * parts;
    const int64_t kt_size = layout_.transposed_size(), v_size = layout_.rows_size(shape_.kv_len);
    const T scale = static_cast<T>(shape_.scale);
    const int team = team_size(threads_, items);
    thread_local TeamScratch<T> scratch;
    const Slices<T> packed = scratch.reserve(team, size_sum(kt_size, v_size));
#pragma omp parallel for schedule(dynamic) num_threads(team) if (team > 1)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t head = item / parts, part = item % parts;
      const int64_t b = head / shape_.heads, h = head % shape_.heads;
      T* kt = packed.of(omp_get_thread_num());
      T* v = kt + kt_size;
      pack_transposed<In>(task_.k, b, h, layout_, scale, kt);
      pack_rows<In>(task_.v, b, h, shape_.kv_len, layout_, T(1), v);
      for (int64_t g = part * groups / parts; g < (part + 1) * groups / parts; ++g)
        query_rows(head, g * kRows, static_cast<int>(std::min<int64_t>(kRows, shape_.q_len - g * kRows)), kt, v);
    }
  }

 private:
  // Output rows [i, i + rows) of one head against every key.
  void query_rows(int64_t head, int64_t i, int rows, const T* kt, const T* v) const {
    const int64_t b = head / shape_.heads, h = head % shape_.heads;
    const int64_t dim = layout_.dim, pd = layout_.padded_dim;
    T q[kRows * kAttentionMaxHeadDim];
    T o[kRows * kAttentionMaxHeadDim];
    T s[kRows * kForwardKeyBlock];
    T m[kRows], l[kRows];
    for (int r = 0; r < rows; ++r) {
      const In* src = task_.q.row<const In>(b, h, i + r);
      for (int64_t d = 0; d < dim; ++d) q[r * dim + d] = load(src, d);
    }
    for (int64_t e = 0; e < kRows * pd; ++e) o[e] = T(0);
    for (int r = 0; r < kRows; ++r) {
      m[r] = negative_infinity<T>();
      l[r] = T(0);
    }
    for (int64_t j0 = 0; j0 < shape_.kv_len; j0 += kForwardKeyBlock) {
      const int64_t n = std::min<int64_t>(kForwardKeyBlock, shape_.kv_len - j0);
      for (int64_t p = 0; p < ceil_div(n, P); ++p)
        panel_products(q, dim, rows, kt + (j0 / P + p) * dim * P, dim, s + p * P, kForwardKeyBlock);
      for (int r = 0; r < rows; ++r) online_softmax_step(s + r * kForwardKeyBlock, n, m[r], l[r], o + r * pd);
      accumulate_rows(s, kForwardKeyBlock, 1, rows, n, v + j0 * pd, pd, o, pd, pd);
    }
    for (int r = 0; r < rows; ++r) {
      In* dst = task_.out.row<In>(b, h, i + r);
      const T inverse = T(1) / l[r];
      for (int64_t d = 0; d < dim; ++d) store(dst, d, o[r * pd + d] * inverse);
      if (task_.lse != nullptr)
        static_cast<T*>(task_.lse)[head * shape_.q_len + i + r] = softmax_log_sum_exp(m[r], l[r]);
    }
  }

  // One block of n scores of a row: updates its max m and sum l, rescales its output row o, and
  // turns the scores into numerators exp(s - m) in place (zero from n up to the next vector end).
  void online_softmax_step(T* s, int64_t n, T& m, T& l, T* o) const {
    const int64_t full = n / L * L;
    const int tail = static_cast<int>(n - full);
    V vmax = splat<V>(negative_infinity<T>());
    for (int64_t j = 0; j < full; j += L) {
      const V x = SV::load(s + j);
      vmax = x > vmax ? x : vmax;
    }
    if (tail) {
      const V x = lanes_below<T>(SV::load(s + full), tail, negative_infinity<T>());
      vmax = x > vmax ? x : vmax;
    }
    T block_max = vmax[0];
    for (int lane = 1; lane < L; ++lane) block_max = vmax[lane] > block_max ? vmax[lane] : block_max;
    const T m_new = block_max > m ? block_max : m;
    const T rescale = softmax_rescale(m, m_new);
    V sum = SV::zero();
    for (int64_t j = 0; j < full; j += L) {
      const V p = softmax_numerator<V, T>(SV::load(s + j), m_new);
      SV::store(s + j, p);
      sum += p;
    }
    if (tail) {
      const V p = lanes_below<T>(softmax_numerator<V, T>(SV::load(s + full), m_new), tail, T(0));
      SV::store(s + full, p);
      sum += p;
    }
    l = l * rescale + SV::sum(sum);
    m = m_new;
    for (int64_t d = 0; d < layout_.padded_dim; d += L) SV::store(o + d, SV::load(o + d) * rescale);
  }

  const AttentionForwardTask& task_;
  const AttentionShape& shape_;
  HeadLayout<T> layout_;
  int threads_;
};

// ---------------------------------------------------------------------------------------------
// Backward

template <class In>
class BackwardRunner {
  using T = acc_t<In>;
  using SV = Simd<T>;
  using V = typename SV::V;
  static constexpr int L = SV::lanes;
  static constexpr int P = HeadLayout<T>::panel;

 public:
  BackwardRunner(const AttentionBackwardTask& task, int threads)
      : task_(task), shape_(task.shape), layout_(shape_.head_dim, shape_.kv_len), threads_(threads > 1 ? threads : 1) {}

  void run() {
    const int64_t heads = shape_.batch * shape_.heads;
    const int team = team_size(threads_, heads);
    const ScratchSizes sizes = scratch_sizes();
    thread_local TeamScratch<T> scratch;
    const Slices<T> slices = scratch.reserve(team, sizes.total());
#pragma omp parallel for schedule(dynamic) num_threads(team) if (team > 1)
    for (int64_t head = 0; head < heads; ++head)
      one_head(head / shape_.heads, head % shape_.heads, carve(slices.of(omp_get_thread_num()), sizes));
  }

 private:
  // Per-thread scratch of one head.
  struct Scratch {
    T *q, *grad_out, *delta, *k, *kt, *vt, *grad_q, *grad_k, *grad_v, *p, *ds;
  };

  // The parts of Scratch, in elements (each a multiple of the lanes, or rounded up, so that every
  // part starts on a whole vector).
  struct ScratchSizes {
    int64_t rows, delta, keys, transposed, tile, probabilities;

    int64_t total() const {
      int64_t sum = size_sum(size_product(3, rows), delta);
      sum = size_sum(sum, size_sum(keys, size_product(2, transposed)));
      return size_sum(sum, 2 * (tile + probabilities));
    }
  };

  ScratchSizes scratch_sizes() const {
    return {layout_.rows_size(shape_.q_len), ceil_div(shape_.q_len, L) * L, layout_.rows_size(shape_.kv_len),
            layout_.transposed_size(), kBackwardKeyBlock * layout_.padded_dim,
            kBackwardQueryBlock * kBackwardKeyBlock};
  }

  // One thread's slice of n.total() elements, cut into the parts of Scratch.
  static Scratch carve(T* at, const ScratchSizes& n) {
    Scratch s;
    s.q = at, at += n.rows;
    s.grad_out = at, at += n.rows;
    s.grad_q = at, at += n.rows;
    s.delta = at, at += n.delta;
    s.k = at, at += n.keys;
    s.kt = at, at += n.transposed;
    s.vt = at, at += n.transposed;
    s.grad_k = at, at += n.tile;
    s.grad_v = at, at += n.tile;
    s.p = at, at += n.probabilities;
    s.ds = at;
    return s;
  }

  void one_head(int64_t b, int64_t h, const Scratch& s) const {
    const int64_t tq = shape_.q_len, tk = shape_.kv_len, dim = layout_.dim, pd = layout_.padded_dim;
    const T scale = static_cast<T>(shape_.scale);
    pack_rows<In>(task_.q, b, h, tq, layout_, T(1), s.q);
    pack_rows<In>(task_.grad_out, b, h, tq, layout_, T(1), s.grad_out);
    pack_rows<In>(task_.k, b, h, tk, layout_, scale, s.k);
    pack_transposed<In>(task_.k, b, h, layout_, scale, s.kt);
    pack_transposed<In>(task_.v, b, h, layout_, T(1), s.vt);
    for (int64_t i = 0; i < tq; ++i) {
      const In* o = task_.out.row<const In>(b, h, i);
      const T* g = s.grad_out + i * pd;
      T delta = T(0);
      for (int64_t d = 0; d < dim; ++d) delta += g[d] * static_cast<T>(load(o, d));
      s.delta[i] = delta;
    }
    for (int64_t e = 0; e < tq * pd; ++e) s.grad_q[e] = T(0);
    const T* lse = static_cast<const T*>(task_.lse) + (b * shape_.heads + h) * tq;

    for (int64_t j0 = 0; j0 < tk; j0 += kBackwardKeyBlock) {
      const int64_t keys = std::min<int64_t>(kBackwardKeyBlock, tk - j0);
      for (int64_t e = 0; e < kBackwardKeyBlock * pd; ++e) s.grad_k[e] = s.grad_v[e] = T(0);
      for (int64_t i0 = 0; i0 < tq; i0 += kBackwardQueryBlock) {
        const int64_t queries = std::min<int64_t>(kBackwardQueryBlock, tq - i0);
        for (int64_t g = 0; g < queries; g += kRows) {
          const int rows = static_cast<int>(std::min<int64_t>(kRows, queries - g));
          const int64_t i = i0 + g;
          T* p = s.p + g * kBackwardKeyBlock;
          T* ds = s.ds + g * kBackwardKeyBlock;
          for (int64_t c = 0; c < ceil_div(keys, P); ++c) {
            const int64_t panel = (j0 / P + c) * dim * P;
            panel_products(s.q + i * pd, pd, rows, s.kt + panel, dim, p + c * P, kBackwardKeyBlock);
            panel_products(s.grad_out + i * pd, pd, rows, s.vt + panel, dim, ds + c * P, kBackwardKeyBlock);
          }
          for (int r = 0; r < rows; ++r)
            softmax_gradient_row(p + r * kBackwardKeyBlock, ds + r * kBackwardKeyBlock, keys, lse[i + r],
                                 s.delta[i + r]);
          // dQ rows += dS K (K carries the scale).
          accumulate_rows(ds, kBackwardKeyBlock, 1, rows, keys, s.k + j0 * pd, pd, s.grad_q + i * pd, pd, pd);
        }
        // dV += P^T dO and dK += dS^T Q over this query block, kRows keys at a time.
        for (int64_t j = 0; j < keys; j += kRows) {
          const int rows = static_cast<int>(std::min<int64_t>(kRows, keys - j));
          accumulate_rows(s.p + j, 1, kBackwardKeyBlock, rows, queries, s.grad_out + i0 * pd, pd, s.grad_v + j * pd,
                          pd, pd);
          accumulate_rows(s.ds + j, 1, kBackwardKeyBlock, rows, queries, s.q + i0 * pd, pd, s.grad_k + j * pd, pd, pd);
        }
      }
      for (int64_t j = 0; j < keys; ++j) {
        In* dk = task_.grad_k.row<In>(b, h, j0 + j);
        In* dv = task_.grad_v.row<In>(b, h, j0 + j);
        for (int64_t d = 0; d < dim; ++d) {
          store(dk, d, scale * s.grad_k[j * pd + d]);
          store(dv, d, s.grad_v[j * pd + d]);
        }
      }
    }
    for (int64_t i = 0; i < tq; ++i) {
      In* dq = task_.grad_q.row<In>(b, h, i);
      for (int64_t d = 0; d < dim; ++d) store(dq, d, s.grad_q[i * pd + d]);
    }
  }

  // One row of a block of n keys: scores s -> probabilities p = exp(s - lse), and dP -> dS = P (dP - D),
  // in place; both are zero from n up to the next vector end.
  static void softmax_gradient_row(T* p, T* ds, int64_t n, T lse, T delta) {
    for (int64_t j = 0; j < n; j += L) {
      const int valid = static_cast<int>(std::min<int64_t>(L, n - j));
      const V prob = lanes_below<T>(softmax_numerator<V, T>(SV::load(p + j), lse), valid, T(0));
      SV::store(p + j, prob);
      SV::store(ds + j, softmax_backward<V, T>(prob, SV::load(ds + j), delta));
    }
  }

  const AttentionBackwardTask& task_;
  const AttentionShape& shape_;
  HeadLayout<T> layout_;
  int threads_;
};

}  // namespace

void attention_forward(const AttentionForwardTask& task, int threads) {
  dispatch_dtype(task.shape.dtype, [&](auto tag) { ForwardRunner<decltype(tag)>(task, threads).run(); });
}

void attention_backward(const AttentionBackwardTask& task, int threads) {
  dispatch_dtype(task.shape.dtype, [&](auto tag) { BackwardRunner<decltype(tag)>(task, threads).run(); });
}

}  // namespace imm::cpu::IMM_CPU_ISA
