// CUDA kernels of the fused activations (see common/activation.h, and cpu/activation_cpu.h for the
// buffer contract); every pointer is device memory, the kernels run on `stream` (a cudaStream_t as
// an integer) and allocate nothing.
#pragma once

#include <cstdint>

#include "../common/dtype.h"

namespace imm::cuda {

void gelu_tanh_forward(DType dtype, int64_t n, const void* x, void* out, std::uintptr_t stream);

void gelu_tanh_backward(DType dtype, int64_t n, const void* grad, const void* x, void* grad_x, std::uintptr_t stream);

}  // namespace imm::cuda
