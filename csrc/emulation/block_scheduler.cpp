// The emulated CUDA launch (cuda_runtime.h): blocks in turn, a block's threads as fibers.
//
// Each CUDA thread runs on its own stack; switching between them is a hand-written x86-64 context
// switch (only the callee-saved registers and the stack pointer change hands, as in a function call),
// about a hundred times cheaper than swapcontext's signal-mask system call. The scheduler runs one warp
// at a time, every runnable lane of it until the lane blocks (at a barrier or a shuffle) or exits;
// when all lanes a shuffle's mask names have arrived, the values are exchanged and those lanes run on.
// When every warp is blocked, the block's barrier opens if all live threads wait at the same
// __syncthreads; anything else is a deadlock and fails the launch with a description.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_runtime.h"
#include "schedule.h"

#if !defined(__x86_64__)
#error "the CUDA emulation's context switch is written for x86-64"
#endif

// void imm_emu_switch(void** save_stack_pointer, void* load_stack_pointer)
asm(R"(
  .text
  .globl imm_emu_switch
  .hidden imm_emu_switch
  .type imm_emu_switch, @function
imm_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size imm_emu_switch, .-imm_emu_switch
)");
extern "C" void imm_emu_switch(void** save_stack_pointer, void* load_stack_pointer);

namespace imm::emu {
namespace {

constexpr unsigned kWarp = 32;
constexpr unsigned kMaxThreads = 1024;
constexpr std::size_t kStackBytes = std::size_t(256) << 10;
constexpr std::size_t kSharedLimit = std::size_t(48) << 10;  // static + dynamic, without an opt-in
constexpr int kMultiprocessors = 2;  // small, so that grid-stride loops take several turns

enum class State { Runnable, AtBarrier, AtShuffle, Exited };

struct Fiber {
  void* stack_pointer = nullptr;
  unsigned char* stack = nullptr;  // kStackBytes, the lowest page a guard
  State state = State::Runnable;
  uint3 index{};
  const char* site = nullptr;
  unsigned mask = 0;
  int source_lane = 0;
  std::size_t bytes = 0;
  alignas(16) unsigned char value[16];
  alignas(16) unsigned char result[16];
};

struct LaunchError {
  std::string message;
};

// Everything below is used under launch_mutex by one host thread at a time.
std::mutex launch_mutex;
Order order = Order::Forward;
std::uint64_t seed = 0;
std::uint64_t launch_count = 0;

std::vector<std::unique_ptr<Fiber>> fibers;  // a pool: fibers[i] is thread i of the running block
Fiber* current = nullptr;
void* scheduler_stack_pointer = nullptr;
bool abort_block = false;
std::string abort_message;

const char* kernel_name = "";
dim3 grid_size, block_size;
uint3 block_position;
void (*body_function)(void*) = nullptr;
void* body_context = nullptr;

alignas(64) unsigned char shared_arena[kSharedLimit];
std::size_t dynamic_bytes = 0;  // the arena's first bytes are the dynamic shared memory
std::vector<std::pair<const void*, std::size_t>> static_offsets;  // tag -> offset, fixed per launch
std::size_t static_end = 0;

thread_local cudaError_t pending_error = cudaSuccess;
thread_local std::string pending_message;

void fail_launch(cudaError_t error, const std::string& message) {
  if (pending_error == cudaSuccess) {
    pending_error = error;
    pending_message = std::string("emulated kernel ") + kernel_name + ": " + message;
  }
}

// Called on a fiber: stop the whole block and never come back to this fiber.
[[noreturn]] void abort_from_fiber(const std::string& message) {
  abort_block = true;
  abort_message = message;
  current->state = State::Exited;
  imm_emu_switch(&current->stack_pointer, scheduler_stack_pointer);
  __builtin_unreachable();
}

extern "C" [[noreturn]] void imm_emu_fiber_main() {
  body_function(body_context);
  current->state = State::Exited;
  imm_emu_switch(&current->stack_pointer, scheduler_stack_pointer);
  __builtin_unreachable();
}

unsigned char* allocate_stack() {
  void* memory = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                      -1, 0);
  if (memory == MAP_FAILED) throw std::bad_alloc();
  mprotect(memory, static_cast<std::size_t>(sysconf(_SC_PAGESIZE)), PROT_NONE);  // overflow faults, loudly
  return static_cast<unsigned char*>(memory);
}

// A fresh context on fiber f's stack that starts in imm_emu_fiber_main when first switched to.
void reset_fiber(Fiber& f) {
  auto top = reinterpret_cast<std::uintptr_t>(f.stack + kStackBytes) & ~std::uintptr_t(15);
  auto* slot = reinterpret_cast<void**>(top);
  *--slot = nullptr;                                             // alignment: the entry sees rsp = 8 mod 16
  *--slot = reinterpret_cast<void*>(&imm_emu_fiber_main);        // popped by `ret`
  for (int i = 0; i < 6; ++i) *--slot = nullptr;                 // rbp rbx r12 r13 r14 r15
  f.stack_pointer = slot;
  f.state = State::Runnable;
}

void run(Fiber& f) {
  current = &f;
  imm_emu_switch(&scheduler_stack_pointer, f.stack_pointer);
  current = nullptr;
}

std::vector<unsigned> ordered(unsigned count, std::mt19937_64& random) {
  std::vector<unsigned> items(count);
  std::iota(items.begin(), items.end(), 0u);
  if (order == Order::Reverse) std::reverse(items.begin(), items.end());
  if (order == Order::Random) std::shuffle(items.begin(), items.end(), random);
  return items;
}

const char* state_name(State s) {
  switch (s) {
    case State::Runnable: return "running";
    case State::AtBarrier: return "at __syncthreads";
    case State::AtShuffle: return "in a shuffle";
    case State::Exited: return "exited";
  }
  return "?";
}

// Exchanges the values of every complete shuffle among warp w's lanes; true if any lane may run on.
bool resolve_shuffles(unsigned w, unsigned threads) {
  const unsigned first = w * kWarp, lanes = std::min(kWarp, threads - first);
  bool resolved = false;
  for (unsigned lane = 0; lane < lanes; ++lane) {
    Fiber& f = *fibers[first + lane];
    if (f.state != State::AtShuffle) continue;
    bool complete = true;
    for (unsigned other = 0; other < kWarp && complete; ++other) {
      if (!(f.mask >> other & 1u)) continue;
      if (other >= lanes)
        throw LaunchError{"a shuffle at " + std::string(f.site) + " names lane " + std::to_string(other) +
                          ", which the block does not have"};
      const Fiber& g = *fibers[first + other];
      if (g.state == State::Runnable) complete = false;
      else if (g.state != State::AtShuffle)
        throw LaunchError{"a shuffle at " + std::string(f.site) + " (warp " + std::to_string(w) + ") waits for lane " +
                          std::to_string(other) + ", which is " + state_name(g.state)};
      else if (g.mask != f.mask || g.site != f.site || g.bytes != f.bytes)
        throw LaunchError{"lanes of warp " + std::to_string(w) + " meet in different shuffles (" + f.site + " and " +
                          g.site + ")"};
    }
    if (!complete) continue;
    for (unsigned other = 0; other < lanes; ++other) {
      Fiber& g = *fibers[first + other];
      if (!(f.mask >> other & 1u)) continue;
      if (g.source_lane < 0 || g.source_lane >= int(kWarp) || !(f.mask >> g.source_lane & 1u))
        throw LaunchError{"a shuffle at " + std::string(f.site) + " reads lane " + std::to_string(g.source_lane) +
                          ", which its mask does not name"};
      std::memcpy(g.result, fibers[first + g.source_lane]->value, g.bytes);
    }
    for (unsigned other = 0; other < lanes; ++other)
      if (f.mask >> other & 1u) fibers[first + other]->state = State::Runnable;
    resolved = true;
  }
  return resolved;
}

// Runs warp w until none of its lanes can move.
void run_warp(unsigned w, unsigned threads, const std::vector<unsigned>& lane_order) {
  const unsigned first = w * kWarp, lanes = std::min(kWarp, threads - first);
  for (;;) {
    bool ran = false;
    for (unsigned lane : lane_order) {
      if (lane >= lanes) continue;
      Fiber& f = *fibers[first + lane];
      if (f.state != State::Runnable) continue;
      run(f);
      ran = true;
      if (abort_block) throw LaunchError{abort_message};
    }
    if (!resolve_shuffles(w, threads) && !ran) return;
  }
}

void run_block(unsigned threads, std::mt19937_64& random) {
  std::memset(shared_arena, 0xFF, kSharedLimit);  // NaN in every float type: unwritten reads show
  for (unsigned t = 0; t < threads; ++t) {
    Fiber& f = *fibers[t];
    reset_fiber(f);
    f.index = uint3{t % block_size.x, t / block_size.x % block_size.y, t / (block_size.x * block_size.y)};
  }
  const unsigned warps = (threads + kWarp - 1) / kWarp;
  for (;;) {
    const std::vector<unsigned> warp_order = ordered(warps, random);
    for (unsigned w : warp_order) run_warp(w, threads, ordered(kWarp, random));
    const char* barrier = nullptr;
    unsigned waiting = 0, exited = 0;
    std::string stuck;
    for (unsigned t = 0; t < threads; ++t) {
      const Fiber& f = *fibers[t];
      if (f.state == State::Exited) {
        ++exited;
      } else if (f.state == State::AtBarrier) {
        if (barrier != nullptr && barrier != f.site)
          throw LaunchError{std::string("threads wait at different __syncthreads (") + barrier + " and " + f.site +
                            ")"};
        barrier = f.site;
        ++waiting;
      } else if (stuck.empty()) {
        stuck = "thread " + std::to_string(t) + " is " + state_name(f.state) + " at " + f.site;
      }
    }
    if (exited == threads) return;
    if (waiting + exited != threads)
      throw LaunchError{"deadlock: " + stuck + " while " + std::to_string(waiting) + " thread(s) wait at " +
                        (barrier ? barrier : "no barrier")};
    for (unsigned t = 0; t < threads; ++t)
      if (fibers[t]->state == State::AtBarrier) fibers[t]->state = State::Runnable;
  }
}

std::string configuration_problem(dim3 grid, dim3 block, std::size_t shared_bytes) {
  const std::uint64_t threads = std::uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > kMaxThreads || block.z > 64)
    return "a block of " + std::to_string(block.x) + "x" + std::to_string(block.y) + "x" + std::to_string(block.z) +
           " threads (1 to 1024, z at most 64)";
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7FFFFFFFu || grid.y > 65535 || grid.z > 65535)
    return "a grid of " + std::to_string(grid.x) + "x" + std::to_string(grid.y) + "x" + std::to_string(grid.z) +
           " blocks";
  if (shared_bytes > kSharedLimit)
    return std::to_string(shared_bytes) + " bytes of dynamic shared memory (48 KiB without an opt-in)";
  return "";
}

}  // namespace

