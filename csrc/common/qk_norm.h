// qk-norm: RMSNorm of the queries and keys of every head with a learned weight, read straight from
// the fused qkv projection and written in the layout the attention kernels read. Shared by the CPU
// and CUDA kernels, which this header also declares.
//
//   qkv (batch, tokens, 3, heads, head_dim) contiguous (the projection's output: q, k, v for all
//   heads); weights w_q, w_k (head_dim,). For part p in {q, k} and each row x = qkv[b, t, p, h, :]:
//       out_p[b, h, t, :] = x * rstd * w_p,   rstd = 1 / sqrt(E[x^2] + eps),
//   stats[p, b, h, t] = rstd (accumulation type). q and k are separate tensors, so their gradients
//   g = grad_p arrive as they are, never stacked. Backward, with dxhat = g * w_p and xhat = x rstd:
//       grad_x = rstd * (dxhat - xhat * E[dxhat * xhat]),   grad_w_p = sum over rows of g * xhat;
//   the v part of grad_qkv is zero (v's own gradient reaches qkv through its view). grad_w comes in
//   partial sums over chunks of chunk_rows consecutive rows (in qkv's order) of one part, partials
//   (2, chunks, head_dim) in the accumulation type, summed in chunk order by the caller: the same
//   result whatever the threads or launch order. A row whose squares overflow takes its rstd from
//   s x (statistics_scale in norm.h), as the DiT block's norms do.
#pragma once

#include <cstdint>

#include "norm.h"
#include "dtype.h"

namespace imm {

// The most rows a chunk may hold (the CUDA backward keeps a chunk's row sums in shared memory).
constexpr int64_t kQkNormMaxChunkRows = 64;

// One row: sample b, token t, head h.
struct QkRow {
  int64_t b, t, h;
};

struct QkNormShape {
  int64_t batch;
  int64_t tokens;
  int64_t heads;
  int64_t head_dim;

  // Rows of one part (q or k), numbered in (b, t, h) order: the order they lie in qkv.
  IMM_HD int64_t rows() const { return batch * tokens * heads; }
  IMM_HD QkRow row(int64_t n) const { return QkRow{n / (tokens * heads), (n / heads) % tokens, n % heads}; }
  // Offset in qkv of row r of part p (v is part 2).
  IMM_HD int64_t input_offset(int p, QkRow r) const { return (((r.b * tokens + r.t) * 3 + p) * heads + r.h) * head_dim; }
  // Index of row r among a part's rows of out_p (and grad_p) and stats, which are in (b, h, t) order.
  IMM_HD int64_t output_row(QkRow r) const { return (r.b * heads + r.h) * tokens + r.t; }
  IMM_HD int64_t chunks(int64_t chunk_rows) const { return (rows() + chunk_rows - 1) / chunk_rows; }
};

// 1 / sqrt(E[x^2] + eps) of a row whose squares overflowed, from the sum of squares of s x, s =
// statistics_scale(largest magnitude): the rstd of x is s times that of s x with eps s^2.
template <class T>
IMM_HD T scaled_rstd(T scaled_squares, int64_t dim, T eps, T s) {
  return inverse_std(scaled_squares, dim, eps * s * s) * s;
}

namespace cpu {
// out_q, out_k (B, H, T, Dh) and stats (2, B, H, T) from qkv and the two weights, all but stats in dtype.
void qk_norm_forward(DType dtype, QkNormShape shape, double eps, const void* qkv, const void* q_weight,
                     const void* k_weight, void* out_q, void* out_k, void* stats, int threads);
// grad_qkv (B, T, 3, H, Dh) and partials (2, chunks, Dh) of grad_w from grad_q, grad_k (B, H, T, Dh).
void qk_norm_backward(DType dtype, QkNormShape shape, int64_t chunk_rows, const void* grad_q, const void* grad_k,
                      const void* qkv, const void* q_weight, const void* k_weight, const void* stats, void* grad_qkv,
                      void* partials, int threads);
}  // namespace cpu

namespace cuda {
void qk_norm_forward(DType dtype, QkNormShape shape, double eps, const void* qkv, const void* q_weight,
                     const void* k_weight, void* out_q, void* out_k, void* stats, std::uintptr_t stream);
void qk_norm_backward(DType dtype, QkNormShape shape, int64_t chunk_rows, const void* grad_q, const void* grad_k,
                      const void* qkv, const void* q_weight, const void* k_weight, const void* stats, void* grad_qkv,
                      void* partials, std::uintptr_t stream);
}  // namespace cuda

}  // namespace imm
