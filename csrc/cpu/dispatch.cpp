// Run-time choice among the per-instruction-set builds of cpu/pairwise_cpu.cpp and
// cpu/conditioning_cpu.cpp.
#include "dispatch.h"

#include <cstddef>

#include "conditioning_cpu.h"
#include "memory_hints.h"

namespace imm::cpu {

namespace baseline {
void run_pair_task(const PairTask& task, int threads);
const ConditioningKernels& conditioning_kernels();
}  // namespace baseline
#if defined(IMM_CPU_HAS_AVX2)
namespace avx2 {
void run_pair_task(const PairTask& task, int threads);
const ConditioningKernels& conditioning_kernels();
}  // namespace avx2
#endif
#if defined(IMM_CPU_HAS_AVX512)
namespace avx512 {
void run_pair_task(const PairTask& task, int threads);
const ConditioningKernels& conditioning_kernels();
}  // namespace avx512
#endif

namespace {
using Runner = void (*)(const PairTask&, int);

struct Choice {
  Runner run;
  const ConditioningKernels& (*conditioning)();
  const char* name;
};

Choice choose() {
#if defined(IMM_CPU_HAS_AVX512)
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return {avx512::run_pair_task, avx512::conditioning_kernels, "avx512"};
#endif
#if defined(IMM_CPU_HAS_AVX2)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return {avx2::run_pair_task, avx2::conditioning_kernels, "avx2"};
#endif
  return {baseline::run_pair_task, baseline::conditioning_kernels, "baseline"};
}

const Choice& choice() {
  static const Choice c = choose();
  return c;
}

std::size_t output_bytes(const PairTask& task) {
  const std::size_t acc = task.dtype == DType::Float64 ? 8 : 4;
  const std::size_t in = task.dtype == DType::Float64 ? 8 : task.dtype == DType::Float32 ? 4 : 2;
  const std::size_t rows = static_cast<std::size_t>(task.groups * task.n_rows);
  switch (task.mode) {
    case PairMode::Gradient: return rows * static_cast<std::size_t>(task.dim) * in;
    case PairMode::Matrix: return rows * static_cast<std::size_t>(task.sets[0].n) * acc;
    default: return 0;
  }
}
}  // namespace

void run_pair_task(const PairTask& task, int threads) {
  advise_huge_pages(task.out, output_bytes(task));
  choice().run(task, threads);
}

const ConditioningKernels& conditioning_kernels() { return choice().conditioning(); }

const char* selected_isa() { return choice().name; }

}  // namespace imm::cpu
