// CPU kernels of the fused activations (math and entry points in common/activation.h).
//
// Elementwise over blocks of kBlock elements: OpenMP threads take blocks (only above kGrain
// elements: a smaller call runs on one thread), and within a block the math runs on whole SIMD
// registers (simd.h), the last partial register in scalars. 16-bit inputs are widened into a float
// block on the stack first and narrowed back after, so the math itself always sees registers of
// the accumulation type.
//
// CMake builds this file once per instruction set, in namespace imm::cpu::<IMM_CPU_ISA>.
#include <omp.h>

#include <algorithm>
#include <type_traits>

#include "../common/activation.h"
#include "memory_hints.h"
#include "simd.h"

#ifndef IMM_CPU_ISA
#error "IMM_CPU_ISA must name the instruction-set namespace"
#endif

namespace imm::cpu::IMM_CPU_ISA {
namespace {

constexpr int64_t kBlock = 1024;          // elements per work item (a multiple of every register width)
constexpr int64_t kGrain = int64_t(1) << 15;  // elements per thread, at least

// out[i] = op(a[i]) (or op(a[i], b[i]) when b is given) for i < n, all in the accumulation type T.
template <class T, class Op>
void apply_registers(const T* a, const T* b, T* out, int64_t n, Op op) {
  using Vec = Simd<T>;
  int64_t i = 0;
  for (; i + Vec::lanes <= n; i += Vec::lanes) {
    const typename Vec::V va = Vec::load(a + i);
    Vec::store(out + i, b ? op(va, Vec::load(b + i)) : op(va, va));
  }
  for (; i < n; ++i) out[i] = b ? op(a[i], b[i]) : op(a[i], a[i]);
}

// The same over one block of storage type In: in place for float32 / float64, through float
// stack buffers for the 16-bit types.
template <class In, class Op>
void apply_block(const In* a, const In* b, In* out, int64_t n, Op op) {
  using T = acc_t<In>;
  if constexpr (std::is_same_v<In, T>) {
    apply_registers(a, b, out, n, op);
  } else {
    T wide_a[kBlock], wide_b[kBlock];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) wide_a[i] = load(a, i);
    if (b) {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) wide_b[i] = load(b, i);
    }
    apply_registers(wide_a, b ? wide_b : nullptr, wide_a, n, op);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) store(out, i, wide_a[i]);
  }
}

template <class In, class Op>
void elementwise(int64_t n, const In* a, const In* b, In* out, int threads, Op op) {
  advise_huge_pages(out, static_cast<std::size_t>(n) * sizeof(In));
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const int64_t useful = n / kGrain;
  const int nthreads = static_cast<int>(std::min<int64_t>(std::min<int64_t>(threads, blocks), useful > 1 ? useful : 1));
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t first = block * kBlock;
    apply_block(a + first, b ? b + first : nullptr, out + first, std::min<int64_t>(kBlock, n - first), op);
  }
}

}  // namespace

void gelu_tanh_forward(DType dtype, int64_t n, const void* x, void* out, int threads) {
  dispatch_dtype(dtype, [&](auto tag) {
    using In = decltype(tag);
    using T = acc_t<In>;
    elementwise(n, static_cast<const In*>(x), static_cast<const In*>(nullptr), static_cast<In*>(out), threads,
                [](auto v, auto) { return gelu_tanh<decltype(v), T>(v); });
  });
}

void gelu_tanh_backward(DType dtype, int64_t n, const void* grad, const void* x, void* grad_x, int threads) {
  dispatch_dtype(dtype, [&](auto tag) {
    using In = decltype(tag);
    using T = acc_t<In>;
    elementwise(n, static_cast<const In*>(grad), static_cast<const In*>(x), static_cast<In*>(grad_x), threads,
                [](auto g, auto v) { return gelu_tanh_grad<decltype(v), T>(g, v); });
  });
}


}  // namespace imm::cpu::IMM_CPU_ISA
