// The pybind11 module imm_ext._C: turns Python integers (pointers, sizes, enum codes) into kernel
// arguments (a PairTask, a TokenShape, ...) and hands them to the CPU or CUDA kernels. No
// arithmetic and no validation beyond what keeps the process alive: the Python layer checks
// arguments and owns every buffer. Each function states its arguments once; bind() adds the shared
// (device, stream, threads) frame.
#include <omp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/activation.h"
#include "common/attention.h"
#include "common/embedding.h"
#include "common/norm.h"
#include "common/pair_task.h"
#include "common/qk_norm.h"
#include "common/residual.h"
#include "cpu/dispatch.h"
#include "cpu/interpolant_cpu.h"
#if defined(IMM_EXT_CUDA_EMULATION)
#include "emulation/schedule.h"
#include "emulation/self_test.h"
#endif
#if defined(IMM_EXT_WITH_CUDA)
#include "cuda/attention_cuda.h"
#include "cuda/interpolant_cuda.h"
#include "cuda/pairwise_cuda.h"
#endif

namespace py = pybind11;

namespace {

// ---- the frame every binding shares ------------------------------------------------------------

#if defined(IMM_EXT_WITH_CUDA)
#define IMM_CUDA_KERNEL(function) (&function)
#else
#define IMM_CUDA_KERNEL(function) nullptr
#endif

// Where one call runs, from the three trailing arguments of every binding (device, stream, threads),
// and the name its errors carry.
struct Target {
  const char* name;
  bool cuda;
  std::uintptr_t stream;
  int threads;

  // cpu(args..., threads) or cuda(args..., stream): every CPU kernel takes the OpenMP thread count
  // last, every CUDA kernel its cudaStream_t as an integer.
  template <class CpuKernel, class CudaKernel, class... Args>
  void run(CpuKernel cpu, CudaKernel cuda, Args... args) const {
    if (!this->cuda) return cpu(args..., threads);
    if constexpr (std::is_null_pointer_v<CudaKernel>) {
      throw std::runtime_error("imm_ext was built without CUDA kernels");
    } else {
      cuda(args..., stream);
    }
  }

  imm::DType dtype(int code) const {
    if (code < 0 || code > 3) throw std::invalid_argument(std::string(name) + ": dtype code out of range");
    return static_cast<imm::DType>(code);
  }

