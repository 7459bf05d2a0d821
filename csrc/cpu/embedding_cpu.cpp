// CPU kernels of the sinusoidal time embedding (math in common/embedding.h).
//
// Rows are taken in blocks that share a table of the frequencies; float64 arguments throughout.
//
// CMake builds this file once per instruction set, in namespace imm::cpu::<IMM_CPU_ISA>. As in
// pairwise_cpu.cpp, nothing here instantiates a std:: container or algorithm, which the linker could
// share between the builds.
#include "../common/embedding.h"
#include "row_threads.h"

#ifndef IMM_CPU_ISA
#error "IMM_CPU_ISA must name the instruction-set namespace"
#endif

namespace imm::cpu::IMM_CPU_ISA {
namespace {

constexpr int64_t kTranscendentalWork = 8;  // an exp, cos or sin, in element operations

// Rows are taken in blocks that share a table of the frequencies (one exp per frequency and block,
// not per element); within a block the frequencies come in pieces of kFrequencies (a stack table).
constexpr int64_t kEmbeddingRows = 64;
constexpr int64_t kFrequencies = 128;

// Calls body(n0, n1, k0, k1, f) for every piece [k0, k1) of the frequencies, f[k - k0] = f_k, and
// every block [n0, n1) of rows, in parallel over the blocks; within a row k ascends.
template <class Body>
void for_embedding_blocks(int64_t rows, int64_t dim, double log_max_period, int threads, Body&& body) {
  const int64_t half = dim / 2;
  const int64_t blocks = (rows + kEmbeddingRows - 1) / kEmbeddingRows;
  const int nthreads = thread_count(threads, blocks, kEmbeddingRows * kTranscendentalWork * dim);
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t n0 = block * kEmbeddingRows, n1 = std::min<int64_t>(rows, n0 + kEmbeddingRows);
    double frequencies[kFrequencies];
    for (int64_t k0 = 0; k0 < half; k0 += kFrequencies) {
      const int64_t k1 = std::min<int64_t>(half, k0 + kFrequencies);
      for (int64_t k = k0; k < k1; ++k) frequencies[k - k0] = embedding_frequency(k, half, log_max_period);
      body(n0, n1, k0, k1, frequencies);
    }
  }
}

template <class Out>
void timestep_embedding_forward_typed(int64_t rows, int64_t dim, double log_max_period, const double* c, Out* out,
                                      int threads) {
  using T = acc_t<Out>;
  const int64_t half = dim / 2;
  for_embedding_blocks(rows, dim, log_max_period, threads,
                       [&](int64_t n0, int64_t n1, int64_t k0, int64_t k1, const double* frequencies) {
                         for (int64_t n = n0; n < n1; ++n)
                           for (int64_t k = k0; k < k1; ++k) {
                             double sin_value, cos_value;
                             embedding_sin_cos(c[n], frequencies[k - k0], &sin_value, &cos_value);
                             store(out + n * dim, k, static_cast<T>(cos_value));
                             store(out + n * dim, half + k, static_cast<T>(sin_value));
                           }
                       });
  if (dim % 2)
    for (int64_t n = 0; n < rows; ++n) store(out + n * dim, dim - 1, T(0));
}

template <class G>
void timestep_embedding_backward_typed(int64_t rows, int64_t dim, double log_max_period, const double* c,
                                       const G* grad, double* grad_c, int threads) {
  const int64_t half = dim / 2;
  for (int64_t n = 0; n < rows; ++n) grad_c[n] = 0.0;
  for_embedding_blocks(rows, dim, log_max_period, threads,
                       [&](int64_t n0, int64_t n1, int64_t k0, int64_t k1, const double* frequencies) {
                         for (int64_t n = n0; n < n1; ++n) {
                           const G* row = grad + n * dim;
                           double total = grad_c[n];
                           for (int64_t k = k0; k < k1; ++k) {
                             double sin_value, cos_value;
                             embedding_sin_cos(c[n], frequencies[k - k0], &sin_value, &cos_value);
                             total += embedding_argument_grad(frequencies[k - k0], sin_value, cos_value,
                                                              load(row, k), load(row, half + k));
                           }
                           grad_c[n] = total;
                         }
                       });
}

}  // namespace

void timestep_embedding_forward(DType out_dtype, int64_t rows, int64_t dim, double log_max_period, const double* c,
                                void* out, int threads) {
  dispatch_dtype(out_dtype, [&](auto tag) {
    using Out = decltype(tag);
    timestep_embedding_forward_typed(rows, dim, log_max_period, c, static_cast<Out*>(out), threads);
  });
}

void timestep_embedding_backward(DType grad_dtype, int64_t rows, int64_t dim, double log_max_period,
                                 const double* c, const void* grad, double* grad_c, int threads) {
  dispatch_dtype(grad_dtype, [&](auto tag) {
    using G = decltype(tag);
    timestep_embedding_backward_typed(rows, dim, log_max_period, c, static_cast<const G*>(grad), grad_c, threads);
  });
}

}  // namespace imm::cpu::IMM_CPU_ISA
