// The pybind11 module imm_ext._C: turns Python integers (pointers, sizes, enum codes) into a
// PairTask and hands it to the CPU or CUDA kernels. No arithmetic and no validation beyond what
// keeps the process alive: the Python layer checks arguments and owns every buffer.
#include <omp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "common/pair_task.h"
#include "cpu/dispatch.h"
#if defined(IMM_EXT_WITH_CUDA)
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
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "imm_ext compiled core: pairwise kernels on raw pointers (CPU and CUDA)";
  m.def("pair_task", &pair_task, "Run one PairTask (see csrc/common/pair_task.h)", py::arg("mode"),
        py::arg("dtype"), py::arg("kind"), py::arg("groups"), py::arg("dim"), py::arg("rows"),
        py::arg("n_rows"), py::arg("sets"), py::arg("bandwidth"), py::arg("num_bandwidths"),
        py::arg("distance_scale"), py::arg("eps"), py::arg("out"), py::arg("device"),
        py::arg("stream"), py::arg("threads"));
  m.def("build_info", &build_info, "How this module was built");
#if defined(IMM_EXT_WITH_CUDA)
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
