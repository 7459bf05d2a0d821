"""Fused attention softmax(q k^T * scale) v over the compiled kernels (architecture.md, family 2).

  imm_ext::attention_forward(q, k, v, scale) -> (out, lse)
      out (B, H, Tq, Dh) and the rows' log-sum-exp lse (B, H, Tq) in the accumulation dtype, which
      the backward needs; the training path.
  imm_ext::attention_inference(q, k, v, scale) -> out
      the same output, nothing saved (taken when no input requires grad or grad mode is off).
  imm_ext::attention_backward(grad_out, q, k, v, out, lse, scale) -> (grad_q, grad_k, grad_v)
      FlashAttention-2's backward: P recomputed from lse, dS = P * (dP - rowsum(dO * O)).
The kernels (csrc/common/attention.h) never form the T x T matrix. Inputs may be any strided views
with a contiguous last dimension (q = qkv.view(B, T, 3, H, Dh)[:, :, 0].transpose(1, 2) is read in
place). Each result is laid out like its input (B, H, T in the order of the input's strides): with
q, k, v from a fused qkv projection the output lies as (B, T, H, Dh), so the output projection's
out.transpose(1, 2).reshape(B, T, H * Dh) is a view, and the gradients lie like the projection's
output; with contiguous inputs every result is contiguous (a leaf's .grad is taken without a copy).
Tensors on a device without a compiled kernel take a pure-PyTorch path, in query chunks.
Every op and fake kernel runs `_check_attention` (and the backward `_check_attention_backward`) first:
the shapes, dtypes and devices the kernels rely on, and scale finite in the accumulation dtype; the
public `attention` runs the same shape checks on its raw (not yet promoted) inputs.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .. import _core
from .device import has_kernel, run_kernel
from .fused_op import fused_op
from .checks import accumulate_dtype, check_like, check_real, check_scalar, check_shape, check_tensor

Tensor = torch.Tensor

MAX_HEAD_DIM = 128  # csrc/common/attention.h kAttentionMaxHeadDim
_FALLBACK_SCORES = 1 << 24  # score elements per query chunk of the pure-PyTorch path


def _empty_laid_out_like(t: Tensor, length: int) -> Tensor:
    """An uninitialised (B, H, length, Dh) tensor like t whose B, H and T dimensions lie in memory in
    the order of t's strides (ties keep B, H, T), Dh innermost: contiguous for a contiguous t, and
    (B, T, H, Dh) for a view of a fused (B, T, 3, H, Dh) projection."""
    order = sorted(range(3), key=lambda i: -t.stride(i))
    sizes = (t.shape[0], t.shape[1], length)
    stored = t.new_empty([sizes[i] for i in order] + [t.shape[3]])
    return stored.permute(order.index(0), order.index(1), order.index(2), 3)


def _head_spec(t: Tensor) -> tuple:
    return (t.data_ptr(), t.stride(0), t.stride(1), t.stride(2))


def _rows_contiguous(t: Tensor) -> Tensor:
    """t itself when its last dimension is contiguous (the kernels read any other strides)."""
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


def _sizes(q: Tensor, k: Tensor, scale: float) -> tuple:
    b, h, tq, d = q.shape
    return (_core.dtype_code(q.dtype), b, h, tq, k.shape[2], d, float(scale))


def _query_chunks(q: Tensor, k: Tensor):
    """Query ranges of the pure-PyTorch path: at most _FALLBACK_SCORES scores at a time."""
    b, h, tq, _ = q.shape
    step = max(1, _FALLBACK_SCORES // (b * h * k.shape[2]))
    return [(i, min(tq, i + step)) for i in range(0, tq, step)]


def _forward(q: Tensor, k: Tensor, v: Tensor, scale: float, save_lse: bool) -> Tuple[Tensor, Optional[Tensor]]:
    q, k, v = _rows_contiguous(q), _rows_contiguous(k), _rows_contiguous(v)
    out = _empty_laid_out_like(q, q.shape[2])
    acc = accumulate_dtype(q.dtype)
    lse = q.new_empty(q.shape[:3], dtype=acc) if save_lse else None
    if has_kernel(q):
        run_kernel(_core._C.attention_forward, q.device, *_sizes(q, k, scale), _head_spec(q), _head_spec(k),
                   _head_spec(v), _head_spec(out), 0 if lse is None else lse.data_ptr())
        return out, lse
    ka, va = k.to(acc), v.to(acc)
    for i0, i1 in _query_chunks(q, k):
        scores = (q[:, :, i0:i1].to(acc) @ ka.transpose(-1, -2)) * scale
        row_lse = torch.logsumexp(scores, -1, keepdim=True)
        out[:, :, i0:i1] = (torch.exp(scores - row_lse) @ va).to(q.dtype)
        if lse is not None:
            lse[:, :, i0:i1] = row_lse[..., 0]
    return out, lse


# ---------------------------------------------------------------------------------------------
# Argument checks (the public function and every op)

def _check_heads(name: str, t, like: Optional[Tensor] = None) -> None:
    check_tensor(name, t)
    if t.dim() != 4:
        raise ValueError(f"{name} must have shape (B, H, T, Dh); got {tuple(t.shape)}")
    if min(t.shape) == 0:
        raise ValueError(f"{name} must have B, H, T, Dh >= 1; got {tuple(t.shape)}")
    if like is not None:
        check_like(name, t, like, "q")


def _check_qkv_shapes(q, k, v) -> None:
    """q (B, H, Tq, Dh), k and v (B, H, Tk, Dh) on q's device, 1 <= Dh <= MAX_HEAD_DIM; any dtypes."""
    _check_heads("q", q)
    _check_heads("k", k, like=q)
    _check_heads("v", v, like=q)
    b, h, _, d = q.shape
    if k.shape[0] != b or k.shape[1] != h or k.shape[3] != d:
        raise ValueError(f"k must have shape (B, H, Tk, Dh) = ({b}, {h}, Tk, {d}) like q; got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k {tuple(k.shape)}; got {tuple(v.shape)}")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"q, k, v: head dimension Dh = {d} is larger than the supported {MAX_HEAD_DIM}")