uint3 thread_index() { return current->index; }
uint3 block_index() { return block_position; }
dim3 block_dim() { return block_size; }
dim3 grid_dim() { return grid_size; }

void sync_threads(const char* site) {
  current->state = State::AtBarrier;
  current->site = site;
  imm_emu_switch(&current->stack_pointer, scheduler_stack_pointer);
}

void shuffle(unsigned mask, const void* value, void* out, std::size_t bytes, int source_lane, const char* site) {
  const unsigned lane = current->index.x % kWarp;  // blocks are one-dimensional in these kernels
  if (!(mask >> lane & 1u))
    abort_from_fiber(std::string("lane ") + std::to_string(lane) + " calls a shuffle at " + site +
                     " whose mask does not name it");
  current->state = State::AtShuffle;
  current->site = site;
  current->mask = mask;
  current->source_lane = source_lane;
  current->bytes = bytes;
  std::memcpy(current->value, value, bytes);
  imm_emu_switch(&current->stack_pointer, scheduler_stack_pointer);
  std::memcpy(out, current->result, bytes);
}

unsigned char* dynamic_shared() { return shared_arena; }

void* static_shared(const void* tag, std::size_t bytes, std::size_t alignment) {
  for (const auto& [known, offset] : static_offsets)
    if (known == tag) return shared_arena + offset;
  const std::size_t offset = (static_end + alignment - 1) / alignment * alignment;
  if (offset + bytes > kSharedLimit)
    abort_from_fiber("needs " + std::to_string(offset + bytes) + " bytes of shared memory (limit 48 KiB)");
  static_offsets.emplace_back(tag, offset);
  static_end = offset + bytes;
  return shared_arena + offset;
}

