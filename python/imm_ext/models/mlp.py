"""An MLP for low-dimensional data (2-D toys) with the models' interface G(x, c_t, c_s, labels).

Both time inputs get sinusoidal embeddings (one fused op), then each its own 2-layer MLP; the two
are summed (imm-method.md §2.2, "s_embed") with an optional class embedding whose last index is the
null class for guidance. The sum conditions a residual stack of SiLU blocks. The output layer starts
at zero, so G = 0 at initialisation and the Euler-FM jump f_{s,t}(x) starts as x_t (as DiT's
adaLN-Zero).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..nn.functional import timestep_embedding_pair
from .construction import check_int, seeded
from .inputs import check_model_inputs


class TimeEmbedding(nn.Module):
    """Linear-SiLU-Linear on the sinusoidal features (B, frequencies) of one time input."""

    def __init__(self, width: int, frequencies: int = 64):
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(nn.Linear(frequencies, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)


class ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.condition = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        return h + self.mlp(nn.functional.silu(self.norm(h) + self.condition(embedding)))


class MLP(nn.Module):
    """G(x, c_t, c_s, labels) for x of shape (B, dim).

    Args:
        dim: data dimension (2 for the toys).
        width, depth: hidden width and number of residual blocks.
        num_classes: 0 for unconditional; otherwise labels in [0, num_classes) and the null class
            num_classes (pass it as IMMParametrization's null_label).
        seed: initialisation seed (deterministic whatever the global RNG state).
    """

    def __init__(self, dim: int = 2, width: int = 256, depth: int = 3, num_classes: int = 0, seed: int = 0):
        super().__init__()
        for name, value, low in (("dim", dim, 1), ("width", width, 1), ("depth", depth, 1),
                                 ("num_classes", num_classes, 0)):
            check_int(name, value, low)
        self.config = dict(dim=dim, width=width, depth=depth, num_classes=num_classes, seed=seed)
        self.dim, self.num_classes = dim, num_classes
        with seeded(seed):
            self.embed_t, self.embed_s = TimeEmbedding(width), TimeEmbedding(width)
            self.embed_label = nn.Embedding(num_classes + 1, width) if num_classes else None
            self.input = nn.Linear(dim, width)
            self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(depth))
            self.output = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dim))
        nn.init.zeros_(self.output[-1].weight)
        nn.init.zeros_(self.output[-1].bias)

    def forward(self, x: torch.Tensor, c_t: torch.Tensor, c_s: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        check_model_inputs(x, c_t, c_s, labels, (self.dim,), self.num_classes)
        features_t, features_s = timestep_embedding_pair(c_t, c_s, self.embed_t.frequencies,
                                                         dtype=self.embed_t.mlp[0].weight.dtype)
        embedding = self.embed_t(features_t) + self.embed_s(features_s)
        if self.embed_label is not None:
            embedding = embedding + self.embed_label(labels)
        h = self.input(x.to(self.input.weight.dtype))
        for block in self.blocks:
            h = block(h, embedding)
        return self.output(h)

    def extra_repr(self) -> str:
        return f"parameters={sum(p.numel() for p in self.parameters()):,}"
