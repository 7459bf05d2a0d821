// The pybind11 module imm_ext._C: turns Python integers (pointers, sizes, enum codes) into kernel
// arguments (a PairTask, a ConditioningShape, ...) and hands them to the CPU or CUDA kernels. No
// arithmetic and no validation beyond what keeps the process alive: the Python layer checks
// arguments and owns every buffer.
#include <omp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "common/attention.h"
#include "common/pair_task.h"
#include "cpu/activation_cpu.h"
#include "cpu/conditioning_cpu.h"
#include "cpu/dispatch.h"
#include "cpu/interpolant_cpu.h"
#if defined(IMM_EXT_CUDA_EMULATION)
#include "emulation/schedule.h"
#include "emulation/self_test.h"
#endif
#if defined(IMM_EXT_WITH_CUDA)
#include "cuda/activation_cuda.h"
#include "cuda/attention_cuda.h"
#include "cuda/conditioning_cuda.h"
#include "cuda/interpolant_cuda.h"
#include "cuda/pairwise_cuda.h"
#endif

namespace py = pybind11;

namespace {

// (data pointer, n, weight pointer, weight strides g, i, j)
using ColumnSpec = std::tuple<std::uintptr_t, int64_t, std::uintptr_t, int64_t, int64_t, int64_t>;

void pair_task(int mode, int dtype, int kind, int64_t groups, int64_t dim, std::uintptr_t rows,
               int64_t n_rows, const std::vector<ColumnSpec>& sets, std::uintptr_t bandwidth,
               int num_bandwidths, double distance_scale, double eps, std::uintptr_t out,
               const std::string& device, std::uintptr_t stream, int threads) {
  if (sets.empty() || sets.size() > 2) throw std::invalid_argument("pair_task: one or two column sets");
  if (mode < 0 || mode > 2 || dtype < 0 || dtype > 3 || kind < 0 || kind > 3)
    throw std::invalid_argument("pair_task: enum code out of range");
  imm::PairTask task;
  task.mode = static_cast<imm::PairMode>(mode);
  task.dtype = static_cast<imm::DType>(dtype);
  task.kind = static_cast<imm::KernelKind>(kind);
  task.groups = groups;
  task.dim = dim;
  task.rows = reinterpret_cast<const void*>(rows);
  task.n_rows = n_rows;
  task.num_sets = static_cast<int>(sets.size());
  for (size_t s = 0; s < sets.size(); ++s) {
    auto& set = task.sets[s];
    set.data = reinterpret_cast<const void*>(std::get<0>(sets[s]));
    set.n = std::get<1>(sets[s]);
    set.weight = reinterpret_cast<const void*>(std::get<2>(sets[s]));
    set.stride_g = std::get<3>(sets[s]);
    set.stride_i = std::get<4>(sets[s]);
    set.stride_j = std::get<5>(sets[s]);
  }
  task.bandwidth = reinterpret_cast<const void*>(bandwidth);
  task.num_bandwidths = num_bandwidths;
  task.distance_scale = distance_scale;
  task.eps = eps;
  task.out = reinterpret_cast<void*>(out);
  if (groups == 0 || n_rows == 0) return;

  py::gil_scoped_release release;
  if (device == "cpu") {
    imm::cpu::run_pair_task(task, threads);
  } else if (device == "cuda") {
#if defined(IMM_EXT_WITH_CUDA)
    imm::cuda::run_pair_task(task, stream);
#else
    (void)stream;
    throw std::runtime_error("imm_ext was built without CUDA kernels");
#endif
  } else {
    throw std::invalid_argument("pair_task: device must be 'cpu' or 'cuda'");
  }
}

void check_device(const std::string& device, const char* name) {
  if (device != "cpu" && device != "cuda")
    throw std::invalid_argument(std::string(name) + ": device must be 'cpu' or 'cuda'");
#if !defined(IMM_EXT_WITH_CUDA)
  if (device == "cuda") throw std::runtime_error("imm_ext was built without CUDA kernels");
#endif
}

// x_t, x_r = interpolants of x and noise; see csrc/common/interpolant.h.
void interpolant_pair(int dtype, int64_t batch, int64_t per_sample, int64_t particles, std::uintptr_t x,
                      std::uintptr_t noise, std::uintptr_t coefficients, std::uintptr_t x_t,
                      std::uintptr_t x_r, const std::string& device, std::uintptr_t stream, int threads) {
  if (dtype < 0 || dtype > 3) throw std::invalid_argument("interpolant_pair: dtype code out of range");
  if (batch < 0 || per_sample < 0 || particles < 1 || batch % particles != 0)
    throw std::invalid_argument("interpolant_pair: bad sizes");
  check_device(device, "interpolant_pair");
  const auto dt = static_cast<imm::DType>(dtype);
  const auto* coef = reinterpret_cast<const double*>(coefficients);
  py::gil_scoped_release release;
  if (device == "cpu") {
    imm::cpu::interpolant_pair(dt, batch, per_sample, particles, reinterpret_cast<const void*>(x),
                               reinterpret_cast<const void*>(noise), coef, reinterpret_cast<void*>(x_t),
                               reinterpret_cast<void*>(x_r), threads);
  } else {
#if defined(IMM_EXT_WITH_CUDA)
    imm::cuda::interpolant_pair(dt, batch, per_sample, particles, reinterpret_cast<const void*>(x),
                                reinterpret_cast<const void*>(noise), coef, reinterpret_cast<void*>(x_t),
                                reinterpret_cast<void*>(x_r), stream);
#endif
  }
  (void)stream;
}

// out = c_skip x + c_out G (G guided when g_uncond != 0); see csrc/common/interpolant.h.
void sampler_step(int state_dtype, int g_dtype, int64_t batch, int64_t per_sample, std::uintptr_t x,
                  std::uintptr_t g_cond, std::uintptr_t g_uncond, std::uintptr_t c_skip,
                  std::uintptr_t c_out, double guidance, std::uintptr_t out, const std::string& device,
                  std::uintptr_t stream, int threads) {
  if (state_dtype < 0 || state_dtype > 3 || g_dtype < 0 || g_dtype > 3)
    throw std::invalid_argument("sampler_step: dtype code out of range");
  if (batch < 0 || per_sample < 0) throw std::invalid_argument("sampler_step: bad sizes");
  check_device(device, "sampler_step");
  const auto sd = static_cast<imm::DType>(state_dtype);
  const auto gd = static_cast<imm::DType>(g_dtype);
  const auto* xp = reinterpret_cast<const void*>(x);
  const auto* gc = reinterpret_cast<const void*>(g_cond);
  const auto* gu = reinterpret_cast<const void*>(g_uncond);
  const auto* skip = reinterpret_cast<const double*>(c_skip);
  const auto* scale = reinterpret_cast<const double*>(c_out);
  auto* o = reinterpret_cast<void*>(out);
  py::gil_scoped_release release;
  if (device == "cpu") {
    imm::cpu::sampler_step(sd, gd, batch, per_sample, xp, gc, gu, skip, scale, guidance, o, threads);
  } else {
#if defined(IMM_EXT_WITH_CUDA)
    imm::cuda::sampler_step(sd, gd, batch, per_sample, xp, gc, gu, skip, scale, guidance, o, stream);
#endif
  }
  (void)stream;
}

// ---- conditioning ops (csrc/common/conditioning.h) --------------------------------------------

const imm::cpu::ConditioningKernels& cpu_kernels() { return imm::cpu::conditioning_kernels(); }
const void* in_ptr(std::uintptr_t p) { return reinterpret_cast<const void*>(p); }
void* out_ptr(std::uintptr_t p) { return reinterpret_cast<void*>(p); }

imm::DType dtype_of(int code, const char* name) {
  if (code < 0 || code > 3) throw std::invalid_argument(std::string(name) + ": dtype code out of range");
  return static_cast<imm::DType>(code);
}

imm::ConditioningShape conditioning_shape(int64_t batch, int64_t tokens, int64_t channels, const char* name) {
  if (batch < 0 || tokens < 0 || channels < 0) throw std::invalid_argument(std::string(name) + ": bad sizes");
  return imm::ConditioningShape{batch, tokens, channels};
}

void check_chunk_tokens(int64_t chunk_tokens, const char* name) {
  if (chunk_tokens < 1 || chunk_tokens > imm::kMaxChunkTokens)
    throw std::invalid_argument(std::string(name) + ": chunk_tokens must be in [1, " +
                                std::to_string(imm::kMaxChunkTokens) + "]");
}

void norm_modulate_forward(int dtype, int64_t batch, int64_t tokens, int64_t channels, bool rms, double eps,
                           std::uintptr_t x, std::uintptr_t shift, std::uintptr_t scale, std::uintptr_t out,
                           std::uintptr_t stats, const std::string& device, std::uintptr_t stream, int threads) {
  const char* name = "norm_modulate_forward";
  const auto dt = dtype_of(dtype, name);
  const auto shape = conditioning_shape(batch, tokens, channels, name);
  check_device(device, name);
  py::gil_scoped_release release;
  if (device == "cpu") {
    cpu_kernels().norm_modulate_forward(dt, shape, rms, eps, in_ptr(x), in_ptr(shift), in_ptr(scale), out_ptr(out),
                                        out_ptr(stats), threads);
  } else {
#if defined(IMM_EXT_WITH_CUDA)
    imm::cuda::norm_modulate_forward(dt, shape, rms, eps, in_ptr(x), in_ptr(shift), in_ptr(scale), out_ptr(out),
                                     out_ptr(stats), stream);
#endif
  }
  (void)stream;
}

void norm_modulate_backward(int dtype, int64_t batch, int64_t tokens, int64_t channels, int64_t chunk_tokens,
                            bool rms, std::uintptr_t grad, std::uintptr_t x, std::uintptr_t stats,
                            std::uintptr_t scale, std::uintptr_t grad_x, std::uintptr_t partials,
                            std::uintptr_t grad_shift, std::uintptr_t grad_scale, const std::string& device,
                            std::uintptr_t stream, int threads) {
  const char* name = "norm_modulate_backward";
  const auto dt = dtype_of(dtype, name);
  const auto shape = conditioning_shape(batch, tokens, channels, name);
  check_chunk_tokens(chunk_tokens, name);
  check_device(device, name);
  py::gil_scoped_release release;
  if (device == "cpu") {
    cpu_kernels().norm_modulate_backward(dt, shape, chunk_tokens, rms, in_ptr(grad), in_ptr(x), in_ptr(stats),
                                         in_ptr(scale), out_ptr(grad_x), out_ptr(partials), out_ptr(grad_shift),
                                         out_ptr(grad_scale), threads);
  } else {
#if defined(IMM_EXT_WITH_CUDA)
    imm::cuda::norm_modulate_backward(dt, shape, chunk_tokens, rms, in_ptr(grad), in_ptr(x), in_ptr(stats),
                                      in_ptr(scale), out_ptr(grad_x), out_ptr(partials), out_ptr(grad_shift),
                                      out_ptr(grad_scale), stream);
#endif
  }
  (void)stream;
}

void gate_residual_forward(int dtype, int64_t batch, int64_t tokens, int64_t channels, std::uintptr_t x,
                           std::uintptr_t gate, std::uintptr_t y, std::uintptr_t out, const std::string& device,
                           std::uintptr_t stream, int threads) {
  const char* name = "gate_residual_forward";
  const auto dt = dtype_of(dtype, name);
  const auto shape = conditioning_shape(batch, tokens, channels, name);
  check_device(device, name);
  py::gil_scoped_release release;
  if (device == "cpu") {
    cpu_kernels().gate_residual_forward(dt, shape, in_ptr(x), in_ptr(gate), in_ptr(y), out_ptr(out), threads);
  } else {
#if defined(IMM_EXT_WITH_CUDA)
    imm::cuda::gate_residual_forward(dt, shape, in_ptr(x), in_ptr(gate), in_ptr(y), out_ptr(out), stream);
#endif
  }
  (void)stream;
}

void gate_residual_backward(int dtype, int64_t batch, int64_t tokens, int64_t channels, int64_t chunk_tokens,
                            std::uintptr_t grad, std::uintptr_t gate, std::uintptr_t y, std::uintptr_t grad_y,
                            std::uintptr_t partials, std::uintptr_t grad_gate, const std::string& device,
                            std::uintptr_t stream, int threads) {
  const char* name = "gate_residual_backward";
  const auto dt = dtype_of(dtype, name);
  const auto shape = conditioning_shape(batch, tokens, channels, name);
  check_chunk_tokens(chunk_tokens, name);
  check_device(device, name);
  py::gil_scoped_release release;
  if (device == "cpu") {
    cpu_kernels().gate_residual_backward(dt, shape, chunk_tokens, in_ptr(grad), in_ptr(gate), in_ptr(y),
                                         out_ptr(grad_y), out_ptr(partials), out_ptr(grad_gate), threads);
  } else {
#if defined(IMM_EXT_WITH_CUDA)
    imm::cuda::gate_residual_backward(dt, shape, chunk_tokens, in_ptr(grad), in_ptr(gate), in_ptr(y),
                                      out_ptr(grad_y), out_ptr(partials), out_ptr(grad_gate), stream);
#endif
  }
  (void)stream;
}

void timestep_embedding_forward(int out_dtype, int64_t rows, int64_t dim, double log_max_period, std::uintptr_t c,
                                std::uintptr_t out, const std::string& device, std::uintptr_t stream,
                                int threads) {
  const char* name = "timestep_embedding_forward";
  const auto dt = dtype_of(out_dtype, name);
  if (rows < 0 || dim < 1) throw std::invalid_argument(std::string(name) + ": bad sizes");
  check_device(device, name);
  const auto* times = reinterpret_cast<const double*>(c);
  py::gil_scoped_release release;
  if (device == "cpu") {
    cpu_kernels().timestep_embedding_forward(dt, rows, dim, log_max_period, times, out_ptr(out), threads);
  } else {
#if defined(IMM_EXT_WITH_CUDA)
    imm::cuda::timestep_embedding_forward(dt, rows, dim, log_max_period, times, out_ptr(out), stream);
#endif
  }
  (void)stream;
}

void timestep_embedding_backward(int grad_dtype, int64_t rows, int64_t dim, double log_max_period,
                                 std::uintptr_t c, std::uintptr_t grad, std::uintptr_t grad_c,
                                 const std::string& device, std::uintptr_t stream, int threads) {
  const char* name = "timestep_embedding_backward";
  const auto dt = dtype_of(grad_dtype, name);
  if (rows < 0 || dim < 1) throw std::invalid_argument(std::string(name) + ": bad sizes");
  check_device(device, name);
  const auto* times = reinterpret_cast<const double*>(c);
  auto* grad_times = reinterpret_cast<double*>(grad_c);
  py::gil_scoped_release release;
  if (device == "cpu") {
    cpu_kernels().timestep_embedding_backward(dt, rows, dim, log_max_period, times, in_ptr(grad), grad_times,
                                              threads);
  } else {
#if defined(IMM_EXT_WITH_CUDA)
    imm::cuda::timestep_embedding_backward(dt, rows, dim, log_max_period, times, in_ptr(grad), grad_times, stream);
#endif
  }
  (void)stream;
}

// ---- attention (csrc/common/attention.h) ------------------------------------------------------

// (data pointer, stride_b, stride_h, stride_t) of a (B, H, T, Dh) tensor with a contiguous last dim.
using HeadSpec = std::tuple<std::uintptr_t, int64_t, int64_t, int64_t>;

imm::HeadTensor head_tensor(const HeadSpec& spec) {
  imm::HeadTensor t;
  t.data = reinterpret_cast<void*>(std::get<0>(spec));
  t.stride_b = std::get<1>(spec);
  t.stride_h = std::get<2>(spec);
  t.stride_t = std::get<3>(spec);
  return t;
}

imm::AttentionShape attention_shape(int dtype, int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len,
                                    int64_t head_dim, double scale, const char* name) {
  if (dtype < 0 || dtype > 3) throw std::invalid_argument(std::string(name) + ": dtype code out of range");
  if (batch < 1 || heads < 1 || q_len < 1 || kv_len < 1 || head_dim < 1 || head_dim > imm::kAttentionMaxHeadDim)
    throw std::invalid_argument(std::string(name) + ": bad sizes");
  imm::AttentionShape shape;
  shape.dtype = static_cast<imm::DType>(dtype);
  shape.batch = batch;
  shape.heads = heads;
  shape.q_len = q_len;
  shape.kv_len = kv_len;
  shape.head_dim = head_dim;
  shape.scale = scale;
  return shape;
}

// out = softmax(q k^T * scale) v, and lse when lse != 0; see csrc/common/attention.h.
void attention_forward(int dtype, int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len, int64_t head_dim,
                       double scale, const HeadSpec& q, const HeadSpec& k, const HeadSpec& v, const HeadSpec& out,
                       std::uintptr_t lse, const std::string& device, std::uintptr_t stream, int threads) {
  check_device(device, "attention_forward");
  imm::AttentionForwardTask task;
  task.shape = attention_shape(dtype, batch, heads, q_len, kv_len, head_dim, scale, "attention_forward");
  task.q = head_tensor(q);
  task.k = head_tensor(k);
  task.v = head_tensor(v);
  task.out = head_tensor(out);
  task.lse = reinterpret_cast<void*>(lse);
  py::gil_scoped_release release;
  if (device == "cpu") {
    imm::cpu::attention_forward(task, threads);
  } else {
#if defined(IMM_EXT_WITH_CUDA)
    imm::cuda::attention_forward(task, stream);
#endif
  }
  (void)stream;
}

// grad_q, grad_k, grad_v of attention_forward; see csrc/common/attention.h.
void attention_backward(int dtype, int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len, int64_t head_dim,
                        double scale, const HeadSpec& q, const HeadSpec& k, const HeadSpec& v, const HeadSpec& out,
                        const HeadSpec& grad_out, std::uintptr_t lse, const HeadSpec& grad_q, const HeadSpec& grad_k,
                        const HeadSpec& grad_v, const std::string& device, std::uintptr_t stream, int threads) {
  check_device(device, "attention_backward");
  if (lse == 0) throw std::invalid_argument("attention_backward: lse is required");
  imm::AttentionBackwardTask task;
  task.shape = attention_shape(dtype, batch, heads, q_len, kv_len, head_dim, scale, "attention_backward");
  task.q = head_tensor(q);
  task.k = head_tensor(k);
  task.v = head_tensor(v);
  task.out = head_tensor(out);
  task.grad_out = head_tensor(grad_out);
  task.lse = reinterpret_cast<const void*>(lse);
  task.grad_q = head_tensor(grad_q);
  task.grad_k = head_tensor(grad_k);
  task.grad_v = head_tensor(grad_v);
  py::gil_scoped_release release;
  if (device == "cpu") {
    imm::cpu::attention_backward(task, threads);
  } else {
#if defined(IMM_EXT_WITH_CUDA)
    imm::cuda::attention_backward(task, stream);
#endif
  }
  (void)stream;
}

py::dict build_info() {
  py::dict info;
  info["version"] = IMM_EXT_VERSION;
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#else
  info["compiler"] = "unknown";
#endif
#if defined(IMM_EXT_WITH_CUDA)
  info["cuda"] = true;
  info["cuda_archs"] = IMM_EXT_CUDA_ARCHS;
  info["cuda_version"] = IMM_EXT_CUDA_VERSION;
#else
  info["cuda"] = false;
  info["cuda_archs"] = "";
  info["cuda_version"] = "";
#endif
  info["cpu_isa"] = imm::cpu::selected_isa();
  info["openmp_threads"] = omp_get_max_threads();
#if defined(IMM_EXT_CUDA_EMULATION)
  info["cuda_emulation"] = true;
#else
  info["cuda_emulation"] = false;
#endif
  return info;
}


// ---- fused activations (csrc/common/activation.h) ---------------------------------------------

void check_count(int64_t n, const char* name) {
  if (n < 0) throw std::invalid_argument(std::string(name) + ": bad size");
}

void gelu_tanh_forward(int dtype, int64_t n, std::uintptr_t x, std::uintptr_t out, const std::string& device,
                       std::uintptr_t stream, int threads) {
  const char* name = "gelu_tanh_forward";
  const auto dt = dtype_of(dtype, name);
  check_count(n, name);
  check_device(device, name);
  py::gil_scoped_release release;
  if (device == "cpu") {
    imm::cpu::activation_kernels().gelu_tanh_forward(dt, n, in_ptr(x), out_ptr(out), threads);
  } else {
#if defined(IMM_EXT_WITH_CUDA)
    imm::cuda::gelu_tanh_forward(dt, n, in_ptr(x), out_ptr(out), stream);
#endif
  }
  (void)stream;
}

void gelu_tanh_backward(int dtype, int64_t n, std::uintptr_t grad, std::uintptr_t x, std::uintptr_t grad_x,
                        const std::string& device, std::uintptr_t stream, int threads) {
  const char* name = "gelu_tanh_backward";
  const auto dt = dtype_of(dtype, name);
  check_count(n, name);
  check_device(device, name);
  py::gil_scoped_release release;
  if (device == "cpu") {
    imm::cpu::activation_kernels().gelu_tanh_backward(dt, n, in_ptr(grad), in_ptr(x), out_ptr(grad_x), threads);
  } else {
#if defined(IMM_EXT_WITH_CUDA)
    imm::cuda::gelu_tanh_backward(dt, n, in_ptr(grad), in_ptr(x), out_ptr(grad_x), stream);
#endif
  }
  (void)stream;
}
}  // namespace

