"""Figures of a run with matplotlib: the loss curve and 2-D sample clouds.

- `loss_curve(steps, values, path)`: the logged loss against the step on a log axis, the raw values
  thin and light under a smoothed line (a centred moving average, of the logarithm on a log axis).
- `scatter(points, path, reference=None)`: 2-D samples as dots over an optional grey reference cloud,
  on equal axes cut at the 99.5% quantile of |coordinates|.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot state), so they work headless and
from any thread.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PathLike = Union[str, Path]


def smoothed(values: Sequence[float], half_width: int) -> list:
    """Centred moving average over 2 half_width + 1 points (fewer at the ends): no lag behind the curve."""
    out = []
    for i in range(len(values)):
        window = values[max(0, i - half_width):i + half_width + 1]
        out.append(sum(window) / len(window))
    return out


def loss_curve(steps: Sequence[float], values: Sequence[float], path: PathLike, title: str = "",
               ylabel: str = "loss", log_scale: bool = True) -> Path:
    """The curve of `values` against `steps` (non-finite values, and non-positive ones on a log axis,
    are left out)."""
    pairs = [(float(s), float(v)) for s, v in zip(steps, values)
             if math.isfinite(float(v)) and (not log_scale or float(v) > 0)]
    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    axes = figure.add_subplot()
    if pairs:
        xs, ys = zip(*pairs)
        axes.plot(xs, ys, color="tab:blue", alpha=0.3, linewidth=0.8, label="logged")
        if len(pairs) > 2:
            half_width = max(1, len(pairs) // 30)
            if log_scale:
                trend = [10 ** v for v in smoothed([math.log10(y) for y in ys], half_width)]
            else:
                trend = smoothed(ys, half_width)
            axes.plot(xs, trend, color="tab:blue", linewidth=1.8, label="smoothed")
        axes.legend(loc="upper right", frameon=False)
    if log_scale:
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, which="major", alpha=0.3)
    return save_figure(figure, path)


def scatter(points: torch.Tensor, path: PathLike, reference: Optional[torch.Tensor] = None,
            extent: Optional[float] = None) -> Path:
    """(N, 2) points as dots over an optional reference cloud, on [-extent, extent]^2 (by default the
    99.5% quantile of |coordinates| of all points, padded by 10%)."""
    points = points.detach().float().cpu()
    if points.dim() != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2); got {tuple(points.shape)}")
    clouds = [points] if reference is None else [reference.detach().float().cpu(), points]
    if extent is None:
        extent = 1.1 * float(torch.cat(clouds).abs().flatten().quantile(0.995)) or 1.0
    figure = Figure(figsize=(5.0, 5.0), dpi=100)
    axes = figure.add_subplot()
    if reference is not None:
        axes.scatter(*clouds[0].T.numpy(), s=2, color="0.7", linewidths=0, label="data")
    axes.scatter(*points.T.numpy(), s=2, color="tab:blue", linewidths=0, label="samples")
    axes.set_xlim(-extent, extent)
    axes.set_ylim(-extent, extent)
    axes.set_aspect("equal")
    if reference is not None:
        axes.legend(loc="upper right", markerscale=4, frameon=False)
    return save_figure(figure, path)


def save_figure(figure: Figure, path: PathLike) -> Path:
    """`figure` as a PNG at `path` (its folder created), laid out tight."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    FigureCanvasAgg(figure).print_png(str(path))
    return path
