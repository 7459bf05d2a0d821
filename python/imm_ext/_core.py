"""Thin bridge to the compiled core `imm_ext._C`: array-library-neutral task launches.

Callers (the torch ops, the numpy/CuPy entry points) own validation and every buffer; this module
only turns arrays into pointers and enum codes. torch is imported first so that the OpenMP runtime
torch ships is the one `_C` shares.
"""
from __future__ import annotations

import torch  # noqa: F401  (load order: torch's libgomp before _C)

from . import _C

try:  # the CUDA kernels compiled for the CPU (IMM_EXT_CUDA_EMULATION=ON builds only; see ops/device.py)
    from . import _C_emu
except ImportError:
    _C_emu = None

# Codes of csrc/common/pair_task.h and csrc/common/dtype.h.
MODE_ROW_SUMS, MODE_MATRIX, MODE_GRADIENT = 0, 1, 2
DTYPE_CODES = {"float32": 0, "float64": 1, "bfloat16": 2, "float16": 3}
KERNEL_CODES = {"laplace": 0, "gaussian": 1, "energy": 2, "imq": 3}

WITH_CUDA: bool = bool(_C.with_cuda)


def dtype_code(dtype) -> int:
    """The csrc/common/dtype.h code of a torch or numpy dtype (or its name: "float32", ...)."""
    return DTYPE_CODES[str(dtype).removeprefix("torch.")]


def pair_task_arguments(mode, dtype_name, kernel_code, groups, dim, rows_ptr, n_rows, sets, bandwidth_ptr,
                        num_bandwidths, distance_scale, eps, out_ptr, tail_rows_ptr=0, n_tail_rows=0,
                        distances_ptr=0) -> tuple:
    """The arguments of `_C.pair_task` for one PairTask. `sets` is a list of (data_ptr, n, weight_ptr,
    stride_g, stride_i, stride_j); tail rows (row sums only) meet the last set alone; kept distances are
    written by row sums and read by gradients (csrc/common/pair_task.h)."""
    return (mode, dtype_code(dtype_name), kernel_code, groups, dim, rows_ptr, n_rows, tail_rows_ptr, n_tail_rows,
            distances_ptr, sets, bandwidth_ptr, num_bandwidths, float(distance_scale), float(eps), out_ptr)


def build_info() -> dict:
    """How the compiled core was built: version, compiler, CUDA (and archs), CPU ISA, OpenMP threads."""
    return dict(_C.build_info())

