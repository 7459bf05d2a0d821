// CPU kernels of the fused activations (math in common/activation.h).
//
// cpu/activation_cpu.cpp is compiled once per instruction set (like norm_cpu.cpp); each build
// fills an ActivationKernels table and activation_kernels() (cpu/dispatch.cpp) returns the one for
// this processor. Every buffer holds n contiguous elements of `dtype`, owned by the caller;
// `threads` is the OpenMP thread count.
#pragma once

#include <cstdint>

#include "../common/dtype.h"

namespace imm::cpu {

struct ActivationKernels {
  // out = gelu_tanh(x).
  void (*gelu_tanh_forward)(DType dtype, int64_t n, const void* x, void* out, int threads);

  // grad_x = grad * gelu_tanh'(x).
  void (*gelu_tanh_backward)(DType dtype, int64_t n, const void* grad, const void* x, void* grad_x, int threads);
};

// The kernels built for the widest instruction set this processor supports.
const ActivationKernels& activation_kernels();

}  // namespace imm::cpu
