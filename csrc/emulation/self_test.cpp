// Small kernels, each broken in one known way (or correct), that show what the emulated launch catches;
// imm_ext._C_emu.self_test(name) runs one and returns the launch's error message ("" when it ran clean)
// and, for the kernels that compute something, what they wrote.
#include <cuda_runtime.h>

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "../cuda/launch.cuh"
#include "../cuda/shared_memory.cuh"
#include "self_test.h"

namespace imm::emu {
namespace {

// Correct: a block sum of 256 values through shared memory, a barrier and warp shuffles.
__global__ void block_sum_kernel(const float* in, float* out) {
  IMM_SHARED(float, partial, [8]);
  float v = in[threadIdx.x];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0;
    for (int w = 0; w < 8; ++w) total += partial[w];
    out[0] = total;
  }
}

// Even and odd threads wait at different __syncthreads.
__global__ void barrier_mismatch_kernel(float* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

// Lane 31 leaves before a full-warp shuffle.
__global__ void shuffle_after_exit_kernel(float* out) {
  if (threadIdx.x % 32 == 31) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

// Thread 0 waits at a barrier while the rest of its warp waits for it in a shuffle.
__global__ void deadlock_kernel(float* out) {
  if (threadIdx.x == 0) {
    __syncthreads();
  } else {
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
  }
}

// Reads shared memory nobody wrote.
__global__ void uninitialized_shared_kernel(float* out) {
  IMM_SHARED(float, never_written, [32]);
  out[threadIdx.x] = never_written[threadIdx.x];
}

// The last block to run writes out[0]: which block that is depends on the schedule.
__global__ void last_block_kernel(float* out) {
  if (threadIdx.x == 0) out[0] = static_cast<float>(blockIdx.x);
}

std::string launch_error(const char* kernel) {
  try {
    cuda::check_launch(kernel);
  } catch (const std::runtime_error& error) {
    return error.what();
  }
  return "";
}

}  // namespace

std::pair<std::string, std::vector<float>> self_test(const std::string& name) {
  std::vector<float> out(256, 0.0f);
  if (name == "block_sum") {
    std::vector<float> in(256);
    for (int i = 0; i < 256; ++i) in[i] = static_cast<float>(i);
    cuda::launch_kernel("block_sum", block_sum_kernel, 1, 256, 0, nullptr, in.data(), out.data());
  } else if (name == "barrier_mismatch") {
    cuda::launch_kernel("barrier_mismatch", barrier_mismatch_kernel, 1, 64, 0, nullptr, out.data());
  } else if (name == "shuffle_after_exit") {
    cuda::launch_kernel("shuffle_after_exit", shuffle_after_exit_kernel, 1, 64, 0, nullptr, out.data());
  } else if (name == "deadlock") {
    cuda::launch_kernel("deadlock", deadlock_kernel, 1, 64, 0, nullptr, out.data());
  } else if (name == "uninitialized_shared") {
    cuda::launch_kernel("uninitialized_shared", uninitialized_shared_kernel, 1, 32, 0, nullptr, out.data());
  } else if (name == "last_block") {
    cuda::launch_kernel("last_block", last_block_kernel, 7, 32, 0, nullptr, out.data());
  } else if (name == "too_many_threads") {
    cuda::launch_kernel("too_many_threads", last_block_kernel, 1, 2048, 0, nullptr, out.data());
  } else if (name == "too_much_shared_memory") {
    cuda::launch_kernel("too_much_shared_memory", last_block_kernel, 1, 32, std::size_t(1) << 20, nullptr, out.data());
  } else {
    throw std::invalid_argument("self_test: unknown case '" + name + "'");
  }
  return {launch_error(name.c_str()), out};
}

}  // namespace imm::emu
