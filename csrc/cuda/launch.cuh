// Host-side launch helpers shared by every CUDA kernel file: the launch itself, the caller's stream,
// block counts, and the check that turns a failed launch into a Python exception.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

namespace imm::cuda {

// kernel<<<grid, block, shared_bytes, stream>>>(arguments...), written as a call so that the emulated
// build (csrc/emulation) runs the same launch on the CPU; `name` is what errors call the kernel.
template <class... Parameters, class... Arguments>
void launch_kernel(const char* name, void (*kernel)(Parameters...), dim3 grid, dim3 block, std::size_t shared_bytes,
                   cudaStream_t stream, Arguments&&... arguments) {
#if defined(IMM_EXT_EMULATED_CUDA)
  (void)stream;
  auto body = [&] { kernel(arguments...); };
  ::imm::emu::launch(name, grid, block, shared_bytes, body);
#else
  (void)name;
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Arguments>(arguments)...);
#endif
}

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