def _check_attention(q, k, v, scale) -> None:
    """The ops' view: q, k, v of one dtype, and scale finite in the accumulation dtype."""
    _check_qkv_shapes(q, k, v)
    check_like("k", k, q, "q", device=False, dtype=True)
    check_like("v", v, q, "q", device=False, dtype=True)
    check_scalar("scale", scale, accumulate_dtype(q.dtype))


def _check_attention_backward(grad_out, q, k, v, out, lse, scale) -> None:
    _check_attention(q, k, v, scale)
    for name, t in (("grad_out", grad_out), ("out", out)):
        check_tensor(name, t)
        check_like(name, t, q, "q", dtype=True, shape=True)
    acc = accumulate_dtype(q.dtype)
    check_tensor("lse", lse, (acc,), str(acc).removeprefix("torch."))
    check_like("lse", lse, q, "q")
    check_shape("lse", lse, q.shape[:3], "(B, H, Tq)")


# ---------------------------------------------------------------------------------------------
# The forward with lse (training) and imm_ext::attention_inference

def _training_forward(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tuple[Tensor, Tensor]:
    """(out, lse): out (B, H, Tq, Dh) in q's dtype, lse (B, H, Tq) in the accumulation dtype."""
    _check_attention(q, k, v, scale)
    return _forward(q, k, v, scale, save_lse=True)


def _training_forward_fake(q, k, v, scale):
    _check_attention(q, k, v, scale)
    out = _empty_laid_out_like(_rows_contiguous(q), q.shape[2])
    return out, q.new_empty(q.shape[:3], dtype=accumulate_dtype(q.dtype))


@torch.library.custom_op("imm_ext::attention_inference", mutates_args=())
def attention_inference(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """out (B, H, Tq, Dh) in q's dtype; no lse is computed or stored (inference only: no autograd)."""
    _check_attention(q, k, v, scale)
    return _forward(q, k, v, scale, save_lse=False)[0]


@attention_inference.register_fake
def _(q, k, v, scale):
    _check_attention(q, k, v, scale)
    return _empty_laid_out_like(_rows_contiguous(q), q.shape[2])


# ---------------------------------------------------------------------------------------------
# The backward, and the training route's declaration

def _backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                       scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    """(grad_q, grad_k, grad_v) in q's dtype, each laid out like its input."""
    _check_attention_backward(grad_out, q, k, v, out, lse, scale)
    grad_out, q, k, v, out = (_rows_contiguous(t) for t in (grad_out, q, k, v, out))
    lse = lse.contiguous()
    grad_q, grad_k, grad_v = (_empty_laid_out_like(t, t.shape[2]) for t in (q, k, v))
    if has_kernel(q):
        run_kernel(_core._C.attention_backward, q.device, *_sizes(q, k, scale), _head_spec(q), _head_spec(k),
                   _head_spec(v), _head_spec(out), _head_spec(grad_out), lse.data_ptr(), _head_spec(grad_q),
                   _head_spec(grad_k), _head_spec(grad_v))
        return grad_q, grad_k, grad_v
    acc = lse.dtype
    ka, va = k.to(acc), v.to(acc)
    grad_ka, grad_va = torch.zeros_like(ka), torch.zeros_like(va)
    delta = (grad_out.to(acc) * out.to(acc)).sum(-1, keepdim=True)  # D = rowsum(dO * O)
    for i0, i1 in _query_chunks(q, k):
        qc, gc = q[:, :, i0:i1].to(acc), grad_out[:, :, i0:i1].to(acc)
        p = torch.exp((qc @ ka.transpose(-1, -2)) * scale - lse[:, :, i0:i1, None])
        grad_va += p.transpose(-1, -2) @ gc
        ds = p * (gc @ va.transpose(-1, -2) - delta[:, :, i0:i1])
        grad_q[:, :, i0:i1] = (scale * (ds @ ka)).to(q.dtype)
        grad_ka += scale * (ds.transpose(-1, -2) @ qc)
    grad_k.copy_(grad_ka)
    grad_v.copy_(grad_va)
    return grad_q, grad_k, grad_v


def _backward_fake(grad_out, q, k, v, out, lse, scale):
    _check_attention_backward(grad_out, q, k, v, out, lse, scale)
    q, k, v = (_rows_contiguous(t) for t in (q, k, v))
    return tuple(_empty_laid_out_like(t, t.shape[2]) for t in (q, k, v))


def _attention_setup(ctx, inputs, output):
    q, k, v, scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale


def _attention_grads(ctx, grads: tuple, backward) -> tuple:
    """Gradients of (q, k, v, scale) from those of (out, lse) (first order)."""
    q, k, v, out, lse = ctx.saved_tensors
    if grads[0] is None:
        return None, None, None, None
    found = backward(grads[0], q, k, v, out, lse, ctx.scale)
    return tuple(g if needed else None for g, needed in zip(found, ctx.needs_input_grad[:3])) + (None,)


# The training route, declared once (ops/fused_op.py): imm_ext::attention_forward and
# imm_ext::attention_backward under torch.compile, an autograd.Function over the same functions eagerly.
_attention = fused_op("attention_forward", _training_forward, _training_forward_fake, _backward, _backward_fake,
                      _attention_setup, _attention_grads, backward_name="attention_backward")
attention_forward, attention_backward = _attention.op, _attention.backward_op


# ---------------------------------------------------------------------------------------------
# Public function: shape checks, promotion, then the training or the inference op (which check
# the rest: one dtype, scale finite in the accumulation dtype).

def attention(q: Tensor, k: Tensor, v: Tensor, *, scale: Optional[float] = None) -> Tensor:
    """softmax(q k^T * scale) v, fused: no T x T matrix is formed (FlashAttention-2 style tiles).

    q: (B, H, Tq, Dh); k, v: (B, H, Tk, Dh), any strides with a contiguous last dimension (others
    are copied); 1 <= Dh <= 128. scale defaults to 1 / sqrt(Dh). float32, float64, bfloat16 and
    float16 (mixed dtypes are promoted); accumulation in float32 (float64 for float64). Returns
    (B, H, Tq, Dh) in the promoted dtype, laid out like q (out.transpose(1, 2) is contiguous when
    q is a view of a fused (B, T, 3, H, Dh) projection). Differentiable in q, k and v (first order);
    when none requires grad (or grad mode is off) no log-sum-exp is kept.
    """
    _check_qkv_shapes(q, k, v)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[3])
    else:
        check_real("scale", scale, "a finite float or None")
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _attention(q, k, v, scale)[0]
    return attention_inference(q, k, v, scale)
