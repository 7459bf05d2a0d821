"""Conditioning embeddings: the two time inputs of IMM and class labels with a null class.

IMM's networks see two times (imm-method.md §2.2): c_t = 1000 t and c_s = 1000 s (or 1000 (t - s)).
Each gets sinusoidal features [cos(c f_k), sin(c f_k)], f_k = max_period^(-k / half) (arguments in
float64, imm_ext.nn.functional.timestep_embedding_pair), and its own Linear-SiLU-Linear; the two results
are summed ("s_embed", §2.2). Labels index a table with one extra row, the null class `num_classes`,
that classifier-free guidance and label dropout use (§3.9, §4.4).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import functional as F


class TimestepEmbedder(nn.Module):
    """Sinusoidal features (B, frequencies) of one time input -> Linear-SiLU-Linear -> (B, hidden)."""

    def __init__(self, frequencies: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequencies, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)


class TimePairEmbedder(nn.Module):
    """(c_t, c_s) of shape (B,) -> embed_t(sin(c_t) + t_offset) + embed_s(sin(c_s)), shape (B, hidden).

    `t_offset`, when given, is added to c_t's sinusoidal features before its MLP (DDPM++ adds its
    class embedding there).
    """

    def __init__(self, frequencies: int, hidden: int, max_period: float = 10_000.0):
        super().__init__()
        self.frequencies, self.max_period = frequencies, max_period
        self.embed_t = TimestepEmbedder(frequencies, hidden)
        self.embed_s = TimestepEmbedder(frequencies, hidden)

    def forward(self, c_t: torch.Tensor, c_s: torch.Tensor, t_offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        dtype = self.embed_t.mlp[0].weight.dtype
        features_t, features_s = F.timestep_embedding_pair(c_t, c_s, self.frequencies, self.max_period, dtype=dtype)
        if t_offset is not None:
            features_t = features_t + t_offset
        return self.embed_t(features_t) + self.embed_s(features_s)

    def extra_repr(self) -> str:
        return f"frequencies={self.frequencies}, max_period={self.max_period:g}"


class LabelEmbedder(nn.Module):
    """Labels (B,) in [0, num_classes] -> rows of a (num_classes + 1, dim) table; `num_classes` is the
    null class (no label), whose row guidance contrasts against."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.table(labels)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes} (+1 null)"
