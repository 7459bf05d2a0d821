"""The plain sinusoidal embedding of one time input c = 1000 t, 1000 s or 1000 (t - s) (the MLP's, and the
stock-layer baseline's; imm_ext's layers embed both times at once through
imm_ext.nn.functional.timestep_embedding_pair, which computes the same features).

The DiT/ADM convention (imm-method.md §2.3): half the channels are cos(c f_k), half sin(c f_k), with
frequencies f_k = max_period^(-k / half) for k = 0 .. half - 1. The arguments c f_k are formed in
float64, since near T the times of one IMM step differ by about 1e-7 (x 1000 = 1e-4), which float32
arguments of size up to 1000 would round away; the result is cast to `dtype`.
"""
from __future__ import annotations

import math

import torch


def timestep_embedding(c: torch.Tensor, dim: int, max_period: float = 10_000.0,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B,) time inputs -> (B, dim) embedding [cos(c f), sin(c f)] (a zero column pads odd dim)."""
    if c.dim() != 1:
        raise ValueError(f"c must have shape (B,); got {tuple(c.shape)}")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int; got {dim!r}")
    half = dim // 2
    frequencies = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64, device=c.device) / half)
    arguments = c.to(torch.float64)[:, None] * frequencies[None]
    embedding = torch.cat([torch.cos(arguments), torch.sin(arguments)], dim=1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=1)
    return embedding.to(dtype)
