// Gate + residual (adaLN-Zero), shared by the CPU and CUDA kernels, which this header also declares:
//
//   out = x + gate * y;  grad_y = gate * g,  grad_gate = sum over tokens of g * y.
#pragma once

#include <cstdint>

#include "dtype.h"
#include "kernel_math.h"
#include "token_shape.h"

namespace imm {

template <class T>
IMM_HD T gate_residual(T x, T gate, T y) {
  return x + gate * y;
}

namespace cpu {
// out = x + gate * y.
void gate_residual_forward(DType dtype, TokenShape shape, const void* x, const void* gate, const void* y, void* out,
                           int threads);
// grad_y = gate * grad, grad_gate = sum over tokens of grad * y; partials (batch, chunks, 1, channels).
void gate_residual_backward(DType dtype, TokenShape shape, int64_t chunk_tokens, const void* grad, const void* gate,
                            const void* y, void* grad_y, void* partials, void* grad_gate, int threads);
}  // namespace cpu

namespace cuda {
void gate_residual_forward(DType dtype, TokenShape shape, const void* x, const void* gate, const void* y, void* out,
                           std::uintptr_t stream);
void gate_residual_backward(DType dtype, TokenShape shape, int64_t chunk_tokens, const void* grad, const void* gate,
                            const void* y, void* grad_y, void* partials, void* grad_gate, std::uintptr_t stream);
}  // namespace cuda

}  // namespace imm
