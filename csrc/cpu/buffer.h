// Heap scratch for the per-instruction-set CPU kernels: a growable array aligned to a cache line,
// and per-thread slices of one such array for a parallel region.
//
// Defined inside the per-ISA namespace (like simd.h) and built from new[]/delete[] of bytes only,
// so that no template instantiation compiled for one instruction set can be shared by the linker
// with another build (see pairwise_cpu.cpp).
//
// Every allocation happens outside OpenMP parallel regions: an exception cannot leave a region (the
// runtime terminates the process), while outside one std::bad_alloc reaches Python as MemoryError.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>

#ifndef IMM_CPU_ISA
#error "IMM_CPU_ISA must name the instruction-set namespace"
#endif

namespace imm::cpu::IMM_CPU_ISA {

// Sizes of scratch blocks, in elements. A size past int64_t could never be allocated: std::bad_alloc.
inline int64_t size_product(int64_t a, int64_t b) {
  int64_t product;
  if (__builtin_mul_overflow(a, b, &product)) throw std::bad_alloc();
  return product;
}
inline int64_t size_sum(int64_t a, int64_t b) {
  int64_t sum;
  if (__builtin_add_overflow(a, b, &sum)) throw std::bad_alloc();
  return sum;
}

// An array of trivially constructible T owned by one object, 64-byte aligned (a cache line, and one
// AVX-512 register: vector loads never straddle two lines). reserve() keeps the old storage when it
// is large enough, so a thread_local Buffer is allocated once per thread and size.
template <class T>
class Buffer {
 public:
  static constexpr std::size_t kAlign = 64;

  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { delete[] raw_; }

  // Storage for at least `size` elements (contents unspecified); std::bad_alloc leaves it empty.
  T* reserve(int64_t size) {
    if (size > size_) {
      delete[] raw_;
      raw_ = nullptr;
      data_ = nullptr;
      size_ = 0;
      if (static_cast<uint64_t>(size) > (SIZE_MAX - kAlign) / sizeof(T)) throw std::bad_alloc();
      raw_ = new unsigned char[static_cast<std::size_t>(size) * sizeof(T) + kAlign];
      const std::uintptr_t address = reinterpret_cast<std::uintptr_t>(raw_);
      data_ = reinterpret_cast<T*>((address + kAlign - 1) & ~std::uintptr_t(kAlign - 1));
      size_ = size;
    }
    return data_;
  }
  T* data() const { return data_; }

 private:
  unsigned char* raw_ = nullptr;
  T* data_ = nullptr;
  int64_t size_ = 0;
};

// Threads of a region over `items` work items: at most `threads`, at least 1 (a team's size must
// be positive, and every thread number must have a slice of TeamScratch).
inline int team_size(int threads, int64_t items) {
  return static_cast<int>(items < threads ? (items > 1 ? items : 1) : threads);
}

// Per-thread slices of one block: thread t of a region uses data + t * stride.
template <class T>
struct Slices {
  T* data;
  int64_t stride;
  T* of(int thread) const { return data + thread * stride; }
};

// One slice of scratch per thread of a parallel region, allocated before the region starts by the
// thread that opens it. Used as a thread_local of that (calling) thread, it is reused across calls,
// and concurrent calls from different threads never share it. Inside the region use the Slices that
// reserve() returned: there the thread_local's name would mean each worker's own, empty, object.
template <class T>
class TeamScratch {
 public:
  // Slices of `size` elements for threads 0 .. threads - 1, each starting on its own cache line.
  Slices<T> reserve(int threads, int64_t size) {
    constexpr int64_t line = static_cast<int64_t>(Buffer<T>::kAlign / sizeof(T));
    const int64_t stride = size_product(size_sum(size, line - 1) / line, line);
    return Slices<T>{buffer_.reserve(size_product(threads, stride)), stride};
  }

 private:
  Buffer<T> buffer_;
};

}  // namespace imm::cpu::IMM_CPU_ISA
