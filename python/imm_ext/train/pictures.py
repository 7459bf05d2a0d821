"""PNG pictures of a run with Pillow alone (no matplotlib): image grids, 2-D scatter plots, and the loss
curve.

- `image_grid(samples, path)`: (N, C, H, W) samples in [-1, 1] tiled row by row; C = 1 grey, C = 3 RGB,
  other C (latents) show their first three channels, each rescaled to its own range.
- `scatter(points, path, reference=None)`: 2-D samples as dots over an optional grey reference cloud.
- `line_plot(steps, values, path)`: a curve with axes labelled by its range (log scale when asked).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from PIL import Image, ImageDraw

PathLike = Union[str, Path]
_BACKGROUND, _INK, _GRID = (255, 255, 255), (31, 119, 180), (200, 200, 200)


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


def scatter(points: torch.Tensor, path: PathLike, reference: Optional[torch.Tensor] = None, size: int = 512,
            extent: Optional[float] = None) -> Path:
    """Draw (N, 2) points as dots on a square canvas (over an optional grey reference cloud); the
    view is [-extent, extent]^2, by default the 99.5% quantile of |coordinates| of all points, padded."""
    points = points.detach().float().cpu()
    if points.dim() != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2); got {tuple(points.shape)}")
    clouds = [points] if reference is None else [reference.detach().float().cpu(), points]
    if extent is None:
        extent = 1.1 * float(torch.cat(clouds).abs().flatten().quantile(0.995)) or 1.0
    canvas = Image.new("RGB", (size, size), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    centre = size / 2
    draw.line([(centre, 0), (centre, size)], fill=_GRID)
    draw.line([(0, centre), (size, centre)], fill=_GRID)
    for cloud, colour in zip(clouds, [(170, 170, 170), _INK] if reference is not None else [_INK]):
        pixels = (cloud / extent * (size / 2) + centre).round()
        for x, y in pixels.tolist():
            if 0 <= x < size and 0 <= y < size:
                draw.rectangle([x - 1, size - y - 1, x, size - y], fill=colour)
    return _save(canvas, path)


def line_plot(steps: Sequence[float], values: Sequence[float], path: PathLike, title: str = "",
              log_scale: bool = False, size=(640, 400)) -> Path:
    """A polyline of `values` against `steps` with the value and step ranges written on the axes."""
    pairs = [(float(s), float(v)) for s, v in zip(steps, values)
             if math.isfinite(float(v)) and (not log_scale or float(v) > 0)]
    canvas = Image.new("RGB", size, _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    left, right, top, bottom = 70, size[0] - 20, 30, size[1] - 40
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    if title:
        draw.text((left, 8), title, fill=(0, 0, 0))
    if pairs:
        xs = [s for s, _ in pairs]
        ys = [math.log10(v) if log_scale else v for _, v in pairs]
        x_low, x_high = min(xs), max(xs)
        y_low, y_high = min(ys), max(ys)
        x_span, y_span = (x_high - x_low) or 1.0, (y_high - y_low) or 1.0
        points = [(left + (x - x_low) / x_span * (right - left), bottom - (y - y_low) / y_span * (bottom - top))
                  for x, y in zip(xs, ys)]
        if len(points) > 1:
            draw.line(points, fill=_INK, width=2)
        else:
            draw.ellipse([points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2], fill=_INK)
        label = (lambda y: f"{10 ** y:.3g}") if log_scale else (lambda y: f"{y:.3g}")
        draw.text((4, top), label(y_high), fill=(0, 0, 0))
        draw.text((4, bottom - 10), label(y_low), fill=(0, 0, 0))
        draw.text((left, bottom + 8), f"{x_low:g}", fill=(0, 0, 0))
        draw.text((right - 60, bottom + 8), f"step {x_high:g}", fill=(0, 0, 0))
    return _save(canvas, path)


def _save(image: Image.Image, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
