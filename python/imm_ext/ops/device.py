"""Where the compiled kernels run: which tensors have one, and how a call reaches it.

CPU calls get torch's intra-op thread count; CUDA calls run under the tensor's device guard on
torch's current stream. Tensors elsewhere (CUDA without compiled kernels, MPS, ...) take each op's
pure-PyTorch path.

Inside `emulated_cuda()` (builds with IMM_EXT_CUDA_EMULATION=ON), calls on CPU tensors go to the CUDA
kernels instead, compiled for the CPU in `imm_ext._C_emu` (csrc/emulation): the exact CUDA sources run
with every CUDA thread as a fiber, so tests and `imm-ext doctor` exercise them without a GPU.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .. import _core

_emulated = None  # the emulated module while emulated_cuda() is active


def has_kernel(t: torch.Tensor) -> bool:
    """Whether the compiled core serves t's device."""
    return t.device.type == "cpu" or (t.device.type == "cuda" and _core.WITH_CUDA)


def kernel_device_type(t: torch.Tensor) -> str:
    """The kind of kernel that serves t: "cuda" for CPU tensors inside emulated_cuda()."""
    return "cuda" if _emulated is not None and t.device.type == "cpu" else t.device.type


def run_kernel(fn, device: torch.device, *args) -> None:
    """fn(*args, device, stream, threads) on `device`, a device with a kernel; `fn` is a function of
    imm_ext._C (csrc/bindings.cpp), which takes every argument positionally."""
    if device.type == "cpu" and _emulated is not None:
        getattr(_emulated, fn.__name__)(*args, "cuda", 0, 1)
    elif device.type == "cpu":
        fn(*args, "cpu", 0, torch.get_num_threads())
    else:
        with torch.cuda.device(device):
            fn(*args, "cuda", torch.cuda.current_stream(device).cuda_stream, 1)


def emulation_available() -> bool:
    return _core._C_emu is not None


@contextlib.contextmanager
def emulated_cuda(order: str = "forward", seed: int = 0) -> Iterator[None]:
    """Run the kernels of ops on CPU tensors through the emulated CUDA kernels, their blocks, warps and
    lanes in `order` ("forward", "reverse" or "random" with `seed`). Uninitialised memory that torch
    allocates meanwhile is filled with NaN (as deterministic mode does), so an output element that a
    kernel forgets to write shows up in any comparison."""
    global _emulated
    if _core._C_emu is None:
        raise RuntimeError("this imm_ext was built without the emulated CUDA kernels (IMM_EXT_CUDA_EMULATION=ON)")
    if _emulated is not None:
        raise RuntimeError("emulated_cuda() is already active")
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled(),
                     torch.utils.deterministic.fill_uninitialized_memory)
    _core._C_emu.set_schedule(order, seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    _emulated = _core._C_emu
    try:
        yield
    finally:
        _emulated = None
        torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
        torch.utils.deterministic.fill_uninitialized_memory = deterministic[2]
        _core._C_emu.set_schedule("forward", 0)
