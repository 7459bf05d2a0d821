"""The DDPM++ U-Net (Song et al. 2021, as EDM's SongUNet "DDPM++" configuration) with IMM's second time
input: the paper's CIFAR-10 network G(x, c_t, c_s, labels) (imm-method.md §2.3, about 55.7M parameters
at the defaults).

    emb = SiLU( MLP_t(pos(c_t) + label_embedding) + MLP_s(pos(c_s)) )          (§2.2; MLP = Linear-SiLU-Linear)
    encoder: 3x3 conv to model_channels, then per resolution level a downsampling block (after the
             first level) and num_blocks residual blocks (self-attention at attn_resolutions)
    decoder: per level from the coarsest, two blocks (the first with attention) at the coarsest level or
             an upsampling block, then num_blocks + 1 residual blocks, each taking one encoder skip
             (concatenated); the last one per level has attention at attn_resolutions
    output:  GroupNorm, SiLU, 3x3 conv (zero-initialised, so G = 0 at initialisation)

Residual block (x -> (B, out, H', W')): h = conv0(resample(SiLU(GroupNorm(x)))); h = SiLU(GroupNorm(h +
Linear(emb))); h = conv1(dropout(h)); x = (h + skip(resample(x))) / sqrt(2), where skip is a 1x1 conv
when channels or resolution change and resample is 2x2 average pooling down or nearest-neighbour up
(DDPM++'s [1, 1] resampling filter); with attention, x = (x + proj(attention(qkv(GroupNorm(x))))) / sqrt(2)
over the H' W' tokens. GroupNorm: min(32, C / 4) groups, eps 1e-6.

pos(c) is DDPM++'s positional embedding: model_channels sinusoids [cos(c f_k), sin(c f_k)] with
f_k = 10^(-4 k / (half - 1)), k < half = model_channels / 2 (frequencies from 1 down to exactly 1e-4,
EDM's `endpoint=True`), i.e. imm_ext.nn's embedding with max_period = 10^(4 half / (half - 1)). The
authors' network orders these features [sin, cos]; imm_ext.models.interop permutes their weights.

Initialisation as EDM's DDPM++: xavier-uniform weights and zero biases, the attention qkv scaled by
sqrt(0.2), each block's conv1 and attention output scaled by 1e-5; the output conv is exactly zero
(EDM: 1e-5) so that G = 0 at initialisation as for the DiT; the class embedding (if any) is N(0, 1),
on the scale of the sinusoidal features it is added to.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from .. import nn as imm_nn
from ..nn import functional as F
from .construction import check_int, check_int_list, seeded
from .inputs import check_model_inputs

SKIP_SCALE = math.sqrt(0.5)
GROUPNORM_EPS = 1e-6
POSITIONAL_MAX_PERIOD = 10_000.0


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with min(32, channels / 4) groups (EDM's rule), eps 1e-6."""
    return nn.GroupNorm(min(32, channels // 4), channels, eps=GROUPNORM_EPS)


def resample(x: torch.Tensor, direction: Optional[str]) -> torch.Tensor:
    """2x2 average pooling ("down"), 2x nearest-neighbour upsampling ("up") or nothing (None)."""
    if direction == "down":
        return nn.functional.avg_pool2d(x, 2)
    if direction == "up":
        return nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")
    return x


class UNetBlock(nn.Module):
    """The DDPM++ residual block (see the module docstring), optionally resampling and with self-attention."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, resample: Optional[str] = None,
                 attention: bool = False, heads: int = 1, dropout: float = 0.0, attention_backend: str = "auto"):
        super().__init__()
        self.in_channels, self.out_channels, self.resample = in_channels, out_channels, resample
        self.norm0 = group_norm(in_channels)
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb_proj = nn.Linear(emb_channels, out_channels)
        self.norm1 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels or resample else None
        self.norm2 = group_norm(out_channels) if attention else None
        self.attention = imm_nn.SelfAttention(out_channels, heads, attention_backend=attention_backend) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(resample(nn.functional.silu(self.norm0(x)), self.resample))
        h = nn.functional.silu(self.norm1(h + self.emb_proj(emb)[:, :, None, None].to(h.dtype)))
        h = self.conv1(self.dropout(h))
        shortcut = resample(x, self.resample)
        x = (h + (self.skip(shortcut) if self.skip is not None else shortcut)) * SKIP_SCALE
        if self.attention is not None:
            tokens = self.norm2(x).flatten(2).transpose(1, 2)
            x = (self.attention(tokens).transpose(1, 2).reshape(x.shape).to(x.dtype) + x) * SKIP_SCALE
        return x


class UNet(nn.Module):
    """G(x, c_t, c_s, labels) for x of shape (B, in_channels, resolution, resolution); see the module docstring.

    Args:
        resolution: image side; divisible by 2^(len(channel_mult) - 1).
        in_channels, out_channels: image channels (out_channels defaults to in_channels).
        model_channels: base width (even, >= 4); also the width of the positional time features.
        channel_mult: width multiplier per resolution level (one level per entry).
        channel_mult_emb: embedding width = model_channels * channel_mult_emb.
        num_blocks: residual blocks per level in the encoder (the decoder has one more).
        attn_resolutions: level resolutions whose blocks have self-attention.
        heads: attention heads (DDPM++: 1).
        dropout: dropout before each block's second conv (the IMM paper's CIFAR-10 setting is 0.2).
        num_classes: 0 for unconditional; otherwise labels in [0, num_classes], num_classes the null class.
        attention_backend: "auto" | "imm_ext" | "sdpa" (imm_ext.nn.functional.attention).
        seed: initialisation seed (deterministic whatever the global RNG state).
    """

    def __init__(self, resolution: int = 32, in_channels: int = 3, out_channels: Optional[int] = None,
                 model_channels: int = 128, channel_mult: Sequence[int] = (2, 2, 2), channel_mult_emb: int = 4,
                 num_blocks: int = 4, attn_resolutions: Sequence[int] = (16,), heads: int = 1, dropout: float = 0.2,
                 num_classes: int = 0, attention_backend: str = "auto", seed: int = 0):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        for name, value, low in (("resolution", resolution, 1), ("in_channels", in_channels, 1),
                                 ("out_channels", out_channels, 1), ("channel_mult_emb", channel_mult_emb, 1),
                                 ("num_blocks", num_blocks, 1), ("heads", heads, 1), ("num_classes", num_classes, 0)):
            check_int(name, value, low)
        if check_int("model_channels", model_channels, 4) % 2:
            raise ValueError(f"model_channels must be even; got {model_channels}")
        channel_mult = check_int_list("channel_mult", channel_mult)
        levels = [resolution >> level for level in range(len(channel_mult))]
        if resolution % (1 << (len(channel_mult) - 1)):
            raise ValueError(f"resolution must be divisible by 2^(len(channel_mult) - 1) = {1 << (len(channel_mult) - 1)}; "
                             f"got {resolution}")
        attn_resolutions = [] if not attn_resolutions else check_int_list("attn_resolutions", attn_resolutions)
        if any(res not in levels for res in attn_resolutions):
            raise ValueError(f"attn_resolutions must be level resolutions {levels}; got {attn_resolutions}")
        if any((model_channels * mult) % heads for mult in channel_mult):
            raise ValueError(f"heads must divide every level's width model_channels * channel_mult; got heads={heads}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1); got {dropout!r}")
        F.check_attention_backend(attention_backend)
        self.config = dict(resolution=resolution, in_channels=in_channels, out_channels=out_channels,
                           model_channels=model_channels, channel_mult=channel_mult, channel_mult_emb=channel_mult_emb,
                           num_blocks=num_blocks, attn_resolutions=attn_resolutions, heads=heads,
                           dropout=float(dropout), num_classes=num_classes, attention_backend=attention_backend,
                           seed=seed)
        self.resolution, self.in_channels, self.out_channels = resolution, in_channels, out_channels
        self.num_classes = num_classes
        emb_channels = model_channels * channel_mult_emb
        half = model_channels // 2
        block = dict(emb_channels=emb_channels, heads=heads, dropout=dropout, attention_backend=attention_backend)
        with seeded(seed):
            self.embed_time = imm_nn.TimePairEmbedder(model_channels, emb_channels,
                                                      POSITIONAL_MAX_PERIOD ** (half / (half - 1)))
            self.embed_label = nn.Embedding(num_classes + 1, model_channels) if num_classes else None
            self.input_conv = nn.Conv2d(in_channels, model_channels, 3, padding=1)
            self.encoder = nn.ModuleList()
            skip_channels, channels = [model_channels], model_channels
            for level, mult in enumerate(channel_mult):
                if level:
                    self.encoder.append(UNetBlock(channels, channels, resample="down", **block))
                    skip_channels.append(channels)
                for _ in range(num_blocks):
                    self.encoder.append(UNetBlock(channels, model_channels * mult,
                                                  attention=levels[level] in attn_resolutions, **block))
                    channels = model_channels * mult
                    skip_channels.append(channels)
            self.decoder, takes_skip = nn.ModuleList(), []
            for level in reversed(range(len(channel_mult))):
                if level == len(channel_mult) - 1:
                    self.decoder.extend([UNetBlock(channels, channels, attention=True, **block),
                                         UNetBlock(channels, channels, **block)])
                    takes_skip += [False, False]
                else:
                    self.decoder.append(UNetBlock(channels, channels, resample="up", **block))
                    takes_skip.append(False)
                for index in range(num_blocks + 1):
                    attention = index == num_blocks and levels[level] in attn_resolutions
                    self.decoder.append(UNetBlock(channels + skip_channels.pop(), model_channels * channel_mult[level],
                                                  attention=attention, **block))
                    channels = model_channels * channel_mult[level]
                    takes_skip.append(True)
            self.decoder_takes_skip = tuple(takes_skip)
            self.output_norm = group_norm(channels)
            self.output_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
            self.initialize_weights()

    def initialize_weights(self) -> None:
        """EDM's DDPM++ initialisation, with an exactly zero output conv (see the module docstring)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            for module in self.modules():
                if isinstance(module, UNetBlock):
                    module.conv1.weight.mul_(1e-5)
                    if module.attention is not None:
                        module.attention.qkv.weight.mul_(math.sqrt(0.2))
                        module.attention.proj.weight.mul_(1e-5)
        if self.embed_label is not None:
            nn.init.normal_(self.embed_label.weight)
        nn.init.zeros_(self.output_conv.weight)
        nn.init.zeros_(self.output_conv.bias)

    def forward(self, x: torch.Tensor, c_t: torch.Tensor, c_s: torch.Tensor,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        check_model_inputs(x, c_t, c_s, labels, (self.in_channels, self.resolution, self.resolution), self.num_classes)
        label_features = self.embed_label(labels) if self.embed_label is not None else None
        emb = nn.functional.silu(self.embed_time(c_t, c_s, t_offset=label_features))
        h = self.input_conv(x.to(self.input_conv.weight.dtype))
        skips = [h]
        for block in self.encoder:
            h = block(h, emb)
            skips.append(h)
        for block, takes_skip in zip(self.decoder, self.decoder_takes_skip):
            if takes_skip:
                h = torch.cat([h, skips.pop().to(h.dtype)], dim=1)
            h = block(h, emb)
        return self.output_conv(nn.functional.silu(self.output_norm(h)))

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, parameters={sum(p.numel() for p in self.parameters()):,}"
