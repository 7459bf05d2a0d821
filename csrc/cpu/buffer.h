// Heap scratch for the per-instruction-set CPU kernels: a growable array aligned to a cache line.
//
// Defined inside the per-ISA namespace (like simd.h) and built from new[]/delete[] of bytes only,
// so that no template instantiation compiled for one instruction set can be shared by the linker
// with another build (see pairwise_cpu.cpp).
#pragma once

#include <cstddef>
#include <cstdint>

#ifndef IMM_CPU_ISA
#error "IMM_CPU_ISA must name the instruction-set namespace"
#endif

namespace imm::cpu::IMM_CPU_ISA {

// An array of trivially constructible T owned by one object, 64-byte aligned (a cache line, and one
// AVX-512 register: vector loads never straddle two lines). reserve() keeps the old storage when it
// is large enough, so a thread_local Buffer is allocated once per thread and size.
template <class T>
class Buffer {
 public:
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { delete[] raw_; }

  // Storage for at least `size` elements (contents unspecified).
  T* reserve(int64_t size) {
    if (size > size_) {
      delete[] raw_;
      raw_ = new unsigned char[static_cast<std::size_t>(size) * sizeof(T) + kAlign];
      const std::uintptr_t address = reinterpret_cast<std::uintptr_t>(raw_);
      data_ = reinterpret_cast<T*>((address + kAlign - 1) & ~std::uintptr_t(kAlign - 1));
      size_ = size;
    }
    return data_;
  }
  T* data() const { return data_; }

 private:
  static constexpr std::size_t kAlign = 64;
  unsigned char* raw_ = nullptr;
  T* data_ = nullptr;
  int64_t size_ = 0;
};

}  // namespace imm::cpu::IMM_CPU_ISA
