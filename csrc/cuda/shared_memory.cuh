// Shared-memory declarations of the CUDA kernels, spelled so that the emulated build (csrc/emulation)
// can give every block its own NaN-filled arena:
//   IMM_SHARED(T, name, [A][B]);          __shared__ T name[A][B];
//   IMM_SHARED_ALIGNED(T, name, [A], 16); __shared__ __align__(16) T name[A];
//   IMM_DYNAMIC_SHARED(name);             extern __shared__ __align__(16) unsigned char name[];
#pragma once

#include <cuda_runtime.h>

#if defined(IMM_EXT_EMULATED_CUDA)
#define IMM_SHARED_ALIGNED(type, name, dims, alignment)                                   \
  static char name##_shared_tag;                                                         \
  auto& name = *static_cast<type(*) dims>(::imm::emu::static_shared(                     \
      &name##_shared_tag, sizeof(type dims), alignment > alignof(type) ? alignment : alignof(type)))
#define IMM_DYNAMIC_SHARED(name) unsigned char* name = ::imm::emu::dynamic_shared()
#else
#define IMM_SHARED_ALIGNED(type, name, dims, alignment) __shared__ __align__(alignment) type name dims
#define IMM_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif
#define IMM_SHARED(type, name, dims) IMM_SHARED_ALIGNED(type, name, dims, alignof(type))