#if !defined(IMM_EXT_MODULE_NAME)
#define IMM_EXT_MODULE_NAME _C
#endif

PYBIND11_MODULE(IMM_EXT_MODULE_NAME, m) {
  m.doc() = "imm_ext compiled core: pairwise, interpolant, conditioning and attention kernels on raw pointers (CPU and CUDA)";
  m.def("pair_task", &pair_task, "Run one PairTask (see csrc/common/pair_task.h)", py::arg("mode"),
        py::arg("dtype"), py::arg("kind"), py::arg("groups"), py::arg("dim"), py::arg("rows"),
        py::arg("n_rows"), py::arg("sets"), py::arg("bandwidth"), py::arg("num_bandwidths"),
        py::arg("distance_scale"), py::arg("eps"), py::arg("out"), py::arg("device"),
        py::arg("stream"), py::arg("threads"));
  m.def("interpolant_pair", &interpolant_pair, "x_t, x_r from x and noise (csrc/common/interpolant.h)",
        py::arg("dtype"), py::arg("batch"), py::arg("per_sample"), py::arg("particles"), py::arg("x"),
        py::arg("noise"), py::arg("coefficients"), py::arg("x_t"), py::arg("x_r"), py::arg("device"),
        py::arg("stream"), py::arg("threads"));
  m.def("sampler_step", &sampler_step, "x_s = c_skip x + c_out G (csrc/common/interpolant.h)",
        py::arg("state_dtype"), py::arg("g_dtype"), py::arg("batch"), py::arg("per_sample"), py::arg("x"),
        py::arg("g_cond"), py::arg("g_uncond"), py::arg("c_skip"), py::arg("c_out"), py::arg("guidance"),
        py::arg("out"), py::arg("device"), py::arg("stream"), py::arg("threads"));
  m.def("norm_modulate_forward", &norm_modulate_forward,
        "out = norm(x) * (1 + scale) + shift and row stats (csrc/common/conditioning.h)", py::arg("dtype"),
        py::arg("batch"), py::arg("tokens"), py::arg("channels"), py::arg("rms"), py::arg("eps"), py::arg("x"),
        py::arg("shift"), py::arg("scale"), py::arg("out"), py::arg("stats"), py::arg("device"), py::arg("stream"),
        py::arg("threads"));
  m.def("norm_modulate_backward", &norm_modulate_backward,
        "grad_x, grad_shift, grad_scale of norm + modulate (csrc/common/conditioning.h)", py::arg("dtype"),
        py::arg("batch"), py::arg("tokens"), py::arg("channels"), py::arg("chunk_tokens"), py::arg("rms"),
        py::arg("grad"), py::arg("x"), py::arg("stats"), py::arg("scale"), py::arg("grad_x"), py::arg("partials"),
        py::arg("grad_shift"), py::arg("grad_scale"), py::arg("device"), py::arg("stream"), py::arg("threads"));
  m.def("gate_residual_forward", &gate_residual_forward, "out = x + gate * y (csrc/common/conditioning.h)",
        py::arg("dtype"), py::arg("batch"), py::arg("tokens"), py::arg("channels"), py::arg("x"), py::arg("gate"),
        py::arg("y"), py::arg("out"), py::arg("device"), py::arg("stream"), py::arg("threads"));
  m.def("gate_residual_backward", &gate_residual_backward,
        "grad_y and grad_gate of gate + residual (csrc/common/conditioning.h)", py::arg("dtype"), py::arg("batch"),
        py::arg("tokens"), py::arg("channels"), py::arg("chunk_tokens"), py::arg("grad"), py::arg("gate"),
        py::arg("y"), py::arg("grad_y"), py::arg("partials"), py::arg("grad_gate"), py::arg("device"),
        py::arg("stream"), py::arg("threads"));
  m.def("timestep_embedding_forward", &timestep_embedding_forward,
        "sinusoidal embedding of float64 times (csrc/common/conditioning.h)", py::arg("out_dtype"),
        py::arg("rows"), py::arg("dim"), py::arg("log_max_period"), py::arg("c"), py::arg("out"),
        py::arg("device"), py::arg("stream"), py::arg("threads"));
  m.def("timestep_embedding_backward", &timestep_embedding_backward,
        "d loss / d c of the sinusoidal embedding (csrc/common/conditioning.h)", py::arg("grad_dtype"),
        py::arg("rows"), py::arg("dim"), py::arg("log_max_period"), py::arg("c"), py::arg("grad"),
        py::arg("grad_c"), py::arg("device"), py::arg("stream"), py::arg("threads"));
  m.def("gelu_tanh_forward", &gelu_tanh_forward, "out = gelu_tanh(x) (csrc/common/activation.h)",
        py::arg("dtype"), py::arg("n"), py::arg("x"), py::arg("out"), py::arg("device"), py::arg("stream"),
        py::arg("threads"));
  m.def("gelu_tanh_backward", &gelu_tanh_backward, "grad_x = grad * gelu_tanh'(x) (csrc/common/activation.h)",
        py::arg("dtype"), py::arg("n"), py::arg("grad"), py::arg("x"), py::arg("grad_x"), py::arg("device"),
        py::arg("stream"), py::arg("threads"));
  m.def("attention_forward", &attention_forward, "Fused attention forward (csrc/common/attention.h)",
        py::arg("dtype"), py::arg("batch"), py::arg("heads"), py::arg("q_len"), py::arg("kv_len"),
        py::arg("head_dim"), py::arg("scale"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::arg("lse"), py::arg("device"), py::arg("stream"), py::arg("threads"));
  m.def("attention_backward", &attention_backward, "Fused attention backward (csrc/common/attention.h)",
        py::arg("dtype"), py::arg("batch"), py::arg("heads"), py::arg("q_len"), py::arg("kv_len"),
        py::arg("head_dim"), py::arg("scale"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::arg("grad_out"), py::arg("lse"), py::arg("grad_q"), py::arg("grad_k"), py::arg("grad_v"),
        py::arg("device"), py::arg("stream"), py::arg("threads"));
  m.def("build_info", &build_info, "How this module was built");
#if defined(IMM_EXT_WITH_CUDA)
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
#if defined(IMM_EXT_CUDA_EMULATION)
  m.def("set_schedule", &imm::emu::set_schedule,
        "Order of the emulated CUDA launches' blocks, warps and lanes: 'forward', 'reverse' or 'random'",
        py::arg("order"), py::arg("seed") = 0);
  m.def("schedule", &imm::emu::schedule_name, "The emulated launches' current order");
  m.def("self_test", &imm::emu::self_test, "Run one of the emulation's deliberately broken kernels",
        py::arg("name"));
#endif
}
