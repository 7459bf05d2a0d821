"""The pairwise kernels on numpy (CPU) and CuPy (GPU) arrays, through the same compiled core.

Arrays are shared with torch by DLPack (zero-copy), run through the same ops as `imm_ext.mmd_loss`,
and results come back as arrays of the caller's library. Gradients are of the loss with
reduction="sum" over sets (use them to drive your own optimiser). Any float16/32/64 array is taken:
views DLPack cannot share (negative or other non-row-major strides, another byte order, read-only
memory) are copied first; other dtypes and objects raise a TypeError naming the argument.
"""
from __future__ import annotations

import torch

from .ops import mmd_loss as _mmd_loss
from .ops import pairwise_kernel as _pairwise_kernel


_FLOAT_KINDS = {"float16", "float32", "float64"}


def _to_torch(array, name: str) -> torch.Tensor:
    """A torch view of a numpy or CuPy float array (a copy where DLPack cannot share it: negative,
    or otherwise non-row-major strides, non-native byte order, read-only memory)."""
    if isinstance(array, torch.Tensor):
        raise TypeError(f"{name}: imm_ext.kernels takes numpy or CuPy arrays; use imm_ext.mmd_loss for tensors")
    module = type(array).__module__.split(".")[0]
    if module not in ("numpy", "cupy") or not hasattr(array, "__dlpack__") or not hasattr(array, "dtype"):
        raise TypeError(f"{name} must be a numpy or CuPy array; got {type(array).__name__}")
    if array.dtype.kind != "f" or array.dtype.name not in _FLOAT_KINDS:
        raise TypeError(f"{name} must be a float16, float32 or float64 array; got dtype {array.dtype}")
    if module == "numpy":
        import numpy

        array = numpy.require(array, dtype=array.dtype.newbyteorder("="),
                              requirements=("C_CONTIGUOUS", "ALIGNED", "WRITEABLE"))
    else:
        import cupy

        array = cupy.ascontiguousarray(array)
    return torch.from_dlpack(array)


def _options(options: dict) -> dict:
    """numpy or CuPy bandwidth arrays as tensors; everything else as given."""
    bandwidth = options.get("bandwidth")
    if bandwidth is not None and type(bandwidth).__module__.split(".")[0] in ("numpy", "cupy") \
            and hasattr(bandwidth, "__dlpack__"):
        options = dict(options, bandwidth=_to_torch(bandwidth, "bandwidth"))
    return options


def _from_torch(tensor: torch.Tensor, like):
    module = type(like).__module__.split(".")[0]
    if module == "numpy":
        return tensor.detach().cpu().numpy()
    if module == "cupy":
        import cupy

        return cupy.from_dlpack(tensor.detach())
    raise TypeError(f"unsupported array type {type(like).__name__}")


def mmd(x, y, **options):
    """Squared MMD per set, shape (G,) (a 0-d array for 2-D input); options as `imm_ext.mmd_loss`
    (reduction is always "none")."""
    if "reduction" in options:
        raise TypeError("mmd: reduction is fixed to 'none' here; reduce the returned array yourself")
    value = _mmd_loss(_to_torch(x, "x"), _to_torch(y, "y"), reduction="none", **_options(options))
    return _from_torch(value, x)


def mmd_and_grad(x, y, **options):
    """(per-set squared MMD, d sum(MMD^2) / dx, d sum(MMD^2) / dy) as arrays like x."""
    if "reduction" in options:
        raise TypeError("mmd_and_grad: reduction is fixed; the gradients are of the sum over sets")
    tx = _to_torch(x, "x").detach().requires_grad_(True)
    ty = _to_torch(y, "y").detach().requires_grad_(True)
    value = _mmd_loss(tx, ty, reduction="none", **_options(options))
    grad_x, grad_y = torch.autograd.grad(value.sum(), (tx, ty))
    return _from_torch(value, x), _from_torch(grad_x, x), _from_torch(grad_y, x)


def pairwise_kernel(x, y, **options):
    """The kernel matrix, (N, M) or (G, N, M); options as `imm_ext.pairwise_kernel`."""
    return _from_torch(_pairwise_kernel(_to_torch(x, "x"), _to_torch(y, "y"), **_options(options)), x)