void launch(const char* kernel, dim3 grid, dim3 block, std::size_t dynamic_shared_bytes, void (*body)(void*),
            void* context) {
  const std::string problem = configuration_problem(grid, block, dynamic_shared_bytes);
  if (!problem.empty()) {
    kernel_name = kernel;
    fail_launch(cudaErrorInvalidConfiguration, "invalid configuration argument: " + problem);
    return;
  }
  std::lock_guard<std::mutex> lock(launch_mutex);
  kernel_name = kernel;
  grid_size = grid;
  block_size = block;
  body_function = body;
  body_context = context;
  dynamic_bytes = dynamic_shared_bytes;
  static_offsets.clear();
  static_end = dynamic_bytes;
  abort_block = false;
  const unsigned threads = block.x * block.y * block.z;
  while (fibers.size() < threads) {
    auto f = std::make_unique<Fiber>();
    f->stack = allocate_stack();
    fibers.push_back(std::move(f));
  }
  std::mt19937_64 random(seed + 0x9E3779B97F4A7C15ull * ++launch_count);
  const std::uint64_t blocks = std::uint64_t(grid.x) * grid.y * grid.z;
  try {
    std::vector<std::uint64_t> block_order(blocks);
    std::iota(block_order.begin(), block_order.end(), std::uint64_t(0));
    if (order == Order::Reverse) std::reverse(block_order.begin(), block_order.end());
    if (order == Order::Random) std::shuffle(block_order.begin(), block_order.end(), random);
    for (std::uint64_t b : block_order) {
      block_position = uint3{unsigned(b % grid.x), unsigned(b / grid.x % grid.y),
                             unsigned(b / (std::uint64_t(grid.x) * grid.y))};
      run_block(threads, random);
    }
  } catch (const LaunchError& error) {
    fail_launch(cudaErrorLaunchFailure,
                error.message + " (block " + std::to_string(block_position.x) + ", schedule " + schedule_name() + ")");
  }
}

