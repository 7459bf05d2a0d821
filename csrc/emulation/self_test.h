// Deliberately broken kernels for the emulated launch's own tests (self_test.cpp).
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace imm::emu {

// Runs the named case: (the launch's error message, "" when it ran clean; what the kernel wrote).
std::pair<std::string, std::vector<float>> self_test(const std::string& name);

}  // namespace imm::emu
