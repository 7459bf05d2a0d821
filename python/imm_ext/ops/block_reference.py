"""Pure-PyTorch references for the timestep-conditioned block ops (architecture.md, family 2) and the
DiT MLP's activation.

Same signatures as the compiled ops in imm_ext.ops, plain autograd, computation in the accumulation
dtype (float64 for float64 inputs, float32 otherwise), result in the inputs' promoted dtype. The
attention reference materialises the T x T matrix: it is for tests and for devices without a kernel.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .checks import accumulate_dtype

Tensor = torch.Tensor


def _per_sample(v: Tensor, x: Tensor) -> Tensor:
    """(B, C) per-sample vector as (B, 1, ..., 1, C), broadcasting against x of shape (B, ..., C)."""
    return v.reshape((v.shape[0],) + (1,) * (x.dim() - 2) + (v.shape[-1],))


def normalized_rows(xa: Tensor, rms: bool, eps: float) -> Tuple[Tensor, Tensor, Tensor]:
    """(xhat, mean, rstd) over the last dim, differentiable, mean and rstd keepdim: xhat = (x - mean) *
    rstd, rstd = 1 / sqrt(variance + eps) (RMSNorm: mean 0 and the mean square). Taken of x / s for the
    power of two s >= 1 that brings max |x| below 2, with eps / s^2 (exact; s = 1 for rows already
    below 2), so that the squares of rows near the top of the float range do not overflow and xhat is
    finite for every finite row."""
    s = torch.exp2(torch.floor(torch.log2(xa.detach().abs().amax(-1, keepdim=True)))).clamp_min(1)
    xs = xa / s
    mean = torch.zeros_like(xs[..., :1]) if rms else xs.mean(-1, keepdim=True)
    rstd = torch.rsqrt((xs - mean).square().mean(-1, keepdim=True) + eps / s**2)
    return (xs - mean) * rstd, mean * s, rstd / s


def norm_modulate_reference(x: Tensor, shift: Tensor, scale: Tensor, norm: str = "layer",
                            eps: float = 1e-6) -> Tensor:
    """adaLN modulation (DiT): norm(x) * (1 + scale) + shift over the last dim of x (B, ..., C),
    with shift, scale of shape (B, C); norm is LayerNorm without affine ("layer") or RMSNorm ("rms")."""
    out_dtype = torch.promote_types(torch.promote_types(x.dtype, shift.dtype), scale.dtype)
    acc = accumulate_dtype(out_dtype)
    normed, _, _ = normalized_rows(x.to(acc), norm == "rms", eps)
    return (normed * (1 + _per_sample(scale.to(acc), x)) + _per_sample(shift.to(acc), x)).to(out_dtype)


def gate_residual_reference(x: Tensor, gate: Tensor, y: Tensor) -> Tensor:
    """x + gate * y with x, y of shape (B, ..., C) and a per-sample gate (B, C) (adaLN-Zero's alpha)."""
    out_dtype = torch.promote_types(torch.promote_types(x.dtype, gate.dtype), y.dtype)
    acc = accumulate_dtype(out_dtype)
    return (x.to(acc) + _per_sample(gate.to(acc), x) * y.to(acc)).to(out_dtype)


def attention_reference(q: Tensor, k: Tensor, v: Tensor, scale: Optional[float] = None) -> Tensor:
    """softmax(q k^T * scale) v for q (B, H, Tq, Dh), k and v (B, H, Tk, Dh); scale defaults to
    1 / sqrt(Dh)."""
    out_dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    acc = accumulate_dtype(out_dtype)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    weights = torch.softmax((q.to(acc) @ k.to(acc).transpose(-1, -2)) * scale, dim=-1)
    return (weights @ v.to(acc)).to(out_dtype)


def embedding_frequencies(half: int, max_period: float, device: torch.device) -> Tensor:
    """f_k = max_period^(-k / half) for k < half, float64."""
    k = torch.arange(half, dtype=torch.float64, device=device)
    return torch.exp(-math.log(max_period) * k / half)


def timestep_embedding_reference(c: Tensor, dim: int, max_period: float = 10_000.0,
                                 dtype: torch.dtype = torch.float32) -> Tensor:
    """Sinusoidal embedding of one time input (imm-method.md §2.3): (B,) -> (B, dim) [cos(c f_k),
    sin(c f_k)], arguments c f_k in float64; odd dim gets a zero column; the result in `dtype`."""
    arguments = c.to(torch.float64)[:, None] * embedding_frequencies(dim // 2, max_period, c.device)[None]
    parts = [torch.cos(arguments), torch.sin(arguments)]
    if dim % 2:
        parts.append(torch.zeros_like(c, dtype=torch.float64)[:, None])
    return torch.cat(parts, dim=1).to(dtype)


def timestep_embedding_pair_reference(c_t: Tensor, c_s: Tensor, dim: int, max_period: float = 10_000.0,
                                      dtype: torch.dtype = torch.float32) -> Tuple[Tensor, Tensor]:
    """The embeddings of both time inputs, (embedding of c_t, embedding of c_s), each (B, dim)."""
    return (timestep_embedding_reference(c_t, dim, max_period, dtype),
            timestep_embedding_reference(c_s, dim, max_period, dtype))


def gelu_tanh_reference(x: Tensor) -> Tensor:
    """GELU with tanh's approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), written out
    (torch.nn.functional.gelu(x, approximate="tanh")); like it, NaN at x = -inf."""
    xa = x.to(accumulate_dtype(x.dtype))
    inner = math.sqrt(2.0 / math.pi) * (xa + 0.044715 * xa * xa * xa)
    return (0.5 * xa * (1.0 + torch.tanh(inner))).to(x.dtype)
