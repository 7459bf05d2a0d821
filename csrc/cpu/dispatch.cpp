// Run-time choice among the per-instruction-set builds of the CPU kernels (cpu/pairwise_cpu.cpp,
// cpu/conditioning_cpu.cpp, cpu/attention_cpu.cpp, cpu/activation_cpu.cpp, cpu/qk_norm_cpu.cpp): one
// table of entry points per build, the widest supported one chosen once.
#include "dispatch.h"

#include <cstddef>
#include <cstdlib>
#include <cstring>

#include "activation_cpu.h"
#include "conditioning_cpu.h"
#include "../common/qk_norm.h"
#include "memory_hints.h"

// The entry points every per-ISA build defines, declared in its namespace.
#define IMM_CPU_DECLARE_ENTRY_POINTS(isa)                                        \
  namespace isa {                                                                \
  void run_pair_task(const PairTask& task, int threads);                         \
  void attention_forward(const AttentionForwardTask& task, int threads);         \
  void attention_backward(const AttentionBackwardTask& task, int threads);       \
  const ConditioningKernels& conditioning_kernels();                             \
  const ActivationKernels& activation_kernels();                                 \
  void qk_norm_forward(DType, QkNormShape, double, const void*, const void*,     \
                       const void*, void*, void*, int);                          \
  void qk_norm_backward(DType, QkNormShape, int64_t, const void*, const void*,   \
                        const void*, const void*, const void*, void*, void*, int); \
  }
#define IMM_CPU_ENTRY_POINTS(isa)                                                                         \
  EntryPoints {                                                                                           \
    isa::run_pair_task, isa::attention_forward, isa::attention_backward, isa::conditioning_kernels,       \
        isa::activation_kernels, isa::qk_norm_forward, isa::qk_norm_backward, #isa                        \
  }

namespace imm::cpu {

IMM_CPU_DECLARE_ENTRY_POINTS(baseline)
#if defined(IMM_CPU_HAS_AVX2)
IMM_CPU_DECLARE_ENTRY_POINTS(avx2)
#endif
#if defined(IMM_CPU_HAS_AVX512)
IMM_CPU_DECLARE_ENTRY_POINTS(avx512)
#endif

namespace {

struct EntryPoints {
  void (*run_pair_task)(const PairTask&, int);
  void (*attention_forward)(const AttentionForwardTask&, int);
  void (*attention_backward)(const AttentionBackwardTask&, int);
  const ConditioningKernels& (*conditioning_kernels)();
  const ActivationKernels& (*activation_kernels)();
  decltype(&imm::cpu::qk_norm_forward) qk_norm_forward;
  decltype(&imm::cpu::qk_norm_backward) qk_norm_backward;
  const char* name;
};

// The widest build this processor runs, capped by the environment variable IMM_EXT_CPU_ISA when it
// names a narrower one ("avx2" or "baseline"), so that tests can exercise every build on one machine.
EntryPoints choose() {
  const char* cap = std::getenv("IMM_EXT_CPU_ISA");
  const bool baseline_only = cap != nullptr && std::strcmp(cap, "baseline") == 0;
  const bool up_to_avx2 = baseline_only || (cap != nullptr && std::strcmp(cap, "avx2") == 0);
#if defined(IMM_CPU_HAS_AVX512)
  if (!up_to_avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return IMM_CPU_ENTRY_POINTS(avx512);
#endif
#if defined(IMM_CPU_HAS_AVX2)
  if (!baseline_only && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return IMM_CPU_ENTRY_POINTS(avx2);
#endif
  return IMM_CPU_ENTRY_POINTS(baseline);
}

const EntryPoints& chosen() {
  static const EntryPoints entry_points = choose();
  return entry_points;
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
  chosen().run_pair_task(task, threads);
}

void attention_forward(const AttentionForwardTask& task, int threads) { chosen().attention_forward(task, threads); }

void attention_backward(const AttentionBackwardTask& task, int threads) { chosen().attention_backward(task, threads); }

const ConditioningKernels& conditioning_kernels() { return chosen().conditioning_kernels(); }

const ActivationKernels& activation_kernels() { return chosen().activation_kernels(); }

void qk_norm_forward(DType dtype, QkNormShape shape, double eps, const void* qkv, const void* q_weight,
                     const void* k_weight, void* out, void* stats, int threads) {
  chosen().qk_norm_forward(dtype, shape, eps, qkv, q_weight, k_weight, out, stats, threads);
}

void qk_norm_backward(DType dtype, QkNormShape shape, int64_t chunk_rows, const void* grad, const void* qkv,
                      const void* q_weight, const void* k_weight, const void* stats, void* grad_qkv, void* partials,
                      int threads) {
  chosen().qk_norm_backward(dtype, shape, chunk_rows, grad, qkv, q_weight, k_weight, stats, grad_qkv, partials,
                            threads);
}

const char* selected_isa() { return chosen().name; }

}  // namespace imm::cpu
