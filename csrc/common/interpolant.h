// The two elementwise combinations of the interpolant kernels, shared by the CPU and CUDA paths.
//
//   interpolant pair: x_t = alpha_t x + sigma_t n,  x_r = alpha_r x + sigma_r n   (imm-method §3.4)
//   sampler step:     x_s = c_skip x + c_out G,  G = g_c or g_u + w (g_c - g_u)    (imm-method §4.4)
// Everything is evaluated in the accumulation type T of the caller.
#pragma once

#include "kernel_math.h"

namespace imm {

template <class T>
IMM_HD void interpolant_combine(T x, T n, T alpha_t, T sigma_t, T alpha_r, T sigma_r, T& x_t, T& x_r) {
  x_t = alpha_t * x + sigma_t * n;
  x_r = alpha_r * x + sigma_r * n;
}

// Guided output G = g_u + w (g_c - g_u) (classifier-free guidance on the raw network output).
template <class T>
IMM_HD T guided_output(T g_cond, T g_uncond, T guidance) {
  return g_uncond + guidance * (g_cond - g_uncond);
}

template <class T>
IMM_HD T sampler_combine(T x, T g, T c_skip, T c_out) {
  return c_skip * x + c_out * g;
}

}  // namespace imm
