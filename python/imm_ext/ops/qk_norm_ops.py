"""qk-norm, fused (math and layout in csrc/common/qk_norm.h).

  imm_ext::qk_norm(qkv, q_weight, k_weight, heads, eps) -> (q, k, stats)
      qkv (B, T, 3 C) is the fused projection (q, k, v for all heads, head-major: C = heads * Dh);
      q, k (B, H, T, Dh) are RMSNorm(q) * q_weight and RMSNorm(k) * k_weight per head, the layout
      attention reads, from one pass over q and k; stats (2, B, H, T) the rows' rstd. q and k are
      separate outputs so that their gradients reach the backward as they are (one stacked output
      would cost a zero-filled copy of both for each of its two views' gradients).
  imm_ext::qk_norm_backward(grad_q, grad_k, qkv, q_weight, k_weight, stats, heads) -> (grad_qkv,
      grad_q_weight, grad_k_weight), grad_qkv zero in v's part (v's own gradient reaches qkv through
      its view).

Computation is in the accumulation dtype (float64 for float64, float32 otherwise); rows whose squares
would overflow keep a finite rstd (as the DiT block's norms do). One PyTorch math, `qk_norm_reference`
and its backward formulas: what runs on devices without a kernel and under create_graph=True, and the
tests' oracle.
"""
from __future__ import annotations

from typing import Tuple

import torch

from .. import _core
from .checks import accumulate_dtype, check_int, check_like, check_scalar, check_shape, check_tensor
from .block_reference import normalized_rows
from .device import has_kernel, kernel_device_type, run_kernel
from .fused_op import fused_op

Tensor = torch.Tensor

CHUNK_ROWS = {"cpu": 64, "cuda": 32}  # rows per partial sum of the weights' gradients (their order)


def _check_qk_norm(qkv, q_weight, k_weight, heads, eps) -> int:
    """The head width Dh, after checking every argument."""
    check_tensor("qkv", qkv)
    heads = check_int("heads", heads)
    if qkv.dim() != 3 or qkv.shape[-1] % (3 * heads) or qkv.shape[-1] == 0:
        raise ValueError(f"qkv must have shape (B, T, 3 * heads * head_dim) with heads={heads}; "
                         f"got {tuple(qkv.shape)}")
    dim = qkv.shape[-1] // (3 * heads)
    for name, weight in (("q_weight", q_weight), ("k_weight", k_weight)):
        check_tensor(name, weight)
        check_shape(name, weight, (dim,), "(head_dim,)")
        check_like(name, weight, qkv, "qkv", dtype=True)
    check_scalar("eps", eps, accumulate_dtype(qkv.dtype), minimum=0.0)
    return dim


def _heads_shape(qkv: Tensor, heads: int) -> Tuple[int, int, int, int]:
    batch, tokens, width = qkv.shape
    return batch, tokens, heads, width // (3 * heads)


def qk_norm_reference(qkv: Tensor, q_weight: Tensor, k_weight: Tensor, heads: int,
                      eps: float = 1e-6) -> Tuple[Tensor, Tensor]:
    """q, k (B, H, T, Dh) in qkv's dtype: RMSNorm over each head's Dh values times the weight, in
    the accumulation dtype (the same math as csrc/common/qk_norm.h, in PyTorch)."""
    q, k, _ = _reference_forward(qkv, q_weight, k_weight, heads, eps)
    return q, k


def _normalized_parts(qkv: Tensor, heads: int, eps: float) -> Tuple[Tensor, Tensor]:
    """(xhat, rstd) of q and k, (2, B, H, T, Dh) and (2, B, H, T, 1), in the accumulation dtype."""
    batch, tokens, heads, dim = _heads_shape(qkv, heads)
    parts = qkv.to(accumulate_dtype(qkv.dtype)).view(batch, tokens, 3, heads, dim)[:, :, :2].permute(2, 0, 3, 1, 4)
    xhat, _, rstd = normalized_rows(parts, True, eps)
    return xhat, rstd


