"""Gate + residual, adaLN-Zero's gated residual of the DiT block, as one fused op (architecture.md,
family 2; math in csrc/common/residual.h).

  imm_ext::gate_residual(x, gate, y) -> x + gate * y
  imm_ext::gate_residual_backward(grad, gate, y) -> (gate * grad, sum_t grad * y); grad_x is grad itself;
      the sum over tokens is deterministic (per-chunk partials summed in a fixed order).

One fused_op declaration (ops/fused_op.py); checks on every route. The kernels accumulate in float32
(float64 for float64); a device without them, and create_graph=True, take the PyTorch formulas.
"""
from __future__ import annotations

from typing import Tuple

import torch

from .. import _core
from .block_reference import gate_residual_reference
from .checks import accumulate_dtype, check_tensor
from .device import has_kernel, kernel_device_type, run_kernel
from .fused_op import fused_op
from .token_rows import (CHUNK_TOKENS, rows_shape, per_sample_view, token_sum, chunk_partials, check_activations,
                         check_per_sample, check_like_activations, check_one_dtype, promoted)

Tensor = torch.Tensor

# ---------------------------------------------------------------------------------------------
# Argument checks (every route: the kernels' callers and the fakes)

def _check_gate_residual(x, gate, y) -> None:
    check_activations("x", x)
    check_like_activations("y", y, x)
    check_per_sample("gate", gate, x)
    check_one_dtype("x", x, gate=gate, y=y)


def _check_gate_residual_backward(grad, gate, y) -> None:
    check_activations("y", y)
    check_like_activations("grad", grad, y, "y")
    check_per_sample("gate", gate, y, "y")
    check_one_dtype("y", y, grad=grad, gate=gate)


# ---------------------------------------------------------------------------------------------
# Kernels (or PyTorch where no kernel applies) and the gradient rule

def _gate_residual_backward_torch(grad: Tensor, gate: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
    acc = accumulate_dtype(y.dtype)
    ga = grad.to(acc)
    return ((per_sample_view(gate.to(acc), y) * ga).to(y.dtype), token_sum(ga * y.to(acc)).to(y.dtype))


def _gate_residual_forward(x: Tensor, gate: Tensor, y: Tensor) -> Tensor:
    """x + gate * y in x's dtype (one dtype for all)."""
    _check_gate_residual(x, gate, y)
    x, gate, y = x.contiguous(), gate.contiguous(), y.contiguous()
    if not has_kernel(x):
        return gate_residual_reference(x, gate, y)
    out = torch.empty_like(x)
    run_kernel(_core._C.gate_residual_forward, x.device, _core.dtype_code(x.dtype), *rows_shape(x), x.data_ptr(),
               gate.data_ptr(), y.data_ptr(), out.data_ptr())
    return out


def _gate_residual_backward(grad: Tensor, gate: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
    """(grad_y = gate * grad, grad_gate = sum over tokens of grad * y) in y's dtype."""
    _check_gate_residual_backward(grad, gate, y)
    grad, gate, y = grad.contiguous(), gate.contiguous(), y.contiguous()
    if not has_kernel(y):
        return _gate_residual_backward_torch(grad, gate, y)
    grad_y, grad_gate = torch.empty_like(y), torch.empty_like(gate)
    partials = chunk_partials(y, 1)
    run_kernel(_core._C.gate_residual_backward, y.device, _core.dtype_code(y.dtype), *rows_shape(y),
               CHUNK_TOKENS[kernel_device_type(y)], grad.data_ptr(), gate.data_ptr(), y.data_ptr(), grad_y.data_ptr(),
               partials.data_ptr(), grad_gate.data_ptr())
    return grad_y, grad_gate


def _gate_residual_grads(ctx, grads: tuple, backward) -> tuple:
    """Gradients of (x, gate, y); ctx saved (gate, y)."""
    gate, y = ctx.saved_tensors
    (grad,) = grads
    need_x, need_gate, need_y = ctx.needs_input_grad
    grad_gate = grad_y = None
    if need_gate or need_y:
        if torch.is_grad_enabled():  # create_graph=True: differentiable formulas
            grad_y, grad_gate = _gate_residual_backward_torch(grad, gate, y)
        else:
            grad_y, grad_gate = backward(grad, gate, y)
    return (grad if need_x else None, grad_gate if need_gate else None, grad_y if need_y else None)



# ---------------------------------------------------------------------------------------------
# The op, declared once (ops/fused_op.py): imm_ext::<name> and imm_ext::<name>_backward under
# torch.compile, an autograd.Function over the same functions in eager mode

def _gate_residual_fake(x, gate, y):
    _check_gate_residual(x, gate, y)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _gate_residual_backward_fake(grad, gate, y):
    _check_gate_residual_backward(grad, gate, y)
    return (torch.empty_like(y, memory_format=torch.contiguous_format),
            torch.empty_like(gate, memory_format=torch.contiguous_format))


def _gate_residual_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1], inputs[2])


_gate_residual = fused_op("gate_residual", _gate_residual_forward, _gate_residual_fake, _gate_residual_backward,
                          _gate_residual_backward_fake, _gate_residual_setup, _gate_residual_grads)
gate_residual_op, gate_residual_backward_op = _gate_residual.op, _gate_residual.backward_op


# ---------------------------------------------------------------------------------------------
# Public function: argument checks and dtype promotion, then the op.

def gate_residual(x: Tensor, gate: Tensor, y: Tensor) -> Tensor:
    """x + gate[:, None, :] * y fused: the gated residual of adaLN-Zero (DiT).

    x, y: (B, ..., C) of one shape; gate: (B, C). Mixed dtypes are promoted. Differentiable in all
    three (grad_x is the incoming gradient itself; grad_y and grad_gate come from one pass).
    """
    for name, t in (("x", x), ("gate", gate), ("y", y)):
        check_tensor(name, t)
    x, gate, y = promoted(x, gate, y)
    return _gate_residual(x, gate, y)
