// Run-time choice among the per-instruction-set builds of the CPU kernels (every cpu/*_cpu.cpp but
// interpolant_cpu.cpp): one table of entry points per build, the widest supported one chosen once.
#include "dispatch.h"

#include <cstddef>
#include <cstdlib>
#include <cstring>

#include "../common/activation.h"
#include "../common/embedding.h"
#include "../common/norm.h"
#include "../common/qk_norm.h"
#include "../common/residual.h"
#include "memory_hints.h"

// The entry points every per-ISA build defines, declared in its namespace.
#define IMM_CPU_DECLARE_ENTRY_POINTS(isa)                                        \
  namespace isa {                                                                \
  void run_pair_task(const PairTask& task, int threads);                         \
  void attention_forward(const AttentionForwardTask& task, int threads);         \
  void attention_backward(const AttentionBackwardTask& task, int threads);       \
  decltype(::imm::cpu::gelu_tanh_forward) gelu_tanh_forward;                     \
  decltype(::imm::cpu::gelu_tanh_backward) gelu_tanh_backward;                   \
  decltype(::imm::cpu::norm_modulate_forward) norm_modulate_forward;             \
  decltype(::imm::cpu::norm_modulate_backward) norm_modulate_backward;           \
  decltype(::imm::cpu::gate_residual_forward) gate_residual_forward;             \
  decltype(::imm::cpu::gate_residual_backward) gate_residual_backward;           \
  decltype(::imm::cpu::timestep_embedding_forward) timestep_embedding_forward;   \
  decltype(::imm::cpu::timestep_embedding_backward) timestep_embedding_backward; \
  decltype(::imm::cpu::qk_norm_forward) qk_norm_forward;                         \
  decltype(::imm::cpu::qk_norm_backward) qk_norm_backward;                       \
  }
#define IMM_CPU_ENTRY_POINTS(isa)                                                                         \
  EntryPoints {                                                                                           \
    isa::run_pair_task, isa::attention_forward, isa::attention_backward, isa::gelu_tanh_forward,          \
        isa::gelu_tanh_backward, isa::norm_modulate_forward, isa::norm_modulate_backward,                 \
        isa::gate_residual_forward, isa::gate_residual_backward, isa::timestep_embedding_forward,         \
        isa::timestep_embedding_backward, isa::qk_norm_forward, isa::qk_norm_backward, #isa               \
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
  decltype(&imm::cpu::gelu_tanh_forward) gelu_tanh_forward;
  decltype(&imm::cpu::gelu_tanh_backward) gelu_tanh_backward;
  decltype(&imm::cpu::norm_modulate_forward) norm_modulate_forward;
  decltype(&imm::cpu::norm_modulate_backward) norm_modulate_backward;
  decltype(&imm::cpu::gate_residual_forward) gate_residual_forward;
  decltype(&imm::cpu::gate_residual_backward) gate_residual_backward;
  decltype(&imm::cpu::timestep_embedding_forward) timestep_embedding_forward;
  decltype(&imm::cpu::timestep_embedding_backward) timestep_embedding_backward;
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

void norm_modulate_forward(DType dtype, TokenShape shape, bool rms, double eps, const void* x, const void* shift,
                           const void* scale, void* out, void* stats, int threads) {
  chosen().norm_modulate_forward(dtype, shape, rms, eps, x, shift, scale, out, stats, threads);
}

void norm_modulate_backward(DType dtype, TokenShape shape, int64_t chunk_tokens, bool rms, const void* grad,
                            const void* x, const void* stats, const void* scale, void* grad_x, void* partials,
                            void* grad_shift, void* grad_scale, int threads) {
  chosen().norm_modulate_backward(dtype, shape, chunk_tokens, rms, grad, x, stats, scale, grad_x, partials, grad_shift,
                                  grad_scale, threads);
}

void gate_residual_forward(DType dtype, TokenShape shape, const void* x, const void* gate, const void* y, void* out,
                           int threads) {
  chosen().gate_residual_forward(dtype, shape, x, gate, y, out, threads);
}

void gate_residual_backward(DType dtype, TokenShape shape, int64_t chunk_tokens, const void* grad, const void* gate,
                            const void* y, void* grad_y, void* partials, void* grad_gate, int threads) {
  chosen().gate_residual_backward(dtype, shape, chunk_tokens, grad, gate, y, grad_y, partials, grad_gate, threads);
}

void timestep_embedding_forward(DType out_dtype, int64_t rows, int64_t dim, double log_max_period, const double* c,
                                void* out, int threads) {
  chosen().timestep_embedding_forward(out_dtype, rows, dim, log_max_period, c, out, threads);
}

void timestep_embedding_backward(DType grad_dtype, int64_t rows, int64_t dim, double log_max_period,
                                 const double* c, const void* grad, double* grad_c, int threads) {
  chosen().timestep_embedding_backward(grad_dtype, rows, dim, log_max_period, c, grad, grad_c, threads);
}

void gelu_tanh_forward(DType dtype, int64_t n, const void* x, void* out, int threads) {
  chosen().gelu_tanh_forward(dtype, n, x, out, threads);
}

void gelu_tanh_backward(DType dtype, int64_t n, const void* grad, const void* x, void* grad_x, int threads) {
  chosen().gelu_tanh_backward(dtype, n, grad, x, grad_x, threads);
}

void qk_norm_forward(DType dtype, QkNormShape shape, double eps, const void* qkv, const void* q_weight,
                     const void* k_weight, void* out_q, void* out_k, void* stats, int threads) {
  chosen().qk_norm_forward(dtype, shape, eps, qkv, q_weight, k_weight, out_q, out_k, stats, threads);
}

void qk_norm_backward(DType dtype, QkNormShape shape, int64_t chunk_rows, const void* grad_q, const void* grad_k,
                      const void* qkv, const void* q_weight, const void* k_weight, const void* stats, void* grad_qkv,
                      void* partials, int threads) {
  chosen().qk_norm_backward(dtype, shape, chunk_rows, grad_q, grad_k, qkv, q_weight, k_weight, stats, grad_qkv,
                            partials, threads);
}

const char* selected_isa() { return chosen().name; }

}  // namespace imm::cpu