def _weights(q_weight: Tensor, k_weight: Tensor, like: Tensor) -> Tensor:
    """The two weights as (2, 1, 1, 1, Dh) in the dtype of `like`, broadcasting against the parts."""
    return torch.stack([q_weight, k_weight]).to(like.dtype).view(2, 1, 1, 1, -1)


def _reference_forward(qkv, q_weight, k_weight, heads, eps) -> Tuple[Tensor, Tensor, Tensor]:
    """(q, k (B, H, T, Dh) in qkv's dtype, rstd (2, B, H, T) in the accumulation dtype)."""
    xhat, rstd = _normalized_parts(qkv, heads, eps)
    q, k = (xhat * _weights(q_weight, k_weight, xhat)).to(qkv.dtype).unbind(0)
    return q.contiguous(), k.contiguous(), rstd.squeeze(-1)


def _reference_backward(grad_q: Tensor, grad_k: Tensor, qkv: Tensor, q_weight: Tensor, k_weight: Tensor, heads: int,
                        eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    """The backward formulas of csrc/common/qk_norm.h in PyTorch, differentiable in every input (the
    rows' rstd recomputed from qkv): the kernel-less backward and the one under create_graph=True."""
    xhat, rstd = _normalized_parts(qkv, heads, eps)
    g = torch.stack([grad_q, grad_k]).to(xhat.dtype)
    dxhat = g * _weights(q_weight, k_weight, xhat)
    grad_parts = rstd * (dxhat - xhat * (dxhat * xhat).mean(-1, keepdim=True))
    grad_qkv = torch.cat([grad_parts, torch.zeros_like(grad_parts[:1])]).permute(1, 3, 0, 2, 4)
    grad_q_weight, grad_k_weight = ((g[p] * xhat[p]).sum((0, 1, 2)).to(qkv.dtype) for p in range(2))
    return grad_qkv.reshape(qkv.shape).to(qkv.dtype), grad_q_weight, grad_k_weight


# ---------------------------------------------------------------------------------------------
# Kernels (or the reference where no kernel applies)

def _forward(qkv: Tensor, q_weight: Tensor, k_weight: Tensor, heads: int,
             eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    _check_qk_norm(qkv, q_weight, k_weight, heads, eps)
    qkv, q_weight, k_weight = qkv.contiguous(), q_weight.contiguous(), k_weight.contiguous()
    if not has_kernel(qkv):
        return _reference_forward(qkv, q_weight, k_weight, heads, eps)
    batch, tokens, heads, dim = _heads_shape(qkv, heads)
    q, k = (qkv.new_empty((batch, heads, tokens, dim)) for _ in range(2))
    stats = qkv.new_empty((2, batch, heads, tokens), dtype=accumulate_dtype(qkv.dtype))
    run_kernel(_core._C.qk_norm_forward, qkv.device, _core.dtype_code(qkv.dtype), batch, tokens, heads, dim, eps,
               qkv.data_ptr(), q_weight.data_ptr(), k_weight.data_ptr(), q.data_ptr(), k.data_ptr(), stats.data_ptr())
    return q, k, stats


def _backward(grad_q: Tensor, grad_k: Tensor, qkv: Tensor, q_weight: Tensor, k_weight: Tensor, stats: Tensor,
              heads: int, eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    _check_qk_norm(qkv, q_weight, k_weight, heads, eps)
    batch, tokens, heads, dim = _heads_shape(qkv, heads)
    for name, grad in (("grad_q", grad_q), ("grad_k", grad_k)):
        check_tensor(name, grad)
        check_shape(name, grad, (batch, heads, tokens, dim), "(B, heads, T, head_dim)")
        check_like(name, grad, qkv, "qkv")
    grad_q, grad_k = grad_q.to(qkv.dtype).contiguous(), grad_k.to(qkv.dtype).contiguous()
    qkv, q_weight, k_weight, stats = qkv.contiguous(), q_weight.contiguous(), k_weight.contiguous(), stats.contiguous()
    if not has_kernel(qkv):
        return _reference_backward(grad_q, grad_k, qkv, q_weight, k_weight, heads, eps)
    chunk_rows = CHUNK_ROWS[kernel_device_type(qkv)]
    chunks = -(-batch * heads * tokens // chunk_rows)
    grad_qkv = torch.empty_like(qkv)
    partials = qkv.new_empty((2, chunks, dim), dtype=accumulate_dtype(qkv.dtype))
    run_kernel(_core._C.qk_norm_backward, qkv.device, _core.dtype_code(qkv.dtype), batch, tokens, heads, dim,
               chunk_rows, grad_q.data_ptr(), grad_k.data_ptr(), qkv.data_ptr(), q_weight.data_ptr(),
               k_weight.data_ptr(), stats.data_ptr(), grad_qkv.data_ptr(), partials.data_ptr())
    return grad_qkv, partials[0].sum(0).to(qkv.dtype), partials[1].sum(0).to(qkv.dtype)


# ---------------------------------------------------------------------------------------------
# The op, declared once (ops/fused_op.py): its fakes and its gradient rule

def _fake(qkv, q_weight, k_weight, heads, eps):
    dim = _check_qk_norm(qkv, q_weight, k_weight, heads, eps)
    batch, tokens = qkv.shape[:2]
    return (qkv.new_empty((batch, heads, tokens, dim)), qkv.new_empty((batch, heads, tokens, dim)),
            qkv.new_empty((2, batch, heads, tokens), dtype=accumulate_dtype(qkv.dtype)))


def _backward_fake(grad_q, grad_k, qkv, q_weight, k_weight, stats, heads, eps):
    _check_qk_norm(qkv, q_weight, k_weight, heads, eps)
    return torch.empty_like(qkv), torch.empty_like(q_weight), torch.empty_like(k_weight)


def _setup(ctx, inputs, output):
    qkv, q_weight, k_weight, heads, eps = inputs
    ctx.mark_non_differentiable(output[2])
    ctx.save_for_backward(qkv, q_weight, k_weight, output[2])
    ctx.heads, ctx.eps = heads, eps


def _grads(ctx, grads: tuple, backward) -> tuple:
    """Gradients of (qkv, q_weight, k_weight, heads, eps) from those of (q, k, stats)."""
    qkv, q_weight, k_weight, stats = ctx.saved_tensors
    grad_q, grad_k = grads[:2]
    if grad_q is None and grad_k is None:
        return None, None, None, None, None
    grad_q = torch.zeros_like(grad_k) if grad_q is None else grad_q  # only one of q and k was used
    grad_k = torch.zeros_like(grad_q) if grad_k is None else grad_k
    if torch.is_grad_enabled():  # create_graph=True: differentiable formulas
        found = _reference_backward(grad_q, grad_k, qkv, q_weight, k_weight, ctx.heads, ctx.eps)
    else:
        found = backward(grad_q, grad_k, qkv, q_weight, k_weight, stats, ctx.heads, ctx.eps)
    return (*(g if needed else None for g, needed in zip(found, ctx.needs_input_grad)), None, None)


_qk_norm = fused_op("qk_norm", _forward, _fake, _backward, _backward_fake, _setup, _grads)
qk_norm_op, qk_norm_backward_op = _qk_norm.op, _qk_norm.backward_op


def qk_norm(qkv: Tensor, q_weight: Tensor, k_weight: Tensor, heads: int, eps: float = 1e-6) -> Tuple[Tensor, Tensor]:
    """RMSNorm of every head's query and key with learned weights, fused: from the qkv projection
    (B, T, 3 C) (q, k, v for all heads, C = heads * head_dim) to q, k (B, heads, T, head_dim), each
    contiguous, in qkv's dtype: x / sqrt(mean(x^2) + eps) * weight over each head's head_dim values.

    q_weight, k_weight: (head_dim,) tensors of qkv's dtype and device. Differentiable in all three
    (twice, through the reference). dtypes float32, float64, bfloat16, float16.
    """
    _check_qk_norm(qkv, q_weight, k_weight, heads, eps)
    q, k, _ = _qk_norm(qkv, q_weight, k_weight, heads, float(eps))
    return q, k
