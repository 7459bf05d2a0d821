// Host-side launch helpers shared by every CUDA kernel file: the caller's stream, block counts, and
// the check that turns a failed launch into a Python exception.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace imm::cuda {

inline cudaStream_t as_stream(std::uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

inline unsigned blocks_of(int64_t work, int64_t per_block) {
  return static_cast<unsigned>((work + per_block - 1) / per_block);
}

// Enough blocks of `threads` to fill the device for a grid-stride loop over `total` elements.
inline unsigned grid_stride_blocks(int64_t total, int threads) {
  int device = 0, sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks_of(total, threads), int64_t(sms) * 32)));
}

// Throws std::runtime_error naming `kernel` when the last launch on this thread failed.
inline void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("imm_ext: CUDA kernel ") + kernel + " failed to launch: " +
                             cudaGetErrorString(err));
}

}  // namespace imm::cuda
