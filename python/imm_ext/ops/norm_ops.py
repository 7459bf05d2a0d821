"""Norm + modulate, the DiT block's adaLN normalisation, as one fused op (architecture.md, family 2;
math in csrc/common/norm.h).

  imm_ext::norm_modulate(x, shift, scale, rms, eps) -> (y, stats)
      adaLN: y = norm(x) * (1 + scale) + shift over the last dim of x (B, T, C), shift and scale
      (B, C); norm is LayerNorm without affine or RMSNorm (rms). One pass per row; stats (B*T, 2)
      [mean, rstd] in the accumulation dtype are all the backward keeps besides x and scale.
  imm_ext::norm_modulate_backward(grad, x, stats, scale, rms, eps) -> (grad_x, grad_shift, grad_scale)
      one pass: grad_x per row, grad_shift = sum_t grad and grad_scale = sum_t grad * xhat; the sums over
      tokens are deterministic (per-chunk partials summed in a fixed order).

Declared once with ops/fused_op.py (its routes: the custom ops under torch.compile, an autograd.Function
eagerly); the argument checks run on every route, fakes included. Computed in the accumulation dtype
(float64 for float64, float32 otherwise). Without a compiled kernel for the device the PyTorch path
runs, which is also the backward under create_graph=True, so double backward is exact.
"""
from __future__ import annotations

from typing import Tuple

import torch

from .. import _core
from .block_reference import norm_modulate_reference, normalized_rows
from .checks import accumulate_dtype, check_choice, check_like, check_real, check_scalar, check_shape, check_tensor
from .device import has_kernel, kernel_device_type, run_kernel
from .fused_op import fused_op
from .token_rows import (CHUNK_TOKENS, rows_shape, per_sample_view, token_sum, chunk_partials, check_activations,
                         check_per_sample, check_like_activations, check_one_dtype, promoted)

Tensor = torch.Tensor

NORMS = ("layer", "rms")


# ---------------------------------------------------------------------------------------------
# Argument checks (every route: the kernels' callers and the fakes)

def _check_norm_eps(eps, x: Tensor) -> None:
    check_scalar("eps", eps, accumulate_dtype(x.dtype), minimum=0.0)


def _check_norm_modulate(x, shift, scale, eps) -> None:
    check_activations("x", x)
    check_per_sample("shift", shift, x)
    check_per_sample("scale", scale, x)
    check_one_dtype("x", x, shift=shift, scale=scale)
    _check_norm_eps(eps, x)


