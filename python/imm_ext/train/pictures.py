"""Sample grids as PNG images (Pillow): `image_grid(samples, path)` tiles (N, C, H, W) samples in [-1, 1]
row by row, pixel for pixel; C = 1 grey, C = 3 RGB, other C (latents) show their first three channels,
each rescaled to its own range. Figures with axes (loss curves, 2-D clouds) are in plots.py."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Union

import torch
from PIL import Image

PathLike = Union[str, Path]
_BACKGROUND = (255, 255, 255)


def _to_bytes(samples: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, 3 or 1) uint8."""
    samples = samples.detach().float().cpu()
    channels = samples.shape[1]
    if channels not in (1, 3):
        samples = samples[:, :3] if channels > 3 else samples[:, :1]
        low = samples.amin(dim=(0, 2, 3), keepdim=True)
        high = samples.amax(dim=(0, 2, 3), keepdim=True)
        samples = 2 * (samples - low) / (high - low).clamp_min(1e-12) - 1
    pixels = ((samples.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1)


def image_grid(samples: torch.Tensor, path: PathLike, columns: Optional[int] = None, scale: int = 1,
               padding: int = 1) -> Path:
    """Tile (N, C, H, W) samples in [-1, 1] into one PNG, `columns` per row (default ~sqrt(N)),
    each pixel drawn as a scale x scale block."""
    if samples.dim() != 4:
        raise ValueError(f"samples must have shape (N, C, H, W); got {tuple(samples.shape)}")
    count, _, height, width = samples.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    pixels = _to_bytes(samples)
    mode = "L" if pixels.shape[-1] == 1 else "RGB"
    canvas = Image.new(mode, (columns * (width + padding) + padding, rows * (height + padding) + padding),
                       255 if mode == "L" else _BACKGROUND)
    for index in range(count):
        tile = pixels[index].squeeze(-1).numpy() if mode == "L" else pixels[index].numpy()
        row, column = divmod(index, columns)
        canvas.paste(Image.fromarray(tile, mode), (padding + column * (width + padding), padding + row * (height + padding)))
    if scale > 1:
        canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST)
    return _save(canvas, path)


def _save(image: Image.Image, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
