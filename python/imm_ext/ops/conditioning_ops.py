"""Fused ops of the DiT block's conditioning (architecture.md, family 2; math in csrc/common/conditioning.h).

  imm_ext::norm_modulate(x, shift, scale, rms, eps) -> (y, stats)
      adaLN: y = norm(x) * (1 + scale) + shift over the last dim of x (B, T, C), shift and scale
      (B, C); norm is LayerNorm without affine or RMSNorm (rms). One pass per row; stats (B*T, 2)
      [mean, rstd] in the accumulation dtype are all the backward keeps besides x and scale.
  imm_ext::norm_modulate_backward(grad, x, stats, scale, rms, eps) -> (grad_x, grad_shift, grad_scale)
      one pass: grad_x per row, grad_shift = sum_t grad and grad_scale = sum_t grad * xhat.
  imm_ext::gate_residual(x, gate, y) -> x + gate * y                     (adaLN-Zero's gated residual)
  imm_ext::gate_residual_backward(grad, gate, y) -> (gate * grad, sum_t grad * y); grad_x is grad itself.
  imm_ext::timestep_embedding(c, dim, max_period, dtype) -> (N, dim) [cos(c f_k), sin(c f_k)]
  imm_ext::timestep_embedding_backward(grad, c, max_period) -> d loss / d c (float64)
      c is float64 and the arguments c f_k are formed in float64 (imm-method.md §2.3);
      timestep_embedding_pair embeds c_t and c_s in one call of the op.

Computation is in the accumulation dtype (float64 for float64, float32 otherwise); sums over tokens
are deterministic (per-chunk partials summed in a fixed order). Tensors on a device without a
compiled kernel take the pure-PyTorch path below, which is also the backward under create_graph=True
(so double backward is exact: the kernels' backward is not itself differentiable).

Each op is declared once with ops/fused_op.py: under torch.compile the public functions reach the
torch.library custom ops (fake kernels let the compiler trace them), in eager mode an
autograd.Function over the same functions, which skips the custom-op dispatch (on a GPU at DiT-S
sizes that host time is most of the cost). Every route runs the checks of the section "Argument
checks" (the fake kernels too): shapes, dtypes and devices the kernels rely on, eps and max_period
finite in the dtype they are used in. The public functions check only what they need before
promoting dtypes.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

from .. import _core
from .block_reference import (embedding_frequencies, gate_residual_reference, norm_modulate_reference,
                              normalized_rows, timestep_embedding_reference)
from .device import has_kernel, kernel_device_type, run_kernel
from .fused_op import fused_op
from .checks import (SUPPORTED_DTYPES, accumulate_dtype, check_choice, check_int, check_like, check_real,
                     check_scalar, check_shape, check_tensor)

Tensor = torch.Tensor

NORMS = ("layer", "rms")
# Tokens per chunk of the backward's per-sample sums (their summation order, so fixed per device).
CHUNK_TOKENS = {"cpu": 32, "cuda": 16}


def _rows_shape(x: Tensor) -> Tuple[int, int, int]:
    """x (B, ..., C) as (batch, tokens, channels)."""
    batch, channels = x.shape[0], x.shape[-1]
    return batch, x.numel() // (batch * channels), channels


def _per_sample(v: Tensor, x: Tensor) -> Tensor:
    """(B, C) as (B, 1, ..., 1, C), broadcasting against x (B, ..., C)."""
    return v.reshape((v.shape[0],) + (1,) * (x.dim() - 2) + (v.shape[-1],))


def _token_sum(t: Tensor) -> Tensor:
    """(B, ..., C) summed over the token dims to (B, C)."""
    return t.reshape(t.shape[0], -1, t.shape[-1]).sum(1)


def _partials(x: Tensor, parts: int) -> Tensor:
    batch, tokens, channels = _rows_shape(x)
    chunks = -(-tokens // CHUNK_TOKENS[kernel_device_type(x)])
    return x.new_empty((batch, chunks, parts, channels), dtype=accumulate_dtype(x.dtype))


# ---------------------------------------------------------------------------------------------
# Argument checks (every route: the kernels' callers and the fakes)

def _check_activations(name: str, x) -> None:
    check_tensor(name, x)
    if x.dim() < 2 or 0 in x.shape:
        raise ValueError(f"{name} must have shape (B, ..., C) with every size >= 1; got {tuple(x.shape)}")


def _check_per_sample(name: str, v, x: Tensor, x_name: str = "x") -> None:
    """v a (B, C) tensor on x's device, x (B, ..., C); of x's dtype as the kernels read it."""
    check_tensor(name, v)
    expected = (x.shape[0], x.shape[-1])
    if tuple(v.shape) != expected:
        raise ValueError(f"{name} must have shape (B, C) = {expected} for {x_name} of shape {tuple(x.shape)}; "
                         f"got {tuple(v.shape)}")
    check_like(name, v, x, x_name)


def _check_like_activations(name: str, t, x: Tensor, x_name: str = "x") -> None:
    check_tensor(name, t)
    check_like(name, t, x, x_name, shape=True)


def _check_one_dtype(x_name: str, x: Tensor, **others: Tensor) -> None:
    for name, t in others.items():
        check_like(name, t, x, x_name, device=False, dtype=True)


def _check_norm_eps(eps, x: Tensor) -> None:
    check_scalar("eps", eps, accumulate_dtype(x.dtype), minimum=0.0)


def _check_norm_modulate(x, shift, scale, eps) -> None:
    _check_activations("x", x)
    _check_per_sample("shift", shift, x)
    _check_per_sample("scale", scale, x)
    _check_one_dtype("x", x, shift=shift, scale=scale)
    _check_norm_eps(eps, x)


def _check_norm_modulate_backward(grad, x, stats, scale, eps) -> None:
    _check_activations("x", x)
    _check_like_activations("grad", grad, x)
    _check_per_sample("scale", scale, x)
    _check_one_dtype("x", x, grad=grad, scale=scale)
    acc = accumulate_dtype(x.dtype)
    check_tensor("stats", stats, (acc,), str(acc).removeprefix("torch."))
    check_like("stats", stats, x, "x")
    check_shape("stats", stats, (x.numel() // x.shape[-1], 2), "(rows of x, 2)")
    _check_norm_eps(eps, x)


def _check_gate_residual(x, gate, y) -> None:
    _check_activations("x", x)
    _check_like_activations("y", y, x)
    _check_per_sample("gate", gate, x)
    _check_one_dtype("x", x, gate=gate, y=y)


def _check_gate_residual_backward(grad, gate, y) -> None:
    _check_activations("y", y)
    _check_like_activations("grad", grad, y, "y")
    _check_per_sample("gate", gate, y, "y")
    _check_one_dtype("y", y, grad=grad, gate=gate)


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
# norm + modulate: kernels (or PyTorch where no kernel applies) and the gradient rule

def _norm_modulate_torch(x: Tensor, shift: Tensor, scale: Tensor, rms: bool, eps: float) -> Tuple[Tensor, Tensor]:
    """The reference's value and the row statistics the backward keeps."""
    _, mean, rstd = normalized_rows(x.to(accumulate_dtype(x.dtype)), rms, eps)
    y = norm_modulate_reference(x, shift, scale, "rms" if rms else "layer", eps)
    return y, torch.cat([mean, rstd], -1).reshape(-1, 2)