def _check_norm_modulate_backward(grad, x, stats, scale, eps) -> None:
    check_activations("x", x)
    check_like_activations("grad", grad, x)
    check_per_sample("scale", scale, x)
    check_one_dtype("x", x, grad=grad, scale=scale)
    acc = accumulate_dtype(x.dtype)
    check_tensor("stats", stats, (acc,), str(acc).removeprefix("torch."))
    check_like("stats", stats, x, "x")
    check_shape("stats", stats, (x.numel() // x.shape[-1], 2), "(rows of x, 2)")
    _check_norm_eps(eps, x)



# ---------------------------------------------------------------------------------------------
# norm + modulate: kernels (or PyTorch where no kernel applies) and the gradient rule

def _norm_modulate_torch(x: Tensor, shift: Tensor, scale: Tensor, rms: bool, eps: float) -> Tuple[Tensor, Tensor]:
    """The reference's value and the row statistics the backward keeps."""
    _, mean, rstd = normalized_rows(x.to(accumulate_dtype(x.dtype)), rms, eps)
    y = norm_modulate_reference(x, shift, scale, "rms" if rms else "layer", eps)
    return y, torch.cat([mean, rstd], -1).reshape(-1, 2)


def _norm_modulate_backward_torch(grad: Tensor, x: Tensor, scale: Tensor, rms: bool,
                                  eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    """The backward formulas of csrc/common/norm.h in PyTorch, differentiable in every input
    (the row statistics are recomputed from x)."""
    acc = accumulate_dtype(x.dtype)
    xa, ga = x.to(acc), grad.to(acc)
    xhat, _, rstd = normalized_rows(xa, rms, eps)
    dxhat = ga * (1 + per_sample_view(scale.to(acc), x))
    centred = dxhat if rms else dxhat - dxhat.mean(-1, keepdim=True)
    grad_x = rstd * (centred - xhat * (dxhat * xhat).mean(-1, keepdim=True))
    return grad_x.to(x.dtype), token_sum(ga).to(x.dtype), token_sum(ga * xhat).to(x.dtype)


def _norm_modulate_forward(x: Tensor, shift: Tensor, scale: Tensor, rms: bool, eps: float) -> Tuple[Tensor, Tensor]:
    """(y in x's dtype, stats (B*T, 2) [mean, rstd] in the accumulation dtype); one dtype for all."""
    _check_norm_modulate(x, shift, scale, eps)
    x, shift, scale = x.contiguous(), shift.contiguous(), scale.contiguous()
    if not has_kernel(x):
        return _norm_modulate_torch(x, shift, scale, rms, eps)
    batch, tokens, channels = rows_shape(x)
    out = torch.empty_like(x)
    stats = x.new_empty((batch * tokens, 2), dtype=accumulate_dtype(x.dtype))
    run_kernel(_core._C.norm_modulate_forward, x.device, _core.dtype_code(x.dtype), batch, tokens, channels, rms, eps,
               x.data_ptr(), shift.data_ptr(), scale.data_ptr(), out.data_ptr(), stats.data_ptr())
    return out, stats


def _norm_modulate_backward(grad: Tensor, x: Tensor, stats: Tensor, scale: Tensor, rms: bool,
                            eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    """(grad_x, grad_shift, grad_scale) in x's dtype."""
    _check_norm_modulate_backward(grad, x, stats, scale, eps)
    grad, x, stats, scale = grad.contiguous(), x.contiguous(), stats.contiguous(), scale.contiguous()
    if not has_kernel(x):
        return _norm_modulate_backward_torch(grad, x, scale, rms, eps)
    batch, tokens, channels = rows_shape(x)
    grad_x, grad_shift, grad_scale = torch.empty_like(x), torch.empty_like(scale), torch.empty_like(scale)
    partials = chunk_partials(x, 2)
    run_kernel(_core._C.norm_modulate_backward, x.device, _core.dtype_code(x.dtype), batch, tokens, channels,
               CHUNK_TOKENS[kernel_device_type(x)], rms, grad.data_ptr(), x.data_ptr(), stats.data_ptr(), scale.data_ptr(),
               grad_x.data_ptr(), partials.data_ptr(), grad_shift.data_ptr(), grad_scale.data_ptr())
    return grad_x, grad_shift, grad_scale


def _norm_modulate_grads(ctx, grads: tuple, backward) -> tuple:
    """Gradients of (x, shift, scale, rms, eps) from those of (y, stats); ctx saved (x, scale, stats),
    rms and eps."""
    x, scale, stats = ctx.saved_tensors
    grad = grads[0]
    if grad is None:
        return None, None, None, None, None
    if torch.is_grad_enabled():  # create_graph=True: differentiable formulas
        grads = _norm_modulate_backward_torch(grad, x, scale, ctx.rms, ctx.eps)
    else:
        grads = backward(grad, x, stats, scale, ctx.rms, ctx.eps)
    return (*(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad)), None, None)



# ---------------------------------------------------------------------------------------------
# The op, declared once (ops/fused_op.py): imm_ext::<name> and imm_ext::<name>_backward under
# torch.compile, an autograd.Function over the same functions in eager mode

def _norm_modulate_fake(x, shift, scale, rms, eps):
    _check_norm_modulate(x, shift, scale, eps)
    rows = x.numel() // x.shape[-1]
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            x.new_empty((rows, 2), dtype=accumulate_dtype(x.dtype)))


def _norm_modulate_backward_fake(grad, x, stats, scale, rms, eps):
    _check_norm_modulate_backward(grad, x, stats, scale, eps)
    per_sample = lambda: torch.empty_like(scale, memory_format=torch.contiguous_format)
    return torch.empty_like(x, memory_format=torch.contiguous_format), per_sample(), per_sample()


def _norm_modulate_setup(ctx, inputs, output):
    x, _, scale, rms, eps = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, scale, output[1])
    ctx.rms, ctx.eps = rms, eps


_norm_modulate = fused_op("norm_modulate", _norm_modulate_forward, _norm_modulate_fake, _norm_modulate_backward,
                          _norm_modulate_backward_fake, _norm_modulate_setup, _norm_modulate_grads)
norm_modulate_op, norm_modulate_backward_op = _norm_modulate.op, _norm_modulate.backward_op


# ---------------------------------------------------------------------------------------------
# Public function: argument checks and dtype promotion, then the op.

def norm_modulate(x: Tensor, shift: Tensor, scale: Tensor, *, norm: str = "layer", eps: float = 1e-6) -> Tensor:
    """adaLN modulation (DiT): norm(x) * (1 + scale) + shift over the last dim of x, fused.

    x: (B, ..., C) activations (typically (B, T, C)); shift, scale: (B, C) per-sample vectors;
    norm: "layer" (LayerNorm without affine) or "rms" (RMSNorm); eps > 0 is added to the variance
    (mean square). Mixed dtypes are promoted; the result has the promoted dtype and x's shape.
    Differentiable in x, shift and scale. NaN or inf in the inputs propagate (not checked: a check
    would cost a device synchronisation).
    """
    for name, t in (("x", x), ("shift", shift), ("scale", scale)):
        check_tensor(name, t)
    check_choice("norm", norm, NORMS)
    check_real("eps", eps, "a finite number > 0")
    x, shift, scale = promoted(x, shift, scale)
    return _norm_modulate(x, shift, scale, norm == "rms", eps)[0]
