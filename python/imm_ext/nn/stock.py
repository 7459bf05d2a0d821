"""imm_ext.nn's DiT layers written with stock PyTorch: the baseline imm_ext's layers are measured against
(bench/models.py, through DiT(layers="stock")) and checked against (tests).

Same parameters and state-dict keys as the imm_ext layers they subclass, so weights move between the
two with load_state_dict; the forward passes use what one would write without imm_ext:
torch.nn.functional.layer_norm / rms_norm (qk-norm included), `x * (1 + scale) + shift`, `x + gate * y`,
torch.nn.functional.gelu(approximate="tanh"), torch.nn.functional.scaled_dot_product_attention, and the plain-PyTorch sinusoidal embeddings.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .attention import SelfAttention
from .blocks import ModulatedAttention, ModulatedMLP, ModulatedOutput
from .embedding import TimePairEmbedder
from ..ops.block_reference import timestep_embedding_pair_reference


def stock_norm_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, norm: str,
                        eps: float) -> torch.Tensor:
    """norm(x) * (1 + scale) + shift with stock layers; x (B, T, C), shift and scale (B, C)."""
    normed = (nn.functional.layer_norm(x, x.shape[-1:], eps=eps) if norm == "layer"
              else nn.functional.rms_norm(x, x.shape[-1:], eps=eps))
    return normed * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def stock_split_heads(attention: SelfAttention, x: torch.Tensor):
    """SelfAttention.split_heads with stock layers: qk-norm as torch's rms_norm on each strided view."""
    q, k, v = attention.heads_of(attention.qkv(x))
    if attention.q_norm is not None:  # autocast may run rms_norm in float32; attention wants one dtype
        q = nn.functional.rms_norm(q, q.shape[-1:], attention.q_norm.to(q.dtype), attention.eps).to(v.dtype)
        k = nn.functional.rms_norm(k, k.shape[-1:], attention.k_norm.to(k.dtype), attention.eps).to(v.dtype)
    return q, k, v


class StockModulatedAttention(ModulatedAttention):
    """ModulatedAttention computed with stock layers and SDPA."""

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        q, k, v = stock_split_heads(self.attention, stock_norm_modulate(x, shift, scale, self.norm, self.eps))
        y = self.attention.merge_heads(nn.functional.scaled_dot_product_attention(q, k, v))
        return x + gate.unsqueeze(1) * y


class StockModulatedMLP(ModulatedMLP):
    """ModulatedMLP computed with stock layers."""

    def branch(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(h), approximate="tanh"))

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        return x + gate.unsqueeze(1) * self.branch(stock_norm_modulate(x, shift, scale, self.norm, self.eps))


class StockModulatedOutput(ModulatedOutput):
    """ModulatedOutput computed with stock layers."""

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.linear(stock_norm_modulate(x, shift, scale, self.norm, self.eps))


class StockTimePairEmbedder(TimePairEmbedder):
    """TimePairEmbedder with one plain sinusoidal embedding per time input."""

    def forward(self, c_t: torch.Tensor, c_s: torch.Tensor, t_offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        dtype = self.embed_t.mlp[0].weight.dtype
        features_t, features_s = timestep_embedding_pair_reference(c_t, c_s, self.frequencies, self.max_period, dtype)
        if t_offset is not None:
            features_t = features_t + t_offset
        return self.embed_t(features_t) + self.embed_s(features_s)
