// The order in which the emulated CUDA launches run their blocks, warps and lanes (cuda_runtime.h).
//
// A kernel that is correct on a GPU gives the same result in every order; one that relies on an
// order the hardware does not promise (a missing __syncthreads, a read of another block's output)
// fails in at least one of them. Warps always run greedily (each until it blocks), so a shuffle
// never acts as a hidden barrier of the block.
#pragma once

#include <cstdint>
#include <string>

namespace imm::emu {

enum class Order { Forward, Reverse, Random };

// "forward", "reverse" or "random" (then seeded with `seed`); std::invalid_argument otherwise.
void set_schedule(const std::string& order, std::uint64_t seed);
std::string schedule_name();

}  // namespace imm::emu
