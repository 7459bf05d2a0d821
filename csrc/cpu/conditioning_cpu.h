// CPU kernels of the DiT block's conditioning ops (math in common/conditioning.h).
//
// cpu/conditioning_cpu.cpp is compiled once per instruction set (like pairwise_cpu.cpp); each build
// fills a ConditioningKernels table and conditioning_kernels() (cpu/dispatch.cpp) returns the one
// for this processor. Shapes follow ConditioningShape: x, out, grad (batch, tokens, channels);
// per-sample vectors (batch, channels); all in `dtype`. Row statistics `stats` are
// (batch * tokens, 2) [mean, rstd] and `partials` (batch, token_chunks(tokens, chunk_tokens), parts,
// channels), both in the accumulation type (float64 for float64, float32 otherwise). The caller
// owns every buffer; `threads` is the OpenMP thread count.
#pragma once

#include <cstdint>

#include "../common/conditioning.h"
#include "../common/dtype.h"

namespace imm::cpu {

struct ConditioningKernels {
  // out = norm(x) * (1 + scale) + shift; stats written for the backward. rms: RMSNorm, else LayerNorm.
  void (*norm_modulate_forward)(DType dtype, ConditioningShape shape, bool rms, double eps, const void* x,
                                const void* shift, const void* scale, void* out, void* stats, int threads);

  // grad_x, grad_shift, grad_scale from grad = d loss / d out; partials has parts = 2.
  void (*norm_modulate_backward)(DType dtype, ConditioningShape shape, int64_t chunk_tokens, bool rms,
                                 const void* grad, const void* x, const void* stats, const void* scale,
                                 void* grad_x, void* partials, void* grad_shift, void* grad_scale, int threads);

  // out = x + gate * y.
  void (*gate_residual_forward)(DType dtype, ConditioningShape shape, const void* x, const void* gate,
                                const void* y, void* out, int threads);

  // grad_y = gate * grad, grad_gate = sum over tokens of grad * y; partials has parts = 1.
  void (*gate_residual_backward)(DType dtype, ConditioningShape shape, int64_t chunk_tokens, const void* grad,
                                 const void* gate, const void* y, void* grad_y, void* partials, void* grad_gate,
                                 int threads);

  // out (rows, dim) in out_dtype: [cos(c f_k), sin(c f_k)] (+ a zero column for odd dim) for c (rows,)
  // float64; log_max_period = log(P).
  void (*timestep_embedding_forward)(DType out_dtype, int64_t rows, int64_t dim, double log_max_period,
                                     const double* c, void* out, int threads);

  // grad_c (rows,) float64 = d loss / d c from grad (rows, dim) in grad_dtype.
  void (*timestep_embedding_backward)(DType grad_dtype, int64_t rows, int64_t dim, double log_max_period,
                                      const double* c, const void* grad, double* grad_c, int threads);
};

// The kernels built for the widest instruction set this processor supports.
const ConditioningKernels& conditioning_kernels();

}  // namespace imm::cpu
