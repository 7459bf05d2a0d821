// CPU kernels of gate + residual (math in common/residual.h).
//
// Forward: threads take rows (elementwise over the channels, omp simd). Backward: threads take chunks of
// consecutive tokens of one sample, grad_gate's sums going to per-chunk partials summed in chunk order.
//
// CMake builds this file once per instruction set, in namespace imm::cpu::<IMM_CPU_ISA>. As in
// pairwise_cpu.cpp, nothing here instantiates a std:: container or algorithm, which the linker could
// share between the builds.
#include "../common/residual.h"
#include "memory_hints.h"
#include "row_threads.h"

#ifndef IMM_CPU_ISA
#error "IMM_CPU_ISA must name the instruction-set namespace"
#endif

namespace imm::cpu::IMM_CPU_ISA {
namespace {

template <class In>
void gate_residual_forward_typed(TokenShape shape, const In* x, const In* gate, const In* y, In* out,
                                 int threads) {
  using T = acc_t<In>;
  const int64_t C = shape.channels, rows = shape.batch * shape.tokens;
  const int nthreads = thread_count(threads, rows, C);
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
  for (int64_t r = 0; r < rows; ++r) {
    const In* sample_gate = gate + (r / shape.tokens) * C;
    const int64_t offset = r * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c)
      store(out, offset + c, gate_residual(load(x, offset + c), load(sample_gate, c), load(y, offset + c)));
  }
}

template <class In>
void gate_residual_backward_typed(TokenShape shape, int64_t chunk_tokens, const In* grad, const In* gate,
                                  const In* y, In* grad_y, acc_t<In>* partials, In* grad_gate, int threads) {
  using T = acc_t<In>;
  const int64_t C = shape.channels;
  for_token_chunks(shape, chunk_tokens, threads, [&](int64_t item, TokenChunk chunk) {
    const In* sample_gate = gate + chunk.b * C;
    T* sum_grad_y = partials + item * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) sum_grad_y[c] = T(0);
    for (int64_t r = chunk.first_row; r < chunk.first_row + chunk.rows; ++r) {
      const int64_t offset = r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const T gc = load(grad, offset + c);
        store(grad_y, offset + c, load(sample_gate, c) * gc);
        sum_grad_y[c] += gc * load(y, offset + c);
      }
    }
  });
  In* const outs[1] = {grad_gate};
  sum_token_chunks(shape, token_chunks(shape.tokens, chunk_tokens), 1, partials, outs, threads);
}

}  // namespace

void gate_residual_forward(DType dtype, TokenShape shape, const void* x, const void* gate, const void* y,
                           void* out, int threads) {
  dispatch_dtype(dtype, [&](auto tag) {
    using In = decltype(tag);
    advise_huge_pages(out, shape.elements() * sizeof(In));
    gate_residual_forward_typed(shape, static_cast<const In*>(x), static_cast<const In*>(gate),
                                static_cast<const In*>(y), static_cast<In*>(out), threads);
  });
}

void gate_residual_backward(DType dtype, TokenShape shape, int64_t chunk_tokens, const void* grad,
                            const void* gate, const void* y, void* grad_y, void* partials, void* grad_gate,
                            int threads) {
  dispatch_dtype(dtype, [&](auto tag) {
    using In = decltype(tag);
    advise_huge_pages(grad_y, shape.elements() * sizeof(In));
    gate_residual_backward_typed(shape, chunk_tokens, static_cast<const In*>(grad), static_cast<const In*>(gate),
                                 static_cast<const In*>(y), static_cast<In*>(grad_y),
                                 static_cast<acc_t<In>*>(partials), static_cast<In*>(grad_gate), threads);
  });
}

}  // namespace imm::cpu::IMM_CPU_ISA
