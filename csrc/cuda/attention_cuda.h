// CUDA fused attention (see common/attention.h for the tasks and the math); every pointer is device
// memory, the kernels run on `stream` (a cudaStream_t as an integer) and allocate nothing.
#pragma once

#include <cstdint>

#include "../common/attention.h"

namespace imm::cuda {

void attention_forward(const AttentionForwardTask& task, std::uintptr_t stream);
void attention_backward(const AttentionBackwardTask& task, std::uintptr_t stream);

}  // namespace imm::cuda
