"""A released network (imm_ext.models.released) as a samplable model with the paper's settings for it.

The authors' IMMPrecond keyword arguments give the method (noise_schedule, f_type, temb_type -> the
second time input, eps, T, sigma_data); sampling and data follow the matching preset: ImageNet-256
latents (DiT) sample with uniform steps and guidance 1.5 and decode with sd-vae-ft-ema, as the authors'
ImageNet configuration does; CIFAR-10 (SongUNet) samples 2 steps with eta_{t1} = 1.4.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Tuple

import torch

from ..models import DiT
from ..models.released import ReleasedNetwork, load_released
from .components import DataInfo, parametrize
from .config import TrainingConfig
from .presets import get_preset

RELEASED_VAE = "stabilityai/sd-vae-ft-ema"


def released_config(released: ReleasedNetwork) -> Tuple[TrainingConfig, DataInfo]:
    """The TrainingConfig (method, sampling, data) and DataInfo that sample `released` as the paper did."""
    settings, network = released.settings, released.network
    latent = isinstance(network, DiT)
    base = get_preset("imagenet256-latent" if latent else "cifar10")
    method = replace(base.method,
                     schedule=str(settings.get("noise_schedule", base.method.schedule)),
                     f_type=str(settings.get("f_type", base.method.f_type)),
                     time_embedding="stride" if settings.get("temb_type") == "stride" else "identity",
                     eps_t=float(settings.get("eps", base.method.eps_t)), T=float(settings.get("T", base.method.T)),
                     sigma_data=float(settings.get("sigma_data", base.method.sigma_data)))
    data = replace(base.data, vae=RELEASED_VAE, options={**base.data.options, "stored": "mean_std"}) if latent \
        else base.data
    config = replace(base, method=method, data=data).validate()
    channels = network.in_channels
    resolution = network.input_size if latent else network.resolution
    info = DataInfo("latents" if latent else "cifar10", (channels, resolution, resolution), network.num_classes)
    return config, info


def load_released_model(path: Path):
    """(model f_{s,t}, config, info, step 0) like `evaluation.load_trained_model`, for a released file."""
    released = load_released(path)
    config, info = released_config(released)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return parametrize(released.network.to(device), config.method, info), config, info, 0
