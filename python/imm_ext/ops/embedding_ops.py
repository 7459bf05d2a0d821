"""The sinusoidal time embedding of the network's time inputs as one fused op (architecture.md,
family 2; math in csrc/common/embedding.h).

  imm_ext::timestep_embedding(c, dim, max_period, dtype) -> (N, dim) [cos(c f_k), sin(c f_k)]
  imm_ext::timestep_embedding_backward(grad, c, max_period) -> d loss / d c (float64)
      c is float64 and the arguments c f_k are formed in float64 (imm-method.md §2.3);
      timestep_embedding_pair embeds c_t and c_s in one call of the op.

One fused_op declaration (ops/fused_op.py), checked on every route (the dtype, dim and max_period the
kernels use). Devices without a kernel, and the double backward, run the float64 PyTorch formulas.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

from .. import _core
from .block_reference import embedding_frequencies, timestep_embedding_reference
from .checks import SUPPORTED_DTYPES, check_int, check_like, check_real, check_scalar, check_tensor
from .device import has_kernel, run_kernel
from .fused_op import fused_op

Tensor = torch.Tensor

# ---------------------------------------------------------------------------------------------
# Argument checks (every route: the kernels' callers and the fakes)

def _check_times(name: str, c) -> None:
    check_tensor(name, c, (torch.float64, torch.float32, torch.bfloat16, torch.float16), "a floating-point tensor")
    if c.dim() != 1 or c.shape[0] == 0:
        raise ValueError(f"{name} must have shape (B,) with B >= 1; got {tuple(c.shape)}")


def _check_embedding_options(dim, max_period, dtype) -> None:
    check_int("dim", dim, 1)
    check_scalar("max_period", max_period, torch.float64, minimum=0.0)
    if dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"dtype must be torch.float32, float64, bfloat16 or float16; got {dtype!r}")


def _check_timestep_embedding(c, dim, max_period, dtype) -> None:
    """c (B,) float64 times as the kernels read them."""
    _check_times("c", c)
    check_tensor("c", c, (torch.float64,), "float64")
    _check_embedding_options(dim, max_period, dtype)


def _check_timestep_embedding_backward(grad, c, max_period) -> None:
    _check_times("c", c)
    check_tensor("c", c, (torch.float64,), "float64")
    check_tensor("grad", grad)
    if grad.dim() != 2 or grad.shape[0] != c.shape[0] or grad.shape[1] == 0:
        raise ValueError(f"grad must have shape (B, dim) = ({c.shape[0]}, dim >= 1); got {tuple(grad.shape)}")
    check_like("grad", grad, c, "c")
    check_scalar("max_period", max_period, torch.float64, minimum=0.0)


# ---------------------------------------------------------------------------------------------
# Kernels (or PyTorch where no kernel applies) and the gradient rule

def _timestep_embedding_backward_torch(grad: Tensor, c: Tensor, max_period: float) -> Tensor:
    half = grad.shape[1] // 2
    frequencies = embedding_frequencies(half, max_period, c.device)[None]
    arguments = c[:, None] * frequencies
    g = grad.to(torch.float64)
    return (frequencies * (g[:, half:2 * half] * torch.cos(arguments) - g[:, :half] * torch.sin(arguments))).sum(1)


def _timestep_embedding_forward(c: Tensor, dim: int, max_period: float, dtype: torch.dtype) -> Tensor:
    """(N,) float64 times -> (N, dim) embedding in `dtype`."""
    _check_timestep_embedding(c, dim, max_period, dtype)
    c = c.contiguous()
    if not has_kernel(c):
        return timestep_embedding_reference(c, dim, max_period, dtype)
    out = c.new_empty((c.shape[0], dim), dtype=dtype)
    run_kernel(_core._C.timestep_embedding_forward, c.device, _core.dtype_code(dtype), c.shape[0], dim,
               math.log(max_period), c.data_ptr(), out.data_ptr())
    return out


def _timestep_embedding_backward(grad: Tensor, c: Tensor, max_period: float) -> Tensor:
    """d loss / d c (N,) float64 from grad (N, dim)."""
    _check_timestep_embedding_backward(grad, c, max_period)
    grad, c = grad.contiguous(), c.contiguous()
    if not has_kernel(c):
        return _timestep_embedding_backward_torch(grad, c, max_period)
    grad_c = torch.empty_like(c)
    run_kernel(_core._C.timestep_embedding_backward, c.device, _core.dtype_code(grad.dtype), c.shape[0], grad.shape[1],
               math.log(max_period), c.data_ptr(), grad.data_ptr(), grad_c.data_ptr())
    return grad_c


def _timestep_embedding_grads(ctx, grads: tuple, backward) -> tuple:
    """Gradients of (c, dim, max_period, dtype); ctx saved (c,) and max_period."""
    (c,), (grad,) = ctx.saved_tensors, grads
    if not ctx.needs_input_grad[0]:
        return None, None, None, None
    if torch.is_grad_enabled():  # create_graph=True: differentiable formulas
        grad_c = _timestep_embedding_backward_torch(grad, c, ctx.max_period)
    else:
        grad_c = backward(grad, c, ctx.max_period)
    return grad_c, None, None, None



# ---------------------------------------------------------------------------------------------
# The op, declared once (ops/fused_op.py): imm_ext::<name> and imm_ext::<name>_backward under
# torch.compile, an autograd.Function over the same functions in eager mode

def _timestep_embedding_fake(c, dim, max_period, dtype):
    _check_timestep_embedding(c, dim, max_period, dtype)
    return c.new_empty((c.shape[0], dim), dtype=dtype)


def _timestep_embedding_backward_fake(grad, c, max_period):
    _check_timestep_embedding_backward(grad, c, max_period)
    return torch.empty_like(c)


def _timestep_embedding_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.max_period = inputs[2]


_timestep_embedding = fused_op("timestep_embedding", _timestep_embedding_forward, _timestep_embedding_fake,
                               _timestep_embedding_backward, _timestep_embedding_backward_fake,
                               _timestep_embedding_setup, _timestep_embedding_grads)
timestep_embedding_op = _timestep_embedding.op
timestep_embedding_backward_op = _timestep_embedding.backward_op


# ---------------------------------------------------------------------------------------------
# Public function: argument checks then the op.

def _embed(c: Tensor, dim: int, max_period: float, dtype: torch.dtype) -> Tensor:
    return _timestep_embedding(c.to(torch.float64), dim, max_period, dtype)


def timestep_embedding(c: Tensor, dim: int, max_period: float = 10_000.0,
                       dtype: torch.dtype = torch.float32) -> Tensor:
    """Sinusoidal embedding of one time input: (B,) -> (B, dim) [cos(c f_k), sin(c f_k)], with
    f_k = max_period^(-k / half), k < half = dim // 2, and a zero column for odd dim.

    The arguments c f_k are formed in float64 (c is read as float64), the result is cast to `dtype`.
    Differentiable in c. A non-finite c gives NaN rows (not checked: a device synchronisation).
    """
    _check_times("c", c)
    check_real("max_period", max_period, "a finite number > 0")
    return _embed(c, dim, max_period, dtype)


def timestep_embedding_pair(c_t: Tensor, c_s: Tensor, dim: int, max_period: float = 10_000.0,
                            dtype: torch.dtype = torch.float32) -> Tuple[Tensor, Tensor]:
    """Sinusoidal embeddings of both time inputs of G(x, c_t, c_s) in one call of the op:
    (embedding of c_t, embedding of c_s), each (B, dim) in `dtype` (see timestep_embedding)."""
    _check_times("c_t", c_t)
    _check_times("c_s", c_s)
    if c_s.shape != c_t.shape:
        raise ValueError(f"c_s must have the shape of c_t {tuple(c_t.shape)}; got {tuple(c_s.shape)}")
    if c_s.device != c_t.device:
        raise ValueError(f"c_s must be on the device of c_t ({c_t.device}); got {c_s.device}")
    check_real("max_period", max_period, "a finite number > 0")
    embedding = _embed(torch.cat([c_t.to(torch.float64), c_s.to(torch.float64)]), dim, max_period, dtype)
    return embedding[:c_t.shape[0]], embedding[c_t.shape[0]:]
