// Runs a PairTask on the CPU with the widest instruction set this processor supports.
#pragma once

#include "../common/pair_task.h"

namespace imm::cpu {

void run_pair_task(const PairTask& task, int threads);

// The instruction set run_pair_task and conditioning_kernels() (cpu/conditioning_cpu.h) use on this
// processor: "avx512", "avx2" or "baseline".
const char* selected_isa();

}  // namespace imm::cpu
