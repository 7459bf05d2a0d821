// Fused attention softmax(q k^T * scale) v, FlashAttention-2 style: the tasks that the CPU and CUDA
// kernels run, and the softmax arithmetic they share.
//
// Forward, for each query row i, over blocks of keys (online softmax): with s_ij = scale q_i . k_j,
//   m_i <- max(m_i, max_j s_ij),  c = exp(m_old - m_i),
//   l_i <- c l_i + sum_j exp(s_ij - m_i),   o_i <- c o_i + sum_j exp(s_ij - m_i) v_j,
// and at the end o_i / l_i is the output row and lse_i = m_i + log(l_i) its log-sum-exp.
// Backward (FlashAttention-2, Alg. 2), with p_ij = exp(s_ij - lse_i) recomputed from the saved lse:
//   D_i = sum_d dO_id O_id,  dV = P^T dO,  dP = dO V^T,  dS = P * (dP - D),
//   dQ = scale dS K,  dK = scale dS^T Q.
// No T x T matrix exists anywhere: only tiles of a few dozen rows.
#pragma once

#include <cstdint>
#include <limits>
#include <type_traits>

#include "dtype.h"
#include "kernel_math.h"

namespace imm {

// Head dimensions up to this are served (DiT: 64 and 72; many LLM heads: 128).
constexpr int kAttentionMaxHeadDim = 128;

// A (B, H, T, Dh) tensor: any strides (in elements) for B, H and T, a contiguous last dimension.
struct HeadTensor {
  void* data = nullptr;
  int64_t stride_b = 0, stride_h = 0, stride_t = 0;

  template <class S>
  IMM_HD S* row(int64_t b, int64_t h, int64_t t) const {
    return static_cast<S*>(data) + b * stride_b + h * stride_h + t * stride_t;
  }
};

struct AttentionShape {
  DType dtype = DType::Float32;  // of every HeadTensor
  int64_t batch = 0, heads = 0, q_len = 0, kv_len = 0, head_dim = 0;
  double scale = 1.0;
};

// out = softmax(q k^T * scale) v; lse (B, H, q_len), contiguous, accumulation type (float64 for
// float64 inputs, float32 otherwise), or null for inference (nothing saved).
struct AttentionForwardTask {
  AttentionShape shape;
  HeadTensor q, k, v, out;
  void* lse = nullptr;
};

// grad_q, grad_k, grad_v from grad_out and the forward's inputs, output and lse.
struct AttentionBackwardTask {
  AttentionShape shape;
  HeadTensor q, k, v, out, grad_out, grad_q, grad_k, grad_v;
  const void* lse = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Softmax arithmetic. V is a scalar or (host only) a GCC vector of S.

template <class S>
IMM_HD S negative_infinity() {
  return -std::numeric_limits<S>::infinity();
}

template <class S>
IMM_HD S log_(S x) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<S, float>) {
    return ::logf(x);
  } else {
    return ::log(x);
  }
#else
  if constexpr (std::is_same_v<S, float>) {
    return __builtin_logf(x);
  } else {
    return __builtin_log(x);
  }
#endif
}

// The factor exp(m_old - m_new) that rescales a row's running sums when its running max grows from
// m_old to m_new; 0 before the first block (m_old = -inf), where the sums are still empty.
template <class S>
IMM_HD S softmax_rescale(S m_old, S m_new) {
  return m_old == negative_infinity<S>() ? S(0) : exp_fast<S>(m_old - m_new);
}

// p = exp(s - m): a softmax numerator against the row's max m (forward) or, with m = lse, the
// normalised probability itself (backward).
template <class V, class S = V>
IMM_HD V softmax_numerator(V s, S m) {
  return exp_fast<V, S>(s - m);
}

// The row's log-sum-exp from its max m and its sum l of exp(s - m).
template <class S>
IMM_HD S softmax_log_sum_exp(S m, S l) {
  return m + log_(l);
}

// dS = P * (dP - D): the gradient through softmax, D = sum_d dO_d O_d of the row.
template <class V, class S = V>
IMM_HD V softmax_backward(V p, V dp, S delta) {
  return p * (dp - delta);
}

}  // namespace imm
