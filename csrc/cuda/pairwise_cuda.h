// Runs a PairTask on the GPU, on the given CUDA stream (cudaStream_t passed as an integer handle).
#pragma once

#include <cstdint>

#include "../common/pair_task.h"

namespace imm::cuda {

void run_pair_task(const PairTask& task, std::uintptr_t stream);

}  // namespace imm::cuda