void set_schedule(const std::string& name, std::uint64_t random_seed) {
  std::lock_guard<std::mutex> lock(launch_mutex);
  if (name == "forward") order = Order::Forward;
  else if (name == "reverse") order = Order::Reverse;
  else if (name == "random") order = Order::Random;
  else throw std::invalid_argument("schedule must be 'forward', 'reverse' or 'random'; got '" + name + "'");
  seed = random_seed;
  launch_count = 0;
}

std::string schedule_name() {
  switch (order) {
    case Order::Forward: return "forward";
    case Order::Reverse: return "reverse";
    case Order::Random: return "random(" + std::to_string(seed) + ")";
  }
  return "?";
}

}  // namespace imm::emu

cudaError_t cudaGetLastError() {
  const cudaError_t error = imm::emu::pending_error;
  imm::emu::pending_error = cudaSuccess;
  return error;
}

const char* cudaGetErrorString(cudaError_t error) {
  // The message of the error just taken by cudaGetLastError (it names the kernel and the cause).
  if (error != cudaSuccess && !imm::emu::pending_message.empty()) return imm::emu::pending_message.c_str();
  return error == cudaSuccess ? "no error" : "unspecified emulated launch failure";
}

cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int) {
  *value = attribute == cudaDevAttrMultiProcessorCount ? imm::emu::kMultiprocessors : 0;
  return cudaSuccess;
}
