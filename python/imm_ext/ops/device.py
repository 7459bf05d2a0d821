"""Where the compiled kernels run: which tensors have one, and how a call reaches it.

CPU calls get torch's intra-op thread count; CUDA calls run under the tensor's device guard on
torch's current stream. Tensors elsewhere (CUDA without compiled kernels, MPS, ...) take each op's
pure-PyTorch path.
"""
from __future__ import annotations

import torch

from .. import _core


def has_kernel(t: torch.Tensor) -> bool:
    """Whether the compiled core serves t's device."""
    return t.device.type == "cpu" or (t.device.type == "cuda" and _core.WITH_CUDA)


def run_kernel(fn, device: torch.device, *args) -> None:
    """fn(*args, device=..., stream=..., threads=...) on `device`, a device with a kernel."""
    if device.type == "cpu":
        fn(*args, device="cpu", stream=0, threads=torch.get_num_threads())
    else:
        with torch.cuda.device(device):
            fn(*args, device="cuda", stream=torch.cuda.current_stream(device).cuda_stream, threads=1)
