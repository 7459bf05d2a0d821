// The CUDA C++ that imm_ext's kernels use, for running the exact csrc/cuda sources on the CPU.
//
// In the emulated build (IMM_EXT_CUDA_EMULATION) this directory comes first on the include path, so the
// kernels' `#include <cuda_runtime.h>` lands here and g++ compiles the .cu files as C++. A launch runs
// the grid's blocks one after another; each CUDA thread of a block is a fiber (block_scheduler.cpp), a
// `__syncthreads` is a barrier of the block's fibers and a warp shuffle an exact exchange among the
// lanes its mask names. Shared memory comes from a per-block arena that is filled with NaN bytes
// when the block starts. Failures (deadlock, a barrier reached from different call sites, a shuffle
// naming an exited lane, an invalid launch configuration) become the launch's CUDA error, reported
// through cudaGetLastError like a real one.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define IMM_EXT_EMULATED_CUDA 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};

// CUDA's integer min/max overloads (its floating-point ones follow fminf/fmaxf: not emulated).
template <class A, class B>
inline std::common_type_t<A, B> min(A a, B b) {
  static_assert(std::is_integral<A>::value && std::is_integral<B>::value, "integer min only");
  return b < a ? b : a;
}
template <class A, class B>
inline std::common_type_t<A, B> max(A a, B b) {
  static_assert(std::is_integral<A>::value && std::is_integral<B>::value, "integer max only");
  return a < b ? b : a;
}

typedef struct CUstream_st* cudaStream_t;
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };

namespace imm::emu {

// The calling fiber's coordinates.
uint3 thread_index();
uint3 block_index();
dim3 block_dim();
dim3 grid_dim();

// __syncthreads(), reached at `site` (every thread of the block must reach the same one).
void sync_threads(const char* site);
// One lane's part of a shuffle: deposits `bytes` of `value`, returns with lane src_lane's bytes in `out`.
void shuffle(unsigned mask, const void* value, void* out, std::size_t bytes, int src_lane, const char* site);
// The calling block's shared memory: the dynamic part, and a static array identified by `tag`.
unsigned char* dynamic_shared();
void* static_shared(const void* tag, std::size_t bytes, std::size_t alignment);

// Runs body() once per thread of every block of the grid; errors become the next cudaGetLastError().
void launch(const char* kernel, dim3 grid, dim3 block, std::size_t dynamic_shared_bytes, void (*body)(void*),
            void* context);

template <class F>
void launch(const char* kernel, dim3 grid, dim3 block, std::size_t dynamic_shared_bytes, F& body) {
  launch(kernel, grid, block, dynamic_shared_bytes, [](void* f) { (*static_cast<F*>(f))(); }, &body);
}

}  // namespace imm::emu

#define IMM_EMU_STRING2(x) #x
#define IMM_EMU_STRING(x) IMM_EMU_STRING2(x)
#define threadIdx (::imm::emu::thread_index())
#define blockIdx (::imm::emu::block_index())
#define blockDim (::imm::emu::block_dim())
#define gridDim (::imm::emu::grid_dim())
#define __syncthreads() ::imm::emu::sync_threads(__FILE__ ":" IMM_EMU_STRING(__LINE__))

template <class T>
inline T imm_emu_shfl_xor(unsigned mask, T value, int lane_mask, const char* site) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 16, "shuffled values are up to 16 bytes");
  T out;
  const int lane = static_cast<int>(::imm::emu::thread_index().x % 32u);
  ::imm::emu::shuffle(mask, &value, &out, sizeof(T), lane ^ lane_mask, site);
  return out;
}
#define __shfl_xor_sync(mask, value, lane_mask) \
  imm_emu_shfl_xor(mask, value, lane_mask, __FILE__ ":" IMM_EMU_STRING(__LINE__))

template <class T>
inline T __ldg(const T* p) {
  return *p;
}

cudaError_t cudaGetLastError();
const char* cudaGetErrorString(cudaError_t error);
cudaError_t cudaGetDevice(int* device);
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device);
