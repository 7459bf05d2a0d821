"""Fused activation of the DiT MLP (math in csrc/common/activation.h).

  imm_ext::gelu_tanh(x) -> 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
      torch.nn.functional.gelu(x, approximate="tanh"), evaluated as x * sigmoid(2u) with a
      vectorised exp: one pass, any shape, result contiguous in x's dtype.
  imm_ext::gelu_tanh_backward(grad, x) -> grad * d gelu_tanh / dx, one pass from the saved input.

Computation is in the accumulation dtype (float64 for float64, float32 otherwise). Saturation:
beyond |x| > 10 the value is x or -0 and the slope 1 or 0, so +inf gives +inf and -inf gives -0
(slopes 1 and 0), where torch's own gelu gives NaN for -inf (and a NaN slope for either). Tensors
on a device without a compiled kernel take the same formulas in PyTorch below, which are also the
backward under create_graph=True (so double backward is exact).

The op is declared once with ops/fused_op.py (the custom ops imm_ext::gelu_tanh and
imm_ext::gelu_tanh_backward under torch.compile, an autograd.Function over the same functions in
eager mode); `_check_gelu_tanh` / `_check_gelu_tanh_backward` run in every route, the fakes too.
"""
from __future__ import annotations

import math

import torch

from .. import _core
from .device import has_kernel, run_kernel
from .checks import accumulate_dtype, check_like, check_tensor
from .fused_op import fused_op

Tensor = torch.Tensor

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_CUBIC = 0.044715
_SATURATION = 10.0  # kGeluSaturation of csrc/common/activation.h


# ---------------------------------------------------------------------------------------------
# The formulas of csrc/common/activation.h in PyTorch (devices without a kernel, double backward)

def _saturated_parts(xa: Tensor):
    """(x clamped to +-_SATURATION, e = exp(-2u) and s = 1 / (1 + e) at it, 2 du/dx at it)."""
    xc = xa.clamp(-_SATURATION, _SATURATION)
    e = torch.exp(-2.0 * _SQRT_2_OVER_PI * (xc + _CUBIC * xc * xc * xc))
    return xc, e, 1.0 / (1.0 + e), 2.0 * _SQRT_2_OVER_PI * (1.0 + 3.0 * _CUBIC * xc * xc)


def _gelu_tanh_torch(x: Tensor) -> Tensor:
    xa = x.to(accumulate_dtype(x.dtype))
    xc, _, s, _ = _saturated_parts(xa)
    y = torch.where(xa > _SATURATION, xa, xc * s)
    return torch.where(xa < -_SATURATION, torch.full_like(y, -0.0), y).to(x.dtype)


def _gelu_tanh_backward_torch(grad: Tensor, x: Tensor) -> Tensor:
    xa = x.to(accumulate_dtype(x.dtype))
    xc, e, s, du = _saturated_parts(xa)
    slope = torch.where(xa < -_SATURATION, torch.zeros_like(s), s + xc * du * ((e * s) * s))
    return (grad.to(xa.dtype) * slope).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# Argument checks (every route: the kernels' callers and the fakes)

def _check_gelu_tanh(x) -> None:
    check_tensor("x", x)


def _check_gelu_tanh_backward(grad, x) -> None:
    check_tensor("x", x)
    check_tensor("grad", grad)
    check_like("grad", grad, x, "x", shape=True)


# ---------------------------------------------------------------------------------------------
# Kernels (or PyTorch where no kernel applies) and the gradient rule

def _gelu_tanh_forward(x: Tensor) -> Tensor:
    _check_gelu_tanh(x)
    x = x.contiguous()
    if not has_kernel(x):
        return _gelu_tanh_torch(x)
    out = torch.empty_like(x)
    run_kernel(_core._C.gelu_tanh_forward, x.device, _core.dtype_code(x.dtype), x.numel(), x.data_ptr(), out.data_ptr())
    return out


def _gelu_tanh_backward(grad: Tensor, x: Tensor) -> Tensor:
    _check_gelu_tanh_backward(grad, x)
    grad, x = grad.to(x.dtype).contiguous(), x.contiguous()
    if not has_kernel(x):
        return _gelu_tanh_backward_torch(grad, x)
    grad_x = torch.empty_like(x)
    run_kernel(_core._C.gelu_tanh_backward, x.device, _core.dtype_code(x.dtype), x.numel(), grad.data_ptr(),
               x.data_ptr(), grad_x.data_ptr())
    return grad_x


def _gelu_tanh_fake(x):
    _check_gelu_tanh(x)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _gelu_tanh_backward_fake(grad, x):
    _check_gelu_tanh_backward(grad, x)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _gelu_tanh_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])


def _gelu_tanh_grads(ctx, grads: tuple, backward) -> tuple:
    """Gradient of x; ctx saved (x,)."""
    (x,), (grad,) = ctx.saved_tensors, grads
    if grad is None or not ctx.needs_input_grad[0]:
        return (None,)
    if torch.is_grad_enabled():  # create_graph=True: differentiable formulas
        return (_gelu_tanh_backward_torch(grad, x),)
    return (backward(grad, x),)


_gelu_tanh = fused_op("gelu_tanh", _gelu_tanh_forward, _gelu_tanh_fake, _gelu_tanh_backward, _gelu_tanh_backward_fake,
                      _gelu_tanh_setup, _gelu_tanh_grads)
gelu_tanh_op, gelu_tanh_backward_op = _gelu_tanh.op, _gelu_tanh.backward_op


def gelu_tanh(x: Tensor) -> Tensor:
    """GELU with tanh's approximation, fused: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the
    activation of the DiT MLP (torch.nn.functional.gelu(x, approximate="tanh")).

    x: a tensor of any shape (empty included) and dtype float32, float64, bfloat16 or float16; the
    result has x's shape and dtype (contiguous). Differentiable in x. +inf gives +inf and -inf gives
    -0 (the limits; torch's gelu gives NaN at -inf); NaN propagates.
    """
    _check_gelu_tanh(x)
    return _gelu_tanh(x)
