"""DiT (Peebles & Xie 2023) as IMM's ImageNet network G(x, c_t, c_s, labels) (imm-method.md §2.3).

    x (B, C, S, S) -> p x p patches by a stride-p conv -> (B, T, hidden) tokens, T = (S / p)^2
                   + fixed 2-D sin-cos positional embedding (a buffer)
    c = embed_t(c_t) + embed_s(c_s) + embed_label(labels)      (§2.2, "s_embed"; null class = num_classes)
    depth x [ModulatedAttention, ModulatedMLP] with one adaLN modulation per block
    output head: adaLN (shift, scale) + Linear(hidden, p * p * out_channels) -> unpatchify -> (B, C, S, S)

adaLN-Zero initialisation (one method, `initialize_weights`): xavier-uniform Linears with zero biases,
the patch conv as a Linear over its flattened kernel, N(0, 0.02) for the label table and the time
MLPs' weights, and zeros for every modulation and the output Linear, so G = 0 at initialisation.

Choices relative to the authors' DiT (their `training/dit.py`, read for names and shapes only):
  * out_channels defaults to in_channels: no learned sigma (IMM's G is a single prediction).
  * Both time embedders always exist (the authors' `s_embed=True`, used by every released network).
  * The model takes c_t, c_s already scaled (1000 t, and 1000 s or 1000 (t - s)); the scaling lives in
    imm_ext.method's parametrisation (§2.1).
  * Labels are class indices with the null class `num_classes` (the authors pass one-hot vectors, all
    zeros for null); num_classes = 0 builds an unconditional DiT without a label table.
  * Options the authors lack: norm="rms" (RMSNorm instead of LayerNorm) and qk_norm as a per-head
    RMSNorm with a learned weight (the authors' qk_norm is timm's LayerNorm; no released network uses it).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import nn as imm_nn
from ..nn import functional as F
from .construction import check_int, seeded
from .inputs import check_model_inputs

# (hidden_size, depth, heads) of the DiT variants (DiT paper Table 1; imm-method.md §2.3).
VARIANTS = {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}
PATCH_SIZES = (2, 4, 8)
PRESETS = tuple(f"{variant}/{patch}" for variant in VARIANTS for patch in PATCH_SIZES)

# The layer classes a DiT is built from: imm_ext's, or the stock-PyTorch baseline (imm_ext.nn.stock).
LAYERS = {
    "imm_ext": (imm_nn.TimePairEmbedder, imm_nn.ModulatedAttention, imm_nn.ModulatedMLP, imm_nn.ModulatedOutput),
    "stock": (imm_nn.StockTimePairEmbedder, imm_nn.StockModulatedAttention, imm_nn.StockModulatedMLP,
              imm_nn.StockModulatedOutput),
}

TIME_FREQUENCIES = 256
TIME_MAX_PERIOD = 10_000.0


def sincos_position_embedding(dim: int, grid: int) -> torch.Tensor:
    """(grid * grid, dim) fixed 2-D position embedding, in float64, of the tokens of a grid x grid patch
    grid in row-major order: the first dim / 2 channels encode the column, the last dim / 2 the row,
    each as [sin(pos w_k), cos(pos w_k)] with w_k = 10000^(-k / (dim / 4)), k < dim / 4 (MAE / DiT)."""
    quarter = dim // 4
    frequencies = 10_000.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    positions = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(positions, positions, indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        arguments = pos.reshape(-1, 1) * frequencies
        return torch.cat([arguments.sin(), arguments.cos()], dim=1)

    return torch.cat([encode(cols), encode(rows)], dim=1)


class DiTBlock(nn.Module):
    """One DiT block: adaLN modulation of c into (shift, scale, gate) x 2, then the attention and MLP halves."""

    def __init__(self, hidden: int, heads: int, mlp_hidden: int, norm: str, qk_norm: bool, eps: float,
                 attention_backend: str, layers: str):
        super().__init__()
        _, attention_class, mlp_class, _ = LAYERS[layers]
        self.modulation = imm_nn.AdaLNModulation(hidden, hidden, chunks=6)
        self.attention = attention_class(hidden, heads, norm=norm, qk_norm=qk_norm, eps=eps,
                                         attention_backend=attention_backend)
        self.mlp = mlp_class(hidden, mlp_hidden, norm=norm, eps=eps)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.modulation(c)
        return self.mlp(self.attention(x, shift_a, scale_a, gate_a), shift_m, scale_m, gate_m)


class DiT(nn.Module):
    """G(x, c_t, c_s, labels) for x of shape (B, in_channels, input_size, input_size); see the module docstring.

    Args:
        input_size: image (latent) side S; patch_size must divide it.
        patch_size: p, one of 2, 4, 8.
        in_channels, out_channels: data channels (out_channels defaults to in_channels).
        hidden_size, depth, heads: width, number of blocks, attention heads (`from_preset` fills them).
        mlp_ratio: MLP hidden width / hidden_size.
        num_classes: 0 for unconditional; otherwise labels in [0, num_classes], num_classes the null class.
        norm: "layer" (LayerNorm without affine, DiT) or "rms" (RMSNorm without weight).
        qk_norm: RMSNorm (learned weight) of queries and keys per head.
        eps: the norms' epsilon.
        attention_backend: "auto" | "imm_ext" | "sdpa" (imm_ext.nn.functional.attention).
        layers: "imm_ext", or "stock" for the same network computed with stock PyTorch layers (the
            benchmark baseline; identical parameters).
        seed: initialisation seed (deterministic whatever the global RNG state).
    """

    def __init__(self, input_size: int = 32, patch_size: int = 2, in_channels: int = 4,
                 out_channels: Optional[int] = None, hidden_size: int = 1152, depth: int = 28, heads: int = 16,
                 mlp_ratio: float = 4.0, num_classes: int = 1000, norm: str = "layer", qk_norm: bool = False,
                 eps: float = 1e-6, attention_backend: str = "auto", layers: str = "imm_ext", seed: int = 0):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        for name, value, low in (("input_size", input_size, 1), ("in_channels", in_channels, 1),
                                 ("out_channels", out_channels, 1), ("depth", depth, 1), ("heads", heads, 1),
                                 ("num_classes", num_classes, 0)):
            check_int(name, value, low)
        if patch_size not in PATCH_SIZES:
            raise ValueError(f"patch_size must be one of {PATCH_SIZES}; got {patch_size!r}")
        if input_size % patch_size:
            raise ValueError(f"patch_size must divide input_size; got input_size={input_size}, patch_size={patch_size}")
        if check_int("hidden_size", hidden_size) % 4:
            raise ValueError(f"hidden_size must be a multiple of 4 (2-D sin-cos positions); got {hidden_size}")
        if hidden_size % heads:
            raise ValueError(f"heads must divide hidden_size; got hidden_size={hidden_size}, heads={heads}")
        if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)) or not mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be a positive number; got {mlp_ratio!r}")
        if not isinstance(qk_norm, bool):
            raise ValueError(f"qk_norm must be a bool; got {qk_norm!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be a positive number; got {eps!r}")
        if layers not in LAYERS:
            raise ValueError(f"layers must be one of {tuple(LAYERS)}; got {layers!r}")
        F.check_norm(norm)
        F.check_attention_backend(attention_backend)
        self.config = dict(input_size=input_size, patch_size=patch_size, in_channels=in_channels,
                           out_channels=out_channels, hidden_size=hidden_size, depth=depth, heads=heads,
                           mlp_ratio=float(mlp_ratio), num_classes=num_classes, norm=norm, qk_norm=qk_norm,
                           eps=float(eps), attention_backend=attention_backend, layers=layers, seed=seed)
        self.input_size, self.patch_size = input_size, patch_size
        self.in_channels, self.out_channels, self.num_classes = in_channels, out_channels, num_classes
        grid = input_size // patch_size
        time_class, _, _, output_class = LAYERS[layers]
        with seeded(seed):
            self.patch_embedding = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
            self.register_buffer("position_embedding",
                                 sincos_position_embedding(hidden_size, grid).to(torch.float32), persistent=False)
            self.embed_time = time_class(TIME_FREQUENCIES, hidden_size, TIME_MAX_PERIOD)
            self.embed_label = imm_nn.LabelEmbedder(num_classes, hidden_size) if num_classes else None
            self.blocks = nn.ModuleList(
                DiTBlock(hidden_size, heads, int(hidden_size * mlp_ratio), norm, qk_norm, eps, attention_backend, layers)
                for _ in range(depth))
            self.final_modulation = imm_nn.AdaLNModulation(hidden_size, hidden_size, chunks=2)
            self.final = output_class(hidden_size, patch_size * patch_size * out_channels, norm=norm, eps=eps)
            self.initialize_weights()

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "DiT":
        """A DiT variant by name, "S/2" ... "XL/8" (variant S, B, L, XL; patch 2, 4, 8); other keyword
        arguments go to the constructor (e.g. input_size=32, in_channels=4, num_classes=1000) and may
        override the preset's own (patch_size, hidden_size, depth, heads)."""
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}; got {name!r}")
        variant, patch = name.split("/")
        hidden_size, depth, heads = VARIANTS[variant]
        preset = dict(patch_size=int(patch), hidden_size=hidden_size, depth=depth, heads=heads)
        return cls(**{**preset, **kwargs})

    def initialize_weights(self) -> None:
        """adaLN-Zero initialisation (see the module docstring)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.view(self.patch_embedding.weight.shape[0], -1))
        nn.init.zeros_(self.patch_embedding.bias)
        for embedder in (self.embed_time.embed_t, self.embed_time.embed_s):
            nn.init.normal_(embedder.mlp[0].weight, std=0.02)
            nn.init.normal_(embedder.mlp[2].weight, std=0.02)
        if self.embed_label is not None:
            nn.init.normal_(self.embed_label.table.weight, std=0.02)
        for modulation in [block.modulation for block in self.blocks] + [self.final_modulation]:
            nn.init.zeros_(modulation.linear.weight)
            nn.init.zeros_(modulation.linear.bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, p * p * C) with channels ordered (row in patch, column in patch, channel) -> (B, C, S, S)."""
        batch, p, grid = tokens.shape[0], self.patch_size, self.input_size // self.patch_size
        patches = tokens.reshape(batch, grid, grid, p, p, self.out_channels)
        return patches.permute(0, 5, 1, 3, 2, 4).reshape(batch, self.out_channels, self.input_size, self.input_size)

    def forward(self, x: torch.Tensor, c_t: torch.Tensor, c_s: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        check_model_inputs(x, c_t, c_s, labels, (self.in_channels, self.input_size, self.input_size), self.num_classes)
        tokens = self.patch_embedding(x.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        tokens = tokens + self.position_embedding
        c = self.embed_time(c_t, c_s)
        if self.embed_label is not None:
            c = c + self.embed_label(labels)
        for block in self.blocks:
            tokens = block(tokens, c)
        shift, scale = self.final_modulation(c)
        return self.unpatchify(self.final(tokens, shift, scale))

    def extra_repr(self) -> str:
        return (f"input_size={self.input_size}, patch_size={self.patch_size}, tokens={(self.input_size // self.patch_size) ** 2}, "
                f"parameters={sum(p.numel() for p in self.parameters()):,}")
