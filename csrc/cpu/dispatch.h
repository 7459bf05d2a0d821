// Runs the CPU kernels with the widest instruction set this processor supports.
#pragma once

#include "../common/attention.h"
#include "../common/pair_task.h"

namespace imm::cpu {

void run_pair_task(const PairTask& task, int threads);

// Fused attention (common/attention.h); lse may be null in the forward (inference: nothing saved).
void attention_forward(const AttentionForwardTask& task, int threads);
void attention_backward(const AttentionBackwardTask& task, int threads);

// The instruction set these functions and the kernels declared in common/*.h (norm, residual,
// embedding, activation, qk-norm) use on this processor: "avx512", "avx2" or "baseline" (the
// widest supported; the environment variable IMM_EXT_CPU_ISA may name a narrower one).
const char* selected_isa();

}  // namespace imm::cpu
