"""The timestep-conditioned layers of a DiT (adaLN-Zero, Peebles & Xie 2023): the two residual halves of a
block and the output head,

    attention half:  x + gate * SelfAttention(norm(x) * (1 + scale) + shift)
    MLP half:        x + gate * MLP(norm(x) * (1 + scale) + shift),   MLP = Linear-GELU(tanh)-Linear
    output head:     Linear(norm(x) * (1 + scale) + shift)

with norm a LayerNorm without affine ("layer") or an RMSNorm without weight ("rms"), and per-sample
shift, scale, gate of shape (B, C) from an AdaLNModulation. The norm+modulate and gate+residual steps
run through imm_ext.nn.functional (fused kernels once merged).
"""
from __future__ import annotations

import torch
from torch import nn

from . import functional as F
from .attention import SelfAttention


class ModulatedAttention(nn.Module):
    """x (B, T, C), shift, scale, gate (B, C) -> x + gate * attention(modulate(norm(x)))."""

    def __init__(self, dim: int, heads: int, norm: str = "layer", qk_norm: bool = False, eps: float = 1e-6,
                 attention_backend: str = "auto"):
        super().__init__()
        self.norm, self.eps = F.check_norm(norm), eps
        self.attention = SelfAttention(dim, heads, qk_norm=qk_norm, eps=eps, attention_backend=attention_backend)

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        h = F.norm_modulate(x, shift, scale, norm=self.norm, eps=self.eps)
        return F.gate_residual(x, gate, self.attention(h))

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}"


class ModulatedMLP(nn.Module):
    """x (B, T, C), shift, scale, gate (B, C) -> x + gate * MLP(modulate(norm(x))), hidden width `hidden`."""

    def __init__(self, dim: int, hidden: int, norm: str = "layer", eps: float = 1e-6):
        super().__init__()
        self.norm, self.eps = F.check_norm(norm), eps
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def branch(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu_tanh(self.fc1(h)))

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        h = F.norm_modulate(x, shift, scale, norm=self.norm, eps=self.eps)
        return F.gate_residual(x, gate, self.branch(h))

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}"


class ModulatedOutput(nn.Module):
    """x (B, T, C), shift, scale (B, C) -> Linear(modulate(norm(x))) of width `out_features`."""

    def __init__(self, dim: int, out_features: int, norm: str = "layer", eps: float = 1e-6):
        super().__init__()
        self.norm, self.eps = F.check_norm(norm), eps
        self.linear = nn.Linear(dim, out_features)

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.linear(F.norm_modulate(x, shift, scale, norm=self.norm, eps=self.eps))

    def extra_repr(self) -> str:
        return f"norm={self.norm!r}"
