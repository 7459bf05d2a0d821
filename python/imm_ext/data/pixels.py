"""Conversions of stored pixel arrays into the float32 [-1, 1] NCHW tensors the datasets hold.

uint8 pixels map as x / 127.5 - 1 (imm-method.md §5.2, CIFAR); other stored ranges map linearly.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

LAYOUTS = ("NCHW", "NHWC")
_CHANNEL_COUNTS = (1, 2, 3, 4)


def to_unit_range(array: np.ndarray, value_range: Optional[Sequence[float]] = None) -> torch.Tensor:
    """float32 tensor with [low, high] mapped to [-1, 1]. value_range defaults to (0, 255) for uint8 and
    (-1, 1) for floats; values outside it raise ValueError (a wrong range would silently mislead training)."""
    if value_range is None:
        value_range = (0, 255) if array.dtype == np.uint8 else (-1, 1)
    if (not isinstance(value_range, (tuple, list)) or len(value_range) != 2
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value_range)
            or value_range[0] >= value_range[1]):
        raise ValueError(f"value_range must be (low, high) with finite low < high; got {value_range!r}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"image arrays must be integer or floating; got {array.dtype}")
    low, high = float(value_range[0]), float(value_range[1])
    x = torch.tensor(array, dtype=torch.float32)  # a copy: the in-place mapping below must not touch the caller's array
    if x.numel():
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("image arrays must be finite; found NaN or inf")
        if lo < low or hi > high:
            raise ValueError(f"values span [{lo:g}, {hi:g}], outside value_range ({low:g}, {high:g}); "
                             f"pass value_range=(low, high) for the range the array is stored in")
    return x.sub_(low).mul_(2 / (high - low)).sub_(1)


def to_nchw(array: np.ndarray, layout: Optional[str] = None) -> np.ndarray:
    """(N, H, W) -> (N, 1, H, W); (N, C, H, W) or (N, H, W, C) -> NCHW. layout None guesses from where a
    channel count (1-4) sits and raises ValueError when both places could be channels."""
    if array.ndim == 3:
        return array[:, None]
    if array.ndim != 4:
        raise ValueError(f"image arrays must be (N, H, W), (N, C, H, W) or (N, H, W, C); got shape {array.shape}")
    if layout is None:
        first, last = array.shape[1] in _CHANNEL_COUNTS, array.shape[3] in _CHANNEL_COUNTS
        if first == last:
            raise ValueError(f"cannot tell NCHW from NHWC for shape {array.shape}; pass layout='NCHW' or 'NHWC'")
        layout = "NCHW" if first else "NHWC"
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(map(repr, LAYOUTS))} or None; got {layout!r}")
    return array if layout == "NCHW" else array.transpose(0, 3, 1, 2)