  void require(bool condition, const char* what) const {
    if (!condition) throw std::invalid_argument(std::string(name) + ": " + what);
  }
};

// Binds kernel(target, args...) as name(args..., device, stream, threads): checks the device and runs
// the kernel with the GIL released. Python passes every argument positionally (ops/device.py).
template <class... Args>
void bind(py::module_& m, const char* name, void (*kernel)(const Target&, Args...), const char* doc) {
  m.def(name, [name, kernel](Args... args, const std::string& device, std::uintptr_t stream, int threads) {
    if (device != "cpu" && device != "cuda")
      throw std::invalid_argument(std::string(name) + ": device must be 'cpu' or 'cuda'");
#if !defined(IMM_EXT_WITH_CUDA)
    if (device == "cuda") throw std::runtime_error("imm_ext was built without CUDA kernels");
#endif
    const Target target{name, device == "cuda", stream, threads};
    py::gil_scoped_release release;
    kernel(target, args...);
  }, doc);
}

const void* in_ptr(std::uintptr_t p) { return reinterpret_cast<const void*>(p); }
void* out_ptr(std::uintptr_t p) { return reinterpret_cast<void*>(p); }
const double* in_f64(std::uintptr_t p) { return reinterpret_cast<const double*>(p); }

// ---- pairwise kernels (csrc/common/pair_task.h) ------------------------------------------------

// (data pointer, n, weight pointer, weight strides g, i, j)
using ColumnSpec = std::tuple<std::uintptr_t, int64_t, std::uintptr_t, int64_t, int64_t, int64_t>;

void pair_task(const Target& on, int mode, int dtype, int kind, int64_t groups, int64_t dim, std::uintptr_t rows,
               int64_t n_rows, std::uintptr_t tail_rows, int64_t n_tail_rows, std::uintptr_t distances,
               std::vector<ColumnSpec> sets,
               std::uintptr_t bandwidth, int num_bandwidths, double distance_scale, double eps, std::uintptr_t out) {
  on.require(!sets.empty() && sets.size() <= 2, "one or two column sets");
  on.require(mode >= 0 && mode <= 2 && kind >= 0 && kind <= 3, "enum code out of range");
  on.require(n_tail_rows >= 0 && (n_tail_rows == 0 || mode == 0), "tail rows are for row sums only");
  on.require(distances == 0 || mode != 1, "kept distances are for row sums and gradients");
  imm::PairTask task;
  task.mode = static_cast<imm::PairMode>(mode);
  task.dtype = on.dtype(dtype);
  task.kind = static_cast<imm::KernelKind>(kind);
  task.groups = groups;
  task.dim = dim;
  task.rows = in_ptr(rows);
  task.n_rows = n_rows;
  task.tail_rows = in_ptr(tail_rows);
  task.n_tail_rows = n_tail_rows;
  task.num_sets = static_cast<int>(sets.size());
  for (size_t s = 0; s < sets.size(); ++s) {
    auto& set = task.sets[s];
    set.data = in_ptr(std::get<0>(sets[s]));
    set.n = std::get<1>(sets[s]);
    set.weight = in_ptr(std::get<2>(sets[s]));
    set.stride_g = std::get<3>(sets[s]);
    set.stride_i = std::get<4>(sets[s]);
    set.stride_j = std::get<5>(sets[s]);
  }
  task.bandwidth = in_ptr(bandwidth);
  task.num_bandwidths = num_bandwidths;
  task.distance_scale = distance_scale;
  task.eps = eps;
  task.out = out_ptr(out);
  task.distances = out_ptr(distances);
  if (groups == 0 || task.out_rows() == 0) return;
  on.run(imm::cpu::run_pair_task, IMM_CUDA_KERNEL(imm::cuda::run_pair_task), std::cref(task));
}

// ---- interpolant and sampler updates (csrc/common/interpolant.h) -------------------------------

// x_t, x_r = interpolants of x and noise.
void interpolant_pair(const Target& on, int dtype, int64_t batch, int64_t per_sample, int64_t particles,
                      std::uintptr_t x, std::uintptr_t noise, std::uintptr_t coefficients, std::uintptr_t x_t,
                      std::uintptr_t x_r) {
  on.require(batch >= 0 && per_sample >= 0 && particles >= 1 && batch % particles == 0, "bad sizes");
  on.run(imm::cpu::interpolant_pair, IMM_CUDA_KERNEL(imm::cuda::interpolant_pair), on.dtype(dtype), batch,
         per_sample, particles, in_ptr(x), in_ptr(noise), in_f64(coefficients), out_ptr(x_t), out_ptr(x_r));
}

// out = c_skip x + c_out G (G guided when g_uncond != 0).
void sampler_step(const Target& on, int state_dtype, int g_dtype, int64_t batch, int64_t per_sample,
                  std::uintptr_t x, std::uintptr_t g_cond, std::uintptr_t g_uncond, std::uintptr_t c_skip,
                  std::uintptr_t c_out, double guidance, std::uintptr_t out) {
  on.require(batch >= 0 && per_sample >= 0, "bad sizes");
  on.run(imm::cpu::sampler_step, IMM_CUDA_KERNEL(imm::cuda::sampler_step), on.dtype(state_dtype),
         on.dtype(g_dtype), batch, per_sample, in_ptr(x), in_ptr(g_cond), in_ptr(g_uncond), in_f64(c_skip),
         in_f64(c_out), guidance, out_ptr(out));
}

// ---- the DiT block's norm, residual and embedding ops (csrc/common/norm.h, residual.h, embedding.h) --

imm::TokenShape rows_shape(const Target& on, int64_t batch, int64_t tokens, int64_t channels) {
  on.require(batch >= 0 && tokens >= 0 && channels >= 0, "bad sizes");
  return imm::TokenShape{batch, tokens, channels};
}

void check_chunk_tokens(const Target& on, int64_t chunk_tokens) {
  if (chunk_tokens < 1 || chunk_tokens > imm::kMaxChunkTokens)
    throw std::invalid_argument(std::string(on.name) + ": chunk_tokens must be in [1, " +
                                std::to_string(imm::kMaxChunkTokens) + "]");
}

void norm_modulate_forward(const Target& on, int dtype, int64_t batch, int64_t tokens, int64_t channels, bool rms,
                           double eps, std::uintptr_t x, std::uintptr_t shift, std::uintptr_t scale,
                           std::uintptr_t out, std::uintptr_t stats) {
  on.run(imm::cpu::norm_modulate_forward, IMM_CUDA_KERNEL(imm::cuda::norm_modulate_forward), on.dtype(dtype),
         rows_shape(on, batch, tokens, channels), rms, eps, in_ptr(x), in_ptr(shift), in_ptr(scale), out_ptr(out),
         out_ptr(stats));
}

void norm_modulate_backward(const Target& on, int dtype, int64_t batch, int64_t tokens, int64_t channels,
                            int64_t chunk_tokens, bool rms, std::uintptr_t grad, std::uintptr_t x,
                            std::uintptr_t stats, std::uintptr_t scale, std::uintptr_t grad_x,
                            std::uintptr_t partials, std::uintptr_t grad_shift, std::uintptr_t grad_scale) {
  check_chunk_tokens(on, chunk_tokens);
  on.run(imm::cpu::norm_modulate_backward, IMM_CUDA_KERNEL(imm::cuda::norm_modulate_backward),
         on.dtype(dtype), rows_shape(on, batch, tokens, channels), chunk_tokens, rms, in_ptr(grad), in_ptr(x),
         in_ptr(stats), in_ptr(scale), out_ptr(grad_x), out_ptr(partials), out_ptr(grad_shift),
         out_ptr(grad_scale));
}

void gate_residual_forward(const Target& on, int dtype, int64_t batch, int64_t tokens, int64_t channels,
                           std::uintptr_t x, std::uintptr_t gate, std::uintptr_t y, std::uintptr_t out) {
  on.run(imm::cpu::gate_residual_forward, IMM_CUDA_KERNEL(imm::cuda::gate_residual_forward), on.dtype(dtype),
         rows_shape(on, batch, tokens, channels), in_ptr(x), in_ptr(gate), in_ptr(y), out_ptr(out));
}

void gate_residual_backward(const Target& on, int dtype, int64_t batch, int64_t tokens, int64_t channels,
                            int64_t chunk_tokens, std::uintptr_t grad, std::uintptr_t gate, std::uintptr_t y,
                            std::uintptr_t grad_y, std::uintptr_t partials, std::uintptr_t grad_gate) {
  check_chunk_tokens(on, chunk_tokens);
  on.run(imm::cpu::gate_residual_backward, IMM_CUDA_KERNEL(imm::cuda::gate_residual_backward),
         on.dtype(dtype), rows_shape(on, batch, tokens, channels), chunk_tokens, in_ptr(grad), in_ptr(gate),
         in_ptr(y), out_ptr(grad_y), out_ptr(partials), out_ptr(grad_gate));
}

void timestep_embedding_forward(const Target& on, int out_dtype, int64_t rows, int64_t dim, double log_max_period,
                                std::uintptr_t c, std::uintptr_t out) {
  on.require(rows >= 0 && dim >= 1, "bad sizes");
  on.run(imm::cpu::timestep_embedding_forward, IMM_CUDA_KERNEL(imm::cuda::timestep_embedding_forward),
         on.dtype(out_dtype), rows, dim, log_max_period, in_f64(c), out_ptr(out));
}

void timestep_embedding_backward(const Target& on, int grad_dtype, int64_t rows, int64_t dim,
                                 double log_max_period, std::uintptr_t c, std::uintptr_t grad,
                                 std::uintptr_t grad_c) {
  on.require(rows >= 0 && dim >= 1, "bad sizes");
  on.run(imm::cpu::timestep_embedding_backward, IMM_CUDA_KERNEL(imm::cuda::timestep_embedding_backward),
         on.dtype(grad_dtype), rows, dim, log_max_period, in_f64(c), in_ptr(grad),
         reinterpret_cast<double*>(grad_c));
}

// ---- activations (csrc/common/activation.h) ----------------------------------------------------

void gelu_tanh_forward(const Target& on, int dtype, int64_t n, std::uintptr_t x, std::uintptr_t out) {
  on.require(n >= 0, "bad size");
  on.run(imm::cpu::gelu_tanh_forward, IMM_CUDA_KERNEL(imm::cuda::gelu_tanh_forward),
         on.dtype(dtype), n, in_ptr(x), out_ptr(out));
}

void gelu_tanh_backward(const Target& on, int dtype, int64_t n, std::uintptr_t grad, std::uintptr_t x,
                        std::uintptr_t grad_x) {
  on.require(n >= 0, "bad size");
  on.run(imm::cpu::gelu_tanh_backward, IMM_CUDA_KERNEL(imm::cuda::gelu_tanh_backward),
         on.dtype(dtype), n, in_ptr(grad), in_ptr(x), out_ptr(grad_x));
}

// ---- qk-norm (csrc/common/qk_norm.h) -----------------------------------------------------------

imm::QkNormShape qk_norm_shape(const Target& on, int64_t batch, int64_t tokens, int64_t heads, int64_t head_dim) {
  on.require(batch >= 0 && tokens >= 0 && heads >= 1 && head_dim >= 1, "bad sizes");
  return imm::QkNormShape{batch, tokens, heads, head_dim};
}

void qk_norm_forward(const Target& on, int dtype, int64_t batch, int64_t tokens, int64_t heads, int64_t head_dim,
                     double eps, std::uintptr_t qkv, std::uintptr_t q_weight, std::uintptr_t k_weight,
                     std::uintptr_t out_q, std::uintptr_t out_k, std::uintptr_t stats) {
  on.run(imm::cpu::qk_norm_forward, IMM_CUDA_KERNEL(imm::cuda::qk_norm_forward), on.dtype(dtype),
         qk_norm_shape(on, batch, tokens, heads, head_dim), eps, in_ptr(qkv), in_ptr(q_weight), in_ptr(k_weight),
         out_ptr(out_q), out_ptr(out_k), out_ptr(stats));
}

void qk_norm_backward(const Target& on, int dtype, int64_t batch, int64_t tokens, int64_t heads, int64_t head_dim,
                      int64_t chunk_rows, std::uintptr_t grad_q, std::uintptr_t grad_k, std::uintptr_t qkv,
                      std::uintptr_t q_weight, std::uintptr_t k_weight, std::uintptr_t stats, std::uintptr_t grad_qkv,
                      std::uintptr_t partials) {
  on.require(chunk_rows >= 1 && chunk_rows <= imm::kQkNormMaxChunkRows, "chunk_rows out of range");
  on.run(imm::cpu::qk_norm_backward, IMM_CUDA_KERNEL(imm::cuda::qk_norm_backward), on.dtype(dtype),
         qk_norm_shape(on, batch, tokens, heads, head_dim), chunk_rows, in_ptr(grad_q), in_ptr(grad_k), in_ptr(qkv),
         in_ptr(q_weight), in_ptr(k_weight), in_ptr(stats), out_ptr(grad_qkv), out_ptr(partials));
}

// ---- attention (csrc/common/attention.h) -------------------------------------------------------

// (data pointer, stride_b, stride_h, stride_t) of a (B, H, T, Dh) tensor with a contiguous last dim.
using HeadSpec = std::tuple<std::uintptr_t, int64_t, int64_t, int64_t>;

imm::HeadTensor head_tensor(const HeadSpec& spec) {
  imm::HeadTensor t;
  t.data = out_ptr(std::get<0>(spec));
  t.stride_b = std::get<1>(spec);
  t.stride_h = std::get<2>(spec);
  t.stride_t = std::get<3>(spec);
  return t;
}

imm::AttentionShape attention_shape(const Target& on, int dtype, int64_t batch, int64_t heads, int64_t q_len,
                                    int64_t kv_len, int64_t head_dim, double scale) {
  on.require(batch >= 1 && heads >= 1 && q_len >= 1 && kv_len >= 1 && head_dim >= 1 &&
                 head_dim <= imm::kAttentionMaxHeadDim,
             "bad sizes");
  imm::AttentionShape shape;
  shape.dtype = on.dtype(dtype);
  shape.batch = batch;
  shape.heads = heads;
  shape.q_len = q_len;
  shape.kv_len = kv_len;
  shape.head_dim = head_dim;
  shape.scale = scale;
  return shape;
}

// out = softmax(q k^T * scale) v, and lse when lse != 0.
void attention_forward(const Target& on, int dtype, int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len,
                       int64_t head_dim, double scale, HeadSpec q, HeadSpec k, HeadSpec v, HeadSpec out,
                       std::uintptr_t lse) {
  const imm::AttentionForwardTask task{attention_shape(on, dtype, batch, heads, q_len, kv_len, head_dim, scale),
                                       head_tensor(q), head_tensor(k), head_tensor(v), head_tensor(out), out_ptr(lse)};
  on.run(imm::cpu::attention_forward, IMM_CUDA_KERNEL(imm::cuda::attention_forward), std::cref(task));
}

// grad_q, grad_k, grad_v of attention_forward.
void attention_backward(const Target& on, int dtype, int64_t batch, int64_t heads, int64_t q_len, int64_t kv_len,
                        int64_t head_dim, double scale, HeadSpec q, HeadSpec k, HeadSpec v, HeadSpec out,
                        HeadSpec grad_out, std::uintptr_t lse, HeadSpec grad_q, HeadSpec grad_k, HeadSpec grad_v) {
  on.require(lse != 0, "lse is required");
  const imm::AttentionBackwardTask task{attention_shape(on, dtype, batch, heads, q_len, kv_len, head_dim, scale),
                                        head_tensor(q), head_tensor(k), head_tensor(v), head_tensor(out),
                                        head_tensor(grad_out), head_tensor(grad_q), head_tensor(grad_k),
                                        head_tensor(grad_v), in_ptr(lse)};
  on.run(imm::cpu::attention_backward, IMM_CUDA_KERNEL(imm::cuda::attention_backward), std::cref(task));
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
}  // namespace

#if !defined(IMM_EXT_MODULE_NAME)
#define IMM_EXT_MODULE_NAME _C
#endif

PYBIND11_MODULE(IMM_EXT_MODULE_NAME, m) {
  m.doc() = "imm_ext compiled core: pairwise, interpolant, norm, residual, embedding, activation and attention "
            "kernels on raw pointers (CPU and CUDA); every function takes (..., device, stream, threads)";
  bind(m, "pair_task", pair_task, "Run one PairTask (csrc/common/pair_task.h)");
  bind(m, "interpolant_pair", interpolant_pair, "x_t, x_r from x and noise (csrc/common/interpolant.h)");
  bind(m, "sampler_step", sampler_step, "x_s = c_skip x + c_out G (csrc/common/interpolant.h)");
  bind(m, "norm_modulate_forward", norm_modulate_forward,
       "out = norm(x) * (1 + scale) + shift and row stats (csrc/common/norm.h)");
  bind(m, "norm_modulate_backward", norm_modulate_backward,
       "grad_x, grad_shift, grad_scale of norm + modulate (csrc/common/norm.h)");
  bind(m, "gate_residual_forward", gate_residual_forward, "out = x + gate * y (csrc/common/residual.h)");
  bind(m, "gate_residual_backward", gate_residual_backward,
       "grad_y and grad_gate of gate + residual (csrc/common/residual.h)");
  bind(m, "timestep_embedding_forward", timestep_embedding_forward,
       "sinusoidal embedding of float64 times (csrc/common/embedding.h)");
  bind(m, "timestep_embedding_backward", timestep_embedding_backward,
       "d loss / d c of the sinusoidal embedding (csrc/common/embedding.h)");
  bind(m, "gelu_tanh_forward", gelu_tanh_forward, "out = gelu_tanh(x) (csrc/common/activation.h)");
  bind(m, "gelu_tanh_backward", gelu_tanh_backward, "grad_x = grad * gelu_tanh'(x) (csrc/common/activation.h)");
  bind(m, "qk_norm_forward", qk_norm_forward, "RMSNorm of q and k from the qkv projection (csrc/common/qk_norm.h)");
  bind(m, "qk_norm_backward", qk_norm_backward, "grad_qkv and grad_w partials of qk-norm (csrc/common/qk_norm.h)");
  bind(m, "attention_forward", attention_forward, "Fused attention forward (csrc/common/attention.h)");
  bind(m, "attention_backward", attention_backward, "Fused attention backward (csrc/common/attention.h)");
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
