// CUDA kernels of the DiT block's conditioning ops (see common/conditioning.h, and
// cpu/conditioning_cpu.h for the buffer contract); every pointer is device memory, the kernels run
// on `stream` (a cudaStream_t as an integer) and allocate nothing.
#pragma once

#include <cstdint>

#include "../common/conditioning.h"
#include "../common/dtype.h"

namespace imm::cuda {

void norm_modulate_forward(DType dtype, ConditioningShape shape, bool rms, double eps, const void* x,
                           const void* shift, const void* scale, void* out, void* stats, std::uintptr_t stream);

void norm_modulate_backward(DType dtype, ConditioningShape shape, int64_t chunk_tokens, bool rms, const void* grad,
                            const void* x, const void* stats, const void* scale, void* grad_x, void* partials,
                            void* grad_shift, void* grad_scale, std::uintptr_t stream);

void gate_residual_forward(DType dtype, ConditioningShape shape, const void* x, const void* gate, const void* y,
                           void* out, std::uintptr_t stream);

void gate_residual_backward(DType dtype, ConditioningShape shape, int64_t chunk_tokens, const void* grad,
                            const void* gate, const void* y, void* grad_y, void* partials, void* grad_gate,
                            std::uintptr_t stream);

void timestep_embedding_forward(DType out_dtype, int64_t rows, int64_t dim, double log_max_period, const double* c,
                                void* out, std::uintptr_t stream);

void timestep_embedding_backward(DType grad_dtype, int64_t rows, int64_t dim, double log_max_period,
                                 const double* c, const void* grad, double* grad_c, std::uintptr_t stream);

}  // namespace imm::cuda
