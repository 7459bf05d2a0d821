"""Multi-head self-attention over a token sequence with one fused qkv projection and optional qk-norm.

x (B, T, C) -> Linear(C, 3C) -> q, k, v of shape (B, heads, T, C / heads), split as strided views of the
one projection (channel layout: q for all heads, then k, then v; head-major inside each) -> optional
RMSNorm of q and k per head with a learned weight (qk-norm, which keeps attention logits bounded; one
fused op reading the projection) ->
softmax attention (imm_ext.nn.functional.attention) -> Linear(C, C).
"""
from __future__ import annotations

import torch
from torch import nn

from . import functional as F


class SelfAttention(nn.Module):
    """Self-attention with `heads` heads of width dim / heads; see the module docstring."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = False, eps: float = 1e-6,
                 attention_backend: str = "auto"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads must divide dim; got dim={dim}, heads={heads}")
        self.heads, self.head_dim, self.eps = heads, dim // heads, eps
        self.attention_backend = F.check_attention_backend(attention_backend)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.Parameter(torch.ones(self.head_dim)) if qk_norm else None
        self.k_norm = nn.Parameter(torch.ones(self.head_dim)) if qk_norm else None
        self.proj = nn.Linear(dim, dim)

    def split_heads(self, x: torch.Tensor):
        """x (B, T, C) -> q, k, v (B, heads, T, C / heads), qk-normed when asked."""
        qkv = self.qkv(x)
        q, k, v = self.heads_of(qkv)
        if self.q_norm is not None:  # one fused pass over q and k, written as attention reads them
            q, k = F.qk_norm(qkv, self.q_norm.to(qkv.dtype), self.k_norm.to(qkv.dtype), self.heads, self.eps)
        return q, k, v

    def heads_of(self, qkv: torch.Tensor):
        """The projection (B, T, 3C) as q, k, v (B, heads, T, C / heads), strided views."""
        batch, tokens, _ = qkv.shape
        return qkv.view(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def merge_heads(self, heads: torch.Tensor) -> torch.Tensor:
        """(B, heads, T, Dh) -> output projection of the (B, T, C) concatenation."""
        batch, _, tokens, _ = heads.shape
        return self.proj(heads.transpose(1, 2).reshape(batch, tokens, self.heads * self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split_heads(x)
        return self.merge_heads(F.attention(q, k, v, backend=self.attention_backend))

    def extra_repr(self) -> str:
        return f"heads={self.heads}, head_dim={self.head_dim}, qk_norm={self.q_norm is not None}"