def _norm_modulate_backward_torch(grad: Tensor, x: Tensor, scale: Tensor, rms: bool,
                                  eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    """The backward formulas of csrc/common/conditioning.h in PyTorch, differentiable in every input
    (the row statistics are recomputed from x)."""
    acc = accumulate_dtype(x.dtype)
    xa, ga = x.to(acc), grad.to(acc)
    xhat, _, rstd = normalized_rows(xa, rms, eps)
    dxhat = ga * (1 + _per_sample(scale.to(acc), x))
    centred = dxhat if rms else dxhat - dxhat.mean(-1, keepdim=True)
    grad_x = rstd * (centred - xhat * (dxhat * xhat).mean(-1, keepdim=True))
    return grad_x.to(x.dtype), _token_sum(ga).to(x.dtype), _token_sum(ga * xhat).to(x.dtype)


def _norm_modulate_forward(x: Tensor, shift: Tensor, scale: Tensor, rms: bool, eps: float) -> Tuple[Tensor, Tensor]:
    """(y in x's dtype, stats (B*T, 2) [mean, rstd] in the accumulation dtype); one dtype for all."""
    _check_norm_modulate(x, shift, scale, eps)
    x, shift, scale = x.contiguous(), shift.contiguous(), scale.contiguous()
    if not has_kernel(x):
        return _norm_modulate_torch(x, shift, scale, rms, eps)
    batch, tokens, channels = _rows_shape(x)
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
    batch, tokens, channels = _rows_shape(x)
    grad_x, grad_shift, grad_scale = torch.empty_like(x), torch.empty_like(scale), torch.empty_like(scale)
    partials = _partials(x, 2)
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
# gate + residual

def _gate_residual_backward_torch(grad: Tensor, gate: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
    acc = accumulate_dtype(y.dtype)
    ga = grad.to(acc)
    return ((_per_sample(gate.to(acc), y) * ga).to(y.dtype), _token_sum(ga * y.to(acc)).to(y.dtype))


def _gate_residual_forward(x: Tensor, gate: Tensor, y: Tensor) -> Tensor:
    """x + gate * y in x's dtype (one dtype for all)."""
    _check_gate_residual(x, gate, y)
    x, gate, y = x.contiguous(), gate.contiguous(), y.contiguous()
    if not has_kernel(x):
        return gate_residual_reference(x, gate, y)
    out = torch.empty_like(x)
    run_kernel(_core._C.gate_residual_forward, x.device, _core.dtype_code(x.dtype), *_rows_shape(x), x.data_ptr(),
               gate.data_ptr(), y.data_ptr(), out.data_ptr())
    return out


def _gate_residual_backward(grad: Tensor, gate: Tensor, y: Tensor) -> Tuple[Tensor, Tensor]:
    """(grad_y = gate * grad, grad_gate = sum over tokens of grad * y) in y's dtype."""
    _check_gate_residual_backward(grad, gate, y)
    grad, gate, y = grad.contiguous(), gate.contiguous(), y.contiguous()
    if not has_kernel(y):
        return _gate_residual_backward_torch(grad, gate, y)
    grad_y, grad_gate = torch.empty_like(y), torch.empty_like(gate)
    partials = _partials(y, 1)
    run_kernel(_core._C.gate_residual_backward, y.device, _core.dtype_code(y.dtype), *_rows_shape(y),
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
# sinusoidal time embedding

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
# The ops, each declared once (ops/fused_op.py): imm_ext::<name> and imm_ext::<name>_backward under
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
# Public functions: argument checks and dtype promotion, then the op.

def _promoted(*tensors: Tensor) -> Tuple[Tensor, ...]:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        if t.dtype != dtype:
            dtype = torch.promote_types(dtype, t.dtype)
    return tuple(t if t.dtype == dtype else t.to(dtype) for t in tensors)


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
    x, shift, scale = _promoted(x, shift, scale)
    return _norm_modulate(x, shift, scale, norm == "rms", eps)[0]


def gate_residual(x: Tensor, gate: Tensor, y: Tensor) -> Tensor:
    """x + gate[:, None, :] * y fused: the gated residual of adaLN-Zero (DiT).

    x, y: (B, ..., C) of one shape; gate: (B, C). Mixed dtypes are promoted. Differentiable in all
    three (grad_x is the incoming gradient itself; grad_y and grad_gate come from one pass).
    """
    for name, t in (("x", x), ("gate", gate), ("y", y)):
        check_tensor(name, t)
    x, gate, y = _promoted(x, gate, y)
    return _gate_residual(x, gate, y)


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
