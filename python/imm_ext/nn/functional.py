"""The one place the models' layers reach the timestep-conditioned block ops (architecture.md, family 2).

Every layer in imm_ext.nn and imm_ext.models calls `norm_modulate`, `gate_residual`, `attention` and
`timestep_embedding_pair` from here, never from imm_ext.ops directly, so that which implementation runs
(the pure-PyTorch references today, the fused kernels once merged) is decided in this file alone.

`attention` also picks the attention implementation, named by the layers' `attention_backend` option:
  * "imm_ext": imm_ext's attention op;
  * "sdpa":    torch.nn.functional.scaled_dot_product_attention;
  * "auto":    the faster correct one for the inputs' device (`resolve_attention_backend`).
"""
from __future__ import annotations

from typing import Optional

import torch

from ..ops.block_reference import attention_reference as _imm_ext_attention
from ..ops.block_reference import gate_residual_reference as gate_residual
from ..ops.block_reference import norm_modulate_reference as norm_modulate
from ..ops.block_reference import timestep_embedding_pair_reference as timestep_embedding_pair

ATTENTION_BACKENDS = ("auto", "imm_ext", "sdpa")
NORMS = ("layer", "rms")

__all__ = ["ATTENTION_BACKENDS", "NORMS", "attention", "check_attention_backend", "check_norm", "gate_residual",
           "norm_modulate", "resolve_attention_backend", "timestep_embedding_pair"]


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


def resolve_attention_backend(backend: str, device: torch.device) -> str:
    """The concrete backend ("imm_ext" or "sdpa") that `backend` names on `device`.

    "auto" picks SDPA on every device until the fused attention kernel is measured against it.
    """
    check_attention_backend(backend)
    return "sdpa" if backend == "auto" else backend


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: Optional[float] = None,
              backend: str = "auto") -> torch.Tensor:
    """softmax(q k^T * scale) v for q, k, v of shape (B, H, T, Dh) (strided views with a contiguous last
    dim, as split from a fused qkv projection, are fine); scale defaults to 1 / sqrt(Dh)."""
    if resolve_attention_backend(backend, q.device) == "sdpa":
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    return _imm_ext_attention(q, k, v, scale=scale)
