"""adaLN modulation (DiT, Peebles & Xie 2023): the conditioning vector c becomes per-sample shift, scale
and gate vectors through SiLU and one Linear layer.

The Linear starts at zero ("adaLN-Zero"): every shift, scale and gate is 0 at initialisation, so each
gated residual branch starts switched off and a DiT starts as the identity on its token stream.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


class AdaLNModulation(nn.Module):
    """c (B, cond_dim) -> `chunks` tensors of shape (B, dim), from SiLU and Linear(cond_dim, chunks * dim).

    The order of the chunks is the caller's convention (a DiT block uses shift, scale, gate for the
    attention half, then shift, scale, gate for the MLP half).
    """

    def __init__(self, cond_dim: int, dim: int, chunks: int):
        super().__init__()
        self.chunks = chunks
        self.linear = nn.Linear(cond_dim, chunks * dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, c: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return self.linear(nn.functional.silu(c)).chunk(self.chunks, dim=-1)
