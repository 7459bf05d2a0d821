// Sums and maxima over the 32 lanes of a warp by butterfly shuffles: every lane ends with the result,
// the same on every lane and in the same order, so a warp-per-row kernel is deterministic.
#pragma once

#include <cuda_runtime.h>

namespace imm::cuda {

constexpr int kWarp = 32;

template <class T>
__device__ T warp_sum(T v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <class T>
__device__ T warp_max(T v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const T other = __shfl_xor_sync(0xffffffffu, v, offset);
    v = other > v ? other : v;
  }
  return v;
}

}  // namespace imm::cuda
