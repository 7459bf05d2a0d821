"""Pre-encoded Stable Diffusion VAE latents (ImageNet-256: 4x32x32), normalised as IMM does.

Expected layout: a .npy array, or a .npz archive (data under one key, integer labels under "labels"),
holding the raw encoder output (not multiplied by 0.18215) in one of two forms:
- stored="latents": (N, C, H, W), one latent per image (a posterior sample or mean), used as is;
- stored="mean_std": (N, 2C, H, W), the posterior mean and std concatenated along channels (EDM2's
  pre-encoding, imm-method.md §5.2); every use draws a fresh latent mean + std * N(0, 1).
Each channel c is then normalised to (z_c - channel_mean[c]) / channel_std[c] * scale. The defaults
are the official config's statistics for sd-vae-ft-ema with scale 0.5, giving std about 0.5 = sigma_d.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .array_dataset import ArrayDataset, labels_or_unlabelled
from .arrays import read_array_file

SD_VAE_FT_EMA_MEAN = (0.86488, -0.27787343, 0.21616915, 0.3738409)
SD_VAE_FT_EMA_STD = (4.85503674, 5.31922414, 3.93725398, 3.9870003)
LATENT_SCALE = 0.5
STORED_FORMS = ("latents", "mean_std")


def _channel_stats(values, channels: int, what: str) -> torch.Tensor:
    stats = torch.as_tensor(values, dtype=torch.float32)
    if stats.shape != (channels,) or not torch.isfinite(stats).all():
        raise ValueError(f"{what} must hold {channels} finite values, one per latent channel; got {values!r}")
    return stats.view(channels, 1, 1)


class LatentPosteriorDataset(Dataset):
    """Latents drawn afresh at every use from stored posterior means and stds (stored="mean_std").

    `batch(indices, generator)` draws a batch reproducibly (BatchStream uses it); item access draws with
    torch's global generator (as a DataLoader worker would).
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                 shift: torch.Tensor, factor: torch.Tensor, split: str):
        self.mean, self.std, self.labels = mean, std, labels
        self.shift, self.factor = shift, factor
        self.name, self.split, self.num_classes = "latents", split, num_classes
        self.sample_shape = tuple(mean.shape[1:])

    def __len__(self) -> int:
        return len(self.mean)

    def _draw(self, index, generator: Optional[torch.Generator]) -> torch.Tensor:
        mean, std = self.mean[index].float(), self.std[index].float()
        return (mean + std * torch.randn(mean.shape, generator=generator) - self.shift) * self.factor

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        return self._draw(index, None), int(self.labels[index])

    def batch(self, indices: torch.Tensor, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
        return self._draw(indices, generator), self.labels[indices]


def load_latents(path: str, split: str = "train", *, key: Optional[str] = None, stored: str = "latents",
                 channel_mean: Sequence[float] = SD_VAE_FT_EMA_MEAN, channel_std: Sequence[float] = SD_VAE_FT_EMA_STD,
                 scale: float = LATENT_SCALE):
    if stored not in STORED_FORMS:
        raise ValueError(f"stored must be one of {', '.join(map(repr, STORED_FORMS))}; got {stored!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive finite float; got {scale!r}")
    data, labels = read_array_file(path, key)
    if data.ndim != 4 or not np.issubdtype(data.dtype, np.floating):
        raise ValueError(f"latents must be a floating (N, C, H, W) array; got {data.dtype} {data.shape}")
    if len(data) == 0:
        raise ValueError(f"the latents file {path!r} holds no samples")
    z = torch.from_numpy(np.ascontiguousarray(data))
    if not torch.isfinite(z).all():
        raise ValueError("latents must be finite; found NaN or inf")
    if stored == "mean_std":
        if z.shape[1] % 2:
            raise ValueError(f"stored='mean_std' needs an even channel count (mean then std); got {z.shape[1]}")
        z_mean, z_std = z.chunk(2, dim=1)
        if (z_std < 0).any():
            raise ValueError("stored='mean_std': the std half holds negative values")
    channels = z.shape[1] // 2 if stored == "mean_std" else z.shape[1]
    shift = _channel_stats(channel_mean, channels, "channel_mean")
    spread = _channel_stats(channel_std, channels, "channel_std")
    if not (spread > 0).all():
        raise ValueError(f"channel_std must be positive; got {channel_std!r}")
    factor = scale / spread
    labels, num_classes = labels_or_unlabelled(labels, len(z))
    if stored == "mean_std":
        return LatentPosteriorDataset(z_mean, z_std, labels, num_classes, shift=shift, factor=factor, split=split)
    return ArrayDataset(((z.float() - shift) * factor).contiguous(), labels, name="latents", split=split,
                        num_classes=num_classes)
