"""The one place the models' layers reach the timestep-conditioned block ops (architecture.md, family 2).

Every layer in imm_ext.nn and imm_ext.models calls `norm_modulate`, `gate_residual`, `attention`,
`qk_norm`, `timestep_embedding_pair` and the MLP's activation `gelu_tanh` from here, never from imm_ext.ops
directly, so that which implementation runs (the fused kernels, or SDPA for attention where it is
faster) is decided in this file alone.

`attention` also picks the attention implementation, named by the layers' `attention_backend` option:
  * "imm_ext": imm_ext's attention op;
  * "sdpa":    torch.nn.functional.scaled_dot_product_attention;
  * "auto":    the faster correct one for the inputs' device (`resolve_attention_backend`).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..ops.activation_ops import gelu_tanh
from ..ops.attention_ops import MAX_HEAD_DIM
from ..ops.attention_ops import attention as _imm_ext_attention
from ..ops.embedding_ops import timestep_embedding_pair
from ..ops.norm_ops import norm_modulate
from ..ops.qk_norm_ops import qk_norm
from ..ops.residual_ops import gate_residual

ATTENTION_BACKENDS = ("auto", "imm_ext", "sdpa")
NORMS = ("layer", "rms")

__all__ = ["ATTENTION_BACKENDS", "NORMS", "attention", "check_attention_backend", "check_norm", "gate_residual",
           "gelu_tanh", "norm_modulate", "qk_norm", "resolve_attention_backend", "timestep_embedding_pair"]


def check_attention_backend(backend: str) -> str:
    """`backend` if it is one of ATTENTION_BACKENDS, else a ValueError naming attention_backend."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}; got {backend!r}")
    return backend


def check_norm(norm: str) -> str:
    """`norm` if it is "layer" (LayerNorm without affine) or "rms" (RMSNorm without weight)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}; got {norm!r}")
    return norm


def resolve_attention_backend(backend: str, device: torch.device, head_dim: int = 64) -> str:
    """The concrete backend ("imm_ext" or "sdpa") that `backend` names on `device` for `head_dim`.

    "auto" follows `python bench/kernels.py --section attention`: on the CPU imm_ext's kernel runs
    forward + backward at 0.92-1.0x the time of SDPA's flash kernel (DiT-S/2 and XL/2 head shapes), so
    it is chosen there for head dims it serves (<= 128); on CUDA imm_ext's kernel runs on CUDA cores,
    not tensor cores, so SDPA (FlashAttention) is chosen.
    """
    check_attention_backend(backend)
    if backend != "auto":
        return backend
    return "imm_ext" if device.type == "cpu" and head_dim <= MAX_HEAD_DIM else "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: Optional[float] = None,
              backend: str = "auto") -> torch.Tensor:
    """softmax(q k^T * scale) v for q, k, v of shape (B, H, T, Dh) (strided views with a contiguous last
    dim, as split from a fused qkv projection, are fine); scale defaults to 1 / sqrt(Dh)."""
    if resolve_attention_backend(backend, q.device, q.shape[-1]) == "sdpa":
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    return _imm_ext_attention(q, k, v, scale=scale)
